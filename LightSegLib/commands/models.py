"""``lightseg models``: what is registered, with version, size, cost, status and licence."""
from __future__ import annotations

import json
import shutil
import textwrap

from ..model_text import size_text, speed_text
from ..registry import INTERACTIVE


def register(sub) -> None:
    parser = sub.add_parser("models", help="list the registered models")
    parser.add_argument("--json", action="store_true", help="print a JSON list of model entries")
    parser.set_defaults(func=run)


def describe(card) -> dict:
    path = card.path()
    return {**card.entry, "file_bytes": path.stat().st_size if path.is_file() else None}


def run(args) -> int:
    from ..registry import list_models

    cards = list_models(include_reference=True, include_interactive=True)
    if args.json:
        print(json.dumps([describe(c) for c in cards], indent=1))
        return 0
    if not cards:
        print("no models registered")
        return 0
    whole = [c for c in cards if c.task != INTERACTIVE]
    clicks = [c for c in cards if c.task == INTERACTIVE]
    if whole:
        table([("id", "version", "status", "task", "modality", "params", "MACs/slice", "file", "s/volume", "licence")]
              + [(c.id, c.entry.get("version", "-"), c.status, c.task, c.modality, f"{c.params:,}",
                  f"{c.macs / 1e6:.0f} M", size_text(c), speed_text(c), c.licence) for c in whole])
    machines = sorted({c.entry["speed"]["machine"] for c in whole if c.entry.get("speed")})
    for machine in machines:  # a speed is only meaningful with its machine
        print(f"s/volume measured on: {machine} (lightseg bench --record)")
    if clicks:
        print("\nclick models (lightseg refine, the Slicer effect LightSeg clicks; they refine one object, they do "
              "not segment a whole image):")
        table([("id", "version", "status", "modality", "params", "MACs/call", "file", "s/click", "licence")]
              + [(c.id, c.entry.get("version", "-"), c.status, c.modality, f"{c.params:,}", f"{c.macs / 1e6:.0f} M",
                  size_text(c), click_seconds(c), c.licence) for c in clicks])
    return 0


def click_seconds(card) -> str:
    """A click's median time from the entry's benchmark figures, with its threads."""
    metrics = card.entry.get("metrics") or {}
    click = metrics.get("seconds_per_click")
    return f"{click['median']:.3f} s ({metrics.get('threads', '?')} threads)" if click else "-"


def table(rows: list[tuple]) -> None:
    """Columns padded to their widest cell; the licence (last) in full (its restrictions matter), wrapped under
    its own column, never inside "BY-NC-SA"."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    indent = sum(widths) + 2 * len(widths)
    wrap = max(30, shutil.get_terminal_size((120, 24)).columns - indent)
    for row in rows:
        lines = textwrap.wrap(row[-1], wrap, break_on_hyphens=False) or [""]
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + lines[0])
        for line in lines[1:]:
            print(" " * indent + line)
