"""What a one-pixel outline error costs in IoU, per structure, with no model: each tuning-set object's true mask
against itself moved by one pixel (the mean of the four directions) and against its one-pixel dilation. Read beside
NoC@85: where moving the truth by a pixel already falls below 0.85, the target asks for sub-pixel agreement.

    .venv/bin/python benchmarks/one_pixel.py
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

from LightSegLib.lab.interactive.clicker import iou
from LightSegLib.lab.interactive.data import BENCHMARK, object_mask, tuning_slices
from LightSegLib.lab.train.config import read_toml
from clicks import pick


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/models/click-refine.toml")
    parser.add_argument("--limit", type=int, default=40, help="objects per structure, as the tuning set")
    args = parser.parse_args(argv)
    part = tuning_slices(read_toml(Path(args.config)))
    for name in BENCHMARK:
        rows = []
        for i in pick(part, name, args.limit):
            gt = object_mask(part[i], name)
            moved = np.mean([iou(np.roll(gt, d, axis=a), gt) for a in (0, 1) for d in (1, -1)])
            rows.append((gt.sum(), moved, iou(ndimage.binary_dilation(gt), gt)))
        r = np.array(rows, float)
        print(f"{name:10s} {len(r)} objects, median {np.median(r[:, 0]):.0f} px | moved 1 px: median IoU "
              f"{np.median(r[:, 1]):.3f}, below 0.85 for {np.mean(r[:, 1] < 0.85):.0%} | grown 1 px: median "
              f"{np.median(r[:, 2]):.3f}, below 0.85 for {np.mean(r[:, 2] < 0.85):.0%}")


if __name__ == "__main__":
    main()
