"""Qt-free logic of the LightSeg Slicer module (tested headlessly with the slicer-core wheel), one module per concern:

- logic.py: ``LightSegLogic``, what the widget and scripts call, tying the others to one scene
- job.py: a segmentation job, the ``lightseg segment`` CLI in a child process (process.py), its progress and cancel
- results.py: the job's labelmap into MRML as named segments, on the input's grid and beside it in the hierarchy
- classification.py: a radiograph classified in-process, its activation map as a volume
- install.py: packages inference needs that Slicer lacks, installed only through the caller's installer
- clicks.py: ``SegmentClicks``, one segment refined with clicks (the Slicer effect and the web app drive it)
- measures.py: label arrays from segmentations, Dice against a reference, the cardiac function table
The words describing a model are LightSegLib.model_text, shared with ``lightseg models``.

A package, not a top-level ``LightSegLogic.py``: Slicer treats every ``.py`` file directly in
qt-scripted-modules/ as a module and would instantiate a class named like the file as one.
"""
# ruff: noqa: E402, I001  (LightSegLib must be importable before the modules below import it)
import sys
from pathlib import Path

try:
    import LightSegLib  # noqa: F401  (installed beside this package in the extension, or pip-installed)
except ImportError:  # running from a source checkout: LightSegLib sits two folders up
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from LightSegLib.errors import LightSegError

from .classification import ClassificationResult
from .clicks import SegmentClicks
from .install import MissingDependencyError, missingPackages
from .job import JobState, SegmentationJob
from .logic import LightSegLogic, OutputExistsError
from .process import ProcessRunner

__all__ = ["ClassificationResult", "JobState", "LightSegError", "LightSegLogic", "MissingDependencyError",
           "OutputExistsError", "ProcessRunner", "SegmentClicks", "SegmentationJob", "missingPackages"]
