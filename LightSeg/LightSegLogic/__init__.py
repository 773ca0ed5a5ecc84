"""Qt-free logic of the LightSeg Slicer module (tested headlessly with the slicer-core wheel).

A package, not a top-level ``LightSegLogic.py``: Slicer treats every ``.py`` file directly in
qt-scripted-modules/ as a module and would instantiate a class named like the file as one.
"""
# ruff: noqa: I001  (.logic must run first: it puts LightSegLib on sys.path when running from a source checkout)
from .logic import (REQUIRED_PACKAGES, STAGE_TEXT, JobState, LightSegLogic, MissingDependencyError,
                    OutputExistsError, SegmentationJob, missingPackages, pythonExecutable)
from .process import ProcessRunner
from LightSegLib.errors import Cancelled, LightSegError

__all__ = ["REQUIRED_PACKAGES", "STAGE_TEXT", "Cancelled", "JobState", "LightSegError", "LightSegLogic",
           "MissingDependencyError", "OutputExistsError", "ProcessRunner", "SegmentationJob", "missingPackages", "pythonExecutable"]
