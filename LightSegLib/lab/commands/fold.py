"""``lightseg fold CKPT --out FOLDED.pt``: resolution folding of a trained (pruned) U-Net or LFU-Net; see
compress.fold. CKPT may be a registered model's id (its ONNX weights; ``--config`` names the training data whose
slices calibrate its BatchNorms).

    lightseg fold runs/cc_student/best.pt --out runs/cc_fold/init.pt
    lightseg distill --teacher Resources/Models/cardiac-acdc.pt --student runs/cc_fold/init.pt --methods logit ...
"""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("fold", help="drop a U-Net's full-resolution stage: run it at half resolution "
                                    "(space-to-depth in, depth-to-space out); fine-tune or distill afterwards")
    p.add_argument("checkpoint", help="a 'unet' or 'lfunet' checkpoint (best.pt of lightseg train / prune / "
                                      "distill), or a registered model's id")
    p.add_argument("--out", required=True, help="folded checkpoint to write (.pt)")
    p.add_argument("--config", help="for a registered model: the training config whose slices calibrate BatchNorm")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    from pathlib import Path

    from ..compress.fold import fold_unet
    from ..export import count_macs, load_checkpoint, load_registered
    from ..nets.blocks import count_params
    from ._compress_common import save_checkpoint

    if Path(args.checkpoint).is_file():
        net, ckpt = load_checkpoint(args.checkpoint)
    else:
        net, ckpt = load_registered(args.checkpoint, _calibration(args.config, args.checkpoint))
    spec, prep = dict(ckpt["architecture"]), ckpt.get("prep")
    hw = (1, int(spec.get("in_channels", 1)), 256, 256)
    report = {"source": str(args.checkpoint), "params_before": count_params(net), "macs_before": count_macs(net, hw)}
    net, spec, counts = fold_unet(net.eval(), spec)
    report.update(method="fold", copied=counts, architecture=spec, params_after=count_params(net),
                  macs_after=count_macs(net, hw))
    save_checkpoint(args.out, net, spec, prep, {}, compression=report)
    report["out"] = str(args.out)
    print(json.dumps(report, default=str))
    return 0


def _calibration(config, model_id: str) -> list:
    """Eight training batches as ``lightseg train`` draws them, through the model's own preprocessing."""
    from ...errors import LightSegError
    from ..export import load_registered
    from ..train.trainer import batch_iterator
    from ._compress_common import apply_prep, load_data, resolve_config

    if not config:
        raise LightSegError(f"'{model_id}' has no training checkpoint: give --config, the training data whose "
                            "slices calibrate its BatchNorm layers")
    _, ckpt = load_registered(model_id)
    cfg = apply_prep(resolve_config(config, None, None, ckpt["architecture"]), ckpt["prep"], model_id)
    train_cases, _ = load_data(cfg, val=False)
    return [batch[0] for batch in batch_iterator(cfg, train_cases, 8)]
