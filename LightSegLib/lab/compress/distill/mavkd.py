"""MAVKD for DPU-Net: multi-scale adaptation-vector knowledge distillation.

At each chosen scale a learned channel-wise adaptation vector ``v`` (after a 1x1 adapter when the widths
differ) rescales the student's features towards the teacher's: the student is asked to carry the teacher's
information up to a per-channel gain, which a narrow student can match far more easily than raw activations.
Matching uses MSE on the adapted maps (relative to the teacher's mean square) plus a cosine term on the
channel descriptors (global average pooled), which is scale-free and so keeps the direction of the channel
profile right even when magnitudes differ.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .features import adapter, match_size, relative_mse


def cosine_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """1 - cos(a, b) per row, 0 where both vectors vanish (identical zero descriptors are a perfect match)."""
    na, nb = a.norm(dim=1), b.norm(dim=1)
    cos = (a * b).sum(dim=1) / (na * nb).clamp_min(eps)
    both_zero = (na < eps) & (nb < eps)
    return torch.where(both_zero, torch.zeros_like(cos), 1.0 - cos)


class MAVKD(nn.Module):
    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int], cos_weight: float = 1.0,
                 scale_weights=None):
        super().__init__()
        if len(student_channels) != len(teacher_channels):
            raise ValueError("one teacher scale per student scale")
        self.adapters = nn.ModuleList(adapter(s, t) for s, t in zip(student_channels, teacher_channels))
        self.vectors = nn.ParameterList(nn.Parameter(torch.ones(1, t, 1, 1)) for t in teacher_channels)
        self.cos_weight = float(cos_weight)
        self.scale_weights = [1.0] * len(self.adapters) if scale_weights is None else [float(w) for w in scale_weights]

    def adapt(self, i: int, s: torch.Tensor) -> torch.Tensor:
        return self.vectors[i] * self.adapters[i](s)

    def forward(self, student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
        total = student_feats[0].new_zeros(())
        for i, (s, t) in enumerate(zip(student_feats, teacher_feats)):
            t = t.detach()
            a = match_size(self.adapt(i, s), t)
            loss = relative_mse(a, t)
            if self.cos_weight:
                loss = loss + self.cos_weight * cosine_distance(a.mean(dim=(2, 3)), t.mean(dim=(2, 3))).mean()
            total = total + self.scale_weights[i] * loss
        return total / len(self.adapters)
