"""Building blocks shared by the segmentation nets (plain torch, so Torch-Pruning can trace every layer)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ghost import GhostModule


def conv3x3(cin: int, cout: int, conv: str = "standard", dilation: int = 1) -> nn.Module:
    """A bias-free 3x3 conv (BN follows), or its Ghost replacement: ``conv`` selects, so every net can be
    built Ghost-ified from the same width list."""
    if conv == "standard":
        return nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False)
    if conv == "ghost":
        if dilation != 1:
            raise ValueError("ghost convs are not dilated")
        return GhostModule(cin, cout, 3)
    raise ValueError(f"unknown conv kind {conv!r} (standard or ghost)")


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, conv: str = "standard", dilation: int = 1):
        super().__init__(conv3x3(cin, cout, conv, dilation), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DoubleConv(nn.Sequential):
    """Two conv3x3 + BN + ReLU: the U-Net stage."""

    def __init__(self, cin: int, cout: int, conv: str = "standard"):
        super().__init__(ConvBNReLU(cin, cout, conv), ConvBNReLU(cout, cout, conv))


def encode_decode(x: torch.Tensor, encoders, pool, decoders, ups) -> torch.Tensor:
    """The U shape our U-Nets share: encoder stages with pooling between them; each decoder takes its skip
    concatenated with the upsampled deeper map (``ups``: one upsampler per decoder)."""
    skips = []
    for i, enc in enumerate(encoders):
        x = enc(x if i == 0 else pool(x))
        skips.append(x)
    x = skips.pop()
    for up, dec in zip(ups, decoders):
        x = dec(torch.cat([skips.pop(), up(x)], dim=1))
    return x


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    """Zero-pad H and W (bottom/right) up to a multiple of ``multiple`` so any slice size goes through the
    pooling pyramid; the caller crops the logits back to (h, w). Written with shape arithmetic only, so the
    ONNX export keeps H and W dynamic."""
    h, w = x.shape[-2], x.shape[-1]
    ph = (multiple - h % multiple) % multiple
    pw = (multiple - w % multiple) % multiple
    return F.pad(x, [0, pw, 0, ph]), h, w


def count_params(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))
