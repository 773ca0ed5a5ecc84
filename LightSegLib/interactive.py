"""Refine a segmentation with clicks, on a CPU: a click-conditioned 2D net served by ONNX Runtime.

One object at a time, slice by slice. Each click runs the net on a square crop around the object and the
clicks, resampled to ``CROP`` pixels (the zoom-in of RITM), so a click costs the same on any image size.
The net reads four channels: the image crop (percentile-scaled), the current mask, and disks at the positive
and the negative clicks. Each answer is the mean over views of the crop in one batch (the window moved by
a crop pixel, mirrored), which steadies the outline. A correction changes only the part of the mask connected to
the click that asked for it; every other pixel keeps its value, and locked voxels (another segment's) never change.

The crop and channel encoding below is the contract the click training (the workshop's interactive package) shares:
change it only together with a retrained model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import domain
from .errors import LightSegError

CROP = 128            # the side of the net's input, in pixels
DISK_RADIUS = 3       # click disks, in crop pixels (the crop is zoomed, so this scales with the object)
CHANNELS = 4          # image, previous mask, positive disks, negative disks
MODEL_ID = "click-refine"
CT_WINDOW = (0.0, 255.0)   # the 8-bit CT coding our CT slices were trained on (about clip(HU, 0, 255))
MAX_CLIPPED = 0.95    # propagation on CT stops at a region this much clipped by CT_WINDOW: nothing there to see


# ---- the encoding shared with training ---------------------------------------------------------------

@dataclass(frozen=True)
class Window:
    """A square crop of the image: top-left corner (y0, x0) and side, in image pixels (may leave the image)."""
    y0: float
    x0: float
    side: float

    def to_crop(self, yx) -> np.ndarray:
        yx = np.asarray(yx, dtype=np.float64)
        return (yx - [self.y0, self.x0] + 0.5) * (CROP / self.side) - 0.5

    def grid(self, size: int = CROP) -> tuple[np.ndarray, np.ndarray]:
        """Image coordinates of the crop pixels' centres."""
        steps = (np.arange(size) + 0.5) * (self.side / size) - 0.5
        return self.y0 + steps, self.x0 + steps


def window_around(points_yx: np.ndarray, shape, scale: float = 1.6, min_side: float = 32.0) -> Window:
    """The square around ``points_yx`` (mask pixels and clicks) grown by ``scale``: the net sees the object and
    some context at about the same zoom whatever the object's size."""
    lo, hi = points_yx.min(0), points_yx.max(0) + 1
    side = max(float((hi - lo).max()) * scale, min_side)
    side = min(side, 2.0 * max(shape))
    cy, cx = (lo + hi) / 2.0
    return Window(cy - side / 2.0, cx - side / 2.0, side)


def first_window(click_yx, shape, fraction: float = 0.5) -> Window:
    """Before any mask exists the object's size is unknown: a wide crop around the first click."""
    side = fraction * min(shape)
    return Window(click_yx[0] - side / 2.0, click_yx[1] - side / 2.0, side)


def bilinear(arr: np.ndarray, ys: np.ndarray, xs: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Sample a 2D array at the grid ys x xs (image pixel coordinates); outside the image reads ``fill``."""
    h, w = arr.shape
    y0 = np.floor(ys).astype(np.int64)
    x0 = np.floor(xs).astype(np.int64)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    padded = np.pad(arr.astype(np.float32), 1, constant_values=fill)
    yi0 = np.clip(y0 + 1, 0, h + 1)
    yi1 = np.clip(y0 + 2, 0, h + 1)
    xi0 = np.clip(x0 + 1, 0, w + 1)
    xi1 = np.clip(x0 + 2, 0, w + 1)
    a = padded[np.ix_(yi0, xi0)]
    b = padded[np.ix_(yi0, xi1)]
    c = padded[np.ix_(yi1, xi0)]
    d = padded[np.ix_(yi1, xi1)]
    return ((a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy).astype(np.float32)


def scale_intensity(crop: np.ndarray) -> np.ndarray:
    """Percentiles 1-99 of the crop to [0, 1]: the same for MR and 8-bit-coded CT, no per-modality statistics."""
    lo, hi = np.percentile(crop, [1.0, 99.0])
    return np.clip((crop - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)


def disks(points_crop: list, size: int = CROP, radius: float = DISK_RADIUS) -> np.ndarray:
    out = np.zeros((size, size), np.float32)
    yy, xx = np.mgrid[:size, :size]
    for y, x in points_crop:
        out[(yy - y) ** 2 + (xx - x) ** 2 <= radius ** 2] = 1.0
    return out


def encode(image2d: np.ndarray, prev2d: np.ndarray, positives, negatives, window: Window) -> np.ndarray:
    """The net's input (CHANNELS, CROP, CROP) for one slice: ``image2d`` already in the CT coding where CT,
    ``prev2d`` the current mask or probability, clicks as (y, x) image pixels."""
    ys, xs = window.grid()
    image = bilinear(image2d, ys, xs, fill=float(image2d.min()))
    prev = bilinear(prev2d, ys, xs)
    pos = disks([window.to_crop(p) for p in positives])
    neg = disks([window.to_crop(p) for p in negatives])
    return np.stack([scale_intensity(image), prev, pos, neg])


def paste(prob_crop: np.ndarray, window: Window, shape) -> tuple[np.ndarray, tuple[slice, slice]]:
    """The crop's probabilities back on the image grid, for the image pixels the window covers."""
    h, w = shape
    y_lo, y_hi = max(0, int(np.floor(window.y0))), min(h, int(np.ceil(window.y0 + window.side)))
    x_lo, x_hi = max(0, int(np.floor(window.x0))), min(w, int(np.ceil(window.x0 + window.side)))
    if y_hi <= y_lo or x_hi <= x_lo:
        return np.zeros((0, 0), np.float32), (slice(0, 0), slice(0, 0))
    box = (slice(y_lo, y_hi), slice(x_lo, x_hi))
    return on_box(prob_crop, window, box), box


def on_box(prob_crop: np.ndarray, window: Window, box: tuple[slice, slice]) -> np.ndarray:
    """The crop's probabilities at the image pixels of ``box`` (0 where the window does not reach)."""
    k = CROP / window.side
    ys = (np.arange(box[0].start, box[0].stop) - window.y0 + 0.5) * k - 0.5
    xs = (np.arange(box[1].start, box[1].stop) - window.x0 + 0.5) * k - 0.5
    return bilinear(prob_crop, ys, xs)


def phases(window: Window) -> list[Window]:
    """The window and its copies moved by one crop pixel down, right and both: half a cell of a net that runs at
    half the crop's resolution, so the four answers' cells interleave and their mean has a finer outline."""
    d = window.side / CROP
    return [Window(window.y0 + a, window.x0 + b, window.side) for a, b in ((0, 0), (d, 0), (0, d), (d, d))]


def clipped(values: np.ndarray) -> np.ndarray:
    """Where CT-coded values sit at the window's floor or ceiling (fat and air, or bone): the net sees them flat."""
    return (values <= CT_WINDOW[0]) | (values >= CT_WINDOW[1])


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


# ---- connectivity and shape helpers (SimpleITK, no scipy in the runtime) ---------------------------------

def components(mask2d: np.ndarray) -> np.ndarray:
    """Connected components (8-connected) labelled 1..n."""
    return sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mask2d.astype(np.uint8)), True))


def touching(region: np.ndarray, yx, radius: float) -> np.ndarray:
    """The components of ``region`` that come within ``radius`` pixels of ``yx``."""
    labels = components(region)
    if labels.max() == 0:
        return np.zeros_like(region, bool)
    h, w = region.shape
    r = int(np.ceil(radius))
    y, x = int(round(yx[0])), int(round(yx[1]))
    ys, xs = slice(max(0, y - r), min(h, y + r + 1)), slice(max(0, x - r), min(w, x + r + 1))
    yy, xx = np.mgrid[ys, xs]
    near = labels[ys, xs][(yy - yx[0]) ** 2 + (xx - yx[1]) ** 2 <= radius ** 2]
    keep = np.unique(near[near > 0])
    return np.isin(labels, keep)


def deepest_point(mask2d: np.ndarray) -> tuple[int, int]:
    """The mask pixel farthest from the mask's border."""
    dist = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(
        sitk.GetImageFromArray(mask2d.astype(np.uint8)), insideIsPositive=True, squaredDistance=False,
        useImageSpacing=False))
    dist[~mask2d.astype(bool)] = -np.inf
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(y), int(x)


# ---- the session -------------------------------------------------------------------------------------

def registered_model(model_id: str = MODEL_ID):
    """The card and verified ONNX file of a registered click model, which must encode crops as this runtime
    does (a model trained with another crop, disk or CT coding would answer nonsense without an error)."""
    from .registry import get_click_model

    card = get_click_model(model_id)
    expected = {"crop": CROP, "channels": CHANNELS, "disk_radius": DISK_RADIUS, "ct_window": list(CT_WINDOW)}
    differ = {k: card.input.get(k) for k, v in expected.items() if card.input.get(k) != v}
    if differ:
        raise LightSegError(f"model '{card.id}' was trained with {differ}; this LightSeg encodes clicks as "
                            f"{ {k: expected[k] for k in differ} }: install the matching LightSeg")
    return card, card.verified_path()


def default_model() -> Path:
    return registered_model()[1]


@dataclass
class _Slice:
    positives: list = field(default_factory=list)
    negatives: list = field(default_factory=list)


class InteractiveSession:
    """Click refinement of one object on a SimpleITK image (2D or 3D, axial slices along z).

    ``click((i, j, k), positive)`` takes an index in SimpleITK order (x, y, z) and returns the whole mask
    ``[z, y, x]`` uint8. Every change is undoable; ``reset()`` clears the object."""

    def __init__(self, image: sitk.Image, model=None, threads: int = 2, modality: str | None = None,
                 threshold: float = 0.5, flip: bool = True, shift: bool = True):
        from .inference import OnnxRunner

        array = sitk.GetArrayFromImage(image).astype(np.float32)
        if array.ndim == 2:
            array = array[None]
        if array.ndim != 3:
            raise LightSegError(f"click refinement needs a 2D or 3D scalar image, got shape {array.shape}")
        self.image = image
        self.ct = modality == "CT" or (modality is None and float(array.min()) <= -500.0)
        # what the user should know before clicking: a CT stored without its HU rescale reads as MR here
        reason = None if modality else domain.offset_coding(domain.sample_of(array))
        self.note = f"{reason}: clicks read it as MR and need more of them" if reason else None
        self.volume = np.clip(array, *CT_WINDOW) if self.ct else array
        self.runner = OnnxRunner(model or default_model(), threads)
        self.threshold = threshold
        self.flip = flip
        self.shift = shift
        batch = self.runner.session.get_inputs()[0].shape[0]
        self._one_at_a_time = batch == 1  # a model exported with a fixed batch of one reads each view apart
        self.mask = np.zeros(self.volume.shape, np.uint8)
        self.locked = np.zeros(self.volume.shape, bool)
        self.clicks: dict[int, _Slice] = {}
        self._undo: list[tuple[np.ndarray, dict]] = []
        self.propagated: dict | None = None  # the last propagation: slices added, and where and why it stopped

    # -- state
    def _save(self) -> None:
        self._undo.append((self.mask.copy(), {z: _Slice(list(s.positives), list(s.negatives))
                                              for z, s in self.clicks.items()}))

    def undo(self) -> np.ndarray:
        """Back to the mask before the last change (a no-op when there is nothing to undo)."""
        if self._undo:
            self.mask, self.clicks = self._undo.pop()
        return self.mask.copy()

    def reset(self) -> np.ndarray:
        self._save()
        self.mask = np.zeros_like(self.mask)
        self.clicks = {}
        return self.mask.copy()

    def start_from(self, mask: np.ndarray) -> np.ndarray:
        """Refine an existing result (e.g. an automatic segmentation of this object, same [z, y, x] grid)."""
        mask = np.asarray(mask)
        if mask.ndim == 2:
            mask = mask[None]
        if mask.shape != self.mask.shape:
            raise LightSegError(f"mask shape {mask.shape} is not the image's {self.mask.shape}")
        self._save()
        self.mask = (mask > 0).astype(np.uint8)
        self.clicks = {}
        return self.mask.copy()

    def lock(self, voxels: np.ndarray) -> None:
        """Voxels no click, box or propagation may change (another segment's or label's), [z, y, x] like the mask:
        the object neither takes them nor gives them up, so a correction never paints over another structure."""
        voxels = np.asarray(voxels, bool)
        if voxels.ndim == 2:
            voxels = voxels[None]
        if voxels.shape != self.mask.shape:
            raise LightSegError(f"locked voxels' shape {voxels.shape} is not the image's {self.mask.shape}")
        self.locked = voxels.copy()

    # -- the net
    def _predict(self, z: int, prev: np.ndarray, positives, negatives, window: Window):
        """The mean of the net's answers over views of the crop, in one batch: with ``shift`` the window's four
        ``phases``, with ``flip`` each also mirrored. Both smooth the outline's pixel-level errors (each chosen on
        training patients' objects, never the benchmark's)."""
        windows = phases(window) if self.shift else [window]
        x = np.stack([encode(self.volume[z], prev, positives, negatives, w) for w in windows])
        if self.flip:
            x = np.concatenate([x, x[..., ::-1]])
        x = np.ascontiguousarray(x)
        logits = (np.concatenate([self.runner(x[k:k + 1]) for k in range(len(x))]) if self._one_at_a_time
                  else self.runner(x))[:, 0]
        probs = sigmoid(logits)
        if self.flip:
            probs = (probs[:len(windows)] + probs[len(windows):, :, ::-1]) / 2
        total, box = paste(probs[0], window, prev.shape)
        for w, p in zip(windows[1:], probs[1:]):
            total = total + on_box(p, w, box)
        return total / len(windows), box

    def _infer(self, z: int, prev: np.ndarray, positives, negatives, anchor) -> np.ndarray:
        """The object's probability on slice ``z``; zooms onto the object until the crop holds it whole."""
        shape = prev.shape
        prob = prev.astype(np.float32).copy()
        points = [np.argwhere(prev > 0.5)] + [np.array(positives + negatives, float).reshape(-1, 2)]
        points = np.concatenate(points)
        window = window_around(points, shape) if (prev > 0.5).any() else first_window(anchor, shape)
        for _ in range(3):
            crop_prob, box = self._predict(z, prob, positives, negatives, window)
            prob[box] = crop_prob
            inside = crop_prob > self.threshold
            touches_edge = inside.any() and (
                (inside[0].any() and box[0].start > 0) or (inside[-1].any() and box[0].stop < shape[0])
                or (inside[:, 0].any() and box[1].start > 0) or (inside[:, -1].any() and box[1].stop < shape[1]))
            settled = (prev > 0.5).any() and not touches_edge
            if settled or not inside.any():
                break
            new = window_around(np.concatenate([np.argwhere(prob > self.threshold),
                                                np.array(positives + negatives, float).reshape(-1, 2)]), shape)
            if not touches_edge and abs(new.side - window.side) < 0.1 * window.side:
                break
            window = new
        return prob

    # -- interactions
    def click(self, index_ijk, positive: bool = True) -> np.ndarray:
        """Add a click at ``index_ijk`` (x, y[, z]); only the mask region connected to it changes."""
        i, j = int(index_ijk[0]), int(index_ijk[1])
        z = int(index_ijk[2]) if len(index_ijk) > 2 else 0
        if not (0 <= z < self.mask.shape[0] and 0 <= j < self.mask.shape[1] and 0 <= i < self.mask.shape[2]):
            raise LightSegError(f"click {tuple(index_ijk)} is outside the image {self.mask.shape[::-1]}")
        self._save()
        s = self.clicks.setdefault(z, _Slice())
        (s.positives if positive else s.negatives).append((j, i))
        old = self.mask[z].astype(bool)
        prob = self._infer(z, old.astype(np.float32), s.positives, s.negatives, (j, i))
        new = prob > self.threshold
        new[j, i] = positive  # the clicked pixel always follows the click, unless it is locked
        new = np.where(self.locked[z], old, new)
        change = touching(new != old, (j, i), radius=1.5)
        self.mask[z] = np.where(change, new, old).astype(np.uint8)
        return self.mask.copy()

    def box(self, corner_a_ijk, corner_b_ijk) -> np.ndarray:
        """An object inside a box on one slice: a positive click at the box centre, the result kept inside the
        box (the net has no box channel: the box sets the zoom and bounds the answer)."""
        (i0, i1), (j0, j1) = sorted([corner_a_ijk[0], corner_b_ijk[0]]), sorted([corner_a_ijk[1], corner_b_ijk[1]])
        z = int(corner_a_ijk[2]) if len(corner_a_ijk) > 2 else 0
        self._save()
        centre = ((j0 + j1) // 2, (i0 + i1) // 2)
        s = self.clicks.setdefault(z, _Slice())
        s.positives.append(centre)
        shape = self.mask.shape[1:]
        window = window_around(np.array([[j0, i0], [j1, i1]], float), shape, scale=1.2)
        prev = self.mask[z].astype(np.float32)
        crop_prob, area = self._predict(z, prev, s.positives, s.negatives, window)
        prob = prev.copy()
        prob[area] = crop_prob
        inside = np.zeros(shape, bool)
        inside[j0:j1 + 1, i0:i1 + 1] = True
        new = (prob > self.threshold) & inside
        new[centre] = True
        held = self.mask[z] > 0
        new = np.where(self.locked[z], held, new)
        kept = np.where(inside, touching(new, centre, 1.5), held)
        self.mask[z] = np.where(self.locked[z], held, kept).astype(np.uint8)
        return self.mask.copy()

    def propagate(self, direction: int = 1, start: int | None = None, max_slices: int | None = None,
                  min_confidence: float = 0.75, min_overlap: float = 0.3, min_alike: float = 0.5) -> np.ndarray:
        """Extend the object slice by slice from ``start`` (default: the last slice with mask in that direction)
        towards +z (``direction`` 1) or -z (-1). Each slice gets the previous slice's mask and one positive
        click at its deepest point; it stops where the prediction is empty, leaves the previous outline
        (overlap below ``min_overlap``), its mean confidence falls below ``min_confidence``, or, on CT, fewer
        than ``min_alike`` of its pixels lie in the start slice's object's intensity range (10th-90th percentile),
        or at least MAX_CLIPPED of them sit where CT_WINDOW clips (unless the start slice's object did too).
        The CT rules are what stop it where an organ ends: the net, always handed a click, keeps answering a
        shrinking blob of the tissue beyond (fat below a liver) with full confidence, and a fatty object's range
        reaches down to the window's floor, so a blob of fat passes the range rule. They need HU: an MR's
        intensities drift from slice to slice (on the held-out ACDC LVs the range rule cut propagation short)."""
        step = 1 if direction >= 0 else -1
        filled = np.flatnonzero(self.mask.reshape(self.mask.shape[0], -1).any(1))
        if not filled.size:
            raise LightSegError("nothing to propagate: the object is empty")
        z = int(start) if start is not None else int(filled.max() if step > 0 else filled.min())
        if not self.mask[z].any():
            raise LightSegError(f"slice {z} holds no mask to propagate from")
        self._save()
        tissue = self.volume[z][self.mask[z] > 0]
        lo, hi = np.percentile(tissue, [10.0, 90.0]) if self.ct else (-np.inf, np.inf)
        visible = self.ct and np.mean(clipped(tissue)) < MAX_CLIPPED  # else its own slice is as flat: no rule
        count = 0
        while True:
            if not 0 <= z + step < self.mask.shape[0]:
                stop = "at the volume's edge"
                break
            if max_slices is not None and count >= max_slices:
                stop = "at the slice limit"
                break
            prev = self.mask[z].astype(bool)
            seed = deepest_point(prev)
            prob = self._infer(z + step, prev.astype(np.float32), [seed], [], seed)
            new = (prob > self.threshold) & ~self.locked[z + step]
            if new.any() and new[seed]:
                new = touching(new, seed, radius=max(2.0, 0.1 * np.sqrt(prev.sum())))
            values, stop = self.volume[z + step][new], None
            if not new.any():
                stop = "where the net found no object"
            elif (new & prev).sum() / min(new.sum(), prev.sum()) < min_overlap:
                stop = "where the object left the previous outline"
            elif float(prob[new].mean()) < min_confidence:
                stop = "where the net's confidence fell"
            elif np.mean((values >= lo) & (values <= hi)) < min_alike:
                stop = "where the tissue no longer looked like the start slice's"
            elif visible and np.mean(clipped(values)) >= MAX_CLIPPED:
                stop = "where the CT window showed only fat, air or bone"
            if stop:
                break
            z += step
            self.mask[z] = (self.mask[z].astype(bool) | new).astype(np.uint8)
            count += 1
        self.propagated = {"slices": count, "stopped": stop}
        return self.mask.copy()
