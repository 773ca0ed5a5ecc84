"""LFU-Net: a light U-Net with full (nested, dense) skip connections and deep supervision.

Every decoder node sees all same-scale nodes before it (shallow encoder output and earlier sub-network
decoders) plus the upsampled deeper node, as in UNet++; each full-resolution sub-network output X(0, j) gets a
1x1 supervision head. Widths are based on 8 ([8, 16, 32, 64, 128]) so the whole net stays near 0.5 M params.
Training mode returns the heads' logits (deepest sub-network first); eval mode returns only that one, so the
exported graph is the full-depth network.

``fold`` > 1 runs the net at 1/fold resolution, as in ``unet.UNet`` (space-to-depth in, sub-pixel heads out):
the full-resolution nodes are where a narrow LFU-Net spends most of its CPU time (``compress.fold``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import DoubleConv, pad_to_multiple


class LFUNet(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 2, widths=(8, 16, 32, 64, 128),
                 conv: str = "standard", deep_supervision: bool = True, fold: int = 1):
        super().__init__()
        widths = [int(w) for w in widths]
        self.widths = widths
        self.depth = len(widths) - 1
        self.fold = int(fold)
        self.multiple = 2 ** self.depth * self.fold
        self.deep_supervision = deep_supervision
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        # nodes["i_j"]: scale i (0 = full resolution), column j (0 = encoder).
        self.nodes = nn.ModuleDict()
        for i, w in enumerate(widths):
            self.nodes[f"{i}_0"] = DoubleConv(in_channels * self.fold ** 2 if i == 0 else widths[i - 1], w, conv)
        for j in range(1, self.depth + 1):
            for i in range(0, self.depth - j + 1):
                self.nodes[f"{i}_{j}"] = DoubleConv(j * widths[i] + widths[i + 1], widths[i], conv)
        self.heads = nn.ModuleList(nn.Conv2d(widths[0], num_classes * self.fold ** 2, 1) for _ in range(self.depth))

    def forward(self, x: torch.Tensor):
        x, h, w = pad_to_multiple(x, self.multiple)
        if self.fold > 1:
            x = F.pixel_unshuffle(x, self.fold)
        grid: dict[tuple[int, int], torch.Tensor] = {}
        for i in range(self.depth + 1):
            grid[i, 0] = self.nodes[f"{i}_0"](x if i == 0 else self.pool(grid[i - 1, 0]))
        for j in range(1, self.depth + 1):
            for i in range(0, self.depth - j + 1):
                inputs = [grid[i, k] for k in range(j)] + [self.up(grid[i + 1, j - 1])]
                grid[i, j] = self.nodes[f"{i}_{j}"](torch.cat(inputs, dim=1))
        if self.training and self.deep_supervision:
            return [self._head(j, grid[0, j], h, w) for j in range(self.depth, 0, -1)]
        return self._head(self.depth, grid[0, self.depth], h, w)

    def _head(self, j: int, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.heads[j - 1](x)
        return (F.pixel_shuffle(x, self.fold) if self.fold > 1 else x)[:, :, :h, :w]
