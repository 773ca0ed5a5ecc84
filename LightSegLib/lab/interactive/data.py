"""Labelled 2D slices for click training and the click benchmark, split by patient.

Every structure on every slice is an object to click on: ACDC RV / myocardium / LV (MR, [0, 1] per volume),
LiTS liver and NIH pancreas (8-bit CT coding, about clip(HU, 0, 255), the coding the session applies to HU CT).
A structure can be left out of training (``left_out``) and measured as unseen by the benchmark.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..data.msd import read_split
from ..data.reader import split_ids


@dataclass
class Slice:
    image: np.ndarray          # (H, W) float32 or uint8, in the coding the session feeds the net
    label: np.ndarray          # (H, W) uint8 label values
    patient: str
    source: str                # "acdc", "lits", "nih"
    full_view: bool = True     # False for NIH slices that were centre-cropped and zoomed (scale augmentation)


# structure name -> (source, label value)
STRUCTURES = {"rv": ("acdc", 1), "myocardium": ("acdc", 2), "lv": ("acdc", 3), "liver": ("lits", 1),
              "pancreas": ("nih", 1)}


def _acdc(root: Path, part: str) -> list[Slice]:
    """ACDC keeps its own patient split: ``training`` for training, ``validation`` for the benchmark."""
    out = []
    for entry in read_split(root, "training" if part == "train" else "validation"):
        image = sitk.GetArrayFromImage(sitk.ReadImage(entry["image"])).astype(np.float32)
        label = sitk.GetArrayFromImage(sitk.ReadImage(entry["label"])).astype(np.uint8)
        patient = Path(entry["image"]).name.split("_")[0]
        out += [Slice(image[z], label[z], patient, "acdc") for z in range(image.shape[0]) if label[z].any()]
    return out


def _npz_set(root: Path, source: str, part: str, holdout: dict) -> list[Slice]:
    files = {p.stem: p for p in sorted(root.glob("*.npz"))}
    ids = split_ids(list(files), holdout)
    chosen = ids["test"] if part == "test" else ids["train"] + ids["val"]
    out = []
    for pid in chosen:
        with np.load(files[pid]) as z:
            images, labels = z["image"], z["label"]
            margins = z["crop_margin"] if "crop_margin" in z.files else np.zeros(len(images), int)
        for k in range(len(images)):
            if labels[k].any():
                out.append(Slice(images[k], (labels[k] > 0).astype(np.uint8), pid, source, int(margins[k]) == 0))
    return out


def load_slices(cfg: dict, part: str) -> list[Slice]:
    """``part`` 'train' or 'test' (the held-out patients the benchmark reads)."""
    d = cfg["data"]
    holdout = {"test": 0, "seed": int(d.get("seed", 0))}
    slices = _acdc(Path(d["acdc"]), part)
    slices += _npz_set(Path(d["lits"]), "lits", part, dict(holdout, test=int(d.get("lits_test", 20))))
    slices += _npz_set(Path(d["nih"]), "nih", part, dict(holdout, test=int(d.get("nih_test", 10))))
    return slices


def objects(slices: list[Slice], structures, min_pixels: int = 30) -> list[tuple[int, str]]:
    """(slice index, structure) pairs with at least ``min_pixels`` of the structure."""
    out = []
    for i, s in enumerate(slices):
        for name in structures:
            source, value = STRUCTURES[name]
            if s.source == source and int((s.label == value).sum()) >= min_pixels:
                out.append((i, name))
    return out


def object_mask(s: Slice, name: str) -> np.ndarray:
    return s.label == STRUCTURES[name][1]
