"""Does an inference-time gate rescue pancreas-ct on whole HU volumes? Measured, not shipped (none helped).

    python benchmarks/pancreas_whole_volume_gates.py

On the pancreas checks of configs/data/ct_checks.toml (TotalSegmentator's 3 mm example CT, its 20-slice DICOM
series, s0009): the pancreas probability on the input grid (as the engine interpolates), thresholded at several
levels before the 3D largest component; Dice against the reference, the share of the prediction on another
labelled structure, and the voxels predicted on slices without pancreas. Then where the predicted and the true pancreas lie within the body box slice by slice,
beside liver-ct's liver, to show whether a liver-relative gate could separate them.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from LightSegLib import postprocess, preprocess  # noqa: E402
from LightSegLib.inference import make_runner, segment_image  # noqa: E402
from LightSegLib.registry import get_model  # noqa: E402
from LightSegLib.lab.evaluate import check_volume, volume_checks  # noqa: E402
from LightSegLib.metrics import dice  # noqa: E402


def probability(card, runner, volume, spacing) -> np.ndarray:
    """Foreground probability per voxel of an oriented volume (2-class model), logits resampled as the engine does."""
    prepared = preprocess.Preprocessing.from_card(card).prepare_array(volume, spacing)
    t, b, l, r = prepared.geometry.pad
    h, w = prepared.geometry.in_hw
    out = np.zeros(volume.shape, np.float32)
    for s in range(0, volume.shape[0], 8):
        logits = runner(prepared.batch(s, min(s + 8, volume.shape[0])))
        p = 1.0 / (1.0 + np.exp(logits[:, 0] - logits[:, 1]))
        out[s:s + 8] = preprocess.resize_slices(p, (h + t + b, w + l + r))[:, t:t + h, l:l + w]
    return out


def box_position(slice_, mask):
    rows, cols = np.nonzero(slice_ > 0)
    r0, r1 = np.percentile(rows, [1, 99])
    c0, c1 = np.percentile(cols, [1, 99])
    rr, cc = np.nonzero(mask)
    return (cc.mean() - c0) / (c1 - c0), (rr.mean() - r0) / (r1 - r0)


def main() -> int:
    card, liver = get_model("pancreas-ct"), get_model("liver-ct")
    runner = make_runner(card, threads=2)
    for check in volume_checks("pancreas", cards=True):
        name = check["name"]
        image, reference = check_volume(check)
        o = preprocess.orientation_for(image.GetDirection(), "LPS")
        ref = o.apply(reference)
        volume = o.apply(sitk.GetArrayViewFromImage(image))
        truth = np.isin(ref, check["values"]["pancreas"])
        free = ~truth.any(axis=(1, 2))
        p = probability(card, runner, volume, o.spacing(image.GetSpacing()))
        for threshold in (0.5, 0.7, 0.8, 0.9, 0.95):
            m = (p > threshold).astype(np.uint8)
            postprocess.keep_largest_component(m, 1)
            m = m > 0
            other = int((m & (ref != 0) & ~truth).sum())
            print(f"{name} p>{threshold}: {int(m.sum())} voxels, Dice {dice(m, truth):.3f}, "
                  f"{other / max(1, m.sum()):.0%} on another structure, {int(m[free].sum())} on pancreas-free slices")
        hit = p > 0.5
        print(f"{name}: mean probability where the prediction is on pancreas "
              f"{p[hit & truth].mean() if (hit & truth).any() else float('nan'):.3f}, "
              f"on other structures {p[hit & ~truth & (ref != 0)].mean():.3f}")
        lv = o.apply(sitk.GetArrayFromImage(segment_image(image, liver, threads=2).labelmap)) > 0
        zl = np.flatnonzero(lv.any(axis=(1, 2)))
        print(f"{name}: liver-ct's liver on slices {zl.min()}-{zl.max()}, true pancreas on "
              f"{np.flatnonzero(~free).min()}-{np.flatnonzero(~free).max()} (slice index grows to the head)")
        for z in np.flatnonzero((hit | truth).any(axis=(1, 2)))[::3]:
            parts = [f"{what} x{x:.2f} y{y:.2f}" for what, mask in (("predicted", hit[z]), ("true", truth[z]),
                                                                    ("liver", lv[z])) if mask.any()
                     for x, y in [box_position(volume[z], mask)]]
            print(f"  slice {z}: " + " | ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
