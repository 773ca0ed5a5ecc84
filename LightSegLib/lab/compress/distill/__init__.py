"""Distillation losses (each a small nn.Module whose own parameters train with the student) and feature capture.

Convention for every loss: ``loss(student_tensors, teacher_tensors)``; teacher tensors are detached inside, so
gradients reach the student (and the loss's adapters) and never the teacher.
"""
from .features import FeatureCapture, FeatureKD
from .gcn_spatial import GraphKD
from .logits import LogitKD
from .mavkd import MAVKD

__all__ = ["FeatureCapture", "FeatureKD", "GraphKD", "LogitKD", "MAVKD"]
