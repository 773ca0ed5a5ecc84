"""TinyUNet student: a narrow U-Net built from cascaded multi-receptive-field (CMRF) blocks.

Our reading of TinyU-Net (Chen et al., MICCAI 2024): a CMRF block expands nothing; a 1x1 conv halves the
channels, a cascade of depthwise 3x3 convs grows the receptive field (3, 5, 7, ...) cheaply, all cascade
outputs are concatenated and fused by a 1x1 conv, with a residual. Depthwise work is tiny, so the net's cost
sits in the 1x1 convs and stays far below a plain U-Net of the same widths.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

from .blocks import encode_decode, pad_to_multiple


class CMRFBlock(nn.Module):
    def __init__(self, cin: int, cout: int, cascade: int = 3):
        super().__init__()
        mid = max(1, cout // 2)
        self.reduce = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        self.cascade = nn.ModuleList(
            nn.Sequential(nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False), nn.BatchNorm2d(mid),
                          nn.ReLU(inplace=True)) for _ in range(cascade))
        self.fuse = nn.Sequential(nn.Conv2d(mid * (cascade + 1), cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.project = None if cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.project is None else self.project(x)
        feats = [self.reduce(x)]
        for stage in self.cascade:
            feats.append(stage(feats[-1]))
        return self.relu(self.fuse(torch.cat(feats, dim=1)) + identity)


class TinyUNet(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 2, widths=(16, 32, 64, 128, 256), cascade: int = 3):
        super().__init__()
        widths = [int(w) for w in widths]
        self.widths = widths
        self.multiple = 2 ** (len(widths) - 1)
        # A plain 3x3 stem: a 1-channel input gives a CMRF block nothing to split.
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        self.encoders = nn.ModuleList(CMRFBlock(widths[max(i - 1, 0)], w, cascade) for i, w in enumerate(widths))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.decoders = nn.ModuleList(CMRFBlock(widths[i + 1] + widths[i], widths[i], cascade)
                                      for i in range(len(widths) - 2, -1, -1))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, h, w = pad_to_multiple(x, self.multiple)
        x = self.stem(x)
        x = encode_decode(x, self.encoders, self.pool, self.decoders, itertools.repeat(self.up))
        return self.head(x)[:, :, :h, :w]
