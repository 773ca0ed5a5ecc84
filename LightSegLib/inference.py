"""The inference engine: volume in, labelmap on the same grid out. One path for the CLI, the Python API and
the Slicer logic.

Slices are processed in batches, from input pixels to labels, so memory stays bounded by the input, the
uint8 output and one batch of scores, whatever the volume size.
"""
from __future__ import annotations

import os
import threading
import warnings
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import SimpleITK as sitk

from . import domain, postprocess, preprocess, quality
from .errors import Cancelled, LightSegError, LightSegWarning
from .stages import INFER, POSTPROCESS
from .io import check_intensities
from .registry import ModelCard, get_segmenter
from .slice_plan import SlicePlan

Progress = Callable[[float, str], None]


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


class OnnxRunner:
    """ONNX Runtime on the CPU: the default backend (no torch needed)."""

    def __init__(self, path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Worker threads sleep between operators instead of spinning: on a laptop the other cores are busy
        # (Slicer, a browser), and a spinning pool steals them; measured faster for small and large models alike
        # on a shared 2-core machine (benchmarks/ct_engine.py).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types
            raise LightSegError(f"cannot load model file {path}: {str(err).splitlines()[0][:200]}") from None
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


def make_runner(card: ModelCard, backend: str = "onnx", threads: int | None = None, int8: bool = False):
    threads = threads or default_threads()
    if backend == "onnx":
        if int8 and not card.has_int8():
            raise LightSegError(f"model '{card.id}' has no int8 version")
        return OnnxRunner(card.verified_path("int8_file" if int8 else "file"), threads)
    plugin = _plugin_backends().get(backend)
    if plugin is None:
        known = ", ".join(["onnx", *_plugin_backends()])
        hint = (" (the torch backend needs the training install: pip install 'lightseglib[train]')"
                if backend == "torch" else "")
        raise LightSegError(f"unknown backend '{backend}' (use {known}){hint}")
    return plugin.load()(card, threads)


def _plugin_backends() -> dict:
    """Backends other installed parts offer (entry point group ``lightseglib.backends``): the workshop's torch
    backend registers there, so the engine runs it without the runtime importing the workshop."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group="lightseglib.backends")}


@dataclass
class Result:
    labelmap: sitk.Image
    seconds: dict[str, float] = field(default_factory=dict)
    voxels: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    quality: dict = field(default_factory=dict)
    slices_run: int = 0  # slices the network saw (fewer than the volume's with the card's z_search)


def _cancel_check(cancel) -> Callable[[], bool]:
    if cancel is None:
        return lambda: False
    if isinstance(cancel, threading.Event):
        return cancel.is_set
    return cancel


def segment_image(image: sitk.Image, card: ModelCard | str, runner=None, *, backend: str = "onnx",
                  threads: int | None = None, int8: bool = False, progress: Progress | None = None,
                  cancel=None, hu_offset: float | None = None) -> Result:
    """Segment a 3D SimpleITK image with a model card or id; the labelmap has the image's exact size, spacing,
    origin and direction. ``hu_offset`` is added to a CT's values first (one stored as HU + 1024 without its
    rescale needs -1024: such an input is refused without it)."""
    card = card if isinstance(card, ModelCard) else get_segmenter(card)
    report = progress or (lambda fraction, stage: None)
    cancelled = _cancel_check(cancel)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    if image.GetDimension() != 3:
        raise LightSegError(f"a 3D volume is needed, got {image.GetDimension()}D")
    check_intensities(image, "input")
    if hu_offset:
        image = domain.apply_hu_offset(image, hu_offset)
    runner = runner or make_runner(card, backend, threads, int8)
    seconds["load"] = time.perf_counter() - t0

    prepared = preprocess.Preprocessing.from_card(card).prepare(image)
    volume, depth = prepared.volume, prepared.depth
    batch = int(card.input.get("batch_slices", 8))
    sample = domain.sample_of(volume)
    domain.check_coding(card, sample)
    outside, notes = domain.input_reasons(card, image.GetSpacing(), image.GetSize(), sample)

    labels = np.zeros(volume.shape, dtype=np.uint8)
    confidence = quality.Confidence(card.num_classes)
    times = {"preprocess": 0.0, "infer": 0.0, "resample": 0.0}
    done = np.zeros(depth, bool)
    report(0.0, INFER)

    plan = SlicePlan.from_card(card)
    # What the network found, on its own grid: the plan draws its windows around it.
    model_fg = np.zeros((depth,) + prepared.geometry.model_hw, bool) if plan.uses_windows else None
    before = confidence.snapshot()
    for step in plan.passes(depth, labels, model_fg):
        if step.redo:
            confidence.restore(before)
        before = confidence.snapshot()
        box = step.window
        for i in range(0, len(step.slices), batch):
            if cancelled():
                raise Cancelled("cancelled")
            idx = step.slices[i:i + batch]
            t = time.perf_counter()
            x = prepared.batch_of(idx)
            times["preprocess"] += time.perf_counter() - t
            t = time.perf_counter()
            logits = runner(x) if box is None else _uncrop(runner(x[(Ellipsis,) + box]), x.shape, box)
            times["infer"] += time.perf_counter() - t
            t = time.perf_counter()
            pred = preprocess.argmax_classes(logits)
            if model_fg is not None:
                model_fg[idx] = pred > 0
            labels[idx] = prepared.geometry.labels_from_model(logits, pred)
            confidence.add(logits, pred)
            times["resample"] += time.perf_counter() - t
            done[idx] = True
            report(min(1.0, done.sum() / step.planned), INFER)
    report(1.0, INFER)
    seconds.update(times)

    if cancelled():
        raise Cancelled("cancelled")
    t = time.perf_counter()
    report(1.0, POSTPROCESS)
    names = card.label_names()
    labels = prepared.labels_back(labels)
    removed = postprocess.apply(labels, card.postprocessing)
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(image)
    counts = postprocess.voxel_counts(labels, names)
    assessed = quality.assess(card, volume, prepared.orientation.apply(labels), counts, removed, confidence)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    quality.mark_outside(assessed, outside + domain.organ_reasons({names[v]: n for v, n in counts.items()}, voxel_ml))
    seconds["postprocess"] = time.perf_counter() - t
    return Result(out, seconds, {names[v]: n for v, n in counts.items()}, notes, assessed, int(done.sum()))


def _uncrop(logits: np.ndarray, shape: tuple, box: tuple[slice, slice]) -> np.ndarray:
    """A window's logits on the whole model grid: background with certainty outside it."""
    full = np.zeros((shape[0], logits.shape[1]) + tuple(shape[2:]), np.float32)
    full[:, 1:] = -BACKGROUND_MARGIN
    full[(slice(None), slice(None)) + box] = logits
    return full


# Logit margin given to background outside a search window: a softmax probability of 1 - 1e-13.
BACKGROUND_MARGIN = 30.0


def _array_geometry_warnings(shape, spacing, direction) -> None:
    """A bare array's spacing is in SimpleITK's (x, y, z) order, the reverse of its [z, y, x] axes: say so when it
    looks reversed, and say which orientation is assumed without a direction."""
    if direction is None:
        warnings.warn("no direction given: array axes [z, y, x] are taken as the patient's LPS axes (x to the "
                      "left, y to the back, z to the head); pass direction= for other scans", LightSegWarning,
                      stacklevel=3)
    if spacing is None:
        return
    spacing = [float(s) for s in spacing]
    if len(spacing) != 3:
        raise LightSegError(f"spacing needs 3 values (x, y, z), got {len(spacing)}")
    thick = int(np.argmax(spacing))
    along = shape[2 - thick]  # array axis that the thickest spacing lands on
    if max(spacing) > 1.5 * min(spacing) and shape[thick] == min(shape) < along:
        warnings.warn(f"spacing {tuple(spacing)} is taken as (x, y, z), the reverse of the array's [z, y, x] axes "
                      f"{tuple(shape)}: it puts the thickest spacing on an axis with many voxels, not the one with "
                      f"fewest; did you mean "
                      f"{tuple(spacing[::-1])}?", LightSegWarning, stacklevel=3)


def segment(image, model, *, spacing=None, origin=None, direction=None, backend: str = "onnx",
            threads: int | None = None, int8: bool = False, progress: Progress | None = None, cancel=None):
    """Segment a SimpleITK image, or a numpy array ``[z, y, x]`` with its geometry, with a registered model.

    For an array, ``spacing`` and ``origin`` are in (x, y, z) order, as SimpleITK has them, and ``direction``
    is a 3x3 matrix; without a direction the array's axes are taken as LPS (a warning says so).

    Returns a uint8 labelmap on the same grid: a SimpleITK image for an image, a numpy array for an array.
    ``progress(fraction, stage)`` is called as slices are done; ``cancel`` (a threading.Event or a callable
    returning True) stops the work with ``Cancelled``.
    """
    card = model if isinstance(model, ModelCard) else get_segmenter(model)
    as_array = isinstance(image, np.ndarray)
    if as_array:
        if image.ndim != 3:
            raise LightSegError(f"a 3D array [z, y, x] is needed, got shape {image.shape}")
        _array_geometry_warnings(image.shape, spacing, direction)
        array = image
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        if spacing is not None:
            image.SetSpacing([float(s) for s in spacing])
        if origin is not None:
            image.SetOrigin([float(o) for o in origin])
        if direction is not None:
            image.SetDirection([float(d) for d in np.asarray(direction).ravel()])
    result = segment_image(image, card, backend=backend, threads=threads, int8=int8, progress=progress,
                           cancel=cancel)
    return sitk.GetArrayFromImage(result.labelmap) if as_array else result.labelmap
