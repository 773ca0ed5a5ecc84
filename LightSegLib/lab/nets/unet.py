"""Reference U-Net (Ronneberger et al. 2015) with BN: the teacher, and the width-list model pruning rebuilds."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvBNReLU, DoubleConv, encode_decode, pad_to_multiple


class UNet(nn.Module):
    """``widths`` = channels per stage, shallow to deep (e.g. [64, 128, 256, 512, 1024]); ``len(widths) - 1``
    poolings. Decoder: 2x2 transposed conv to the skip's width, concat, double conv. Any H, W (padded inside).

    ``fold`` > 1 runs the whole U-Net at 1/fold resolution: the input is folded fold x fold into channels
    (space-to-depth) and the head's fold² x num_classes maps unfolded into full-resolution logits (a learned
    sub-pixel output). A narrow U-Net spends about half its CPU time in its full-resolution layers (few channels
    on the largest maps, padded to the SIMD width); folding removes them (``compress.fold``).

    ``refine`` > 0 adds a full-resolution refiner to a folded net: two conv layers of that width read the input
    beside the unfolded logits and add a correction to them, so an outline can follow the image's own edges to the
    pixel (a folded net answers in fold x fold cells). Its last conv starts at zero: a folded net's weights
    loaded into it give the same answers until it trains."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, widths=(64, 128, 256, 512, 1024),
                 conv: str = "standard", fold: int = 1, refine: int = 0):
        super().__init__()
        widths = [int(w) for w in widths]
        self.widths = widths
        self.fold = int(fold)
        self.multiple = 2 ** (len(widths) - 1) * self.fold
        self.encoders = nn.ModuleList()
        cin = in_channels * self.fold ** 2
        for w in widths:
            self.encoders.append(DoubleConv(cin, w, conv))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in range(len(widths) - 2, -1, -1):
            self.ups.append(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2))
            self.decoders.append(DoubleConv(2 * widths[i], widths[i], conv))
        self.head = nn.Conv2d(widths[0], num_classes * self.fold ** 2, 1)
        self.refiner = None
        if refine:
            last = nn.Conv2d(int(refine), num_classes, 3, padding=1)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.refiner = nn.Sequential(ConvBNReLU(in_channels + num_classes, int(refine), conv),
                                         ConvBNReLU(int(refine), int(refine), conv), last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, h, w = pad_to_multiple(x, self.multiple)
        full = x
        if self.fold > 1:
            x = F.pixel_unshuffle(x, self.fold)
        x = self.head(encode_decode(x, self.encoders, self.pool, self.decoders, self.ups))
        if self.fold > 1:
            x = F.pixel_shuffle(x, self.fold)
        if self.refiner is not None:
            x = x + self.refiner(torch.cat([full, x], dim=1))
        return x[:, :, :h, :w]
