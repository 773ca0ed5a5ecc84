"""The Slicer effect's and web app's click controller (LightSegLogic.SegmentClicks) on a large scene: how long making
the controller, the first click and the next ones take (the controller's call, then writing the result back, apart:
in Slicer the editor writes it), with the shipped click model, on a real MRML scene (`slicer-core`). The scene is synthetic: a 512 x 512 x 300 CT-like volume and 40 segments imported from one labelmap
(one shared layer), plus a new, empty segment that the clicks refine; each click is written back as the web app does.

    .venv/bin/python benchmarks/segment_clicks.py [--runs 4]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "Testing"), str(REPO / "LightSeg")]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args(argv)
    from _pytest.monkeypatch import MonkeyPatch
    from slicer_scene import real_scene

    next(real_scene(MonkeyPatch()))  # a real scene installed as slicer.mrmlScene, with the module logics
    import slicer
    from LightSegLib.machine import machine, machine_line
    from LightSegLogic import SegmentClicks

    rng = np.random.default_rng(0)
    shape = (300, 512, 512)
    ct = rng.normal(40, 20, shape).astype(np.int16)
    ct[:, 100:400, 100:400] += 60
    volume = slicer.util.addVolumeFromArray(ct, name="ct")
    label = np.zeros(shape, np.uint8)
    for k in range(40):
        z0, y0, x0 = 7 * k, 40 + 10 * (k % 40), 40 + 10 * ((k * 7) % 40)
        label[z0:z0 + 20, y0:y0 + 30, x0:x0 + 30] = k + 1
    labelmap = slicer.util.addVolumeFromArray(label, nodeClassName="vtkMRMLLabelMapVolumeNode")
    labelmap.CopyOrientation(volume)
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    target = segmentation.GetSegmentation().AddEmptySegment("refined")
    print(machine_line(machine(), 2), flush=True)
    for run in range(args.runs):
        t = time.perf_counter()
        clicks = SegmentClicks(volume, segmentation, target)
        made = time.perf_counter() - t
        click_s, write_s = [], []
        for ijk in ((250, 250, 150), (260, 250, 150), (270, 250, 151)):
            t = time.perf_counter()
            labelmap = clicks.click(ijk)
            click_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            clicks.write(labelmap)
            write_s.append(time.perf_counter() - t)
        print(f"run {run}: controller made in {made:.2f} s; clicks " + ", ".join(f"{v:.2f}" for v in click_s)
              + " s; each written back in " + ", ".join(f"{v:.2f}" for v in write_s) + " s", flush=True)


if __name__ == "__main__":
    main()
