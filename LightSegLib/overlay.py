"""PNG overlays of a labelmap on its volume, written with SimpleITK (no plotting library needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import preprocess


def pick_slices(labels: np.ndarray, count: int) -> list[int]:
    """Slices spread over the labelled range (or the whole stack when nothing was found)."""
    present = np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1))
    lo, hi = (present[0], present[-1]) if present.size else (0, labels.shape[0] - 1)
    return sorted(set(np.linspace(lo, hi, min(count, hi - lo + 1)).round().astype(int).tolist()))


def _boundary(label: np.ndarray) -> np.ndarray:
    """Labelled pixels with a 4-neighbour of another value."""
    padded = np.pad(label, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    differs = ((padded[:-2, 1:-1] != centre) | (padded[2:, 1:-1] != centre)
               | (padded[1:-1, :-2] != centre) | (padded[1:-1, 2:] != centre))
    return differs & (label > 0)


def overlay_png(image: sitk.Image, labelmap: sitk.Image, labels: list[dict], path, orientation: str = "LPS",
                count: int = 6, alpha: float = 0.35) -> Path:
    orient = preprocess.orientation_for(image.GetDirection(), orientation)
    volume = orient.apply(sitk.GetArrayViewFromImage(image))
    label = orient.apply(sitk.GetArrayViewFromImage(labelmap))
    spacing = orient.spacing(image.GetSpacing())
    stats = preprocess.intensity_stats(volume, {"type": "percentile", "lower": 1, "upper": 99})
    colours = np.zeros((256, 3), np.float32)
    for item in labels:
        colours[item["value"]] = item["color"]
    tiles = []
    for z in pick_slices(label, count):
        grey = preprocess.normalise(volume[z][None], {"type": "percentile"}, stats)[0] * 255
        rgb = np.repeat(grey[..., None], 3, axis=-1)
        mask = label[z] > 0
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colours[label[z][mask]]
        edge = _boundary(label[z])  # solid outlines keep neighbouring structures of similar colour apart
        rgb[edge] = colours[label[z][edge]]
        # square pixels on screen, whatever the in-plane spacing
        h, w = rgb.shape[:2]
        scale = 256 / max(h * spacing[1], w * spacing[2])
        size = (max(1, round(h * spacing[1] * scale)), max(1, round(w * spacing[2] * scale)))
        tiles.append(preprocess.resize_slices(rgb[None], size)[0])
    height = max(t.shape[0] for t in tiles)
    row = np.concatenate([np.pad(t, ((0, height - t.shape[0]), (0, 4), (0, 0))) for t in tiles], axis=1)
    png = sitk.GetImageFromArray(np.clip(row, 0, 255).astype(np.uint8), isVector=True)
    sitk.WriteImage(png, str(path))
    return Path(path)
