"""Reader for the MSD / nnU-Net layout (``dataset.json`` with split lists of image/label paths).

Volumes are preprocessed with ``LightSegLib.preprocess`` exactly as the inference engine does (orientation,
per-volume intensity statistics, in-plane resampling), so training sees the pixels a deployed model will see.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ... import preprocess
from ...errors import LightSegError


def read_split(root, split: str) -> list[dict]:
    """Entries of one split of ``root/dataset.json`` with absolute ``image``/``label`` paths."""
    root = Path(root)
    path = root / "dataset.json"
    if not path.is_file():
        raise LightSegError(f"no dataset.json in {root} (expected the MSD / nnU-Net layout)")
    document = json.loads(path.read_text())
    if split not in document or not isinstance(document[split], list):
        known = [k for k, v in document.items() if isinstance(v, list)]
        raise LightSegError(f"split {split!r} not in {path} (lists: {', '.join(known)})")
    entries = []
    for item in document[split]:
        item = {"image": item, "label": None} if isinstance(item, str) else dict(item)
        for key in ("image", "label"):
            if item.get(key):
                item[key] = str((root / item[key]).resolve())
        entries.append(item)
    return entries


@dataclass
class Case:
    """One preprocessed volume: ``image`` [n, h, w] float32 and ``label`` [n, h, w] uint8 on the model grid,
    plus what is needed to map predictions back to the file's grid (for metrics in the original geometry)."""

    name: str
    image: np.ndarray
    label: np.ndarray | None
    geometry: preprocess.PlaneGeometry
    orientation: preprocess.Orientation
    native_label: np.ndarray | None  # oriented, original in-plane grid
    spacing_zyx: tuple[float, float, float]  # oriented, original grid


def case_from(name: str, prepared: preprocess.Prepared, native_label: np.ndarray | None) -> Case:
    """A Case from a prepared volume and its oriented label on the input grid."""
    label = None
    if native_label is not None:
        native_label = np.ascontiguousarray(native_label, dtype=np.uint8)
        label = prepared.label_to_model(native_label)
    return Case(name, prepared.model_slices(), label, prepared.geometry, prepared.orientation, native_label,
                prepared.spacing_zyx)


def load_case(entry: dict, prep: dict) -> Case:
    """``prep``: a checkpoint's preprocessing (``preprocess.Preprocessing.from_prep``)."""
    image = sitk.ReadImage(entry["image"])
    prepared = preprocess.Preprocessing.from_prep(prep).prepare(image)
    native = None
    if entry.get("label"):
        lab = sitk.ReadImage(entry["label"])
        if lab.GetSize() != image.GetSize():
            raise LightSegError(f"label and image sizes differ for {entry['image']}")
        native = prepared.orientation.apply(sitk.GetArrayFromImage(lab))
    return case_from(Path(entry["image"]).name.split(".")[0], prepared, native)
