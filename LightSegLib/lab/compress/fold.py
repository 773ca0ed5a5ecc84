"""Resolution folding: drop a trained U-Net's (or LFU-Net's) full-resolution stage and run the rest at half
resolution.

After pruning, a narrow U-Net (4 channels at full resolution) is bound by memory traffic and per-layer overhead
on its largest maps, not by MACs: its first encoder stage, last decoder stage, last up-convolution and head take
about half of its CPU time. Folding a one-channel input 2 x 2 into channels (space-to-depth) gives 4 channels at
half resolution: the input shape the second encoder stage was trained on when the first stage is 4 wide (the
pruned student 4-8-16-24-40), so every deeper layer keeps its trained weights; a fresh head predicts 2 x 2
sub-pixel logits. Fine-tune (or distill) afterwards.
"""
from __future__ import annotations

from torch import nn

from ...errors import LightSegError
from .reconstruct import transfer_weights


def fold_unet(net: nn.Module, spec: dict, log=print):
    """``(folded_net, folded_spec, counts)`` for a trained ``unet`` or ``lfunet`` spec: widths[1:], fold 2, the
    weights of the deeper stages shifted into place. U-Net: encoders i+1 -> i, decoders and up-convolutions kept
    but the last. LFU-Net: node (i, j) -> (i - 1, j), which has the same inputs (the nested skips of a scale only
    involve that scale and the one below); the heads are fresh."""
    from ..nets import build

    if spec.get("name") not in ("unet", "lfunet") or int(spec.get("fold", 1)) != 1:
        raise LightSegError("folding takes an unfolded 'unet' or 'lfunet' (other families have no such stage)")
    widths = [int(w) for w in spec["widths"]]
    if len(widths) < 3:
        raise LightSegError(f"widths {widths}: too shallow to drop a stage")
    folded_channels = int(spec.get("in_channels", 1)) * 4
    if widths[0] != folded_channels:
        log(f"note: stage 2 was trained on {widths[0]} channels, the fold gives {folded_channels}:"
            " its first convolution is copied in part")
    new_spec = dict(spec, widths=widths[1:], fold=2)
    folded = build(new_spec)
    source = _shifted_lfunet(net) if spec["name"] == "lfunet" else _shifted_unet(net, len(widths) - 2)
    counts = transfer_weights(source, folded)
    folded.train(net.training)
    return folded, new_spec, counts


def _shifted_unet(net: nn.Module, last: int) -> dict:
    """``last``: index of the dropped (full-resolution) decoder and up-convolution."""
    source = {}
    for key, value in net.state_dict().items():
        part, index, rest = key.split(".", 2) if key.count(".") >= 2 else (key, None, None)
        if part == "encoders" and int(index) > 0:
            source[f"encoders.{int(index) - 1}.{rest}"] = value
        elif part in ("decoders", "ups") and int(index) < last:
            source[key] = value
    return source


def _shifted_lfunet(net: nn.Module) -> dict:
    source = {}
    for key, value in net.state_dict().items():
        part, node, rest = key.split(".", 2)
        if part == "nodes":
            scale, column = (int(v) for v in node.split("_"))
            if scale > 0:
                source[f"nodes.{scale - 1}_{column}.{rest}"] = value
    return source
