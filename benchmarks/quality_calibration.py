"""Calibrate the quality flag (LightSegLib/quality.py) across cohorts: every registered segmentation model on the
data it can be checked on, through the engine, each case's Dice beside its quality figures; the limits chosen on
some cohorts and checked on another; and odd inputs (outside the model's world) beside them, with what the engine did.

    python benchmarks/quality_calibration.py run --out runs/quality/cases.json --threads 1    # engine on every case
    python benchmarks/quality_calibration.py report runs/quality/cases.json                   # flag rates
    python benchmarks/quality_calibration.py report runs/quality/cases.json --write           # + the registry

Cohorts (one case = one engine call: a patient's or volume's slices, a whole volume; scored per structure).
"trained on" cohorts are ones the model saw in training: their figures are optimistic, and they are labelled so.
  pancreas-ct  nih_val        NIH Pancreas-CT 8-bit slices, the validation split (5 patients, model selection)
               nih_train      the same, training split (35 patients; trained on)
               lits_negatives the held-out part of the reviewed LiTS slices without pancreas
                              (configs/data/lits_no_pancreas.json; never trained on): anything marked is wrong
               whole_volumes  the HU volumes of configs/data/ct_checks.toml that label the pancreas
  liver-ct     lits_val       LiTS 8-bit slices, the validation split (8 volumes)
               lits_train     the same, training split (74 volumes; trained on)
               whole_volumes  the HU volumes of configs/data/ct_checks.toml that label the liver
  cardiac-*    acdc_val       ACDC, the models' validation split (10 patients, 20 volumes)
               acdc_train     ACDC, the training split (70 patients, 140 volumes; trained on). The shared copy
                              keeps no scanner, field strength or diagnosis, so the split is the only cohort label.
Checks never chosen on: the CT cards' held-out test splits (nih_test_8bit, nih_test_true_hu, lits_test_8bit).
Nothing is subsampled. Slice sets run without 3D post-processing (as the cards' figures), so they do not
measure the kept fraction (recorded as None). 8-bit slices are not HU: the engine's input check marks every one
of them as outside the CT world (as it should); their per-structure limits are what is calibrated there.

The rule (written before the results were seen). Good cases: Dice >= 0.7 (CT), >= 0.8 (cardiac); bad: Dice < 0.5
(and < 0.3, reported apart). Only good cases place a limit; the bad ones are what the limits are checked on.
  1. Per structure and per figure (confidence, kept fraction, largest cross-section's area fraction, the centroid's
     x and y in the body box), in each choosing cohort with good cases that measure the figure: k = floor(2% of
     them) may fall outside; a lower limit sits at the (k+1)-th lowest good value, an upper one at the (k+1)-th
     highest, rounded outwards (confidence to 0.005, kept fraction to 0.05, area to 0.005 below / 0.01 above,
     position to 0.05).
  2. Across the choosing cohorts, the most permissive of them (lowest lower limit, highest upper limit): a limit
     must hold on every cohort, not on their pool, so a large cohort cannot outvote a small one.
  3. A limit no choosing cohort can place (no good case measuring it) is left out of a fold; in the registry the
     existing value is kept and the report says it was not placed by this rule.
  4. Leave one cohort out: for each cohort, limits from the others (rules 1-3), flag rates on it. The registry
     gets the limits from all of a model's cohorts; the held-out test splits and the odd inputs are their check.
A case is flagged when any of its structures' figures is outside its limits (quality.check), as the engine does.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from LightSegLib import quality  # noqa: E402
from LightSegLib.errors import LightSegError  # noqa: E402
from LightSegLib.inference import segment_image  # noqa: E402
from LightSegLib.registry import ModelCard, get_model, list_models  # noqa: E402
from LightSegLib.lab.data.reader import listed_slices, negative_specs  # noqa: E402
from LightSegLib.lab.evaluate import (SHARED, check_slices, check_volume, slice_checks,  # noqa: E402
                                      split_slices, volume_checks)
from LightSegLib.lab.train.config import load_config  # noqa: E402
from LightSegLib.metrics import dice  # noqa: E402

# the shipped CT models' own configs: their splits of the 8-bit slice sets
CONFIGS = {"liver-ct": "configs/models/liver-ct.toml", "pancreas-ct": "configs/models/pancreas-ct.toml"}
SLICE_SET = {"liver-ct": "lits", "pancreas-ct": "nih"}
CHECKS = ("nih_test_8bit", "nih_test_true_hu", "lits_test_8bit")
GOOD = {"cardiac": 0.8}  # by task; 0.7 otherwise
BAD, VERY_BAD = 0.5, 0.3
OUTSIDE_SHARE = 0.02
CALIBRATION = ("python benchmarks/quality_calibration.py run --out runs/quality/cases.json --threads 1 && "
               "python benchmarks/quality_calibration.py report runs/quality/cases.json --write")
# figure -> (limit key, grid step)
GRID = {"confidence": 0.005, "kept_fraction": 0.05, "area_lo": 0.005, "area_hi": 0.01, "position": 0.05}


# ------------------------------------------------------------------ running the engine
def _rows(card, result, truth_by_value: dict, cohort: str, case: str) -> list[dict]:
    pred = sitk.GetArrayViewFromImage(result.labelmap)
    names = card.label_names()
    rows = []
    for v, truth in truth_by_value.items():
        figures = dict(result.quality["labels"][names[v]])
        if not card.postprocessing:
            figures["kept_fraction"] = None  # scattered slices: no 3D components to keep
        rows.append({"model": card.id, "cohort": cohort, "case": case, "label": names[v],
                     "dice": dice(pred == v, truth), "voxels": int((pred == v).sum()), "quality": figures,
                     "outside": result.quality.get("outside", [])})
    return rows


def flat(card) -> ModelCard:
    """The card without 3D post-processing nor a slice search: stacks of scattered slices are not neighbours."""
    return ModelCard({**card.entry, "postprocessing": {}, "input": {**card.entry["input"], "z_search": 0}},
                     card.folder)


def _stack(array) -> sitk.Image:
    return sitk.GetImageFromArray(np.ascontiguousarray(array))


def slice_cases(card, split: str, threads: int) -> list[dict]:
    """The card's 8-bit slice split, one case per patient / volume."""
    rows = []
    for name, image, label in split_slices(load_config(REPO / CONFIGS[card.id])["data"], split):
        if len(image):
            result = segment_image(_stack(image), flat(card), threads=threads)
            cohort = f"{SLICE_SET[card.id]}_{split}" + ("_8bit" if split == "test" else "")
            rows += _rows(flat(card), result, {1: label > 0}, cohort, name)
    return rows


def slice_check_cases(card, threads: int) -> list[dict]:
    """The true-HU slice checks of the card's organ (two NIH test patients for the pancreas)."""
    rows = []
    for check in slice_checks(card.task):
        for name, image, label in check_slices(check):
            result = segment_image(_stack(image), flat(card), threads=threads)
            rows += _rows(flat(card), result, {1: label > 0}, "nih_test_true_hu", name)
    return rows


def negative_cases(card, threads: int) -> list[dict]:
    """The held-out volumes of the model's reviewed organ-free slice lists: the truth is empty."""
    rows = []
    for spec in negative_specs(load_config(REPO / CONFIGS[card.id])["data"]):
        if "slices" in spec and int(spec.get("check", 0)):
            for name, image in listed_slices(spec, "check", REPO).items():
                result = segment_image(_stack(image.astype(np.int16)), flat(card), threads=threads)
                rows += _rows(flat(card), result, {1: np.zeros(image.shape, bool)}, "lits_negatives", name)
    return rows


def volume_cases(card, threads: int) -> list[dict]:
    rows = []
    for check in volume_checks(card.task):
        if check["image"].exists():
            image, reference = check_volume(check)
            result = segment_image(image, card, threads=threads)
            rows += _rows(card, result, {1: np.isin(reference, check["values"][card.task])}, "whole_volumes",
                          check["name"])
    return rows


def acdc_cases(card, split: str, threads: int) -> list[dict]:
    root = SHARED / "acdc"
    rows = []
    for item in json.loads((root / "dataset.json").read_text())[split]:
        image = sitk.ReadImage(str(root / item["image"]))
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(root / item["label"])))
        result = segment_image(image, card, threads=threads)
        rows += _rows(card, result, {v: truth == v for v in card.label_names()},
                      "acdc_val" if split == "validation" else "acdc_train", Path(item["image"]).name.split(".")[0])
    return rows


# ------------------------------------------------------------------ odd inputs, made from the real data
def _with(image: sitk.Image, array=None, spacing=None) -> sitk.Image:
    out = image if array is None else sitk.GetImageFromArray(array)
    if array is not None:
        out.CopyInformation(image)
    if spacing is not None:
        out = sitk.Image(out)
        out.SetSpacing([float(s) for s in spacing])
    return out


def _edge_crop(image: sitk.Image, reference: np.ndarray, size: int = 8):
    """An 8-voxel cube centred on the body's edge (the first voxel above -300 HU, or above the 5th percentile for
    MR, along the middle row of the middle slice, from the patient's right)."""
    array = sitk.GetArrayViewFromImage(image)
    z, y = array.shape[0] // 2, array.shape[1] // 2
    level = -300.0 if float(np.percentile(array, 1)) < -300 else float(np.percentile(array, 5))
    x = int(np.argmax(array[z, y] > level))
    lo = [max(0, min(c - size // 2, n - size)) for c, n in zip((x, y, z), image.GetSize())]
    hi = [a + size for a in lo]
    crop = image[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    return crop, reference[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]


def odd_inputs(card):
    """(name, image, {value: truth mask} or None where no reference exists on that grid, hu_offset) for the
    model: what a user may hand it that it was not made for."""
    names = card.label_names()
    ct_checks = {c["name"]: c for c in volume_checks() if c["image"].exists()}
    acdc = SHARED / "acdc" / "imagesTr" / "patient028_frame01.nii.gz"  # a validation patient
    acdc_label = sitk.GetArrayFromImage(sitk.ReadImage(str(SHARED / "acdc" / "labelsTr" / acdc.name)))
    mr = sitk.ReadImage(str(acdc))
    if card.modality == "CT":
        organ = card.task
        for name in ("totalseg_ct_3mm_vs_auto_v1", "s0009_1p5mm_vs_totalseg_v2", "ircadb17_vs_manual"):
            if name not in ct_checks:
                continue
            check = ct_checks[name]
            image, reference = check_volume(check)
            truth = {1: np.isin(reference, check["values"][organ])} if organ in check["values"] else None
            hu = np.clip(np.round(sitk.GetArrayFromImage(image)), -1024, None)
            coded = _with(image, (hu + 1024).astype(np.uint16))
            yield f"{name}: uint16, HU + 1024 without its rescale", coded, truth, None
            yield f"{name}: uint16 HU + 1024, hu_offset -1024", coded, truth, -1024.0
            crop, ref = _edge_crop(image, reference)
            crop_truth = {1: np.isin(ref, check["values"][organ])} if organ in check["values"] else None
            mm = " x ".join(f"{n * s:.0f}" for n, s in zip(crop.GetSize(), crop.GetSpacing()))
            yield f"{name}: 8-voxel crop at the body's edge ({mm} mm)", crop, crop_truth, None
        if "totalseg_ct_3mm_vs_auto_v1" in ct_checks:
            check = ct_checks["totalseg_ct_3mm_vs_auto_v1"]
            image, reference = check_volume(check)
            truth = {1: np.isin(reference, check["values"][organ])}
            yield "totalseg 3 mm CT, header voxel size 0.05 mm", _with(image, spacing=(0.05,) * 3), truth, None
            yield "totalseg 3 mm CT, header voxel size 30 mm", _with(image, spacing=(30.0,) * 3), truth, None
        if "ircadb17_vs_manual" in ct_checks and organ == "liver":
            check = ct_checks["ircadb17_vs_manual"]
            image, reference = check_volume(check)
            big = [s * 2.5 for s in image.GetSpacing()]
            yield (f"ircadb17, header voxel size x2.5 ({', '.join(f'{s:.2f}' for s in big)} mm)",
                   _with(image, spacing=big), {1: np.isin(reference, check["values"][organ])}, None)
        yield "ACDC cine MR (patient028 ED)", mr, None, None
        example_mr = SHARED / "totalseg_example" / "example_mr_sm.nii.gz"
        if example_mr.exists():
            yield "TotalSegmentator example MR", sitk.ReadImage(str(example_mr)), None, None
    else:
        for name in ("totalseg_ct_3mm_vs_auto_v1", "ircadb17_vs_manual"):
            if name in ct_checks:
                yield f"CT to the cardiac model: {name}", check_volume(ct_checks[name])[0], None, None
        truth = {v: acdc_label == v for v in names}
        yield "ACDC patient028 ED, header in-plane 0.05 mm", _with(mr, spacing=(0.05, 0.05, 10.0)), truth, None
        yield "ACDC patient028 ED, header in-plane 8 mm", _with(mr, spacing=(8.0, 8.0, 10.0)), truth, None
        crop, ref = _edge_crop(mr, acdc_label)
        yield "ACDC patient028 ED, 8-voxel crop (12 x 12 mm in-plane)", crop, {v: ref == v for v in names}, None


def odd_cases(card, threads: int) -> list[dict]:
    rows = []
    for name, image, truth, offset in odd_inputs(card):
        base = {"model": card.id, "cohort": "odd", "case": name}
        try:
            result = segment_image(image, card, threads=threads, hu_offset=offset)
        except LightSegError as error:
            rows.append({**base, "label": "-", "dice": None, "voxels": 0, "quality": {}, "outside": [],
                         "refused": str(error)})
            continue
        pred = sitk.GetArrayViewFromImage(result.labelmap)
        for value, label in card.label_names().items():
            found = int((pred == value).sum())
            score = dice(pred == value, truth[value]) if truth is not None else None
            rows.append({**base, "label": label, "voxels": found, "quality": result.quality["labels"][label],
                         "outside": result.quality.get("outside", []), "engine_flag": result.quality["flag"],
                         "reasons": result.quality["reasons"],
                         "dice": None if score is None or math.isnan(score) else score})
    return rows


def run(args) -> int:
    rows = []
    for card in list_models():
        if (args.models and card.id not in args.models) or card.task == "classification":
            continue
        if card.task == "cardiac":
            for split in ("validation", "training"):
                rows += acdc_cases(card, split, args.threads)
        elif card.id in CONFIGS:
            for split in ("val", "train", "test"):
                rows += slice_cases(card, split, args.threads)
            rows += negative_cases(card, args.threads)
            rows += volume_cases(card, args.threads)
            rows += slice_check_cases(card, args.threads)
        rows += odd_cases(card, args.threads)
        print(f"{card.id}: {sum(r['model'] == card.id for r in rows)} rows", file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


# ------------------------------------------------------------------ the rule
def _good(row) -> bool:
    return row["dice"] is not None and row["dice"] >= GOOD.get(get_model(row["model"]).task, 0.7)


def _round(value: float, step: float, up: bool) -> float:
    q = value / step
    return round((math.ceil(q - 1e-9) if up else math.floor(q + 1e-9)) * step, 4)


def _edge(values: list[float], low: bool) -> float | None:
    """The (k+1)-th most extreme of one cohort's good values, k = floor(2% of them)."""
    if not values:
        return None
    k = int(OUTSIDE_SHARE * len(values))
    return sorted(values, reverse=not low)[k]


def _figures(row) -> dict[str, float]:
    q = row["quality"]
    out = {k: q[k] for k in ("confidence", "kept_fraction") if q.get(k) is not None}
    if q.get("area_fraction") is not None:
        out["area_fraction"] = q["area_fraction"]
    if q.get("position") is not None:
        out["x"], out["y"] = q["position"]
    return out


def choose(rows: list[dict]) -> dict[str, dict]:
    """Limits per structure from the good cases of ``rows`` (rules 1-3): {label: limits}."""
    limits: dict[str, dict] = {}
    for label in dict.fromkeys(r["label"] for r in rows):  # the card's order
        per_cohort: dict[str, dict[str, list]] = {}
        for r in rows:
            if r["label"] == label and _good(r):
                for k, v in _figures(r).items():
                    per_cohort.setdefault(r["cohort"], {}).setdefault(k, []).append(v)

        def lower(key, step):
            edges = [_edge(c[key], True) for c in per_cohort.values() if c.get(key)]
            return _round(min(edges), step, False) if edges else None

        def upper(key, step):
            edges = [_edge(c[key], False) for c in per_cohort.values() if c.get(key)]
            return _round(max(edges), step, True) if edges else None

        out = {}
        if (v := lower("confidence", GRID["confidence"])) is not None:
            out["min_confidence"] = v
        if (v := lower("kept_fraction", GRID["kept_fraction"])) is not None:
            out["min_kept_fraction"] = v
        area = lower("area_fraction", GRID["area_lo"]), upper("area_fraction", GRID["area_hi"])
        if None not in area:
            out["area_fraction"] = list(area)
        box = [lower(a, GRID["position"]) for a in "xy"], [upper(a, GRID["position"]) for a in "xy"]
        if None not in box[0] + box[1]:
            out["position"] = [[box[0][0], box[1][0]], [box[0][1], box[1][1]]]
        limits[label] = out
    return limits


def flags(row: dict, limits: dict[str, dict]) -> list[str]:
    return quality.check(row["label"], row["quality"], limits.get(row["label"], {})) if row["voxels"] else []


def registry_limits(model: str) -> dict[str, dict]:
    return (get_model(model).entry.get("quality") or {}).get("labels", {})


# ------------------------------------------------------------------ the report
def _rate(rows: list[dict], limits) -> str:
    n = sum(bool(flags(r, limits)) for r in rows)
    return f"{n}/{len(rows)}" if rows else "-"


def _volume_rate(rows: list[dict], limits, good: bool) -> str:
    """Per volume (all structures together): good = every structure good; flagged = any structure flagged."""
    cases: dict[str, list] = {}
    for r in rows:
        cases.setdefault(r["case"], []).append(r)
    chosen = [c for c in cases.values() if all(_good(r) for r in c) == good
              and (good or any(r["dice"] < BAD for r in c))]
    n = sum(any(flags(r, limits) for r in c) for c in chosen)
    return f"{n}/{len(chosen)}" if chosen else "-"


def rates_line(rows: list[dict], limits) -> str:
    scored = [r for r in rows if r["dice"] is not None and not math.isnan(r["dice"])]
    good = [r for r in scored if _good(r)]
    bad = [r for r in scored if r["dice"] < BAD]
    worst = [r for r in scored if r["dice"] < VERY_BAD]
    line = (f"good flagged {_rate(good, limits):>7s}   bad (<{BAD}) flagged {_rate(bad, limits):>6s}   "
            f"(<{VERY_BAD}) {_rate(worst, limits):>6s}")
    if len({r['label'] for r in rows}) > 1:
        line += (f"   volumes: all-good flagged {_volume_rate(scored, limits, True)}, "
                 f"any-bad flagged {_volume_rate(scored, limits, False)}")
    return line


def _fmt(limits: dict[str, dict]) -> str:
    return "; ".join(f"{label}: " + ", ".join(f"{k} {v}" for k, v in lim.items()) for label, lim in limits.items())


def verdict(rows: list[dict]) -> str:
    first = rows[0]
    if "refused" in first:
        return "refused: " + first["refused"]
    found = ", ".join(f"{r['label']} {r['voxels']}" + (f" (Dice {r['dice']:.2f})" if r["dice"] is not None else "")
                      for r in rows)
    word = "flagged" if first["engine_flag"] else "OK"
    why = f": {'; '.join(first['reasons'])}" if first["engine_flag"] else ""
    return f"{word} [voxels {found}]{why}"


def odd_report(rows: list[dict]) -> None:
    cases: dict[str, list] = {}
    for r in rows:
        cases.setdefault(r["case"], []).append(r)
    for name, group in cases.items():
        print(f"    {name}: {verdict(group)}")


def final_limits(model: str, rows: list[dict]) -> tuple[dict, list[str]]:
    """Rules 1-3 on every choosing cohort; a limit the rule cannot place keeps the registry's value."""
    chosen = choose([r for r in rows if r["cohort"] not in CHECKS and r["cohort"] != "odd"])
    kept = []
    for label, old in registry_limits(model).items():
        for key, value in old.items():
            if key not in chosen.setdefault(label, {}):
                chosen[label][key] = value
                kept.append(f"{label} {key}")
    order = ("min_confidence", "min_kept_fraction", "area_fraction", "position")
    return {label: {k: lim[k] for k in order if k in lim} for label, lim in chosen.items()}, kept


def report(args) -> int:
    rows = json.loads(Path(args.cases).read_text())
    for r in rows:
        if r["dice"] is not None and math.isnan(r["dice"]):
            r["dice"] = None  # nothing in the truth nor the prediction
    new_blocks = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        odd = [r for r in mine if r["cohort"] == "odd"]
        cases = [r for r in mine if r["cohort"] != "odd"]
        cohorts = list(dict.fromkeys(r["cohort"] for r in cases))
        choosing = [c for c in cohorts if c not in CHECKS]
        final, kept = final_limits(model, cases)
        new_blocks[model] = final
        before = registry_limits(model)
        print(f"\n== {model}  (good: Dice >= {GOOD.get(get_model(model).task, 0.7)}; per structure)")
        print(f"  registry limits: {_fmt(before)}")
        print("  leave one cohort out (limits from the other cohorts; the left-out one checked):")
        for left in choosing:
            limits = choose([r for r in cases if r["cohort"] in choosing and r["cohort"] != left])
            here = [r for r in cases if r["cohort"] == left]
            print(f"    {left:16s} {rates_line(here, limits)}")
            print(f"    {'':16s} limits from {', '.join(c for c in choosing if c != left)}: {_fmt(limits) or 'none'}")
        print(f"  limits from all choosing cohorts: {_fmt(final)}"
              + (f" (kept from the registry, not placed by the rule: {', '.join(kept)})" if kept else ""))
        for title, limits in (("registry (before)", before), ("rule (after)", final)):
            print(f"  {title}:")
            for cohort in cohorts:
                here = [r for r in cases if r["cohort"] == cohort]
                outside = len({r["case"] for r in here if r["outside"]})
                tag = "check " if cohort in CHECKS else "chosen"
                print(f"    [{tag}] {cohort:16s} {rates_line(here, limits)}   input check: "
                      f"{outside}/{len({r['case'] for r in here})} cases")
        print("  odd inputs (the engine's verdict with the registry as it is):")
        odd_report(odd)
    if args.write:
        write(new_blocks)
    return 0


def write(blocks: dict[str, dict]) -> None:
    """The chosen limits into the registry through the workshop's writer, and the cards that show them."""
    from LightSegLib.lab.publish.cards import refresh_card
    from LightSegLib.lab.publish.writer import update_model
    from LightSegLib.registry import models_dir

    for model, limits in blocks.items():
        entry = get_model(model).entry
        if (entry.get("quality") or {}).get("labels") != limits:
            update_model(model, quality={"labels": limits, "calibration": CALIBRATION})
            print(f"{model}: quality limits written; card re-rendered: {refresh_card(model, models_dir())}")


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
    p.add_argument("--write", action="store_true", help="put the rule's limits into the registry (its writer)")
    p.set_defaults(func=report)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
