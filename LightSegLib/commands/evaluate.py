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


def run(args) -> int:
    from ..evaluate import evaluate

    evaluate(args.model, args.data, args.split, args.out, threads=args.threads, limit=args.limit)
    return 0
