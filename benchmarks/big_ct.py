"""`lightseg segment` on a 512x512x300 CT: end-to-end time and peak memory, each run in its own process.

The CT is made by stacking the real 20-slice TotalSegmentator DICOM series 15 times (HU, 0.977 mm, 2 mm step),
written as uncompressed NRRD (157 MB).
With no --model, an analytic stand-in model (a 1x1 convolution thresholding at 127 HU, see
Testing/model_fixtures.py) in `fit` mode (256x256) measures the engine's own overhead: reading, resampling,
argmax, post-processing and writing, with a foreground spread over the whole body (a worst case).

    .venv/bin/python benchmarks/big_ct.py [--model ID] [--threads 2] [--repeat 3]
    .venv/bin/python benchmarks/big_ct.py --write-ct ct512.nrrd    # then: lightseg bench --input ct512.nrrd ...
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parent.parent
DICOM = REPO.parent / "shared" / "data" / "totalseg_example" / "example_ct_dicom"


def make_ct(path: Path) -> None:
    import LightSegLib as L

    series = L.read_image(DICOM)
    image = sitk.GetImageFromArray(np.concatenate([sitk.GetArrayFromImage(series)] * 15, axis=0))
    image.SetSpacing(series.GetSpacing())
    image.SetOrigin(series.GetOrigin())
    image.SetDirection(series.GetDirection())
    sitk.WriteImage(image, str(path), False)  # uncompressed: a compressed read would add about 1 s to each run


def main() -> int:
    from LightSegLib.lab.bench import time_once

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--write-ct", metavar="PATH", help="only write the 512x512x300 CT here (for lightseg bench)")
    args = parser.parse_args()
    if args.write_ct:
        make_ct(Path(args.write_ct))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ct = tmp / "ct512x512x300.nrrd"
        make_ct(ct)
        model = args.model
        if model is None:
            sys.path.insert(0, str(REPO / "Testing"))
            from model_fixtures import make_model_folder

            folder = make_model_folder(tmp / "models", num_classes=2, inplane={"mode": "fit", "size": [256, 256]},
                                       postprocessing={"largest_component": [1], "fill_holes": [1]},
                                       normalization={"type": "window", "window": [0, 255]})
            os.environ["LIGHTSEG_MODELS_DIR"] = str(folder)
            model = "test-quantiser"
        time_once(model, False, ct, args.threads, tmp)  # warm-up: file cache
        runs = [time_once(model, False, ct, args.threads, tmp) for _ in range(args.repeat)]
        walls = [r["wall_s"] for r in runs]
        print(json.dumps({"model": model, "input": "512x512x300 int16 CT (real slices stacked)",
                          "threads": args.threads, "repeat": args.repeat,
                          "latency_median_s": round(statistics.median(walls), 3), "latency_min_s": round(min(walls), 3),
                          "latency_max_s": round(max(walls), 3),
                          "network_median_s": round(statistics.median(r.get("infer_s", 0.0) for r in runs), 3),
                          "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
