"""Multi-layer feature distillation through 1x1 adapters (as used for TinyUnet), and hook-based capture.

Why hooks: the nets stay plain modules with one output (what ONNX export wants); features at any named module
are read with forward hooks, for the student (with gradients) and the teacher (under no_grad) alike.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class FeatureCapture:
    """Records the outputs of ``names`` (module names, e.g. ``"encoders.4"``) on every forward pass.

    Use as a context manager or call ``remove()``; ``features`` lists the tensors in ``names`` order."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            from ....errors import LightSegError

            raise LightSegError(f"no module named {', '.join(missing)} (e.g. {', '.join(list(modules)[1:6])})")
        self.names = list(names)
        self._out: dict[str, torch.Tensor] = {}
        self._hooks = [modules[n].register_forward_hook(self._hook(n)) for n in self.names]

    def _hook(self, name):
        def fn(module, inputs, output):
            self._out[name] = output[0] if isinstance(output, (tuple, list)) else output
        return fn

    @property
    def features(self) -> list[torch.Tensor]:
        return [self._out[n] for n in self.names]

    def clear(self) -> None:
        self._out.clear()

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def adapter(cin: int, cout: int) -> nn.Conv2d:
    """1x1 conv mapping student to teacher channels; identity-initialised when the widths agree (so identical
    features give exactly zero loss at the start)."""
    conv = nn.Conv2d(cin, cout, 1, bias=False)
    if cin == cout:
        nn.init.dirac_(conv.weight)
    return conv


def relative_mse(a: torch.Tensor, t: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MSE divided by the teacher's mean square: scale-free, so layers of different magnitude weigh alike and a
    loss weight of about 1 sits beside DiceCE (raw feature MSE can be 10x larger than the task loss)."""
    return F.mse_loss(a, t) / (t.pow(2).mean() + eps)


def match_size(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if x.shape[-2:] == like.shape[-2:]:
        return x
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class FeatureKD(nn.Module):
    """Mean over chosen layer pairs of ``w_i * MSE(adapter_i(s_i), t_i) / mean(t_i^2)`` (``relative=False``: plain
    MSE); student maps are resized to the teacher's grid when they differ."""

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int], weights=None,
                 relative: bool = True):
        super().__init__()
        if len(student_channels) != len(teacher_channels):
            raise ValueError("one teacher layer per student layer")
        self.adapters = nn.ModuleList(adapter(s, t) for s, t in zip(student_channels, teacher_channels))
        self.weights = [1.0] * len(self.adapters) if weights is None else [float(w) for w in weights]
        self.relative = relative

    def forward(self, student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
        total = student_feats[0].new_zeros(())
        for a, w, s, t in zip(self.adapters, self.weights, student_feats, teacher_feats):
            t = t.detach()
            a_s = match_size(a(s), t)
            total = total + w * (relative_mse(a_s, t) if self.relative else F.mse_loss(a_s, t))
        return total / len(self.adapters)
