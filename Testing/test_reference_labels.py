"""Every shipped model's labels on the bundled samples, voxel for voxel, against hashes recorded from the code as it
was before a refactoring: consolidation must not change a single label.

int8 labels depend on the CPU: ONNX Runtime picks its integer kernels by instruction set (AMX, VNNI, AVX-512, AVX2),
and they round differently, so each int8 reference is recorded per kernel class (``onnx-int8@avx2``) and checked on
machines of that class. fp32 labels have been the same on AVX2 and AVX-512 machines.

Regenerate (only when a model or the engine is meant to change, and say so in the commit); int8 entries of other
kernel classes are kept, so run it on each class there is a reference for:
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


def int8_kernels() -> str:
    """The integer kernel family ONNX Runtime uses on this CPU (best first, as its dispatch picks)."""
    from LightSegLib.machine import machine

    isa = machine()["isa"] or {}
    for flag, name in (("AMX", "amx"), ("AVX512-VNNI", "avx512-vnni"), ("AVX-VNNI", "avx-vnni"),
                       ("AVX-512", "avx512")):
        if isa.get(flag):
            return name
    return "avx2"


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
                key = f"{card.id}/{backend}{'-int8@' + int8_kernels() if int8 else ''}/{sample}"
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
    int8, _, kernels = int8.partition("@")
    if backend == "torch":
        pytest.importorskip("torch")
    if kernels and kernels != int8_kernels():
        pytest.skip(f"int8 reference for {kernels} kernels; this CPU uses {int8_kernels()} (int8 rounding differs)")
    got = labels_digest(model_id, backend, int8 == "int8", sample)
    assert got == _reference()[key], f"{key}: labels changed (voxels per label {got['counts']})"


def test_every_shipped_model_has_a_reference():
    """On some CPU class at least, for int8."""
    recorded = {key.split("@")[0] + "/" + key.split("/")[-1] if "@" in key else key for key in _reference()}
    wanted = {key.split("@")[0] + "/" + key.split("/")[-1] if "@" in key else key for key, *_ in cases()}
    assert wanted <= recorded, f"shipped models without reference labels: {sorted(wanted - recorded)}"


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    sys.path.insert(0, str(REPO))
    kept = {key: value for key, value in _reference().items() if "@" in key and f"@{int8_kernels()}/" not in key}
    fresh = {key: labels_digest(*rest) for key, *rest in cases()}
    REFERENCE.write_text(json.dumps(dict(sorted({**kept, **fresh}.items())), indent=1) + "\n")
