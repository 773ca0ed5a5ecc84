"""Checkpoint -> ONNX (+ registry entry): the bridge from training to the ONNX-only inference engine.

The exported graph takes ``image`` (N, C, H, W) float32 with dynamic N, H, W and returns ``logits``
(N, K, H, W); the nets pad internally, so any slice size works. Export is followed by a parity check of
torch against ONNX Runtime on real, preprocessed slices, and the cost figures the registry lists.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import LightSegError
from ..preprocess import Preprocessing
from ..registry import get_segmenter, list_models, models_dir, sha256_of
from .publish.writer import register_model

OPSET = 17


def load_checkpoint(path):
    """(net in eval mode, checkpoint dict). ``best.pt`` loads weights-only; a resumable ``last.pt`` also holds
    RNG states and needs a full unpickle (only for checkpoints you made yourself). A registered model's id
    loads its ONNX weights (``load_registered``)."""
    import pickle

    import torch

    from .nets import build

    path = Path(path)
    if not path.is_file():
        if str(path) in {card.id for card in list_models()}:
            return load_registered(str(path))
        raise LightSegError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "architecture" not in ckpt:
        raise LightSegError(f"{path} is not a LightSeg training checkpoint (needs 'model' and 'architecture')")
    net = build(ckpt["architecture"])
    net.load_state_dict(ckpt["model"])
    return net.eval(), ckpt


def export_onnx(net, path, in_channels: int, trace_hw=(160, 160)) -> Path:
    """TorchScript-based exporter: fast, and the internal padding stays a dynamic shape computation."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = net.eval()
    x = torch.zeros(2, in_channels, *trace_hw)
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(path), input_names=["image"], output_names=["logits"],
                          opset_version=OPSET, dynamo=False, dynamic_axes={"image": axes, "logits": axes})
    return path


def count_macs(net, input_shape) -> int:
    """Multiply-accumulates of one forward pass (conv, transposed conv, linear layers; the rest is noise)."""
    import torch
    from torch import nn

    total = [0]

    def conv_hook(m, inp, out):
        k = int(np.prod(m.kernel_size))
        if isinstance(m, nn.ConvTranspose2d):  # each input pixel scatters to k outputs per out channel
            total[0] += inp[0].numel() * (m.out_channels // m.groups) * k
        else:
            total[0] += out.numel() * (m.in_channels // m.groups) * k

    def linear_hook(m, inp, out):
        total[0] += out.numel() * m.in_features

    hooks = []
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(*input_shape))
    finally:
        for h in hooks:
            h.remove()
    return int(total[0])


def real_slices(image_path, prep: dict, max_slices: int = 8) -> np.ndarray:
    """Preprocessed slices of a real volume as the engine feeds them: (n, C, h, w) float32."""
    prepared = Preprocessing.from_prep(prep).prepare(sitk.ReadImage(str(image_path)))
    start = max(0, prepared.depth // 2 - max_slices // 2)
    return prepared.batch(start, min(prepared.depth, start + max_slices))


def parity(net, onnx_path, slices: np.ndarray) -> dict:
    """Torch vs ONNX Runtime on the same slices: largest logit difference and label agreement."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        a = net.eval()(torch.from_numpy(slices)).numpy()
    b = session.run(["logits"], {"image": slices})[0]
    if a.shape != b.shape:
        raise LightSegError(f"ONNX output shape {b.shape} differs from torch {a.shape}")
    return {"max_abs_diff": float(np.max(np.abs(a - b))), "label_agreement": float(np.mean(a.argmax(1) == b.argmax(1))),
            "slices": int(slices.shape[0]), "hw": list(slices.shape[2:])}


def build_entry(card: dict, ckpt: dict, onnx_path: Path, params: int, macs: int, macs_hw, torch_file: str | None,
                reproduce: str | None) -> dict:
    """The registry entry: static facts from the card template, the rest measured or read from the checkpoint."""
    fields = Preprocessing.from_prep(ckpt["prep"]).card_fields()
    entry = dict(card)
    entry.update({
        "input": {**fields["input"], **card.get("input_extra", {})},
        "normalization": fields["normalization"],
        "file": onnx_path.name,
        "sha256": sha256_of(onnx_path),
        "params": int(params),
        "macs": int(macs),
        "architecture": ckpt["architecture"],
    })
    entry.pop("input_extra", None)
    metrics = dict(card.get("metrics", {}))
    m = ckpt.get("metrics")
    if m:
        names = {lab["value"]: lab["name"] for lab in card["labels"]}
        metrics.update({
            "split": m.get("split", "validation"),
            "dice": {names.get(k + 1, f"label {k + 1}"): round(float(v), 4) for k, v in enumerate(m["val_dice"])},
            "dice_mean": round(float(m["val_dice_mean"]), 4),
            "epoch": ckpt.get("epoch"),
        })
    metrics["macs_input_hw"] = list(macs_hw)
    entry["metrics"] = metrics
    if torch_file:
        entry["torch_file"] = torch_file
    if reproduce:
        entry["reproduce"] = reproduce
    return entry


def export_checkpoint(checkpoint, out, *, card_path=None, register_id=None, parity_image=None, macs_hw=(256, 256),
                      with_torch: bool = False, status: str | None = None, reproduce: str | None = None,
                      models_folder=None, log=print) -> dict:
    import torch

    from .nets.blocks import count_params

    net, ckpt = load_checkpoint(checkpoint)
    in_channels = int(ckpt["architecture"].get("in_channels", 1))
    out = Path(out)
    export_onnx(net, out, in_channels)
    report = {"onnx": str(out), "bytes": out.stat().st_size, "params": count_params(net),
              "macs": count_macs(net, (1, in_channels, *macs_hw)), "macs_hw": list(macs_hw)}
    if parity_image:
        report["parity"] = parity(net, out, real_slices(parity_image, ckpt["prep"]))
        if report["parity"]["max_abs_diff"] > 1e-3:
            raise LightSegError(f"ONNX/torch parity failed: max |diff| {report['parity']['max_abs_diff']:.2e}")
    log(json.dumps(report))
    if register_id:
        folder = Path(models_folder) if models_folder else models_dir()
        if out.resolve().parent != folder.resolve():
            raise LightSegError(f"--register needs the ONNX file inside the models folder {folder}")
        if not card_path:
            raise LightSegError("--register needs --card (labels, colours, terminology, licence, ...)")
        card = json.loads(Path(card_path).read_text())
        card["id"] = register_id
        if status:
            card["status"] = status
        torch_file = None
        if with_torch:
            torch_file = f"{register_id}.pt"
            torch.save({"model": net.state_dict(), "architecture": ckpt["architecture"], "prep": ckpt["prep"]},
                       folder / torch_file)
        entry = build_entry(card, ckpt, out, report["params"], report["macs"], macs_hw, torch_file, reproduce)
        if "parity" in report:
            entry["metrics"]["onnx_parity_max_abs_diff"] = float(f"{report['parity']['max_abs_diff']:.3g}")
        register_model(entry, folder)
        report["entry"] = entry
        log(f"registered '{register_id}' in {folder / 'models.json'}")
    return report


def warm_start_from_onnx(net, onnx_path, batches) -> float:
    """Load an exported model's weights back into ``net`` (its architecture) to train it further: the export
    folded each BatchNorm into the conv before it, so BN is re-inflated from ``batches`` (per-channel mean and
    spread of each conv's output), which keeps the function exact in eval mode and close in train mode.
    Returns the largest logit difference from ONNX Runtime on the first batch."""
    import onnxruntime as ort
    import torch

    batches = [torch.as_tensor(np.asarray(b), dtype=torch.float32) for b in batches]
    bn_after = load_onnx_weights(net, onnx_path, batches[0][:1])
    # BN is now identity + bias: the net computes the exported function; measure each conv's output on it.
    sums = {c: [0.0, 0.0, 0] for c in bn_after}

    def record(m, _, out):
        o = out.double()
        s = sums[m]
        s[0] = s[0] + o.sum(dim=(0, 2, 3))
        s[1] = s[1] + (o * o).sum(dim=(0, 2, 3))
        s[2] += o.numel() // o.shape[1]

    hooks = [c.register_forward_hook(record) for c in bn_after]
    with torch.no_grad():
        for x in batches:
            net(x)
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for conv, bn in bn_after.items():
            s1, s2, n = sums[conv]
            mean = s1 / n
            var = (s2 / n - mean * mean).clamp_min(1e-6)
            bn.running_mean.copy_(mean.float())
            bn.running_var.copy_(var.float())
            bn.weight.copy_(torch.sqrt(var + bn.eps).float())
            bn.bias.add_(mean.float())
        ref = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        x = batches[0]
        expected = ref.run(None, {ref.get_inputs()[0].name: x.numpy()})[0]
        got = net(x)
    return float(np.abs(got.numpy() - expected).max())


def load_onnx_weights(net, onnx_path, example) -> dict:
    """Copy an exported model's convolutions into ``net`` with each BatchNorm set to identity + the folded bias:
    exact in eval mode. ``example``: one input, to find the order the convolutions run in. Returns
    {conv: the BatchNorm after it}."""
    import onnx
    import torch
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:  # the exporter shares equal tensors (zero biases, say) through Identity nodes
        if n.op_type == "Identity" and n.input[0] in inits:
            inits[n.output[0]] = inits[n.input[0]]
    folded = [(inits[n.input[1]], inits[n.input[2]] if len(n.input) > 2 else None)
              for n in graph.node if n.op_type in ("Conv", "ConvTranspose")]
    convs = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    bn_after = {}
    for seq in net.modules():
        kids = list(seq.children())
        for a, b in zip(kids, kids[1:]):
            if isinstance(a, convs) and isinstance(b, torch.nn.BatchNorm2d):
                bn_after[a] = b
    order = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m) if m not in order else None)
             for m in net.modules() if isinstance(m, convs)]
    net.eval()
    with torch.no_grad():
        net(example)
    for h in hooks:
        h.remove()
    if len(order) != len(folded) or any(tuple(c.weight.shape) != w.shape for c, (w, _) in zip(order, folded)):
        raise LightSegError(f"{onnx_path}: its convolutions do not match the architecture being trained")
    with torch.no_grad():
        for conv, (w, b) in zip(order, folded):
            conv.weight.copy_(torch.from_numpy(w.copy()))
            bias = torch.from_numpy(b.copy()) if b is not None else torch.zeros(w.shape[0])
            bn = bn_after.get(conv)
            if bn is None:
                conv.bias.copy_(bias)
                continue
            bn.weight.fill_(1.0)
            bn.bias.copy_(bias)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
    return bn_after


def load_registered(model_id: str, batches=None):
    """(net in eval mode, checkpoint dict) rebuilt from a registered model's ONNX file and card, for a model whose
    training checkpoint is not shipped: a teacher (eval mode only: exact) or, with calibration ``batches`` for
    its BatchNorms, a net to compress and train further."""
    import torch

    from .nets import build

    card = get_segmenter(model_id)
    spec = dict(card.entry["architecture"])
    net = build(spec)
    onnx_path = card.verified_path()
    if batches is None:
        load_onnx_weights(net, onnx_path, torch.zeros(1, int(spec.get("in_channels", 1)), 64, 64))
    else:
        warm_start_from_onnx(net, onnx_path, batches)
    ckpt = {"model": net.state_dict(), "architecture": spec, "prep": Preprocessing.from_card(card).to_prep(),
            "metrics": {}, "source": f"registry model {model_id} {card.entry.get('version', '')}".strip()}
    return net.eval(), ckpt
