"""Clicks as users spend them: a deterministic clicker drives InteractiveSession on held-out patients.

First click at the object's deepest point, each next one at the deepest point of the larger error (positive
for a missed part, negative for a false one), up to 20 clicks per object. Reports Dice after 1/3/5 clicks,
NoC@85/90 (clicks to reach IoU 0.85/0.90; 20 when never reached; NoC@85 per object too, with a 95% bootstrap
interval of its mean over patients), failures (IoU 0.85 never reached), for
the issue's structures on held-out patients and, on TotalSegmentator subject s0009 (never trained on), for the
structures left out of training beside trained ones of the same volume, against a non-learned baseline: seeded region growing
from the same clicker (the union of SimpleITK ConfidenceConnected regions, one per positive click; where the
region grown from the negatives overlaps it, each pixel goes to its nearest click). Also the time per click,
and slice propagation on the held-out ACDC volumes. The session runs as users get it (each answer the mean over
the window's four phases and their mirror images), unless ``--no-shift`` / ``--no-flip``.

    .venv/bin/python benchmarks/clicks.py --model runs/click/click-refine.onnx --threads 2 [--limit 100] [--json out.json]

``--part tuning`` runs the net alone on training patients' objects instead (the tuning set: 20 ACDC, 10 LiTS and 10
NIH training patients spread over their ids, 40 objects per structure) and reports its mean NoC@85 over the issue's structures:
runtime settings and training candidates are compared there, by a rule written first, before the held-out run.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from LightSegLib.interactive import InteractiveSession
from LightSegLib.machine import machine, machine_line
from LightSegLib.lab.interactive.clicker import dice, iou, next_click
from LightSegLib.lab.bootstrap import group_draws
from LightSegLib.lab.train.config import read_toml
from LightSegLib.lab.interactive.data import (BENCHMARK, LABELS, S0009, TUNING, load_slices, object_mask, objects,
                                             tuning_slices)

MAX_CLICKS = 20


class RegionGrowing:
    """The baseline: intensity region growing from the clicks, no learning."""

    def __init__(self, image2d: np.ndarray):
        self.image = sitk.GetImageFromArray(image2d.astype(np.float32))
        self.positives, self.negatives = [], []

    def _grow(self, seeds) -> np.ndarray:
        """The union of one region per click, so a click at a border pixel cannot widen every region's range;
        a region that floods a quarter of the image is dropped (the leak a user would undo)."""
        out = np.zeros(self.image.GetSize()[::-1], bool)
        for y, x in seeds:
            region = sitk.GetArrayFromImage(sitk.ConfidenceConnected(
                self.image, seedList=[(int(x), int(y))], numberOfIterations=2, multiplier=2.5,
                initialNeighborhoodRadius=2, replaceValue=1)).astype(bool)
            out |= region if region.mean() < 0.25 else False
        return out

    def click(self, index_ijk, positive=True) -> np.ndarray:
        (self.positives if positive else self.negatives).append((index_ijk[1], index_ijk[0]))
        mask = self._grow(self.positives)
        if self.negatives:  # where both regions grow, each pixel goes to its nearest click
            shared = mask & self._grow(self.negatives)
            yx = np.argwhere(shared)
            near_pos = np.min([np.hypot(*(yx - p).T) for p in self.positives], axis=0)
            near_neg = np.min([np.hypot(*(yx - n).T) for n in self.negatives], axis=0)
            mask[tuple(yx[near_neg < near_pos].T)] = False
        return mask[None].astype(np.uint8)


def run_clicker(tool, gt: np.ndarray, times: list | None = None) -> list[float]:
    """IoU after each click (index 0 = after the first click); stops early at IoU 0.95 or an exact mask."""
    pred = np.zeros_like(gt)
    ious = []
    for _ in range(MAX_CLICKS):
        nxt = next_click(pred, gt)
        if nxt is None:
            break
        (y, x), positive = nxt
        t = time.perf_counter()
        pred = tool.click((x, y, 0), positive)[0].astype(bool)
        if times is not None:
            times.append(time.perf_counter() - t)
        ious.append(iou(pred, gt))
        if ious[-1] >= 0.95:
            break
    return ious


def summarise(curves: list[tuple[list[float], str]]) -> dict:
    """``curves``: (IoU after each click, the patient the object belongs to) per object."""
    def at(ious, k):  # IoU after k clicks; the clicker stops once good, so later clicks keep the last value
        return ious[min(k, len(ious)) - 1] if ious else 0.0

    def noc(ious, target):
        return next((i + 1 for i, v in enumerate(ious) if v >= target), MAX_CLICKS)

    def dice_of(v):
        return 2 * v / (1 + v)

    ious = [c for c, _ in curves]
    per_object = [noc(c, 0.85) for c in ious]
    patients = [p for _, p in curves]
    return {
        "objects": len(curves),
        **{f"dice@{k}": round(float(np.mean([dice_of(at(c, k)) for c in ious])), 3) for k in (1, 3, 5)},
        "noc@85": round(float(np.mean(per_object)), 2),
        "noc@85_95ci": interval(per_object, patients),
        "noc@90": round(float(np.mean([noc(c, 0.90) for c in ious])), 2),
        "failures@85": round(float(np.mean([max(c, default=0) < 0.85 for c in ious])), 3),
        "noc@85_per_object": per_object,
        "patient_per_object": patients,
    }


def interval(values: list, patients: list, draws: int = 2000) -> list[float] | None:
    """A 95% bootstrap interval of the mean (fixed seed) that resamples patients, not objects: slices of one patient
    are alike, so how far the figure could move with other patients is what a target a few tenths away should be
    read against. None from a single patient (s0009), which says nothing of other patients."""
    if len(np.unique(patients)) < 2:
        return None
    values = np.asarray(values, float)
    means = [values[idx].mean() for idx in group_draws(patients, draws)]
    return [round(float(v), 2) for v in np.percentile(means, [2.5, 97.5])]


LIMITS = {"held-out": 100, "tuning": 40}  # objects per structure, unless --limit (100: 0.3.1's 40 proved within noise)


def part_slices(cfg: dict, part: str) -> tuple[list, list]:
    """The slices whose objects a part measures, and s0009's (the held-out part's left-out comparison; none when
    tuning)."""
    if part == "tuning":
        return tuning_slices(cfg), []
    slices = load_slices(cfg, "test")
    return [s for s in slices if s.source != "s0009"], [s for s in slices if s.source == "s0009"]


def pick(slices, structure: str, limit: int) -> list[int]:
    """Up to ``limit`` objects spread evenly over the list (NIH: only the unzoomed full slices)."""
    found = [i for i, _ in objects(slices, [structure]) if slices[i].full_view]
    if len(found) <= limit:
        return found
    return [found[int(k)] for k in np.linspace(0, len(found) - 1, limit).round()]


def propagation(model, threads: int, cfg: dict, views: dict) -> dict:
    """LV on each held-out ACDC volume: the true mask on the middle slice, propagated both ways."""
    from LightSegLib.lab.data.msd import read_split

    dices, rates = [], []
    for entry in read_split(Path(cfg["data"]["acdc"]), "validation"):
        image = sitk.ReadImage(entry["image"])
        lv = sitk.GetArrayFromImage(sitk.ReadImage(entry["label"])) == LABELS["acdc"]["lv"]
        zs = np.flatnonzero(lv.reshape(len(lv), -1).any(1))
        mid = int(zs[len(zs) // 2])
        seed = np.zeros_like(lv)
        seed[mid] = lv[mid]
        session = InteractiveSession(image, model=model, threads=threads, **views)
        session.start_from(seed)
        t = time.perf_counter()
        session.propagate(1)
        mask = session.propagate(-1, start=mid).astype(bool)
        done = mask.reshape(len(mask), -1).any(1).sum() - 1
        rates.append(done / max(time.perf_counter() - t, 1e-9))
        others = [z for z in range(len(lv)) if z != mid]
        dices.append(dice(mask[others], lv[others]))
    return {"volumes": len(dices), "lv_dice_other_slices": round(float(np.mean(dices)), 3),
            "slices_per_second": round(float(np.median(rates)), 1)}


def tuning(args, cfg: dict, views: dict) -> dict:
    """The net alone on the tuning set's objects (training patients): where candidates are compared before the
    held-out benchmark runs once; no baseline, no s0009, no propagation."""
    part, _ = part_slices(cfg, "tuning")
    report = {"model": args.model, "part": "tuning", "patients": TUNING, "threads": args.threads,
              "limit": args.limit, "machine": machine_line(machine(), args.threads), **views, "structures": {}}
    for name in BENCHMARK:
        curves = []
        for i in pick(part, name, args.limit):
            s = part[i]
            session = InteractiveSession(sitk.GetImageFromArray(s.image.astype(np.float32)), model=args.model,
                                         threads=args.threads, **views)
            curves.append((run_clicker(session, object_mask(s, name)), s.patient))
        report["structures"][name] = {"clicks": summarise(curves)}
        print(name, json.dumps(report["structures"][name]), flush=True)
    report["mean_noc@85"] = round(float(np.mean([v["clicks"]["noc@85"] for v in report["structures"].values()])), 3)
    print(json.dumps({"mean_noc@85": report["mean_noc@85"]}))
    return report


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--config", default="configs/models/click-refine.toml")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--part", choices=("held-out", "tuning"), default="held-out",
                        help="tuning: training patients' objects, for comparing candidates before the held-out run")
    parser.add_argument("--limit", type=int,
                        help=f"objects per structure (up to; default {LIMITS})")
    parser.add_argument("--json")
    parser.add_argument("--no-flip", dest="flip", action="store_false",
                        help="no mean with the mirror image's answer")
    parser.add_argument("--no-shift", dest="shift", action="store_false",
                        help="the window alone, not the mean over its four phases (moved by one crop pixel)")
    args = parser.parse_args(argv)
    cfg = read_toml(Path(args.config))
    views = {"flip": args.flip, "shift": args.shift}
    if args.limit is None:
        args.limit = LIMITS[args.part]
    if args.part == "tuning":
        report = tuning(args, cfg, views)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
        return report
    report = {"model": args.model, "threads": args.threads, "limit": args.limit,
              "machine": machine_line(machine(), args.threads), **views,
              "left_out": cfg["data"].get("left_out", []), "structures": {}}
    times = []
    held_out, volume = part_slices(cfg, "held-out")
    runs = [(name, name, held_out) for name in BENCHMARK] + [(f"s0009 {name}", name, volume) for name in S0009]
    for key, name, part in runs:
        learned, baseline = [], []
        for i in pick(part, name, args.limit):
            s, gt = part[i], object_mask(part[i], name)
            image = sitk.GetImageFromArray(s.image.astype(np.float32))
            session = InteractiveSession(image, model=args.model, threads=args.threads, **views)
            learned.append((run_clicker(session, gt, times), s.patient))
            baseline.append((run_clicker(RegionGrowing(s.image), gt), s.patient))
        report["structures"][key] = {"clicks": summarise(learned), "region_growing": summarise(baseline),
                                     "left_out": name in report["left_out"]}
        print(key, json.dumps(report["structures"][key]), flush=True)
    on_volume = {k: v for k, v in report["structures"].items() if k.startswith("s0009 ")}
    report["left_out_vs_trained"] = {
        side: round(float(np.median([v["clicks"]["noc@85"] for v in on_volume.values() if v["left_out"] == out])), 2)
        for side, out in (("left_out_noc@85", True), ("trained_noc@85", False))}
    report["seconds_per_click"] = {"median": round(float(np.median(times)), 4),
                                   "p95": round(float(np.percentile(times, 95)), 4)}
    report["propagation"] = propagation(args.model, args.threads, cfg, views)
    print(json.dumps({k: report[k] for k in ("left_out_vs_trained", "seconds_per_click", "propagation")}))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
