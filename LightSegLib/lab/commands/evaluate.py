"""``lightseg evaluate --model ID_OR_CHECKPOINT --data DATASET_DIR --split NAME --out DIR``."""
from __future__ import annotations


def register(sub) -> None:
    parser = sub.add_parser("evaluate", help="Dice and HD95 of a model on a labelled dataset split")
    parser.add_argument("--model", required=True, help="registry id (ONNX engine + post-processing; ID:int8 for its int8 file) or a checkpoint .pt")
    parser.add_argument("--data", required=True, help="dataset folder (MSD / nnU-Net layout)")
    parser.add_argument("--split", default="validation", help="split list in dataset.json (default validation)")
    parser.add_argument("--out", required=True, help="folder for metrics.csv, summary.md/json, evaluation.png")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, help="only the first N cases")
    parser.set_defaults(func=run)
    ct = sub.add_parser("evaluate-ct", help="Dice of a registered CT model via the engine: held-out slices and HU "
                                            "checks (the figures `lightseg publish` puts in its card)")
    ct.add_argument("--model", required=True)
    ct.add_argument("--config", help="the training config (for the held-out split of the 2D sets)")
    ct.add_argument("--split", nargs="+", default=["test"])
    ct.add_argument("--models-dir")
    ct.add_argument("--threads", type=int, default=1)
    ct.add_argument("--json", help="also write the report here")
    ct.set_defaults(func=run_ct)


def run(args) -> int:
    from ..evaluate import evaluate

    evaluate(args.model, args.data, args.split, args.out, threads=args.threads, limit=args.limit)
    return 0


def run_ct(args) -> int:
    import json
    from pathlib import Path

    from ...registry import get_model
    from ..train.config import load_config
    from ..evaluate import evaluate_model

    card = get_model(args.model, folder=args.models_dir)
    cfg = load_config(args.config) if args.config else None
    report = evaluate_model(card, cfg, card.task, args.threads, tuple(args.split))
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0
