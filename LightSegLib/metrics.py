"""Dice and HD95, the one definition every figure in LightSeg uses (evaluation, training validation, model cards,
the demo, the Slicer self-test).

The rule for an empty structure: a structure absent from both the prediction and the reference has no score
(NaN, left out of means: there was nothing to find and nothing was found); present in only one of them it scores
Dice 0, so a false detection on a case without the organ counts against the model. HD95 is NaN unless both have it.
"""
from __future__ import annotations

import warnings

import numpy as np


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Binary Dice of two masks (nonzero = inside)."""
    p, t = pred > 0, truth > 0
    return dice_from_counts(int(np.logical_and(p, t).sum()), int(p.sum()) + int(t.sum()))


def dice_from_counts(overlap: int, total: int) -> float:
    """Dice from the voxels both masks mark and the sum of their sizes: pooled over many cases, the counts add up."""
    return float("nan") if total == 0 else 2.0 * float(overlap) / total


def dice_per_class(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice of each foreground label 1..num_classes-1 of two labelmaps."""
    return np.array([dice(pred == k, truth == k) for k in range(1, num_classes)])


def hd95_per_class(pred: np.ndarray, truth: np.ndarray, num_classes: int, spacing_zyx) -> np.ndarray:
    """95th-percentile Hausdorff distance (mm, physical spacing) of each foreground label (MONAI)."""
    import torch
    from monai.metrics import compute_hausdorff_distance
    from monai.networks.utils import one_hot

    p = one_hot(torch.from_numpy(pred.astype(np.int64))[None, None], num_classes)
    t = one_hot(torch.from_numpy(truth.astype(np.int64))[None, None], num_classes)
    with warnings.catch_warnings():  # MONAI 1.6 warns about its own internal argument
        warnings.simplefilter("ignore", FutureWarning)
        hd = compute_hausdorff_distance(p, t, include_background=False, percentile=95,
                                        spacing=[float(s) for s in spacing_zyx])[0].numpy().astype(float)
    present_p = p[0, 1:].flatten(1).any(1).numpy()
    present_t = t[0, 1:].flatten(1).any(1).numpy()
    hd[~(present_p & present_t)] = np.nan
    return hd
