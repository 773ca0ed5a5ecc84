"""``lightseg publish CHECKPOINT --id ID --card configs/cards/ID.json --config CONFIG``: export, register, evaluate
through the engine and write the card; ``--card-only`` re-renders a published card (also spelled
``lightseg publish``, as the registry's ``reproduce`` strings do)."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("publish", help="export a checkpoint, register it, evaluate it, write its card figures")
    p.add_argument("checkpoint", nargs="?", help="the model's checkpoint (not needed with --card-only)")
    p.add_argument("--id", required=True)
    p.add_argument("--card", required=True, help="card template JSON (configs/cards/ID.json; ID.md.in beside it)")
    p.add_argument("--config", help="the training config (held-out split)")
    p.add_argument("--status", choices=["stable", "preview", "reference"],
                   help="registry status (default: preview when publishing; kept by --card-only unless given)")
    p.add_argument("--reproduce")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--crossval", help="crossval.json of benchmarks/ct_crossval.py for this recipe (the card's text)")
    p.add_argument("--card-only", action="store_true",
                   help="re-render the published card from ID.eval.json and the registry (after `lightseg bench "
                        "--record`) or with a new --crossval; with --config, re-evaluate the registered model first (no "
                        "checkpoint needed)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    from pathlib import Path

    from ...errors import LightSegError
    from ..publish.model import publish, recard

    crossval = json.loads(Path(args.crossval).read_text()) if args.crossval else None
    if args.card_only:
        recard(args.id, args.card, args.config, args.threads, crossval, args.status)
    elif not (args.checkpoint and args.config):
        raise LightSegError("publish needs the checkpoint and --config (or --card-only to re-render the card)")
    else:
        publish(args.checkpoint, args.id, args.card, args.config, args.status or "preview", args.reproduce,
                args.threads, crossval)
    return 0
