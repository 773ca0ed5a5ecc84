"""CPGResNet50's hierarchical channel pruning: inside every ResNet bottleneck, the channels after the BatchNorm of
its first two convolutions are ranked by |BN gamma| (network slimming's importance) and the weakest removed, with
one ratio per stage.

Why inside the bottlenecks only: the residual stream's channels are summed across every block of a stage, so
removing one touches a whole stage at once; the inner channels are private to one block and hold most of the
weights (stage 4's 3x3 convs alone are 7M of ResNet50's 23.5M). Why per-stage ratios: deep stages are wide and
redundant, shallow ones are narrow and carry the image's detail. The pruned net is rebuilt from its width spec
(``mids``) and the kept filters copied in, so it saves, loads and exports like any other checkpoint; kept
channels are ordered by importance, so a later Ghost split keeps the strongest half as its primary convolution.
"""
from __future__ import annotations

import torch
from torch import nn

from ...errors import LightSegError
from ..nets.resnet import STAGE_BLOCKS, ResNet50Classifier, block_stages


def _keep(bn: nn.BatchNorm2d, ratio: float) -> torch.Tensor:
    n = bn.num_features
    kept = max(1, int(round(n * (1.0 - ratio))))
    return torch.argsort(bn.weight.detach().abs(), descending=True)[:kept]


def _copy_bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, idx: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst, name).data.copy_(getattr(src, name).data[idx])
    dst.num_batches_tracked.data.copy_(src.num_batches_tracked.data)


def prune_bottlenecks(net: ResNet50Classifier, stage_ratios) -> tuple[ResNet50Classifier, dict]:
    """A new, narrower net (and its spec) with each bottleneck's inner channels cut by its stage's ratio."""
    ratios = [float(r) for r in stage_ratios]
    if len(ratios) != len(STAGE_BLOCKS):
        raise LightSegError(f"{len(ratios)} stage ratios for ResNet50's {len(STAGE_BLOCKS)} stages")
    if any(not 0.0 <= r < 1.0 for r in ratios):
        raise LightSegError(f"pruning ratios {ratios} outside [0, 1)")
    if any(type(m).__name__ == "GhostModule" for m in net.modules()):
        raise LightSegError("prune before Ghost conversion")
    kept = []
    for block, stage in zip(net.blocks, block_stages()):
        kept.append((_keep(block.bn1, ratios[stage]), _keep(block.bn2, ratios[stage])))
    spec = {"name": "resnet50", "in_channels": net.stem[0].in_channels, "num_classes": net.fc.out_features,
            "mids": [[len(a), len(b)] for a, b in kept]}
    new = ResNet50Classifier(**{k: v for k, v in spec.items() if k != "name"})
    new.stem.load_state_dict(net.stem.state_dict())
    new.fc.load_state_dict(net.fc.state_dict())
    with torch.no_grad():
        for old_b, new_b, (i1, i2) in zip(net.blocks, new.blocks, kept):
            new_b.conv1.weight.copy_(old_b.conv1.weight[i1])
            _copy_bn(new_b.bn1, old_b.bn1, i1)
            new_b.conv2.weight.copy_(old_b.conv2.weight[i2][:, i1])
            _copy_bn(new_b.bn2, old_b.bn2, i2)
            new_b.conv3.weight.copy_(old_b.conv3.weight[:, i2])
            new_b.bn3.load_state_dict(old_b.bn3.state_dict())
            if old_b.downsample is not None:
                new_b.downsample.load_state_dict(old_b.downsample.state_dict())
    return new.train(net.training), spec
