"""``lightseg bench --models A,B[:int8],... --input FILE --repeat N [--threads T] [--json] [--record]``.

Each run is a separate ``lightseg segment`` process on the whole volume; ratios are against the first model.
With ``--json`` stdout is exactly one JSON document ``{"models": [...], ...}``.
"""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("bench", help="time registered models side by side (one process per run)")
    p.add_argument("--models", required=True, help="comma-separated registry ids; ID:int8 for the int8 file")
    p.add_argument("--input", required=True, help="volume file or DICOM folder to segment")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per model (default 3)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per run (default: the engine's)")
    p.add_argument("--backend", choices=("onnx", "torch"), default="onnx")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed first run per model")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    p.add_argument("--plot", metavar="DIR", help="write dice_vs_macs.png and dice_vs_latency.png here")
    p.add_argument("--record", action="store_true",
                   help="store each model's figures as its registry entry's speed (lightseg models, Slicer, the model "
                        "card, re-rendered)")
    p.add_argument("--dice", metavar="FILE", help="JSON {model: mean Dice} overriding the cards' (e.g. int8 Dice)")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from ..bench import bench, format_table, to_json

    models = [m for m in (s.strip() for s in args.models.split(",")) if m]
    result = bench(models, args.input, repeat=args.repeat, threads=args.threads, backend=args.backend,
                   warmup=not args.no_warmup, log=(lambda s: None) if args.json else
                   (lambda s: print(s, file=sys.stderr)))
    if args.plot:
        import json
        from pathlib import Path

        from ..bench import plot

        dice = json.loads(Path(args.dice).read_text()) if args.dice else None
        written = plot(result, args.plot, dice)
        if not args.json:
            print("plots: " + ", ".join(str(p) for p in written), file=sys.stderr)
    if args.record:
        from ..publish.model import record_speed

        recorded = record_speed(result, log=lambda s: print(s, file=sys.stderr))
        if not args.json:
            print("recorded speed of: " + ", ".join(recorded), file=sys.stderr)
    print(to_json(result) if args.json else format_table(result))
    return 0
