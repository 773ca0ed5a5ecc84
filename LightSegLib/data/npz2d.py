"""Reader for folders of per-patient 2D slice files (``*.npz`` with ``image`` and ``label`` arrays [N, H, W]),
as in ``lits_liver_2d`` and ``nih_pancreas_2d``.

Splits are by file (= patient / volume), never by slice: the pancreas files hold zoomed copies of the same
slices (``crop_margin``), which must not leak between training and validation. Without a ``dataset.json`` the
split is a fixed, seeded 80/20 draw over the sorted file names (``split_fraction``, ``split_seed``).
Scattered slices are not a volume: use ``context_slices = 0`` with these folders.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import preprocess
from ..errors import LightSegError
from .msd import Case


def npz_files(root) -> list[Path]:
    files = sorted(Path(root).glob("*.npz"))
    if not files:
        raise LightSegError(f"no .npz slice files in {root}")
    return files


def split_files(root, split: str, fraction: float = 0.2, seed: int = 0) -> list[Path]:
    files = npz_files(root)
    order = np.random.default_rng(seed).permutation(len(files))
    n_val = max(1, int(round(len(files) * fraction)))
    chosen = {"validation": order[:n_val], "training": order[n_val:]}.get(split)
    if chosen is None:
        raise LightSegError(f"split {split!r} unknown for a slice folder (use training or validation)")
    return [files[i] for i in sorted(chosen)]


def load_npz_case(path: Path, prep: dict) -> Case:
    data = np.load(path)
    image, label = data["image"], data["label"].astype(np.uint8)
    if image.ndim != 3 or image.shape != label.shape:
        raise LightSegError(f"{path}: expected image and label arrays [N, H, W] of one shape")
    if int(prep.get("context_slices", 0)):
        raise LightSegError(f"{path}: scattered 2D slices have no neighbours; use context_slices = 0")
    # Pixel spacing is unknown in these sets: 'fit' (pad to square, resize) is the mode that makes sense.
    geometry = preprocess.plane_geometry(image.shape[1:], (1.0, 1.0), prep["inplane"])
    stats = preprocess.intensity_stats(image, prep["normalization"])
    x = geometry.to_model(preprocess.normalise(image, prep["normalization"], stats), float(prep.get("pad_value", 0.0)))
    t, b, l, r = geometry.pad
    padded = np.pad(label, ((0, 0), (t, b), (l, r))) if any(geometry.pad) else label
    y = preprocess.resize_slices(padded, geometry.model_hw, linear=False)
    return Case(path.stem, np.ascontiguousarray(x, np.float32), y, geometry, preprocess.IDENTITY, label, (1.0, 1.0, 1.0))
