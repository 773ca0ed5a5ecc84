"""One case from file to file: read, check, segment, write, and its summary. ``lightseg segment`` and a cohort's
workers (``batch``) run this same function, so a cohort's table says what a single ``lightseg segment`` says."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .stages import READ, WRITE

_RUNNERS: dict = {}


def runner_for(card, backend: str = "onnx", threads: int | None = None, int8: bool = False):
    """The model session for ``card``, made once per process and reused by every later case: a batch, or a Dask
    worker, loads a model once, not per case."""
    from .inference import make_runner

    key = (str(card.path()), card.sha256, backend, threads, int8)
    if key not in _RUNNERS:
        _RUNNERS[key] = make_runner(card, backend, threads, int8)
    return _RUNNERS[key]


def segment_case(card, source: Path, target: Path, *, frame=None, backend: str = "onnx", threads: int | None = None,
                 int8: bool = False, overwrite: bool = False, allow_gaps: bool = False,
                 hu_offset: float | None = None, progress=None) -> dict:
    """Segment ``source`` into ``target``; the summary: voxels and volume (mL) per label, quality, stage seconds,
    notes. A bad input raises LightSegError before the model is loaded, so it fails fast."""
    from .inference import segment_image
    from .io import read_image, write_output

    if threads:  # reading, resampling and post-processing too: SimpleITK would otherwise take every core
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    report = progress or (lambda fraction, stage: None)
    t = time.perf_counter()
    report(0.0, READ)
    notes: list[str] = []
    image = read_image(source, frame=frame, notes=notes, allow_gaps=allow_gaps)
    read_s = time.perf_counter() - t
    result = segment_image(image, card, runner_for(card, backend, threads, int8), progress=report,
                           hu_offset=hu_offset)
    notes += [note for note in result.notes if note not in notes]
    t = time.perf_counter()
    report(1.0, WRITE)
    write_output(result.labelmap, target, card.labels, overwrite=overwrite, notes=notes,
                 dicom={"source": source, "card": card, "quality": result.quality, "voxels": result.voxels})
    seconds = {READ: read_s, **result.seconds, WRITE: time.perf_counter() - t}
    if not any(result.voxels.values()):
        notes.append(f"nothing found: no {', '.join(result.voxels)} in this volume")
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    return {"input": str(source), "frame": frame, "output": str(target), "model": card.id, "version": card.version,
            "seconds": seconds, "total_seconds": sum(seconds.values()), "voxels": result.voxels,
            "volumes_ml": {name: n * voxel_ml for name, n in result.voxels.items()}, "notes": notes,
            "quality": result.quality, "status": card.status}
