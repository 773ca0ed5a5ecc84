"""Calibrate the quality flag (LightSegLib/quality.py): every registered model on the data it can be checked on,
through the engine, each case's Dice beside its quality figures; then how often the registry's thresholds flag
a bad case and a good one.

    python benchmarks/quality_calibration.py run --out runs/quality/cases.json       # engine on every case
    python benchmarks/quality_calibration.py report runs/quality/cases.json          # flag rates, registry limits

Validation data (what thresholds may be chosen on): the CT cards' validation splits of the 8-bit slices, the ACDC
validation split, and the whole HU volumes (TotalSegmentator 3 mm CT and 20-slice DICOM, s0009, IRCADb 17, dcmqi).
The held-out test splits are scored too and reported apart, as the check on thresholds chosen without them.
IRCADb's pancreas is not labelled, so it is never a pancreas case.
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
from LightSegLib.lab.evaluate import SHARED  # noqa: E402
from LightSegLib.metrics import dice  # noqa: E402

CONFIGS = {"liver-ct": "configs/liver_lits2d_intensity.toml", "pancreas-ct": "configs/pancreas_nih2d.toml"}
TS = SHARED / "totalseg_example"
# (case name, image, reference, {task: reference values}); the reference is resampled onto the image grid
VOLUMES = [
    ("totalseg_3mm", TS / "example_ct.nii.gz", TS / "example_seg_v1_full_5de6e4d.nii.gz", {"liver": [5], "pancreas": [10]}),
    ("totalseg_dicom20", TS / "example_ct_dicom", TS / "example_seg_dicom.nii.gz", {"liver": [5], "pancreas": [7]}),
    ("totalseg_sm_sample", REPO / "Resources" / "Samples" / "totalseg_example_ct_sm.nii.gz",
     REPO / "Resources" / "Samples" / "totalseg_example_seg_sm.nii.gz", {"liver": [5], "pancreas": [7]}),
    ("s0009", SHARED / "totalseg_s0009" / "ct.nii.gz", SHARED / "totalseg_s0009" / "seg.nii.gz",
     {"liver": [5], "pancreas": [7]}),
    ("ircadb17", SHARED / "ircadb" / "imagesTr" / "ircadb1_17.nii.gz", SHARED / "ircadb" / "labelsTr" / "ircadb1_17.nii.gz",
     {"liver": [1]}),
    ("dcmqi", SHARED / "dcmqi_ct3slice", SHARED / "dcmqi_ct3slice" / "liver_seg.nrrd", {"liver": [1]}),
]


def _rows(card, result, truth_by_value: dict, group: str, case: str) -> list[dict]:
    pred = sitk.GetArrayViewFromImage(result.labelmap)
    names = card.label_names()
    return [{"model": card.id, "group": group, "case": case, "label": names[v], "dice": dice(pred == v, truth),
             "voxels": int((pred == v).sum()), "quality": result.quality["labels"][names[v]]}
            for v, truth in truth_by_value.items()]


def slice_cases(card, split: str, threads: int) -> list[dict]:
    """The card's 8-bit slice split, one case per patient / volume, no 3D post-processing (as the card's figures)."""
    from LightSegLib.lab.data import reader
    from LightSegLib.lab.train.config import load_config

    cfg = load_config(REPO / CONFIGS[card.id])["data"]
    flat = ModelCard({**card.entry, "postprocessing": {}}, card.folder)
    files = reader._npz_files(Path(cfg["dataset"]))
    rows = []
    for name in reader.split_ids(reader.dataset_ids(cfg), cfg["holdout"])[split]:
        with np.load(files[name]) as f:
            keep = f["crop_margin"] == 0 if "crop_margin" in f.files else np.ones(len(f["image"]), bool)
            image, label = f["image"][keep], f["label"][keep]
        if len(image):
            result = segment_image(sitk.GetImageFromArray(np.ascontiguousarray(image)), flat, threads=threads)
            rows += _rows(card, result, {1: label > 0}, f"{split}_8bit", name)
    return rows


def nih_hu_cases(card, threads: int) -> list[dict]:
    """The true-HU slices of two NIH test patients (flipped into radiological view, as the data README says)."""
    rows = []
    for path in sorted((SHARED / "nih_pancreas").glob("PANCREAS_*.npz")):
        with np.load(path) as f:
            image, label = np.flip(f["image"], 1), np.flip(f["label"], 1)
        flat = ModelCard({**card.entry, "postprocessing": {}}, card.folder)
        result = segment_image(sitk.GetImageFromArray(np.ascontiguousarray(image, np.int16)), flat, threads=threads)
        rows += _rows(card, result, {1: label > 0}, "test_true_hu", path.stem)
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
    from LightSegLib.io import read_image

    rows = []
    for case, image_path, label_path, values in VOLUMES:
        if card.task not in values or not Path(image_path).exists():
            continue
        image = read_image(image_path)
        reference = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(label_path)), image, sitk.Transform(),
                                                         sitk.sitkNearestNeighbor, 0))
        result = segment_image(image, card, threads=threads)
        rows += _rows(card, result, {1: np.isin(reference, values[card.task])}, "whole_volume", case)
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
            if card.task == "pancreas":
                rows += nih_hu_cases(card, args.threads)
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
