"""Which stage (index into the spec's ``widths``) each layer of our U-Net families belongs to.

Per-stage pruning ratios and the CPRUN reconstruction both work in the nets' own vocabulary (a width list), so
layers are mapped to stages by their module names: ``encoders.i`` -> i, ``decoders.k``/``ups.k`` -> the scale
they rebuild (``len(widths) - 2 - k``), LFU-Net's ``nodes.i_j`` -> i, TinyUNet's ``stem`` -> 0; output heads
belong to no stage (their out-channels are the classes and are never pruned).
"""
from __future__ import annotations

import re

from torch import nn


def stage_of(name: str, n_stages: int) -> int | None:
    parts = name.split(".")
    if not parts or not parts[0]:
        return None
    head = parts[0]
    if head in ("encoders",) and len(parts) > 1:
        return int(parts[1])
    if head in ("decoders", "ups") and len(parts) > 1:
        return n_stages - 2 - int(parts[1])
    if head == "nodes" and len(parts) > 1:
        m = re.fullmatch(r"(\d+)_(\d+)", parts[1])
        return int(m.group(1)) if m else None
    if head == "stem":
        return 0
    return None


def stage_blocks(model: nn.Module) -> dict[int, list[tuple[str, nn.Module]]]:
    """Stage -> the blocks whose output carries that stage's width (encoder/decoder blocks, LFU nodes)."""
    n = len(model.widths)
    out: dict[int, list] = {i: [] for i in range(n)}
    for name, module in model.named_modules():
        parts = name.split(".")
        if len(parts) == 2 and parts[0] in ("encoders", "decoders", "nodes"):
            out[stage_of(name, n)].append((name, module))
    return out


def stage_convs(model: nn.Module) -> dict[int, list[nn.Module]]:
    """Stage -> every Conv2d/ConvTranspose2d inside it (the pruning-ratio scope of that stage)."""
    n = len(model.widths)
    out: dict[int, list] = {i: [] for i in range(n)}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            s = stage_of(name, n)
            if s is not None:
                out[s].append(module)
    return out


def head_layers(model: nn.Module) -> list[nn.Module]:
    """Output convolutions (class logits): their out-channels must stay."""
    heads = []
    for name, module in model.named_modules():
        if name in ("head",) or (name.startswith("heads.") and name.count(".") == 1):
            heads.append(module)
    return heads
