"""Training of the pneumonia chest X-ray classifier: the uncompressed ResNet50 baseline and the fine-tuning of its
compressed (pruned + Ghost) version with logit distillation from the baseline.

The segmentation trainer's loop runs it, with its parts swapped: batches of whole images from memory (2,000 images at
160 px, 200 MB as float32), cross-entropy, SGD and an epoch-wise cosine, ROC AUC after each epoch. Why 160 px and bfloat16 on
CPUs with AVX-512 BF16: a ResNet50 step (batch 16, forward + backward) took 0.45 s at 160 px against 1.05 s at
224 px on the 2-core EPYC, 2x faster than fp32; on AVX2-only CPUs bfloat16 is far slower, so it is used only where
the CPU has native bf16 instructions.

Its config (``configs/models/pneumonia-cxr.toml``, ``task = "classification"``) states the recipe of each stage;
``lightseg train`` runs ``baseline`` then ``compress`` into ``OUT/<stage>/`` (``publish``, in ``cxr_report``, reads
both). Every epoch writes ``last.pt`` (model, optimiser, iteration, history): rerunning the same command resumes it.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import LightSegError
from ..compress.bottleneck_prune import prune_bottlenecks
from ..compress.distill.logits import LogitKD
from ..compress.ghost_convert import convert_checkpoint_net
from ..compress.prune import bn_l1_penalty
from ...cxr_prep import prepare
from ..data import cxr as radiographs
from ..data.cxr_augment import appearance
from ..nets import build
from ..nets.blocks import count_params
from .trainer import Every, Recipe, ResumableState, cpu_has_bf16, train_loop

def stage_settings(cfg: dict, stage: str) -> dict:
    """The flat settings ``fit`` reads and a checkpoint records as its ``config``: the data and train sections,
    with the compress section over them for ``compress`` (``data`` is the dataset folder)."""
    data = cfg["data"]
    flat = {"data": data["dataset"], "size": data["size"], "val_fraction": data["val_fraction"],
            "held_out": data["held_out"], **cfg["train"]}
    return flat | cfg["compress"] if stage == "compress" else flat


def final_checkpoint(run: Path, stage: str) -> Path:
    """``run/<stage>/final.pt``, which the next stage needs."""
    path = Path(run) / stage / "final.pt"
    if not path.is_file():
        raise LightSegError(f"{path} not found: run `lightseg train --config ... --out {run} --stage {stage}` first")
    return path


def load_data(cfg: dict, cache_dir: Path) -> dict:
    """Train/val arrays, cached as npz in the run folder: the validation images (and the training images, without
    ``appearance``) through the inference preprocessing; with it, the training images as read (``grey_train``),
    as the appearance chain works on the radiograph before its preprocessing."""
    appearance = cfg["appearance"]
    cache = cache_dir / (f"cxr_{cfg['size']}_{cfg['seed']}_{cfg['val_fraction']}_{cfg['held_out']}"
                         f"{'_grey' if appearance else ''}.npz")
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        return {k: z[k] for k in z.files}
    parts = radiographs.split_with_held_out(radiographs.list_images(cfg["data"]), cfg["held_out"],
                                            cfg["val_fraction"], cfg["seed"])
    out = {}
    out["x_val"], out["y_val"] = radiographs.load(parts["val"], cfg["size"])
    if appearance:
        out["grey_train"], out["y_train"] = radiographs.load_grey(parts["train"])
    else:
        out["x_train"], out["y_train"] = radiographs.load(parts["train"], cfg["size"])
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def epoch_order(y: np.ndarray, balanced: bool, generator) -> torch.Tensor:
    """One epoch's image indices (as many as images): a permutation, or with ``balanced`` a draw with replacement
    that gives each class the same expected share."""
    if not balanced:
        return torch.randperm(len(y), generator=generator)
    counts = np.bincount(y)
    return torch.multinomial(torch.from_numpy(1.0 / counts[y]), len(y), replacement=True, generator=generator)


def augmenter(size: int, seed: int):
    """Small geometric and intensity changes a radiograph really shows: tilt, scale, shift, exposure."""
    from monai.transforms import Compose, RandAdjustContrast, RandAffine, RandScaleIntensity

    t = Compose([
        RandAffine(prob=0.9, rotate_range=math.radians(10), scale_range=0.1, translate_range=size * 0.06,
                   padding_mode="zeros"),
        RandAdjustContrast(prob=0.5, gamma=(0.7, 1.4)),
        RandScaleIntensity(factors=0.15, prob=0.5),
    ])
    t.set_random_state(seed)
    return t


@torch.no_grad()
def predict(net, x: np.ndarray, batch: int = 64, bf16: bool = False) -> np.ndarray:
    """Class probabilities (N, classes)."""
    net.eval()
    out = []
    for i in range(0, len(x), batch):
        xb = torch.from_numpy(x[i:i + batch]).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out.append(torch.softmax(net(xb).float(), dim=1))
    return torch.cat(out).numpy()


def roc_auc(prob_positive: np.ndarray, y: np.ndarray) -> float:
    from monai.metrics import compute_roc_auc

    return float(compute_roc_auc(torch.from_numpy(prob_positive).float(), torch.from_numpy(y).float()))


def lr_at(cfg: dict, epoch_progress: float) -> float:
    warm = float(cfg["warmup_epochs"])
    if epoch_progress < warm:
        return cfg["lr"] * (epoch_progress + 1e-3) / warm
    p = (epoch_progress - warm) / max(1e-9, cfg["epochs"] - warm)
    return cfg["lr"] * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))


def fit(net, cfg: dict, data: dict, out_dir: Path, spec: dict, teacher=None, log=print, extra: dict | None = None):
    """Train ``net`` for ``cfg['epochs']`` on the segmentation trainer's loop (SGD, an epoch-wise cosine, image
    batches; ROC AUC on the validation images after every epoch), resuming from ``out_dir/last.pt``; returns the
    history rows."""
    out_dir.mkdir(parents=True, exist_ok=True)
    bf16 = cpu_has_bf16()
    last = out_dir / "last.pt"
    history = torch.load(last, map_location="cpu", weights_only=False)["history"] if last.exists() else []
    y_train = torch.from_numpy(data["y_train"])
    steps = len(y_train) // cfg["batch_size"]
    kd_weight = cfg["kd_weight"] if teacher is not None else 0.0
    if teacher is not None:
        teacher.eval().to(memory_format=torch.channels_last)

    def batches(start: int):
        """Each epoch's order and augmentation are a function of (seed, epoch), and the state is saved at epoch
        ends only: a resumed run sees the batches it would have."""
        for it in range(start, cfg["epochs"] * steps):
            epoch, step = divmod(it, steps)
            if step == 0:
                aug = augmenter(cfg["size"], cfg["seed"] * 1000 + epoch)
                order = epoch_order(data["y_train"], cfg["balanced"],
                                    torch.Generator().manual_seed(cfg["seed"] * 1000 + epoch))
                rng = np.random.default_rng([cfg["seed"], epoch])
            idx = order[step * cfg["batch_size"]:(step + 1) * cfg["batch_size"]]
            yield torch.stack([aug(network_input(int(i), rng)).as_tensor() for i in idx]).float(), y_train[idx]

    def network_input(i: int, rng) -> torch.Tensor:
        if not cfg["appearance"]:
            return torch.from_numpy(data["x_train"][i])
        return torch.from_numpy(prepare(appearance(data["grey_train"][i].astype(np.float32), rng)[0],
                                        cfg["size"])[0])

    def distillation(image, label, logits):
        with torch.no_grad():
            taught = teacher(image).float()
        return kd_weight * LogitKD(cfg["kd_temperature"])(logits.float(), taught)

    def on_epoch(iteration: int, losses: list[float], done: bool, elapsed: float) -> None:
        prob = predict(net, data["x_val"], bf16=bf16)
        y_val = data["y_val"]
        row = {"epoch": iteration // steps, "loss": float(np.mean(losses[-steps:])),
               "val_loss": float(-np.log(np.clip(prob[np.arange(len(y_val)), y_val], 1e-7, 1)).mean()),
               "val_acc": float(((prob[:, 1] >= 0.5) == y_val).mean()),
               "val_auc": roc_auc(prob[:, 1], y_val), "seconds": round(elapsed - sum(h["seconds"] for h in history), 1)}
        history.append(row)
        log(json.dumps(row))

    recipe = Recipe(batches=batches, loss_fn=lambda logits, y: (1 - kd_weight) * F.cross_entropy(
                        logits.float(), y, label_smoothing=cfg["label_smoothing"]),
                    extra_loss=distillation if kd_weight > 0 else None,
                    penalty=(lambda m: bn_l1_penalty(m, cfg["bn_l1"])) if cfg["bn_l1"] > 0 else None,
                    optimizer=lambda params: torch.optim.SGD(params, lr=cfg["lr"], momentum=0.9, nesterov=True,
                                                             weight_decay=cfg["weight_decay"]),
                    schedule=lambda progress, it: lr_at(cfg, it / steps))
    hooks = [Every(steps, on_epoch), ResumableState(last, steps, max(50, steps), lambda: {"history": history}, log)]
    train_loop(net, {"train": {"lr": cfg["lr"], "cpu_bf16": bf16}, "data": {}}, cfg["epochs"] * steps,
               recipe=recipe, hooks=hooks, log=log)
    final = out_dir / "final.pt"
    torch.save({"spec": spec, "state_dict": net.state_dict(), "history": history, "config": cfg,
                "bf16": bf16} | (extra or {}), final)
    with open(out_dir / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)
    return history


def load_net(path):
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    net = build(ckpt["spec"])
    net.load_state_dict(ckpt["state_dict"])
    return net.eval(), ckpt


def _start(cfg: dict) -> None:
    """Threads as the config says, for torch and for SimpleITK (the appearance chain and the preprocessing)."""
    import SimpleITK as sitk

    torch.set_num_threads(int(cfg["train"]["threads"]))
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(cfg["train"]["threads"]))
    torch.manual_seed(int(cfg["train"]["seed"]))


def baseline(cfg: dict, run: Path) -> None:
    """The uncompressed net of ``[model]``, trained as ``[train]`` says, into ``run/baseline``."""
    _start(cfg)
    settings = stage_settings(cfg, "baseline")
    spec = dict(cfg["model"])
    fit(build(spec), settings, load_data(settings, Path(run)), Path(run) / "baseline", spec)


def compress(cfg: dict, run: Path) -> None:
    """baseline -> pruned -> pruned + Ghost -> fine-tuned, into ``run/compress``; the validation scores of each point
    go to points.json."""
    _start(cfg)
    source = final_checkpoint(run, "baseline")
    teacher, _ = load_net(source)
    settings = stage_settings(cfg, "compress")
    ratios = [float(r) for r in settings["ratios"]]
    out = Path(run) / "compress"
    data = load_data(settings, Path(run))
    bf16 = cpu_has_bf16()

    def point(name, net):
        prob = predict(net, data["x_val"], bf16=bf16)
        y = data["y_val"]
        return {"point": name, "params": count_params(net), "val_acc": float(((prob[:, 1] >= 0.5) == y).mean()),
                "val_auc": roc_auc(prob[:, 1], y)}

    pruned, spec = prune_bottlenecks(teacher, ratios)
    ghost, ghost_spec, _ = convert_checkpoint_net(pruned, spec)
    points = [point("baseline", teacher), point("pruned", pruned), point("pruned + Ghost", ghost)]
    print(json.dumps(points))
    fit(ghost.train(), settings, data, out, ghost_spec, teacher=teacher,
        extra={"ratios": ratios, "baseline": str(source)})
    tuned, _ = load_net(out / "final.pt")
    points.append(point("fine-tuned", tuned))
    (out / "points.json").write_text(json.dumps(points, indent=1))
    print(json.dumps(points))
