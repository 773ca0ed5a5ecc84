"""Calibrate the quality flag (LightSegLib/quality.py): every registered model on the data it can be checked on,
through the engine, each case's Dice beside its quality figures; then how often the registry's thresholds flag
a bad case and a good one.

    python benchmarks/quality_calibration.py run --out runs/quality/cases.json       # engine on every case
    python benchmarks/quality_calibration.py report runs/quality/cases.json          # flag rates, registry limits

Validation data (what thresholds may be chosen on): the CT cards' validation splits of the 8-bit slices, the ACDC
validation split, and the whole HU volumes of configs/data/ct_checks.toml (read through LightSegLib/lab/evaluate.py).
The held-out test splits and the true-HU slice checks are scored too and reported apart, as the check on
thresholds chosen without them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from LightSegLib import quality  # noqa: E402
from LightSegLib.inference import segment_image  # noqa: E402
from LightSegLib.registry import ModelCard, get_model, list_models  # noqa: E402
from LightSegLib.lab.evaluate import (SHARED, check_slices, check_volume, slice_checks,  # noqa: E402
                                      split_slices, volume_checks)
from LightSegLib.lab.train.config import load_config  # noqa: E402
from LightSegLib.metrics import dice  # noqa: E402

# the shipped CT models' own configs: their held-out splits of the 8-bit slice sets
CONFIGS = {"liver-ct": "configs/models/liver-ct.toml", "pancreas-ct": "configs/models/pancreas-ct.toml"}


def _rows(card, result, truth_by_value: dict, group: str, case: str) -> list[dict]:
    pred = sitk.GetArrayViewFromImage(result.labelmap)
    names = card.label_names()
    return [{"model": card.id, "group": group, "case": case, "label": names[v], "dice": dice(pred == v, truth),
             "voxels": int((pred == v).sum()), "quality": result.quality["labels"][names[v]]}
            for v, truth in truth_by_value.items()]


def slice_cases(card, split: str, threads: int) -> list[dict]:
    """The card's 8-bit slice split, one case per patient / volume, no 3D post-processing (as the card's figures)."""
    flat = ModelCard({**card.entry, "postprocessing": {}}, card.folder)
    rows = []
    for name, image, label in split_slices(load_config(REPO / CONFIGS[card.id])["data"], split):
        if len(image):
            result = segment_image(sitk.GetImageFromArray(np.ascontiguousarray(image)), flat, threads=threads)
            rows += _rows(card, result, {1: label > 0}, f"{split}_8bit", name)
    return rows


def slice_check_cases(card, threads: int) -> list[dict]:
    """The true-HU slice checks of the card's organ (two NIH test patients for the pancreas), no 3D post-processing."""
    flat = ModelCard({**card.entry, "postprocessing": {}}, card.folder)
    rows = []
    for check in slice_checks(card.task):
        for name, image, label in check_slices(check):
            result = segment_image(sitk.GetImageFromArray(image), flat, threads=threads)
            rows += _rows(card, result, {1: label > 0}, "test_true_hu", name)
    return rows


def acdc_cases(card, threads: int) -> list[dict]:
    root = SHARED / "acdc"
    rows = []
    for item in json.loads((root / "dataset.json").read_text())["validation"]:
        image = sitk.ReadImage(str(root / item["image"]))
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(root / item["label"])))
        result = segment_image(image, card, threads=threads)
        rows += _rows(card, result, {v: truth == v for v in card.label_names()}, "validation",
                      Path(item["image"]).name.split(".")[0])
    return rows


def volume_cases(card, threads: int) -> list[dict]:
    rows = []
    for check in volume_checks(card.task):
        if check["image"].exists():
            image, reference = check_volume(check)
            result = segment_image(image, card, threads=threads)
            rows += _rows(card, result, {1: np.isin(reference, check["values"][card.task])}, "whole_volume",
                          check["name"])
    return rows


def run(args) -> int:
    rows = []
    for card in list_models():
        if args.models and card.id not in args.models:
            continue
        if card.task == "cardiac":
            rows += acdc_cases(card, args.threads)
        elif card.id in CONFIGS:
            for split in ("val", "test"):
                rows += slice_cases(card, split, args.threads)
            rows += volume_cases(card, args.threads)
            rows += slice_check_cases(card, args.threads)
        print(f"{card.id}: {sum(r['model'] == card.id for r in rows)} cases", file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


def flagged(row: dict) -> list[str]:
    limits = (get_model(row["model"]).entry.get("quality") or {}).get("labels", {}).get(row["label"], {})
    return quality.check(row["label"], row["quality"], limits) if row["voxels"] else []


def rate(rows: list[dict]) -> str:
    n = sum(bool(flagged(r)) for r in rows)
    return f"{n}/{len(rows)}" + (f" ({n / len(rows):.0%})" if rows else "")


def report(args) -> int:
    rows = [r for r in json.loads(Path(args.cases).read_text()) if r["dice"] == r["dice"]]  # drop NaN (no organ)
    for r in rows:
        q = r["quality"]
        print(f"{r['model']:22s} {r['group']:13s} {r['case']:22s} {r['label']:16s} Dice {r['dice']:.3f} "
              f"conf {q.get('confidence') or 0:.3f} kept {q.get('kept_fraction') or 0:.2f} "
              f"area {q.get('area_fraction', 0):.4f} pos {q.get('position')} {'FLAG' if flagged(r) else ''}")
    calib = [r for r in rows if r["group"] in ("val_8bit", "validation", "whole_volume")]
    test = [r for r in rows if r["group"] in ("test_8bit", "test_true_hu")]
    print("\nflag rates (registry thresholds):")
    for title, subset in (("validation + whole volumes", calib), ("held-out test slices (8-bit and true HU)", test)):
        print(f"  {title}: Dice < 0.5 flagged {rate([r for r in subset if r['dice'] < 0.5])}; "
              f"0.5-0.7 flagged {rate([r for r in subset if 0.5 <= r['dice'] < 0.7])}; "
              f"Dice >= 0.7 flagged {rate([r for r in subset if r['dice'] >= 0.7])}")
    whole = [r for r in rows if r["group"] == "whole_volume"]
    print(f"  whole volumes: Dice < 0.3 flagged {rate([r for r in whole if r['dice'] < 0.3])}; "
          f"Dice >= 0.7 flagged {rate([r for r in whole if r['dice'] >= 0.7])}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--models", nargs="*")
    r.add_argument("--threads", type=int, default=1)
    r.set_defaults(func=run)
    p = sub.add_parser("report")
    p.add_argument("cases")
    p.set_defaults(func=report)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
