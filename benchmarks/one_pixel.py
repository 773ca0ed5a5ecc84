"""What a one-pixel outline error costs in IoU, per structure, with no model: each object's true mask against itself
moved by one pixel (the mean of the four directions) and against its one-pixel dilation, on the tuning set's objects
or the held-out benchmark's (labels only: nothing is tuned on them). Read beside NoC@85: where moving the truth by a
pixel already falls below 0.85, the target asks for sub-pixel agreement. With ``--bench`` (a held-out report of
clicks.py with the same limit) each structure's NoC@85 is split by that test, object by object.

    .venv/bin/python benchmarks/one_pixel.py [--part held-out [--bench runs/click9/bench-100.json]]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from LightSegLib.lab.interactive.clicker import iou
from LightSegLib.lab.interactive.data import BENCHMARK, object_mask
from LightSegLib.lab.train.config import read_toml
from clicks import LIMITS, MAX_CLICKS, part_slices, pick


def moved_iou(gt: np.ndarray) -> float:
    return float(np.mean([iou(np.roll(gt, d, axis=a), gt) for a in (0, 1) for d in (1, -1)]))


def split(noc: np.ndarray, hard: np.ndarray) -> str:
    def part(keep):
        if not keep.any():
            return "none"
        return f"{keep.sum()} objects, NoC@85 {noc[keep].mean():.2f}, failures {np.mean(noc[keep] >= MAX_CLICKS):.0%}"
    return f"NoC@85 {noc.mean():.2f} | one pixel keeps IoU >= 0.85: {part(~hard)} | it does not: {part(hard)}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/models/click-refine.toml")
    parser.add_argument("--part", choices=tuple(LIMITS), default="tuning")
    parser.add_argument("--limit", type=int, help=f"objects per structure (default as clicks.py: {LIMITS})")
    parser.add_argument("--bench", help="clicks.py's held-out JSON report of the same objects")
    args = parser.parse_args(argv)
    cfg = read_toml(Path(args.config))
    part, _ = part_slices(cfg, args.part)
    limit = args.limit or LIMITS[args.part]
    bench = json.loads(Path(args.bench).read_text()) if args.bench else None
    if bench and (args.part != "held-out" or bench.get("limit") != limit):
        parser.error(f"--bench needs --part held-out and the report's limit ({bench.get('limit')})")
    for name in BENCHMARK:
        idx = pick(part, name, limit)
        masks = [object_mask(part[i], name) for i in idx]
        moved = np.array([moved_iou(m) for m in masks])
        grown = np.array([iou(ndimage.binary_dilation(m), m) for m in masks])
        print(f"{name:10s} {len(idx)} objects, median {np.median([m.sum() for m in masks]):.0f} px | moved 1 px: "
              f"median IoU {np.median(moved):.3f}, below 0.85 for {np.mean(moved < 0.85):.0%} | grown 1 px: median "
              f"{np.median(grown):.3f}, below 0.85 for {np.mean(grown < 0.85):.0%}")
        if bench:
            clicks = bench["structures"][name]["clicks"]
            patients = clicks.get("patient_per_object")  # older reports: only the count can be checked
            if len(clicks["noc@85_per_object"]) != len(idx) or patients not in (None, [part[i].patient for i in idx]):
                raise SystemExit(f"{args.bench}: its {name} objects are not these (another config or data)")
            print(f"{'':10s} {split(np.array(clicks['noc@85_per_object']), moved < 0.85)}")


if __name__ == "__main__":
    main()
