"""``lightseg prune CHECKPOINT --out PRUNED.pt``: structured channel pruning (+ CPRUN reconstruction), or
Ghost conversion (``--ghost``), with optional sparsity training and fine-tuning on the config's data.

Examples::

    lightseg prune runs/cardiac/best.pt --importance l1 --ratio 0.5 --out runs/pruned/best.pt
    lightseg prune best.pt --importance bn --sparsity-iters 2000 --stage-ratios 0.3,0.4,0.5,0.6,0.7 \\
        --steps 3 --finetune-iters 300 --config configs/models/cardiac-acdc.toml --out pruned/best.pt
    lightseg prune best.pt --ghost --finetune-iters 1000 --config configs/models/cardiac-acdc.toml --out ghost/best.pt
"""
from __future__ import annotations


def register(sub) -> None:
    add_arguments(sub.add_parser("prune", help="prune channels (Torch-Pruning) and rebuild a narrow net, or "
                                               "Ghost-convert")).set_defaults(func=run)
    # The CT models' recipes (registry `reproduce` strings) name this one.
    add_arguments(sub.add_parser("prune-ct", help="the same as prune (the name the CT models' reproduce "
                                                  "commands use)")).set_defaults(func=run)


def add_arguments(p):
    from ._compress_common import add_device_argument

    p.add_argument("checkpoint", help="training checkpoint (best.pt)")
    p.add_argument("--out", required=True, help="checkpoint to write (exportable with 'lightseg export')")
    p.add_argument("--importance", choices=("l1", "bn", "taylor"), default="l1")
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of channels removed per layer (default 0.5)")
    p.add_argument("--stage-ratios", help="comma-separated ratio per stage, shallow to deep (hierarchical)")
    p.add_argument("--global", dest="global_pruning", action="store_true",
                   help="rank channels across layers (within each stage with --stage-ratios)")
    p.add_argument("--steps", type=int, default=1, help="iterative pruning steps (fine-tune after each)")
    p.add_argument("--finetune-iters", type=int, default=0, help="fine-tuning iterations after each step")
    p.add_argument("--sparsity-iters", type=int, default=0,
                   help="network slimming: train this long with an L1 penalty on BN gammas before pruning")
    p.add_argument("--sparsity", type=float, default=1e-4, help="weight of the BN-gamma L1 penalty")
    p.add_argument("--taylor-batches", type=int, default=4, help="batches for Taylor importance")
    p.add_argument("--no-reconstruct", action="store_true",
                   help="save the pruned module itself (a pickle) instead of a rebuilt regular net")
    p.add_argument("--reconstruct-iters", type=int, default=0, help="fine-tuning after CPRUN reconstruction")
    p.add_argument("--compare-scratch", action="store_true",
                   help="also train the same narrow net from scratch for --reconstruct-iters and report both")
    p.add_argument("--ghost", action="store_true", help="convert 3x3 convs to Ghost modules instead of pruning")
    p.add_argument("--config", help="training config (data, augmentation, batch size, learning rate)")
    p.add_argument("--data", help="dataset folder (overrides data.dataset)")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resume", action="store_true",
                   help="continue interrupted fine-tuning from the OUT.*.state.pt files (saved every 100 iterations)")
    add_device_argument(p)  # fine-tuning; pruning itself runs on the CPU
    return p


def run(args) -> int:
    import json

    import torch

    from ..compress.pipeline import FineTuner, PruneSettings, run_stages
    from ...errors import LightSegError
    from ..export import load_checkpoint
    from ._compress_common import (apply_prep, example_input, load_data, resolve_config, resolve_device,
                                   save_checkpoint, set_threads)

    try:
        stage_ratios = [float(r) for r in args.stage_ratios.split(",")] if args.stage_ratios else None
    except ValueError:
        raise LightSegError(f"--stage-ratios: expected numbers like 0.3,0.5,0.7, got {args.stage_ratios!r}") from None
    settings = PruneSettings(
        importance=args.importance, ratio=args.ratio, stage_ratios=stage_ratios, global_pruning=args.global_pruning,
        steps=args.steps, finetune_iters=args.finetune_iters, sparsity_iters=args.sparsity_iters,
        sparsity=args.sparsity, taylor_batches=args.taylor_batches, reconstruct=not args.no_reconstruct,
        reconstruct_iters=args.reconstruct_iters, compare_scratch=args.compare_scratch, ghost=args.ghost)
    set_threads(args.threads)
    net, ckpt = load_checkpoint(args.checkpoint)
    spec, prep = dict(ckpt["architecture"]), ckpt.get("prep")
    cfg = apply_prep(resolve_config(args.config, args.data, args.threads, spec), prep, args.checkpoint)
    train_cases = val_cases = None
    if settings.needs_data():
        train_cases, val_cases = load_data(cfg)
        print(f"data: {len(train_cases)} training, {len(val_cases)} validation volumes")
    tune = FineTuner(cfg, train_cases, val_cases, args.lr, resolve_device(args.device), args.out, args.resume)
    pruned = run_stages(net, spec, example_input(spec), settings, tune)
    report = {"source": str(args.checkpoint), **pruned.report}
    if pruned.module_only:
        tune.out.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"module": pruned.net, "architecture": pruned.spec, "prep": prep, "pruning": report},
                   str(args.out))
    else:
        save_checkpoint(args.out, pruned.net, pruned.spec, prep, pruned.metrics(cfg), compression=report)
    report["out"] = str(args.out)
    print(json.dumps(report, default=str))
    return 0
