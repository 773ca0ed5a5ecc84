"""A tiny, fully known ONNX model for testing the engine's mechanics (not its accuracy).

Its logits are lines ``k * x - k^2 / (2 (K - 1))`` of the normalised centre-slice intensity ``x``, so the
predicted label is ``round(x * (K - 1))``: every step of the pipeline (orientation, normalisation,
resampling, 2.5D context, back to the grid) can be checked against a prediction computed independently.
The default window [0, 97] HU puts no integer intensity on a tie between two labels. With ``values`` only those
label values (and background) compete, so the labels need not be 1..N: the prediction is the nearest of them.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TERMINOLOGY = {"contextName": "Segmentation category and type - DICOM master list",
               "category": ["SCT", "123037004", "Anatomical Structure"],
               "type": ["SCT", "10200004", "Liver"]}


def quantiser_onnx(path: Path, num_classes: int = 4, context: int = 0, values: list[int] | None = None) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    channels = 2 * context + 1
    k = np.arange(num_classes, dtype=np.float32)
    weight = np.zeros((num_classes, channels, 1, 1), np.float32)
    weight[:, context, 0, 0] = k
    bias = (-(k ** 2) / (2 * (num_classes - 1))).astype(np.float32)
    if values is not None:
        bias[[c for c in range(1, num_classes) if c not in values]] = -1e4
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "W", "B"], ["logits"])],
        "quantiser",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", channels, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes, "H", "W"])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def make_model_folder(folder: Path, *, model_id: str = "test-quantiser", num_classes: int = 4, context: int = 0,
                      orientation: str = "LPS", inplane: dict | None = None, normalization: dict | None = None,
                      postprocessing: dict | None = None, modality: str = "CT",
                      values: list[int] | None = None) -> Path:
    """A registry folder holding one quantiser model; point LIGHTSEG_MODELS_DIR at it."""
    from LightSegLib.lab.publish.writer import register_model
    from LightSegLib.registry import sha256_of

    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / f"{model_id}.onnx"
    if values is not None:
        num_classes = max(values) + 1
    quantiser_onnx(onnx_path, num_classes, context, values)
    colours = [[221, 130, 101], [181, 85, 57], [206, 110, 84], [152, 55, 13], [249, 180, 111]]
    register_model({
        "id": model_id, "title": "Intensity quantiser (test)", "task": "test", "modality": modality,
        "status": "preview",
        "labels": [{"value": v, "name": f"level {v}", "color": colours[(v - 1) % len(colours)],
                    "terminology": TERMINOLOGY} for v in values or range(1, num_classes)],
        "input": {"orientation": orientation, "inplane": inplane or {"mode": "keep"}, "context_slices": context,
                  "batch_slices": 4},
        "normalization": normalization or {"type": "window", "window": [0, 97]},
        "postprocessing": postprocessing or {},
        "file": onnx_path.name, "sha256": sha256_of(onnx_path),
        "params": int(num_classes * (2 * context + 2)), "macs": 0,
        "training_data": "none (analytic test model)", "licence": "Apache-2.0", "metrics": {},
    }, folder)
    return folder


def expected_labels(array: np.ndarray, lo: float = 0, hi: float = 97, num_classes: int = 4,
                    values: list[int] | None = None) -> np.ndarray:
    x = (np.clip(array.astype(np.float64), lo, hi) - lo) / (hi - lo)
    if values is None:
        return np.round(x * (num_classes - 1)).astype(np.uint8)
    levels = np.array([0, *values])
    return levels[np.abs(x[..., None] * max(values) - levels).argmin(-1)].astype(np.uint8)


def read_registry_json(folder: Path) -> dict:
    return json.loads((folder / "models.json").read_text())
