"""LightSegLib: lightweight CPU segmentation of medical volumes, and the compression toolkit behind it.

Inference needs numpy, SimpleITK and ONNX Runtime only; training and compression import torch lazily.
"""
from .errors import Cancelled, LightSegError, LightSegWarning
from .inference import Result, segment, segment_image
from .io import read_image, write_output
from .registry import get_model, list_models

__version__ = "0.1.0"
__all__ = ["Cancelled", "LightSegError", "LightSegWarning", "Result", "segment", "segment_image", "read_image", "write_output",
           "get_model", "list_models", "__version__"]
