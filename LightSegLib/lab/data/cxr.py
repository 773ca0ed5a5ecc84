"""Kermany paediatric chest X-rays (``ROOT/{NORMAL,PNEUMONIA}/*.jpeg``): listing, a split by patient, loading.

Why split by patient: one child has several images (``person1000_bacteria_2931`` and ``..._2932``), and an image
of the same child on both sides of a split makes validation figures optimistic. Patient numbers repeat across the
two classes, so the key carries the class too.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from ...errors import LightSegError

CLASSES = ("NORMAL", "PNEUMONIA")
_PATIENT = [re.compile(r"^(person\d+)_"), re.compile(r"^((?:NORMAL2-)?IM-\d+)-")]


def patient_of(path: Path) -> str:
    for pattern in _PATIENT:
        m = pattern.match(path.name)
        if m:
            return f"{path.parent.name}:{m.group(1)}"
    return f"{path.parent.name}:{path.stem}"


def list_images(root) -> list[tuple[Path, int]]:
    root = Path(root)
    items = [(p, label) for label, cls in enumerate(CLASSES)
             for p in sorted((root / cls).glob("*.jp*g")) + sorted((root / cls).glob("*.png"))]
    if not items:
        raise LightSegError(f"no images under {root}/NORMAL or {root}/PNEUMONIA")
    return items


def _draw(salt: str, path: Path) -> float:
    """A number in [0, 1) fixed by the salt and the image's child: every image of a child draws the same."""
    digest = hashlib.sha256(f"{salt}:{patient_of(path)}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2 ** 32


def split(items, val_fraction: float = 0.2, seed: int = 0) -> dict[str, list[tuple[Path, int]]]:
    """Deterministic by patient: a patient's hash decides its side, so adding images never moves a patient."""
    out = {"train": [], "val": []}
    for path, label in items:
        out["val" if _draw(str(seed), path) < val_fraction else "train"].append((path, label))
    return out


def split_with_held_out(items, held_out: float = 0.5, val_fraction: float = 0.15,
                        seed: int = 0) -> dict[str, list[tuple[Path, int]]]:
    """train / val / held_out for a model trained on the whole folder, by child.

    ``held_out``: that share of the children the shipped model never saw (``unseen_patients`` of ``old_subset``),
    drawn by child hash, kept for the final scoring alone, so the shipped model and a new one meet exactly the same
    unseen children. Every other image is split by child as ``split`` does (``val_fraction``: threshold,
    temperature, appearance limits, model choice). The held-out draw has its own salt, independent of that split.
    """
    unseen = {patient_of(p) for p, _ in unseen_patients(items, old_subset(items))}
    kept = {patient_of(p) for p, _ in items
            if patient_of(p) in unseen and _draw(f"{seed}:held-out", p) < held_out}
    rest = [(p, label) for p, label in items if patient_of(p) not in kept]
    return split(rest, val_fraction, seed) | {"held_out": [(p, label) for p, label in items
                                                           if patient_of(p) in kept]}


def old_subset(items) -> list[tuple[Path, int]]:
    """The 1,000 + 1,000 images the folder held until 2026-12-05, which trained pneumonia-cxr 0.1.0 (the data's
    README): NORMAL, the sorted names with every 4th dropped, first 1,000; PNEUMONIA, every 3rd sorted name from the
    first, first 1,000. ``split(old_subset(items))`` gives that model's 1,607 / 393 parts again."""
    normal = sorted((p for p, label in items if label == 0), key=lambda p: p.name)
    pneumonia = sorted((p for p, label in items if label == 1), key=lambda p: p.name)
    return ([(p, 0) for i, p in enumerate(normal) if i % 4 != 3][:1000]
            + [(p, 1) for i, p in enumerate(pneumonia) if i % 3 == 0][:1000])


def unseen_patients(items, seen) -> list[tuple[Path, int]]:
    """The images of ``items`` whose child has no image in ``seen``: new patients to a model trained on ``seen``."""
    known = {patient_of(p) for p, _ in seen}
    return [(p, label) for p, label in items if patient_of(p) not in known]


#: The Kermany copy's image size; ``load_grey`` brings any other to it.
SOURCE = 224


def load_grey(items) -> tuple[np.ndarray, np.ndarray]:
    """(N, SOURCE, SOURCE) uint8 radiographs as read (the Kermany JPEGs are 8-bit: 50 KB an image, where float32
    would take 200) and (N,) int64 labels, for transformations that work before the preprocessing."""
    from ...classify import read_radiograph
    from ...cxr_prep import resize

    def grey(path):
        a = read_radiograph(path)
        return a if a.shape == (SOURCE, SOURCE) else resize(a, SOURCE)

    return np.stack([np.clip(np.round(grey(p)), 0, 255).astype(np.uint8) for p, _ in items]), labels(items)


def load(items, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 1, size, size) float32 network inputs and (N,) int64 labels, through the inference preprocessing."""
    from ...cxr_prep import prepare
    from ...classify import read_radiograph

    return np.concatenate([prepare(read_radiograph(p), size) for p, _ in items]), labels(items)


def labels(items) -> np.ndarray:
    return np.array([label for _, label in items], dtype=np.int64)
