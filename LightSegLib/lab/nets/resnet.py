"""ResNet50 classifier (pneumonia chest X-ray), a plain module whose bottleneck widths are part of its spec.

Why our own and not MONAI's: CPGResNet50 prunes the channels inside each bottleneck and rebuilds a narrower net,
so the inner widths (``mids``: one ``[conv1, conv2]`` pair per bottleneck) must be constructor arguments, and
``conv="ghost"`` must build the Ghost-decomposed variant from the same spec so a compressed checkpoint loads like
any other. Layout: torchvision's ResNet50 v1.5 (stride on the 3x3 conv, stride-2 7x7 stem + max-pool, projection
shortcuts without bias), one grey channel in.

``forward`` returns class logits; ``forward_cam`` also returns the class activation map (Zhou et al. 2016): the
last stage's features weighted by the classifier, which is exact for global-average-pooled linear heads, so the
explanation costs one 1x1 projection and no gradients.
"""
from __future__ import annotations

import torch
from torch import nn

from .ghost import GhostModule

STAGE_WIDTHS = (64, 128, 256, 512)
STAGE_BLOCKS = (3, 4, 6, 3)
EXPANSION = 4


def full_mids() -> list[list[int]]:
    return [[w, w] for w, n in zip(STAGE_WIDTHS, STAGE_BLOCKS) for _ in range(n)]


def block_stages() -> list[int]:
    """Stage index of each bottleneck, in order."""
    return [s for s, n in enumerate(STAGE_BLOCKS) for _ in range(n)]


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, conv: str = "standard") -> list[nn.Module]:
    if conv == "ghost":
        layer = GhostModule(cin, cout, k, stride=stride)
    elif conv == "standard":
        layer = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)
    else:
        raise ValueError(f"unknown conv kind {conv!r} (standard or ghost)")
    return [layer, nn.BatchNorm2d(cout)]


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid1: int, mid2: int, cout: int, stride: int, conv: str):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(cin, mid1, 1, conv=conv)
        self.conv2, self.bn2 = conv_bn(mid1, mid2, 3, stride, conv=conv)
        self.conv3, self.bn3 = conv_bn(mid2, cout, 1, conv=conv)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(*conv_bn(cin, cout, 1, stride, conv=conv))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)


class ResNet50Classifier(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 2, mids: list | None = None, conv: str = "standard"):
        super().__init__()
        mids = full_mids() if mids is None else [list(map(int, m)) for m in mids]
        if len(mids) != sum(STAGE_BLOCKS):
            raise ValueError(f"resnet50 has {sum(STAGE_BLOCKS)} bottlenecks, got {len(mids)} mid widths")
        self.mids = mids
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
                                  nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
        blocks, cin = [], 64
        for i, stage in enumerate(block_stages()):
            first = i == 0 or block_stages()[i - 1] != stage
            stride = 2 if first and stage > 0 else 1
            cout = STAGE_WIDTHS[stage] * EXPANSION
            blocks.append(Bottleneck(cin, mids[i][0], mids[i][1], cout, stride, conv))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for block in self.blocks:  # zero-init the last BN of each residual branch: the net starts as identities
            nn.init.zeros_(block.bn3.weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))

    def forward_cam(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, cam): cam is (N, classes, h, w) at the last stage's resolution, and its spatial mean
        plus the bias equals the logits."""
        f = self.features(x)
        cam = torch.einsum("nchw,kc->nkhw", f, self.fc.weight)
        return cam.mean(dim=(2, 3)) + self.fc.bias, cam
