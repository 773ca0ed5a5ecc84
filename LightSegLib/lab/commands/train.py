"""``lightseg train --config FILE``: train the model a config describes (torch/MONAI imported only when it runs).

A segmentation config trains one net. A classifier's (``task = "classification"``, the chest X-ray model) names
stages: its training stages run in order into ``--out``, and ``--stage`` runs one (``publish`` included).

Multi-process: ``torchrun --nproc_per_node N -m LightSegLib.cli train --config FILE`` (NCCL on GPUs, gloo on
CPU); each process draws its own samples, so the effective batch is N x batch_size.
"""
from __future__ import annotations

CLASSIFIER_STAGES = ("baseline", "compress", "publish")


def register(sub) -> None:
    parser = sub.add_parser("train", help="train a segmentation model or the X-ray classifier from a TOML config")
    parser.add_argument("--config", required=True, help="TOML training config (see configs/models/)")
    parser.add_argument("--data", help="dataset folder (MSD / nnU-Net layout, or NORMAL/ and PNEUMONIA/ X-rays); "
                        "overrides data.dataset")
    parser.add_argument("--out", help="run folder for checkpoints, log.csv, curves.png (default runs/<config name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from last.pt (a classifier's stages always do)")
    parser.add_argument("--time-budget", type=float, metavar="MIN",
                        help="wall-clock budget in minutes (overrides train.time_budget_min)")
    parser.add_argument("--epochs", type=int, help="override train.epochs (a classifier: the epochs of each stage run)")
    parser.add_argument("--threads", type=int, help="torch threads per process (overrides train.threads)")
    parser.add_argument("--fold", type=int, metavar="K",
                        help="cross-validation: train on the other folds of data.holdout's pool, validate on fold K "
                             "(the test split stays out); needs data.holdout.folds or --folds")
    parser.add_argument("--folds", type=int, metavar="N", help="number of folds (overrides data.holdout.folds)")
    parser.add_argument("--stage", choices=CLASSIFIER_STAGES,
                        help="a classifier's config: run only this stage (default: baseline, then compress)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ...errors import LightSegError
    from ..data.reader import write_split
    from ..train.config import load_config
    from ..train.trainer import train

    cfg = load_config(args.config)
    if args.data:
        cfg["data"]["dataset"] = args.data
    if args.epochs is not None:
        cfg["train"]["epochs"] = args.epochs
    if args.threads is not None:
        cfg["train"]["threads"] = args.threads
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    if cfg.get("task") == "classification":
        return _classifier(args, cfg, out)
    if args.stage:
        raise LightSegError(f"--stage is for a classifier's config (task = \"classification\"); {args.config} "
                            "trains a segmentation net")
    if args.time_budget is not None:
        cfg["train"]["time_budget_min"] = args.time_budget
    if args.fold is not None or args.folds is not None:
        holdout = cfg["data"].get("holdout")
        if not holdout:
            raise LightSegError("--fold/--folds split data.holdout's pool: this config has no data.holdout")
        folds = args.folds if args.folds is not None else int(holdout.get("folds", 0))
        if folds < 2 or not 0 <= (args.fold or 0) < folds:
            raise LightSegError(f"--fold must lie in 0..N-1 with --folds N >= 2 (got fold {args.fold}, folds {folds})")
        cfg["data"]["holdout"] = {**holdout, "folds": folds, "fold": args.fold or 0}
    if not args.resume:
        write_split(cfg, out)  # the held-out case ids, beside the checkpoint
    train(cfg, out, resume=args.resume, config_path=args.config)
    return 0


def _classifier(args, cfg: dict, out) -> int:
    """The classifier's stages (``train.cxr``; ``publish`` in ``train.cxr_report``), each into ``out/<stage>``."""
    from ...errors import LightSegError
    from ..train import cxr

    unused = [flag for flag, value in (("--time-budget", args.time_budget), ("--fold", args.fold),
                                       ("--folds", args.folds)) if value is not None]
    if unused:
        raise LightSegError(f"{', '.join(unused)}: not for a classifier's config ({args.config} trains by epochs on "
                            "a patient split)")
    if args.epochs is not None:
        cfg["compress"]["epochs"] = args.epochs
    for stage in [args.stage] if args.stage else ("baseline", "compress"):
        if stage == "publish":
            from ..train import cxr_report

            cxr_report.publish(cfg, out, args.config)
        else:
            {"baseline": cxr.baseline, "compress": cxr.compress}[stage](cfg, out)
    return 0
