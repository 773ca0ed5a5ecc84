"""``lightseg prune CHECKPOINT --out PRUNED.pt``: structured channel pruning (+ CPRUN reconstruction), or
Ghost conversion (``--ghost``), with optional sparsity training and fine-tuning on the config's data.

Examples::

    lightseg prune runs/cardiac/best.pt --importance l1 --ratio 0.5 --out runs/pruned/best.pt
    lightseg prune best.pt --importance bn --sparsity-iters 2000 --stage-ratios 0.3,0.4,0.5,0.6,0.7 \\
        --steps 3 --finetune-iters 300 --config configs/cardiac_unet8.toml --out pruned/best.pt
    lightseg prune best.pt --ghost --finetune-iters 1000 --config configs/cardiac_unet8.toml --out ghost/best.pt
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
    import re
    from pathlib import Path

    import torch

    from ..compress import prune as P
    from ..compress.finetune import load_data, save_checkpoint
    from ..train.trainer import train_loop
    from ...errors import LightSegError
    from ..export import count_macs, load_checkpoint
    from ..nets import build
    from ._compress_common import apply_prep, example_input, resolve_config, resolve_device, set_threads

    set_threads(args.threads)
    device = resolve_device(args.device)
    net, ckpt = load_checkpoint(args.checkpoint)
    spec, prep = dict(ckpt["architecture"]), ckpt.get("prep")
    cfg = apply_prep(resolve_config(args.config, args.data, args.threads, spec), prep, args.checkpoint)
    needs_data = (args.finetune_iters or args.sparsity_iters or args.reconstruct_iters
                  or args.importance == "taylor")
    train_cases = val_cases = None
    if needs_data:
        train_cases, val_cases = load_data(cfg)
        print(f"data: {len(train_cases)} training, {len(val_cases)} validation volumes")
    hw = (1, int(spec.get("in_channels", 1)), 256, 256)
    x = example_input(spec)
    report = {"source": str(args.checkpoint), "params_before": P.count_params(net),
              "macs_before": count_macs(net, hw)}

    out = Path(args.out)
    if not args.resume:
        for old in out.parent.glob(f"{out.stem}.*.state.pt"):
            old.unlink()

    def state_for(label: str) -> Path:
        """One file per training stage: pruning is deterministic, so a rerun rebuilds the same nets to resume."""
        out.parent.mkdir(parents=True, exist_ok=True)
        return out.parent / f"{out.stem}.{re.sub(r'[^a-z0-9]+', '-', label.lower()).strip('-')}.state.pt"

    def tune(model, iters, label):
        if iters <= 0:
            return None
        print(f"{label}: {iters} iterations")
        return train_loop(model, cfg, iters, train_cases=train_cases, val_cases=val_cases, lr=args.lr,
                          device=device, state_path=state_for(label))

    if args.ghost:
        from ..compress.ghost_convert import convert_checkpoint_net

        net, new_spec, n = convert_checkpoint_net(net, spec)
        if new_spec is None:
            raise LightSegError(f"{spec.get('name')} has no Ghost variant to save as a checkpoint")
        print(f"Ghost conversion: {n} convolutions replaced")
        report.update(method="ghost", converted=n, finetune=tune(net, args.finetune_iters, "fine-tune"))
        spec = new_spec
    else:
        if args.sparsity_iters:
            print(f"sparsity training (L1 on BN gammas, weight {args.sparsity})")
            report["sparsity"] = train_loop(net, cfg, args.sparsity_iters, train_cases=train_cases,
                                            val_cases=val_cases, lr=args.lr,
                                            penalty=lambda m: P.bn_l1_penalty(m, args.sparsity), device=device,
                                            state_path=state_for("sparsity"))
        stage_ratios = None
        if args.stage_ratios:
            try:
                stage_ratios = [float(r) for r in args.stage_ratios.split(",")]
            except ValueError:
                raise LightSegError(f"--stage-ratios: expected numbers like 0.3,0.5,0.7, got {args.stage_ratios!r}") \
                    from None
        batches = None
        if args.importance == "taylor":
            from ..train.trainer import batch_iterator

            def batches():
                return list(batch_iterator(cfg, train_cases, args.taylor_batches, augment=False))
        tunes = []
        P.prune(net, x, importance=args.importance, ratio=args.ratio, stage_ratios=stage_ratios,
                global_pruning=args.global_pruning, steps=args.steps, batches=batches,
                fine_tune=(lambda m, s: tunes.append(tune(m, args.finetune_iters, f"fine-tune after step {s + 1}")))
                if args.finetune_iters else None, log=print)
        report.update(method="prune", importance=args.importance, ratio=args.ratio, stage_ratios=stage_ratios,
                      global_pruning=args.global_pruning, steps=args.steps, finetune=tunes,
                      widths=P.widths(net.eval(), x))
        if args.no_reconstruct:
            out.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"module": net, "architecture": spec, "prep": prep, "pruning": report}, str(out))
            report.update(params_after=P.count_params(net), macs_after=count_macs(net, hw), out=str(out))
            print(json.dumps(report, default=str))
            return 0
        from ..compress.reconstruct import reconstruct

        net, spec, counts = reconstruct(net.eval(), spec, x)
        print(f"CPRUN reconstruction: widths {spec['widths']}, tensors copied {counts}")
        report["reconstruct"] = {"widths": spec["widths"], "copied": counts,
                                 "finetune": tune(net, args.reconstruct_iters, "fine-tune reconstructed net")}
        if args.compare_scratch and args.reconstruct_iters:
            scratch = build(spec)
            report["scratch"] = tune(scratch, args.reconstruct_iters, "same narrow net from scratch")
    report.update(params_after=P.count_params(net), macs_after=count_macs(net, hw), architecture=spec)
    metrics = {}
    last = _last_training(report)
    if last and "val_dice" in last:
        metrics = {"val_dice": last["val_dice"], "val_dice_mean": last["val_dice_mean"],
                   "split": cfg["data"]["val_split"]}
    save_checkpoint(args.out, net, spec, prep, metrics, compression=report)
    report["out"] = str(args.out)
    print(json.dumps(report, default=str))
    return 0


def _last_training(report: dict) -> dict | None:
    """The last training result that produced the saved weights (reconstruction fine-tune, else the last
    step's fine-tune, else the Ghost fine-tune): its validation Dice becomes the checkpoint's metrics. None
    when the saved net was never validated (a pruned net's Dice is then unknown, and none is claimed)."""
    recon = report.get("reconstruct") or {}
    if recon.get("finetune"):
        return recon["finetune"]
    copied = recon.get("copied") or {}
    if copied.get("partial") or copied.get("missing"):
        return None  # the rebuilt net is not the validated pruned net
    tuned = report.get("finetune")
    if isinstance(tuned, list):
        return tuned[-1] if tuned and tuned[-1] else None
    return tuned or None
