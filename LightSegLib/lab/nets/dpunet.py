"""DPU-Net: a U-Net whose stages are dilated parallel convolution (DPC) blocks with residual connections.

A DPC block runs parallel 3x3 branches with dilations (1, 2, 4) on the same input, each producing a share of
the output channels, so one stage sees three receptive fields for the cost of one 3x3 conv; BN + ReLU on the
concatenation, a second (plain) 3x3 conv, and an identity (or 1x1-projected) residual. Channel-variation scheme:
stage widths grow slowly and decrease on the way up instead of doubling at every scale (default
[16, 24, 32, 48, 64]), which keeps the deep, low-resolution stages (most of a U-Net's parameters) narrow.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

from .blocks import conv3x3, encode_decode, pad_to_multiple


def split_channels(total: int, parts: int) -> list[int]:
    """``total`` channels over ``parts`` branches as evenly as possible (first branches get the remainder)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class DPCBlock(nn.Module):
    def __init__(self, cin: int, cout: int, dilations=(1, 2, 4), conv: str = "standard"):
        super().__init__()
        shares = split_channels(cout, len(dilations))
        # Ghost convs are not dilated: the parallel dilated branches stay ordinary convs in a Ghost variant.
        self.branches = nn.ModuleList(conv3x3(cin, c, "standard", d) for c, d in zip(shares, dilations) if c > 0)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv3x3(cout, cout, conv)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.project = None if cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.project is None else self.project(x)
        y = self.relu(self.bn1(torch.cat([b(x) for b in self.branches], dim=1)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + identity)


class DPUNet(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 2, widths=(16, 24, 32, 48, 64),
                 dilations=(1, 2, 4), conv: str = "standard"):
        super().__init__()
        widths = [int(w) for w in widths]
        self.widths = widths
        self.multiple = 2 ** (len(widths) - 1)
        self.encoders = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.encoders.append(DPCBlock(cin, w, dilations, conv))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.decoders = nn.ModuleList(DPCBlock(widths[i + 1] + widths[i], widths[i], dilations, conv)
                                      for i in range(len(widths) - 2, -1, -1))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, h, w = pad_to_multiple(x, self.multiple)
        x = encode_decode(x, self.encoders, self.pool, self.decoders, itertools.repeat(self.up))
        return self.head(x)[:, :, :h, :w]
