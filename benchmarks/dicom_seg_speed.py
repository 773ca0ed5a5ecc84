"""What writing a DICOM SEG adds to `lightseg segment`, on the 20-slice TotalSegmentator DICOM series and on a
300-slice series made from it (its 20 files repeated 15 times with new UIDs and positions 2 mm apart).

Each run segments once, as `lightseg segment` does with a .dcm output (the series' headers loading in the
background from before the read), then writes the same result as .nii.gz and as .dcm; the figure is the .dcm
write minus the .nii.gz write. Fresh processes, so highdicom's first-use costs are counted.

    .venv/bin/python benchmarks/dicom_seg_speed.py [--repeat 3] [--model liver-ct]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SERIES = Path(os.environ.get("LIGHTSEG_SHARED_DATA", REPO.parent / "shared" / "data")) / "totalseg_example" / "example_ct_dicom"

ONE_RUN = r"""
import json, sys, time
from pathlib import Path
from LightSegLib import dicom_seg, io
from LightSegLib.inference import make_runner, segment_image
from LightSegLib.registry import get_segmenter
folder, model, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
card = get_segmenter(model)
dicom_seg.prefetch(folder, io.series_files)
image = io.read_image(folder)
result = segment_image(image, card, make_runner(card))
seconds = {}
for name in ("labels.nii.gz", "seg.dcm"):
    t = time.perf_counter()
    io.write_output(result.labelmap, out / name, card.labels, overwrite=True,
                    dicom={"source": folder, "card": card, "quality": result.quality, "voxels": result.voxels})
    seconds[name] = time.perf_counter() - t
print(json.dumps({"slices": image.GetSize()[2], "infer_s": sum(result.seconds.values()), **seconds,
                  "seg_bytes": (out / "seg.dcm").stat().st_size}))
"""


def long_series(folder: Path, copies: int) -> None:
    """The shared series repeated ``copies`` times down the table: new SOP and series UIDs, positions and instance
    numbers continued, so it reads as one series of 20 x copies slices."""
    import pydicom
    from pydicom.uid import generate_uid

    headers = [pydicom.dcmread(f) for f in sorted(p for p in SERIES.iterdir() if p.is_file())]
    z0 = [float(ds.ImagePositionPatient[2]) for ds in headers]
    step = z0[1] - z0[0]
    series_uid = generate_uid()
    for c in range(copies):
        for i, ds in enumerate(headers):
            n = c * len(headers) + i
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], z0[i] + c * len(headers) * step]
            ds.InstanceNumber = n + 1
            ds.save_as(folder / f"{n:04d}.dcm")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model", default="liver-ct")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        long = tmp / "series300"
        long.mkdir()
        long_series(long, 15)
        for folder in (SERIES, long):
            runs = []
            for _ in range(args.repeat):
                out = tmp / "out"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                done = subprocess.run([sys.executable, "-c", ONE_RUN, str(folder), args.model, str(out)],
                                      capture_output=True, text=True, check=True, cwd=REPO)
                runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            added = sorted(r["seg.dcm"] - r["labels.nii.gz"] for r in runs)
            print(f"{runs[0]['slices']} slices: SEG write adds {added[len(added) // 2]:.2f} s (median of {len(runs)}; "
                  f"min {added[0]:.2f}, max {added[-1]:.2f}); .nii.gz write {runs[0]['labels.nii.gz']:.2f} s, "
                  f"inference {runs[0]['infer_s']:.1f} s, SEG {runs[0]['seg_bytes'] / 1e6:.1f} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
