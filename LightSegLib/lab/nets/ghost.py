"""Ghost module (GhostNet, Han et al. 2020): half the output channels from an ordinary conv, the rest from a
cheap depthwise 3x3 on those, so a 3x3 conv's cost drops by about the ratio (2) at the same output width."""
from __future__ import annotations

import math

import torch
from torch import nn


class GhostModule(nn.Module):
    """Drop-in for ``nn.Conv2d(cin, cout, k, stride, padding=k//2, bias=False)``: primary conv -> ceil(cout/ratio)
    channels, cheap depthwise 3x3 -> the remaining ``cout - primary`` channels, concatenated.

    The cheap branch is a plain depthwise conv (groups = primary channels) with ``ratio - 1`` outputs per input,
    cropped to the channels still needed; BN and activation stay outside, as for the conv it replaces."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, ratio: int = 2,
                 dw_size: int = 3, bias: bool = False, stride: int = 1):
        super().__init__()
        self.out_channels = out_channels
        primary = math.ceil(out_channels / ratio)
        self.primary = nn.Conv2d(in_channels, primary, kernel_size, stride=stride, padding=kernel_size // 2,
                                 bias=bias)
        self.cheap = nn.Conv2d(primary, primary * (ratio - 1), dw_size, padding=dw_size // 2, groups=primary,
                               bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary(x)
        z = self.cheap(y)
        return torch.cat([y, z], dim=1)[:, :self.out_channels]
