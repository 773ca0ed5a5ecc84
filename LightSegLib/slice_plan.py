"""Which slices the network runs, and in which in-plane window: the search strategy, apart from the engine that
runs it (as MONAI keeps its splitter beside its inferer).

A card without ``z_search`` runs every slice whole. With it, every stride-th slice runs first; then only the
slices within a stride of one that holds a structure the post-processing keeps, and with ``crop_search``, only the
window around what the first pass found. A slice never run is background: what the full pass would add there is an
isolated false positive that keeping the largest component removes anyway (benchmarks/ct_engine.py measures the
difference).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from . import postprocess

Window = tuple[slice, slice]


@dataclass(frozen=True)
class Pass:
    """Slices to run; ``window``: the in-plane box on the model grid (None: whole slices); ``planned``: the slice
    count progress is reported against; ``redo``: the slices of the pass before, run again in its place (what that
    pass added to the confidence is forgotten)."""
    slices: np.ndarray
    planned: int
    window: Window | None = None
    redo: bool = False


@dataclass(frozen=True)
class SlicePlan:
    """``stride``: the card's z_search (0 or 1: every slice); ``crop``: its crop_search; ``postprocessing``: what
    decides which structures are kept, so which slices the search goes on around."""
    stride: int
    crop: dict | None
    postprocessing: dict

    @classmethod
    def from_card(cls, card) -> "SlicePlan":
        stride = int(card.input.get("z_search", 0))
        return cls(stride, card.input.get("crop_search") if stride > 1 else None, card.postprocessing)

    @property
    def uses_windows(self) -> bool:
        """Whether the plan reads what the network found on its own grid (the windows are drawn around it)."""
        return self.crop is not None

    def passes(self, depth: int, labels: np.ndarray, found: np.ndarray | None) -> Iterator[Pass]:
        """The passes in order. Each is drawn from what the passes before it wrote: the engine fills ``labels``
        (the volume's labels, slice by slice) and, where ``uses_windows``, ``found`` (the model grid's foreground)
        before asking for the next."""
        stride = self.stride
        if not (stride > 1 and depth > 2 * stride):
            yield Pass(np.arange(depth), depth)
            return
        coarse = np.arange(0, depth, stride)
        locate = int(self.crop.get("locate", 0)) if self.crop else 0
        if locate > stride and depth > 2 * locate:
            # A sparser whole-slice pass draws the window the rest of the first pass runs in.
            sparse = coarse[::locate // stride]
            yield Pass(sparse, depth)
            hits = sparse[_kept_slices(labels[sparse], self.postprocessing)]
            box = _search_box(found[hits], self.crop) if len(hits) else None
            others = np.setdiff1d(coarse, sparse)
            yield Pass(others, depth, box)
            if box is not None and _touches_edge(found[others], box):
                yield Pass(others, depth, redo=True)  # the organ reaches past the window: those slices whole
        else:
            yield Pass(coarse, depth)
        kept = coarse[_kept_slices(labels[coarse], self.postprocessing)]
        near = np.zeros(depth, bool)
        for z in kept:
            near[max(0, z - stride):z + stride + 1] = True
        near[coarse] = False
        rest = np.flatnonzero(near)
        box = _search_box(found[kept], self.crop) if self.crop and len(kept) else None
        yield Pass(rest, len(coarse) + len(rest), box)


def _search_box(found: np.ndarray, spec: dict) -> Window | None:
    """The in-plane window, on the model grid, for the slices between the first pass's: the box of what that pass
    found, widened by ``margin`` pixels and snapped outwards to multiples of ``align`` (the network's total
    downsampling, so the crop's pooling grid is the full image's). None: run whole slices."""
    margin, align = int(spec["margin"]), int(spec["align"])
    h, w = found.shape[1:]
    rows = np.flatnonzero(found.any(axis=(0, 2)))
    cols = np.flatnonzero(found.any(axis=(0, 1)))
    if rows.size == 0:
        return None
    window = []
    for hits, size in ((rows, h), (cols, w)):
        lo = max(0, (int(hits[0]) - margin) // align * align)
        hi = min(size, -(-(int(hits[-1]) + 1 + margin) // align) * align)
        window.append(slice(lo, hi))
    return None if (window[0].stop - window[0].start) * (window[1].stop - window[1].start) > 0.8 * h * w \
        else tuple(window)


def _touches_edge(found: np.ndarray, box: Window) -> bool:
    """Whether what was found inside a window reaches one of its edges that is not the image's."""
    h, w = found.shape[1:]
    (r0, r1), (c0, c1) = ((b.start, b.stop) for b in box)
    return bool((r0 > 0 and found[:, r0].any()) or (r1 < h and found[:, r1 - 1].any())
                or (c0 > 0 and found[:, :, c0].any()) or (c1 < w and found[:, :, c1 - 1].any()))


def _kept_slices(coarse_labels: np.ndarray, spec: dict) -> np.ndarray:
    """Which slices of the coarse stack hold a structure the post-processing would keep: for a label kept as its
    largest component, only the slices of the coarse stack's largest component (stacked as if adjacent)."""
    keep = np.zeros(coarse_labels.shape[0], bool)
    largest = set(spec.get("largest_component", []))
    for value in range(1, int(coarse_labels.max(initial=0)) + 1):
        mask = coarse_labels == value
        if not mask.any():
            continue
        if int(value) in largest:
            mask = mask.astype(np.uint8)
            postprocess.keep_largest_component(mask, 1)
        keep |= mask.any(axis=(1, 2))
    return keep
