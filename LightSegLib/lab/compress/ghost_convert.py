"""Ghost conversion of a trained model: every plain 3x3 convolution becomes a ``GhostModule`` (nets/ghost.py).

Why initialise from the trained conv: the primary conv takes the original's first ``ceil(cout / ratio)``
filters, so those output channels are exactly the trained ones; the cheap depthwise branch starts as an identity
(a Dirac kernel), so the remaining channels start as copies of primary channels instead of noise, and a short
fine-tune recovers the rest. For nets built with a ``conv`` option (unet, lfunet, dpunet, resnet50) the converted model is
exactly ``nets.build(spec | {"conv": "ghost"})``, so it saves and exports as an ordinary checkpoint.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..nets.ghost import GhostModule


def convertible(conv: nn.Module) -> bool:
    """A plain (not grouped, not dilated, stride 1, 'same'-padded) 3x3 Conv2d."""
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.groups == 1
            and conv.dilation == (1, 1) and conv.stride == (1, 1) and conv.padding == (1, 1))


def ghost_from_conv(conv: nn.Conv2d, ratio: int = 2) -> GhostModule:
    ghost = GhostModule(conv.in_channels, conv.out_channels, conv.kernel_size[0], ratio=ratio,
                        bias=conv.bias is not None, stride=conv.stride[0])
    primary = ghost.primary.out_channels
    with torch.no_grad():
        ghost.primary.weight.copy_(conv.weight[:primary])
        if conv.bias is not None:
            ghost.primary.bias.copy_(conv.bias[:primary])
            ghost.cheap.bias.zero_()
        nn.init.dirac_(ghost.cheap.weight, groups=primary)
    return ghost.to(conv.weight.device)


def ghostify(model: nn.Module, ratio: int = 2, inplace: bool = False, names=None) -> tuple[nn.Module, int]:
    """Replace the convertible 3x3 convs (see ``convertible``), or exactly the plain convs named in ``names``
    (a family's Ghost variant may also replace 1x1 and strided convs); returns (model, number converted)."""
    model = model if inplace else copy.deepcopy(model)
    targets = [(name, m) for name, m in model.named_modules()
               if (name in names and type(m) is nn.Conv2d if names is not None else convertible(m))]
    for name, conv in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, ghost_from_conv(conv, ratio))
    return model, len(targets)


def ghost_spec(spec: dict) -> dict | None:
    """The architecture spec of the converted net when the family builds Ghost variants itself, else None."""
    if spec.get("name") in ("unet", "lfunet", "dpunet", "resnet50"):
        return dict(spec, conv="ghost")
    return None


def convert_checkpoint_net(net: nn.Module, spec: dict) -> tuple[nn.Module, dict | None, int]:
    """Ghostify ``net`` and, where possible, move the result into ``nets.build(ghost_spec)`` (strict load) so
    it is an ordinary net again. Returns (net, spec or None, converted count)."""
    from ..nets import build

    new_spec = ghost_spec(spec)
    if new_spec is None:
        converted, n = ghostify(net)
        return converted, None, n
    fresh = build(new_spec)
    # Convert exactly the convs the family's Ghost variant replaces (DPU-Net keeps its dilated branches).
    wanted = {name for name, m in fresh.named_modules() if isinstance(m, GhostModule)}
    converted, n = ghostify(net, names=wanted)
    fresh.load_state_dict(converted.state_dict(), strict=True)
    fresh.train(net.training)
    return fresh, new_spec, n
