"""Where a user (or the simulation of one) clicks: the deterministic rule of the benchmark, shared by training.

Next click: at the pixel of the error region farthest from that region's border (the image edge counts as a
border); positive where the object was missed, negative where the mask is false, whichever error is deeper.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def _depth(region: np.ndarray) -> np.ndarray:
    return ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]


def next_click(pred: np.ndarray, gt: np.ndarray) -> tuple[tuple[int, int], bool] | None:
    """((y, x), positive) for the next correction, or None when the mask is exact."""
    missed, false = _depth(gt & ~pred), _depth(pred & ~gt)
    m, f = missed.max(), false.max()
    if m == 0 and f == 0:
        return None
    depth, positive = (missed, True) if m >= f else (false, False)
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return (int(y), int(x)), positive


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    union = (pred | gt).sum()
    return float((pred & gt).sum() / union) if union else 1.0


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    total = pred.sum() + gt.sum()
    return float(2 * (pred & gt).sum() / total) if total else 1.0


def interior_points(gt: np.ndarray, n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Initial positives, biased to the inside (probability ~ depth squared), as users first click."""
    depth = _depth(gt) ** 2
    flat = depth.ravel()
    if flat.sum() == 0:
        return []
    idx = rng.choice(flat.size, size=n, p=flat / flat.sum())
    return [tuple(int(v) for v in np.unravel_index(i, gt.shape)) for i in idx]


def outside_points(gt: np.ndarray, n: int, rng: np.random.Generator, ring: int = 12,
                   others: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Initial negatives: in a ring around the object, or on another structure."""
    band = ndimage.binary_dilation(gt, iterations=ring) & ~ndimage.binary_dilation(gt, iterations=2)
    if others is not None and others.any() and rng.random() < 0.5:
        band = others & ~gt
    ys, xs = np.nonzero(band)
    if not len(ys) or n == 0:
        return []
    pick = rng.choice(len(ys), size=n)
    return [(int(ys[i]), int(xs[i])) for i in pick]
