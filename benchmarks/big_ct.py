"""End-to-end time and peak memory of `lightseg segment` on a 512x512x300 CT, each run in its own process.

The CT is made by stacking the real 20-slice TotalSegmentator DICOM series 15 times (HU, 0.977 mm, 2 mm step).
With no --model, an analytic stand-in model (a 1x1 convolution, see Testing/model_fixtures.py) in `fit` mode
(256x256) measures the engine's own overhead: reading, resampling, argmax, post-processing, writing.

    .venv/bin/python benchmarks/big_ct.py [--model ID] [--threads 2] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parent.parent
DICOM = REPO.parent / "shared" / "data" / "totalseg_example" / "example_ct_dicom"

MEASURE = r"""
import resource, subprocess, sys, time
t = time.perf_counter()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
wall = time.perf_counter() - t
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"{wall} {peak_kb} {proc.returncode}")
sys.stderr.write(proc.stderr)
"""


def make_ct(path: Path) -> None:
    import LightSegLib as L

    series = L.read_image(DICOM)
    array = sitk.GetArrayFromImage(series)
    stack = np.concatenate([array] * 15, axis=0)
    image = sitk.GetImageFromArray(stack)
    image.SetSpacing(series.GetSpacing())
    image.SetOrigin(series.GetOrigin())
    image.SetDirection(series.GetDirection())
    sitk.WriteImage(image, str(path), True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ct = tmp / "ct512x512x300.nrrd"
        make_ct(ct)
        env = dict(os.environ)
        model = args.model
        if model is None:
            sys.path.insert(0, str(REPO / "Testing"))
            from model_fixtures import make_model_folder

            folder = make_model_folder(tmp / "models", num_classes=2, inplane={"mode": "fit", "size": [256, 256]},
                                       postprocessing={"largest_component": [1], "fill_holes": [1]},
                                       normalization={"type": "window", "window": [0, 255]})
            env["LIGHTSEG_MODELS_DIR"] = str(folder)
            model = "test-quantiser"
        walls, peaks = [], []
        for i in range(args.repeat):
            out = tmp / f"out{i}.nii.gz"
            cmd = [sys.executable, "-c", MEASURE, sys.executable, "-m", "LightSegLib.cli", "segment", "--model", model,
                   "--threads", str(args.threads), "--progress", "none", str(ct), str(out)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
            wall, peak_kb, code = proc.stdout.split()
            if code != "0":
                print(proc.stderr, file=sys.stderr)
                return 1
            walls.append(float(wall))
            peaks.append(int(peak_kb) / 1024)
        print(json.dumps({"model": model, "input": "512x512x300 int16 CT (real slices stacked)",
                          "threads": args.threads, "repeat": args.repeat,
                          "latency_median_s": round(statistics.median(walls), 3), "latency_min_s": round(min(walls), 3),
                          "latency_max_s": round(max(walls), 3), "peak_rss_mb": round(max(peaks), 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
