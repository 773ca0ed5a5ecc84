"""``lightseg models``: what is registered, with version, size, cost, status and licence."""
from __future__ import annotations

import json
import shutil
import textwrap

from ..model_text import size_text, speed_text


def register(sub) -> None:
    parser = sub.add_parser("models", help="list the registered models")
    parser.add_argument("--json", action="store_true", help="print a JSON list of model entries")
    parser.set_defaults(func=run)


def describe(card) -> dict:
    path = card.path()
    return {**card.entry, "file_bytes": path.stat().st_size if path.is_file() else None}


def run(args) -> int:
    from ..registry import list_models

    cards = list_models(include_reference=True)
    if args.json:
        print(json.dumps([describe(c) for c in cards], indent=1))
        return 0
    if not cards:
        print("no models registered")
        return 0
    rows = [("id", "version", "status", "task", "modality", "params", "MACs/slice", "file", "s/volume", "licence")]
    for card in cards:
        rows.append((card.id, card.entry.get("version", "-"), card.status, card.task, card.modality,
                     f"{card.params:,}", f"{card.macs / 1e6:.0f} M", size_text(card), speed_text(card), card.licence))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    indent = sum(widths) + 2 * len(widths)
    # The licence in full (its restrictions matter), wrapped under its own column; never inside "BY-NC-SA".
    wrap = max(30, shutil.get_terminal_size((120, 24)).columns - indent)
    for row in rows:
        lines = textwrap.wrap(row[-1], wrap, break_on_hyphens=False) or [""]
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + lines[0])
        for line in lines[1:]:
            print(" " * indent + line)
    machines = sorted({c.entry["speed"]["machine"] for c in cards if c.entry.get("speed")})
    for machine in machines:  # a speed is only meaningful with its machine
        print(f"s/volume measured on: {machine} (lightseg bench --record)")
    return 0
