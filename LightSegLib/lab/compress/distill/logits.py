"""Logit distillation with temperature (Hinton et al. 2015), per pixel for segmentation."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LogitKD(nn.Module):
    """``T^2 * KL(softmax(t / T) || softmax(s / T))`` averaged over pixels: T > 1 exposes the teacher's
    relative confidence in the wrong classes (dark knowledge); T^2 keeps gradient size independent of T."""

    def __init__(self, temperature: float = 2.0):
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        teacher = teacher_logits.detach()
        if teacher.shape[-2:] != student_logits.shape[-2:]:
            teacher = F.interpolate(teacher, size=student_logits.shape[-2:], mode="bilinear", align_corners=False)
        log_p_s = F.log_softmax(student_logits / t, dim=1)
        log_p_t = F.log_softmax(teacher / t, dim=1)
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)  # per pixel
        return kl.mean() * t * t
