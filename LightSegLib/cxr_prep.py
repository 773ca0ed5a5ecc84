"""The chest X-ray preprocessing contract, shared by training and inference (numpy and SimpleITK only).

Why a whole-image resize and not a crop: the training images were already stretched to a square by their source,
so any input is stretched the same way; a Gaussian pre-filter stops aliasing when a full-size radiograph
(2,000+ pixels) is reduced to the network's size. Why percentile scaling: JPEG, 8- and 16-bit DICOM reach the
network on one scale without a per-format rule.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

PERCENTILES = (0.5, 99.5)


def resize(array: np.ndarray, size: int) -> np.ndarray:
    """(H, W) -> (size, size) float32, linear, anti-aliased."""
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    h, w = array.shape
    factors = (w / size, h / size)
    sigmas = [max(0.0, (f - 1.0) / 2.0) for f in factors]
    if max(sigmas) > 0:
        image = sitk.SmoothingRecursiveGaussian(image, [max(s, 1e-3) for s in sigmas])
    out_spacing = list(factors)
    origin = [0.5 * (f - 1.0) for f in factors]  # pixel centres of the new grid over the same extent
    image.SetSpacing((1.0, 1.0))
    resampled = sitk.Resample(image, (size, size), sitk.Transform(), sitk.sitkLinear, origin, out_spacing,
                              (1.0, 0.0, 0.0, 1.0), 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampled)


def normalise(array: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(array, PERCENTILES)
    if not hi > lo:
        return np.zeros_like(array, dtype=np.float32)
    return np.clip((array - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def prepare(array: np.ndarray, size: int) -> np.ndarray:
    """A grey (H, W) radiograph, display orientation (dark = air), to the network's (1, 1, size, size) input."""
    return normalise(resize(array, size))[None, None]
