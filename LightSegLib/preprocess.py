"""Preprocessing shared by inference and training: one implementation, so both see the same pixels.

Arrays are numpy, in SimpleITK's index order ``[z, y, x]`` (slice, row, column).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
def _taps(in_len: int, out_len: int, start: int = 0, stop: int | None = None):
    """Linear-interpolation taps for output pixels ``start..stop`` when ``in_len`` pixels become ``out_len``
    over the same extent (pixel edges align, like ``align_corners=False``; edges clamp)."""
    centres = (np.arange(start, out_len if stop is None else stop) + 0.5) * (in_len / out_len) - 0.5
    centres = np.clip(centres, 0, in_len - 1)
    i0 = np.floor(centres).astype(np.intp)
    i1 = np.minimum(i0 + 1, in_len - 1)
    return i0, i1, (centres - i0).astype(np.float32)


def argmax_classes(scores: np.ndarray) -> np.ndarray:
    """``np.argmax(scores, axis=1)`` as uint8 (first maximum on ties), about 2x faster for a few classes:
    numpy's argmax over a strided class axis is slow."""
    best = scores[:, 0].copy()
    out = np.zeros(best.shape, np.uint8)
    for c in range(1, scores.shape[1]):
        out[scores[:, c] > best] = c
        np.maximum(best, scores[:, c], out=best)
    return out


def _linear_axis(x: np.ndarray, axis: int, out_len: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    i0, i1, w = _taps(x.shape[axis], out_len, start, stop)
    shape = [1] * x.ndim
    shape[axis] = -1
    a = np.take(x, i0, axis=axis)
    a += (np.take(x, i1, axis=axis) - a) * w.reshape(shape)
    return a


def resize_slices(array: np.ndarray, out_hw: tuple[int, int], linear: bool = True, axes=(1, 2)) -> np.ndarray:
    """Resize the in-plane ``axes`` (default: ``[n, h, w, ...]``) to ``out_hw`` keeping the slice's physical
    extent. Linear gives float32 (for images and scores); nearest keeps the dtype (for labels)."""
    oh, ow = int(out_hw[0]), int(out_hw[1])
    ay, ax = axes
    if (array.shape[ay], array.shape[ax]) == (oh, ow):
        return array
    if not linear:
        rows = np.minimum(((np.arange(oh) + 0.5) * array.shape[ay] / oh).astype(np.intp), array.shape[ay] - 1)
        cols = np.minimum(((np.arange(ow) + 0.5) * array.shape[ax] / ow).astype(np.intp), array.shape[ax] - 1)
        return np.take(np.take(array, rows, axis=ay), cols, axis=ax)
    x = np.asarray(array, dtype=np.float32)
    return _linear_axis(_linear_axis(x, ay, oh), ax, ow)


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

    def labels_from_model(self, logits: np.ndarray, coarse: np.ndarray | None = None) -> np.ndarray:
        """Logits ``[n, K, h', w']`` to uint8 labels ``[n, h, w]`` on the input slices: interpolate the logits
        linearly, then argmax. Only the window around the foreground is interpolated: where all four
        neighbouring model pixels are background, so is any convex mix of their logits. ``coarse``: the
        logits' argmax, where the caller has it already."""
        n = logits.shape[0]
        h, w = self.in_hw
        t, b, l, r = self.pad
        coarse = argmax_classes(logits) if coarse is None else coarse
        if logits.shape[2:] == (h + t + b, w + l + r):  # same grid (input at the model's spacing): no resampling
            return np.ascontiguousarray(coarse[:, t:t + h, l:l + w])
        out = np.zeros((n, h, w), np.uint8)
        fg_rows = np.flatnonzero(coarse.any(axis=(0, 2)))
        if fg_rows.size == 0:
            return out
        fg_cols = np.flatnonzero(coarse.any(axis=(0, 1)))
        window = []
        for (lo, hi), size_in, size, offset, pad_end in (((fg_rows[0], fg_rows[-1]), logits.shape[2], h, t, b),
                                                         ((fg_cols[0], fg_cols[-1]), logits.shape[3], w, l, r)):
            i0, i1, _ = _taps(size_in, size + offset + pad_end)
            touched = np.flatnonzero((i1 >= lo) & (i0 <= hi))
            if touched.size == 0:  # a model grid finer than the input's skips the foreground's pixels entirely
                return out
            window.append((max(int(touched[0]), offset), min(int(touched[-1]) + 1, offset + size)))
        (r0, r1), (c0, c1) = window
        if r0 >= r1 or c0 >= c1:
            return out
        scores = _linear_axis(np.asarray(logits, dtype=np.float32), 2, h + t + b, r0, r1)
        scores = _linear_axis(scores, 3, w + l + r, c0, c1)
        out[:, r0 - t:r1 - t, c0 - l:c1 - l] = argmax_classes(scores)
        return out


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


# ---------------------------------------------------------------- the contract
@dataclass(frozen=True)
class Preprocessing:
    """What a model expects of its input, in one place. A card, a checkpoint's ``prep`` and a training config
    each translate to it once (``from_card``, ``from_prep``, ``from_config``); inference, training data, export
    parity and int8 calibration all go through ``prepare``, so none of them can drift from the others."""

    orientation: str
    inplane: dict
    normalization: dict
    context_slices: int = 0
    pad_value: float = 0.0

    @classmethod
    def from_prep(cls, prep: dict) -> "Preprocessing":
        return cls(prep.get("orientation", "native"), dict(prep["inplane"]), dict(prep["normalization"]),
                   int(prep.get("context_slices", 0)), float(prep.get("pad_value", 0.0)))

    @classmethod
    def from_card(cls, card) -> "Preprocessing":
        """``card``: a ModelCard or a registry entry."""
        entry = getattr(card, "entry", card)
        return cls.from_prep({**entry["input"], "normalization": entry["normalization"]})

    @classmethod
    def from_config(cls, cfg: dict) -> "Preprocessing":
        return cls.from_prep(cfg["data"])

    def to_prep(self) -> dict:
        """The form a checkpoint stores (and a config's data section holds)."""
        prep = {"orientation": self.orientation, "inplane": self.inplane, "normalization": self.normalization,
                "context_slices": self.context_slices}
        return {**prep, "pad_value": self.pad_value} if self.pad_value else prep

    def card_fields(self) -> dict:
        """The registry entry's ``input`` and ``normalization``."""
        inp = {"orientation": self.orientation, "inplane": self.inplane, "context_slices": self.context_slices}
        return {"input": {**inp, "pad_value": self.pad_value} if self.pad_value else inp,
                "normalization": self.normalization}

    def prepare(self, image) -> "Prepared":
        """A SimpleITK image (3D) on its way into the model."""
        import SimpleITK as sitk

        orientation = orientation_for(image.GetDirection(), self.orientation)
        prepared = self.prepare_array(orientation.apply(sitk.GetArrayViewFromImage(image)),
                                      orientation.spacing(image.GetSpacing()), orientation)
        prepared.source = image  # the volume is a view of the image's buffer: keep the image alive with it
        return prepared

    def prepare_array(self, volume: np.ndarray, spacing_zyx=(1.0, 1.0, 1.0), orientation=None) -> "Prepared":
        """Slices already in the model's orientation (``[z, y, x]``, e.g. a 2D slice set)."""
        geometry = plane_geometry(volume.shape[1:], spacing_zyx[1:], self.inplane)
        return Prepared(self, volume, orientation or IDENTITY, geometry,
                        intensity_stats(volume, self.normalization), tuple(float(s) for s in spacing_zyx))


@dataclass
class Prepared:
    """One volume on its way into the model and the way back to its grid."""

    spec: Preprocessing
    volume: np.ndarray  # oriented, raw intensities
    orientation: Orientation
    geometry: PlaneGeometry
    stats: dict
    spacing_zyx: tuple[float, float, float]  # oriented, the input's grid
    source: object = None

    @property
    def depth(self) -> int:
        return int(self.volume.shape[0])

    def batch(self, start: int, stop: int) -> np.ndarray:
        """Slices ``start:stop`` as the network takes them: ``[n, 2c + 1, h, w]`` float32."""
        return self.batch_of(np.arange(start, stop))

    def batch_of(self, indices) -> np.ndarray:
        """The slices at ``indices`` (any order), each with its context, as the network takes them."""
        c = self.spec.context_slices
        idx = np.clip(np.asarray(indices)[:, None] + np.arange(-c, c + 1)[None, :], 0, self.depth - 1)
        slab = normalise(self.volume[idx.ravel()], self.spec.normalization, self.stats)
        x = self.geometry.to_model(slab, self.spec.pad_value)
        return np.ascontiguousarray(x.reshape(idx.shape + x.shape[1:]), dtype=np.float32)

    def model_slices(self) -> np.ndarray:
        """Every slice on the model grid, without context: ``[n, h, w]`` float32 (training data)."""
        x = normalise(self.volume, self.spec.normalization, self.stats)
        return np.ascontiguousarray(self.geometry.to_model(x, self.spec.pad_value), dtype=np.float32)

    def label_to_model(self, label: np.ndarray) -> np.ndarray:
        """An oriented label stack on the input grid -> the model grid (nearest neighbour)."""
        t, b, l, r = self.geometry.pad
        padded = np.pad(label, ((0, 0), (t, b), (l, r))) if any(self.geometry.pad) else label
        return np.ascontiguousarray(resize_slices(padded, self.geometry.model_hw, linear=False))

    def labels_back(self, oriented_labels: np.ndarray) -> np.ndarray:
        """Labels on the oriented input grid -> the file's array order."""
        return np.ascontiguousarray(self.orientation.invert(oriented_labels))
