"""``lightseg train --config FILE``: train a segmentation net (torch/MONAI imported only when it runs).

Multi-process: ``torchrun --nproc_per_node N -m LightSegLib.cli train --config FILE`` (NCCL on GPUs, gloo on
CPU); each process draws its own samples, so the effective batch is N x batch_size.
"""
from __future__ import annotations


def register(sub) -> None:
    add_arguments(sub.add_parser("train", help="train a segmentation model from a TOML config"))


def add_arguments(parser) -> None:
    """The options of ``lightseg train`` (also ``lightseg train``, the cards' spelling)."""
    parser.add_argument("--config", required=True, help="TOML training config (see configs/)")
    parser.add_argument("--data", help="dataset folder (MSD / nnU-Net layout); overrides data.dataset")
    parser.add_argument("--out", help="run folder for checkpoints, log.csv, curves.png (default runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    parser.add_argument("--time-budget", type=float, metavar="MIN",
                        help="wall-clock budget in minutes (overrides train.time_budget_min)")
    parser.add_argument("--epochs", type=int, help="override train.epochs")
    parser.add_argument("--threads", type=int, help="torch threads per process (overrides train.threads)")
    parser.add_argument("--fold", type=int, metavar="K",
                        help="cross-validation: train on the other folds of data.holdout's pool, validate on fold K "
                             "(the test split stays out); needs data.holdout.folds or --folds")
    parser.add_argument("--folds", type=int, metavar="N", help="number of folds (overrides data.holdout.folds)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..data.reader import write_split
    from ...errors import LightSegError
    from ..train.config import load_config
    from ..train.trainer import train

    cfg = load_config(args.config)
    if args.data:
        cfg["data"]["dataset"] = args.data
    if args.time_budget is not None:
        cfg["train"]["time_budget_min"] = args.time_budget
    if args.epochs is not None:
        cfg["train"]["epochs"] = args.epochs
    if args.threads is not None:
        cfg["train"]["threads"] = args.threads
    if args.fold is not None or args.folds is not None:
        holdout = cfg["data"].get("holdout")
        if not holdout:
            raise LightSegError("--fold/--folds split data.holdout's pool: this config has no data.holdout")
        folds = args.folds if args.folds is not None else int(holdout.get("folds", 0))
        if folds < 2 or not 0 <= (args.fold or 0) < folds:
            raise LightSegError(f"--fold must lie in 0..N-1 with --folds N >= 2 (got fold {args.fold}, folds {folds})")
        cfg["data"]["holdout"] = {**holdout, "folds": folds, "fold": args.fold or 0}
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    if not args.resume:
        write_split(cfg, out)  # the held-out case ids, beside the checkpoint
    train(cfg, out, resume=args.resume, config_path=args.config)
    return 0
