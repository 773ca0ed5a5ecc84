"""Preprocessing shared by inference and training: one implementation, so both see the same pixels.

Arrays are numpy, in SimpleITK's index order ``[z, y, x]`` (slice, row, column).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .errors import LightSegError


# ---------------------------------------------------------------- orientation
@dataclass(frozen=True)
class Orientation:
    """How an image array maps onto the model's slice stack (and back, exactly: only axis swaps and flips)."""

    transpose: tuple[int, int, int]
    flip: tuple[bool, bool, bool]

    def apply(self, array: np.ndarray) -> np.ndarray:
        out = np.transpose(array, self.transpose + tuple(range(3, array.ndim)))
        axes = tuple(a for a in range(3) if self.flip[a])
        return np.flip(out, axes) if axes else out

    def invert(self, array: np.ndarray) -> np.ndarray:
        axes = tuple(a for a in range(3) if self.flip[a])
        out = np.flip(array, axes) if axes else array
        inverse = tuple(int(i) for i in np.argsort(self.transpose))
        return np.transpose(out, inverse + tuple(range(3, array.ndim)))

    def spacing(self, image_spacing_xyz) -> tuple[float, float, float]:
        """Spacing of the oriented array, in its own ``[z, y, x]`` order."""
        zyx = tuple(image_spacing_xyz)[::-1]
        return tuple(float(zyx[a]) for a in self.transpose)


IDENTITY = Orientation((0, 1, 2), (False, False, False))


def orientation_for(direction, mode: str) -> Orientation:
    """``"LPS"``: axial slices in radiological view (anterior up, patient right on the left), whatever the
    file's axis order, as CT models are trained; ``"native"``: the acquisition's own slice stack (oblique
    cardiac short-axis stacks stay as acquired)."""
    if mode == "native":
        return IDENTITY
    if mode != "LPS":
        raise LightSegError(f"unknown orientation mode {mode!r} in model card (use 'LPS' or 'native')")
    d = np.asarray(direction, dtype=float).reshape(3, 3)  # column a: direction of image axis a (x, y, z) in LPS
    physical_of_axis = [-1, -1, -1]
    taken = set()
    # Assign the most clear-cut axes first, so an oblique axis cannot steal a physical direction.
    for a in sorted(range(3), key=lambda a: -np.max(np.abs(d[:, a]))):
        for p in np.argsort(-np.abs(d[:, a])):
            if int(p) not in taken:
                physical_of_axis[a] = int(p)
                taken.add(int(p))
                break
    # Array axis of image axis a is 2 - a; oriented array axis for physical axis p is 2 - p.
    transpose = [0, 0, 0]
    flip = [False, False, False]
    for a, p in enumerate(physical_of_axis):
        transpose[2 - p] = 2 - a
        flip[2 - p] = bool(d[p, a] < 0)
    return Orientation(tuple(transpose), tuple(flip))


# ---------------------------------------------------------------- intensities
def intensity_stats(volume: np.ndarray, spec: dict) -> dict:
    """Volume-level statistics a normalisation needs (percentiles for MRI), from a bounded sample."""
    if spec["type"] != "percentile":
        return {}
    # Strided sample along every axis: no full-size copy, even of a transposed view.
    step = max(1, int(np.ceil((volume.size / 2_000_000) ** (1 / 3))))
    sample = np.asarray(volume[::step, ::step, ::step], dtype=np.float32)
    lo, hi = np.percentile(sample, [spec.get("lower", 0.5), spec.get("upper", 99.5)])
    return {"lo": float(lo), "hi": float(hi)}


def normalise(array: np.ndarray, spec: dict, stats: dict | None = None) -> np.ndarray:
    """Scale intensities to about [0, 1] as the model card declares; returns float32.

    ``window``: clip to ``[lo, hi]`` (e.g. HU) then scale, as the CT training slices were made;
    ``percentile``: robust min-max from the volume's percentiles (MRI has no absolute scale).
    """
    x = np.asarray(array, dtype=np.float32)
    kind = spec["type"]
    if kind == "window":
        lo, hi = (float(v) for v in spec["window"])
    elif kind == "percentile":
        stats = stats if stats else intensity_stats(x, spec)
        lo, hi = stats["lo"], stats["hi"]
    else:
        raise LightSegError(f"unknown normalisation {kind!r} in model card (use 'window' or 'percentile')")
    scale = 1.0 / (hi - lo) if hi > lo else 1.0
    # Clip in place only when astype already made a private copy; never mutate the caller's array.
    out = np.clip(x, lo, hi, out=x) if x is not array else np.clip(x, lo, hi)
    out -= lo
    out *= scale
    return out


# ---------------------------------------------------------------- in-plane geometry
def resize_slices(array: np.ndarray, out_hw: tuple[int, int], linear: bool = True) -> np.ndarray:
    """Resize each slice of ``[n, h, w]`` (or ``[n, h, w, c]``) to ``out_hw`` keeping the slice's physical
    extent (pixel edges align, like ``align_corners=False``). float32 out for linear, same dtype for nearest."""
    n, h, w = array.shape[:3]
    oh, ow = int(out_hw[0]), int(out_hw[1])
    if (h, w) == (oh, ow):
        return array
    vector = array.ndim == 4
    src = np.ascontiguousarray(array, dtype=np.float32 if linear else array.dtype)
    img = sitk.GetImageFromArray(src, isVector=vector)
    img.SetSpacing((1.0, 1.0, 1.0))
    sx, sy = w / ow, h / oh
    ref = sitk.Image([ow, oh, n], img.GetPixelID(), img.GetNumberOfComponentsPerPixel())
    ref.SetSpacing((sx, sy, 1.0))
    ref.SetOrigin((-0.5 + 0.5 * sx, -0.5 + 0.5 * sy, 0.0))
    interp = sitk.sitkLinear if linear else sitk.sitkNearestNeighbor
    out = sitk.Resample(img, ref, sitk.Transform(), interp, 0.0, img.GetPixelID(), True)
    return sitk.GetArrayFromImage(out)


@dataclass(frozen=True)
class PlaneGeometry:
    """The model's in-plane grid for one slice stack: pad to a square (``fit``) and/or resize."""

    in_hw: tuple[int, int]
    pad: tuple[int, int, int, int]  # top, bottom, left, right (fit mode)
    model_hw: tuple[int, int]

    def to_model(self, slices: np.ndarray, pad_value: float = 0.0) -> np.ndarray:
        t, b, l, r = self.pad
        if any(self.pad):
            widths = ((0, 0), (t, b), (l, r)) + ((0, 0),) * (slices.ndim - 3)
            slices = np.pad(slices, widths, constant_values=pad_value)
        return resize_slices(slices, self.model_hw, linear=True)

    def from_model(self, maps: np.ndarray) -> np.ndarray:
        """Scores ``[n, h', w', c]`` back to the input slice size (linear, float32)."""
        t, b, l, r = self.pad
        padded_hw = (self.in_hw[0] + t + b, self.in_hw[1] + l + r)
        out = resize_slices(maps, padded_hw, linear=True)
        return out[:, t:t + self.in_hw[0], l:l + self.in_hw[1]]


def plane_geometry(in_hw, spacing_yx, spec: dict) -> PlaneGeometry:
    """``{"mode": "spacing", "spacing": [sy, sx]}`` resamples to a pixel size; ``{"mode": "fit", "size": [S, S]}``
    pads to a square and resizes, as for 2D datasets whose pixel size is unknown; ``{"mode": "keep"}``."""
    h, w = int(in_hw[0]), int(in_hw[1])
    mode = spec.get("mode", "keep")
    multiple = int(spec.get("multiple", 1))
    if mode == "keep":
        return PlaneGeometry((h, w), (0, 0, 0, 0), (h, w))
    if mode == "spacing":
        ty, tx = (float(v) for v in spec["spacing"])
        oh = max(multiple, int(round(h * spacing_yx[0] / ty)))
        ow = max(multiple, int(round(w * spacing_yx[1] / tx)))
        return PlaneGeometry((h, w), (0, 0, 0, 0), (oh, ow))
    if mode == "fit":
        side = max(h, w)
        t, l = (side - h) // 2, (side - w) // 2
        pad = (t, side - h - t, l, side - w - l)
        return PlaneGeometry((h, w), pad, tuple(int(v) for v in spec["size"]))
    raise LightSegError(f"unknown in-plane mode {mode!r} in model card (use 'spacing', 'fit' or 'keep')")


def with_context(slab: np.ndarray, context: int) -> np.ndarray:
    """``[n + 2c, h, w]`` -> ``[n, 2c + 1, h, w]``: each slice with its ``c`` neighbours on each side (2.5D)."""
    if context == 0:
        return slab[:, None]
    n = slab.shape[0] - 2 * context
    return np.stack([slab[i:i + n] for i in range(2 * context + 1)], axis=1)


def context_indices(start: int, stop: int, context: int, depth: int) -> np.ndarray:
    """Slice indices ``start - c .. stop + c`` clamped to the volume (edge slices repeat)."""
    return np.clip(np.arange(start - context, stop + context), 0, depth - 1)
