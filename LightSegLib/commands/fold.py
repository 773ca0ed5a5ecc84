"""``lightseg fold CKPT --out FOLDED.pt``: resolution folding of a trained (pruned) U-Net; see compress.fold.

    lightseg fold runs/cc_student/best.pt --out runs/cc_fold/init.pt
    lightseg distill --teacher Resources/Models/cardiac-acdc.pt --student runs/cc_fold/init.pt --methods logit ...
"""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("fold", help="drop a U-Net's full-resolution stage: run it at half resolution "
                                    "(space-to-depth in, depth-to-space out); fine-tune or distill afterwards")
    p.add_argument("checkpoint", help="a 'unet' checkpoint (best.pt of lightseg train / prune / distill)")
    p.add_argument("--out", required=True, help="folded checkpoint to write (.pt)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..compress.finetune import save_checkpoint
    from ..compress.fold import fold_unet
    from ..nets.blocks import count_params
    from ..export import count_macs, load_checkpoint

    net, ckpt = load_checkpoint(args.checkpoint)
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
