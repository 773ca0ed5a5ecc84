"""A whole volume from a few clicks: the benchmark's clicker on one or three slices of an object, then propagation as
`lightseg refine --propagate` does, scored in 3D: does propagation follow the object and stop where it ends?

Volumes: TotalSegmentator subject s0009 (never trained on; non-contrast, a fatty pancreas: pancreas and liver), and two
whose slices the click net trained on (``--part training``: the IRCADb 17 liver, every third slice of it trained on;
the TotalSegmentator example's liver and pancreas, a model's labels, 3 mm), where propagation's rules are worked out.
Seed slices: the middle of the object's z-range (one seed), or also the slices at 1/6 and 5/6 of it (three). On each
the clicker clicks until IoU 0.85 or ``--clicks`` clicks. A handful of volumes: examples of what a user gets.

    .venv/bin/python benchmarks/volume_clicks.py [--part training] [--every-structure] [--model X.onnx] [--threads 2]
        [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from LightSegLib.commands.refine import propagate_from
from LightSegLib.interactive import InteractiveSession
from LightSegLib.lab.interactive.clicker import dice, iou, next_click
from LightSegLib.lab.train.config import read_toml
from LightSegLib.machine import machine, machine_line

# (name, the config's data entry, image file, labels file under it, {structure: label value})
VOLUMES = {
    "held-out": [("s0009", "s0009", "ct.nii.gz", "seg.nii.gz", {"pancreas": 7, "liver": 5})],  # v2 ids (README)
    "training": [("ircadb17", "ircadb", "imagesTr/ircadb1_17.nii.gz", "labelsTr/ircadb1_17.nii.gz", {"liver": 1}),
                 ("totalseg example", "totalseg", "example_ct.nii.gz", "example_seg_v1_full_5de6e4d.nii.gz",
                  {"pancreas": 10, "liver": 5})],  # v1 ids (map_to_binary.py.txt)
}


def seeds(obj: np.ndarray, count: int) -> list[int]:
    zs = np.flatnonzero(obj.reshape(len(obj), -1).any(1))
    lo, hi = int(zs.min()), int(zs.max())
    fractions = [0.5] if count == 1 else [1 / 6, 0.5, 5 / 6]
    return [int(round(lo + f * (hi - lo))) for f in fractions]


def run(image: sitk.Image, obj: np.ndarray, seed_slices: list[int], model, threads: int, max_clicks: int) -> dict:
    session = InteractiveSession(image, model=model, threads=threads)
    t = time.perf_counter()
    clicks = 0
    for z in seed_slices:
        for _ in range(max_clicks):
            mask = session.mask[z].astype(bool)
            if mask.any() and iou(mask, obj[z]) >= 0.85:
                break
            nxt = next_click(mask, obj[z])
            if nxt is None:
                break
            (y, x), positive = nxt
            session.click((x, y, z), positive)
            clicks += 1
    runs = propagate_from(session, seed_slices)
    seconds = time.perf_counter() - t
    result = session.mask.astype(bool)
    spans = [np.flatnonzero(m.reshape(len(m), -1).any(1)) for m in (obj, result)]
    return {"seed_slices": seed_slices, "clicks": clicks, "dice": round(dice(result, obj), 3),
            "seed_slice_iou": [round(iou(result[z], obj[z]), 3) for z in seed_slices],
            "object_slices": [int(spans[0].min()), int(spans[0].max())],
            "result_slices": [int(spans[1].min()), int(spans[1].max())] if spans[1].size else None,
            "seconds": round(seconds, 2), "propagation": runs}


def every_structure(image, labels: np.ndarray, catalogued: set, model, threads: int, max_clicks: int) -> dict:
    """Each label value not in the catalogue whose object spans >= 5 slices and holds its middle slice, 1 seed: the
    volume's other structures, beyond the few objects propagation's rules were worked out on (on s0009, never seen
    before its clipping rule was written)."""
    dices = {}
    for value in sorted(set(np.unique(labels).tolist()) - {0} - catalogued):
        obj = labels == value
        zs = np.flatnonzero(obj.reshape(len(obj), -1).any(1))
        if len(zs) >= 5 and obj[seeds(obj, 1)[0]].any():
            dices[int(value)] = run(image, obj, seeds(obj, 1), model, threads, max_clicks)["dice"]
    return {"dice": dices, "mean_dice": round(float(np.mean(list(dices.values()))), 4)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="an ONNX file; default the registered click-refine")
    parser.add_argument("--config", default="configs/models/click-refine.toml")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clicks", type=int, default=5, help="clicks at most per seed slice")
    parser.add_argument("--part", choices=tuple(VOLUMES), default="held-out")
    parser.add_argument("--every-structure", action="store_true",
                        help="also every other labelled structure spanning >= 5 slices, from 1 seed (its mean Dice)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    data = read_toml(Path(args.config))["data"]
    report = {"part": args.part, "model": args.model or "registered click-refine", "threads": args.threads,
              "machine": machine_line(machine(), args.threads), "volumes": {}}
    for volume, entry, image_file, label_file, structures in VOLUMES[args.part]:
        root = Path(data[entry])
        image = sitk.DICOMOrient(sitk.ReadImage(str(root / image_file)), "LPS")
        labels = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(root / label_file)), "LPS"))
        for name, value in structures.items():
            obj = labels == value
            result = {f"{n} seed": run(image, obj, seeds(obj, n), args.model, args.threads, args.clicks)
                      for n in (1, 3)}
            report["volumes"].setdefault(volume, {})[name] = result
            print(volume, name, json.dumps(result), flush=True)
        if args.every_structure:
            others = every_structure(image, labels, set(structures.values()), args.model, args.threads, args.clicks)
            report.setdefault("every_structure", {})[volume] = others
            print(volume, "every other structure, 1 seed: mean Dice", others["mean_dice"], f"({len(others['dice'])})")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
