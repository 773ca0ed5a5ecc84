"""ResNet50 classifier (pneumonia task) from MONAI's ResNet, 2D: torchvision is not available here."""
from __future__ import annotations

from torch import nn


class ResNet50Classifier(nn.Module):
    """Returns class logits (N, num_classes). Built from scratch (no pretrained download: offline CPU project)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, widths=None):
        super().__init__()
        from monai.networks.nets import resnet50

        if widths is not None:
            raise ValueError("resnet50 has fixed widths")
        self.net = resnet50(spatial_dims=2, n_input_channels=in_channels, num_classes=num_classes)

    def forward(self, x):
        return self.net(x)
