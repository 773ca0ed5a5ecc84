"""PNG overlays of a labelmap on its volume, written with SimpleITK (no plotting library needed).

CT is shown in the soft-tissue window radiologists read the abdomen in (W400 / L40 HU): a 1-99 percentile
stretch spans air to bone and washes out the contrast between an organ and its neighbours. Labels are drawn at
full saturation so the outline stands out from the grey, whatever the card's (often pastel) segment colour."""
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


SOFT_TISSUE_HU = (40 - 400 / 2, 40 + 400 / 2)  # level 40, width 400


def vivid(colour) -> np.ndarray:
    """The colour at full saturation and brightness, same hue (pastel orange -> orange)."""
    c = np.asarray(colour, np.float32)
    lo, hi = float(c.min()), float(c.max())
    if hi <= lo:
        return np.array([255.0, 255.0, 0.0], np.float32)  # grey label colour: yellow, unlike any CT grey
    return (c - lo) / (hi - lo) * 255.0


def _boundary(label: np.ndarray) -> np.ndarray:
    """Labelled pixels with a 4-neighbour of another value."""
    padded = np.pad(label, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    differs = ((padded[:-2, 1:-1] != centre) | (padded[2:, 1:-1] != centre)
               | (padded[1:-1, :-2] != centre) | (padded[1:-1, 2:] != centre))
    return differs & (label > 0)


def overlay_png(image: sitk.Image, labelmap: sitk.Image, labels: list[dict], path, orientation: str = "LPS",
                count: int = 6, alpha: float = 0.35, modality: str | None = None) -> Path:
    """``modality="CT"``: the soft-tissue window; otherwise a 1-99 percentile stretch (MRI has no scale)."""
    orient = preprocess.orientation_for(image.GetDirection(), orientation)
    volume = orient.apply(sitk.GetArrayViewFromImage(image))
    label = orient.apply(sitk.GetArrayViewFromImage(labelmap))
    spacing = orient.spacing(image.GetSpacing())
    if modality == "CT":
        spec, stats = {"type": "window", "window": list(SOFT_TISSUE_HU)}, None
    else:
        spec = {"type": "percentile", "lower": 1, "upper": 99}
        stats = preprocess.intensity_stats(volume, spec)
    colours = np.zeros((256, 3), np.float32)
    for item in labels:
        colours[item["value"]] = vivid(item["color"])
    tiles = []
    for z in pick_slices(label, count):
        grey = preprocess.normalise(volume[z][None], spec, stats)[0] * 255
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
