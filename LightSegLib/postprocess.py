"""Post-processing declared by a model card, on the uint8 labelmap in place (bounding boxes keep it cheap)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def _bbox(mask: np.ndarray) -> tuple[slice, ...] | None:
    z = np.flatnonzero(mask.any(axis=(1, 2)))
    if z.size == 0:
        return None
    sub = mask[z[0]:z[-1] + 1]
    y = np.flatnonzero(sub.any(axis=(0, 2)))
    x = np.flatnonzero(sub.any(axis=(0, 1)))
    return slice(z[0], z[-1] + 1), slice(y[0], y[-1] + 1), slice(x[0], x[-1] + 1)


def keep_largest_component(labels: np.ndarray, value: int) -> None:
    """Keep the largest 3D (26-connected) component of ``value``: a 2D network sees one slice at a time and
    leaves false positives in slices far from the organ."""
    mask = labels == value
    box = _bbox(mask)
    if box is None:
        return
    sub = mask[box]
    components, count = ndimage.label(sub, structure=np.ones((3, 3, 3), bool))
    if count <= 1:
        return
    # counted a few slices at a time: bincount widens its input to 64-bit, a full-size copy otherwise
    sizes = np.zeros(count + 1, np.int64)
    for z in range(0, components.shape[0], 16):
        sizes += np.bincount(components[z:z + 16].ravel(), minlength=count + 1)
    sizes[0] = 0
    drop = sub & (components != int(np.argmax(sizes)))
    labels[box][drop] = 0


def fill_holes(labels: np.ndarray, value: int) -> None:
    """Fill holes of ``value`` slice by slice (a cavity enclosed in-plane belongs to the structure)."""
    mask = labels == value
    box = _bbox(mask)
    if box is None:
        return
    sub_labels = labels[box]
    for z in range(sub_labels.shape[0]):
        slice_mask = sub_labels[z] == value
        if slice_mask.any():
            filled = ndimage.binary_fill_holes(slice_mask)
            sub_labels[z][filled & ~slice_mask] = value


def apply(labels: np.ndarray, spec: dict) -> np.ndarray:
    for value in spec.get("largest_component", []):
        keep_largest_component(labels, value)
    for value in spec.get("fill_holes", []):
        fill_holes(labels, value)
    return labels


def voxel_counts(labels: np.ndarray, values) -> dict[int, int]:
    return {int(v): int(np.count_nonzero(labels == v)) for v in values}
