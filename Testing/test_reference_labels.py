"""Every shipped model's labels on the bundled samples, voxel for voxel, against hashes recorded from the code as it
was before a refactoring: consolidation must not change a single label.

Regenerate (only when a model or the engine is meant to change, and say so in the commit):
    python Testing/test_reference_labels.py --write
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
REFERENCE = Path(__file__).resolve().parent / "reference_labels.json"
SAMPLES = REPO / "Resources" / "Samples"
SAMPLE_OF = {"MR": ["acdc_patient002_ED.nii.gz", "acdc_patient002_ES.nii.gz"], "CT": ["totalseg_example_ct_sm.nii.gz"]}


def cases():
    """(key, model id, backend, int8, sample) for every shipped model, its int8 version and its torch checkpoint."""
    from LightSegLib.registry import list_models

    for card in list_models():
        if card.task == "classification":  # no labels to compare: Testing/test_cxr.py checks the classifier
            continue
        variants = [("onnx", False)]
        if card.has_int8():
            variants.append(("onnx", True))
        if "torch_file" in card.entry and card.path("torch_file").is_file():
            variants.append(("torch", False))
        for backend, int8 in variants:
            for sample in SAMPLE_OF[card.modality]:
                key = f"{card.id}/{backend}{'-int8' if int8 else ''}/{sample}"
                yield key, card.id, backend, int8, sample


def labels_digest(model_id: str, backend: str, int8: bool, sample: str) -> dict:
    import SimpleITK as sitk

    from LightSegLib import get_model, read_image, segment_image

    labels = sitk.GetArrayFromImage(segment_image(read_image(SAMPLES / sample), get_model(model_id), backend=backend,
                                                  threads=2, int8=int8).labelmap)
    values, counts = np.unique(labels, return_counts=True)
    return {"sha256": hashlib.sha256(np.ascontiguousarray(labels, np.uint8).tobytes()).hexdigest(),
            "shape": list(labels.shape), "counts": {str(v): int(c) for v, c in zip(values, counts)}}


def _reference() -> dict:
    return json.loads(REFERENCE.read_text())


@pytest.mark.parametrize("key", sorted(_reference()))
def test_labels_identical_to_reference(key):
    model_id, variant, sample = key.split("/")
    backend, _, int8 = variant.partition("-")
    if backend == "torch":
        pytest.importorskip("torch")
    got = labels_digest(model_id, backend, int8 == "int8", sample)
    assert got == _reference()[key], f"{key}: labels changed (voxels per label {got['counts']})"


def test_every_shipped_model_has_a_reference():
    assert {key for key, *_ in cases()} <= set(_reference()), "a shipped model has no reference labels"


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    sys.path.insert(0, str(REPO))
    REFERENCE.write_text(json.dumps({key: labels_digest(*rest) for key, *rest in cases()}, indent=1) + "\n")
