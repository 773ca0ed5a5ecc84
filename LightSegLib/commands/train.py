"""``lightseg train --config FILE``: train a segmentation net (torch/MONAI imported only when it runs).

Multi-process: ``torchrun --nproc_per_node N -m LightSegLib.cli train --config FILE`` (NCCL on GPUs, gloo on
CPU); each process draws its own samples, so the effective batch is N x batch_size.
"""
from __future__ import annotations


def register(sub) -> None:
    parser = sub.add_parser("train", help="train a segmentation model from a TOML config")
    parser.add_argument("--config", required=True, help="TOML training config (see configs/)")
    parser.add_argument("--data", help="dataset folder (MSD / nnU-Net layout); overrides data.dataset")
    parser.add_argument("--out", help="run folder for checkpoints, log.csv, curves.png (default runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    parser.add_argument("--time-budget", type=float, metavar="MIN",
                        help="wall-clock budget in minutes (overrides train.time_budget_min)")
    parser.add_argument("--epochs", type=int, help="override train.epochs")
    parser.add_argument("--threads", type=int, help="torch threads per process (overrides train.threads)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..data.ct2d import write_split
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
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    if not args.resume:
        write_split(cfg, out)  # the held-out case ids, beside the checkpoint
    train(cfg, out, resume=args.resume, config_path=args.config)
    return 0
