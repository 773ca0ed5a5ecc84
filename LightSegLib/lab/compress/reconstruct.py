"""CPRUN reconstruction: turn a pruned network into a fresh, regular net of the same family.

A pruned net is an irregular module tree (a pickle, not a spec). Rebuilding it with ``nets.build`` from the kept
per-stage widths gives an ordinary checkpoint ({"model", "architecture"}) that ``lightseg export``, the torch
backend and further training understand. Weights are taken from the pruned net wherever the tensors have the
same shape (all of them when every layer of a stage kept the same count, as local or per-stage pruning does),
otherwise the overlapping leading block is copied and the rest keeps its fresh initialisation.
"""
from __future__ import annotations

import torch
from torch import nn

from ...errors import LightSegError
from .prune import stage_widths


def transfer_weights(source: dict, target: nn.Module) -> dict:
    """Copy ``source`` (a state dict) into ``target`` by name: whole tensors when shapes match, the leading
    overlapping block otherwise. Returns counts {"exact", "partial", "missing"}."""
    counts = {"exact": 0, "partial": 0, "missing": 0}
    state = target.state_dict()
    with torch.no_grad():
        for key, dst in state.items():
            src = source.get(key)
            if src is None or src.dim() != dst.dim():
                counts["missing"] += 1
                continue
            if src.shape == dst.shape:
                dst.copy_(src)
                counts["exact"] += 1
                continue
            if dst.dim() == 0:
                dst.copy_(src)
                counts["exact"] += 1
                continue
            region = tuple(slice(0, min(a, b)) for a, b in zip(src.shape, dst.shape))
            dst[region].copy_(src[region])
            counts["partial"] += 1
    target.load_state_dict(state)
    return counts


def reconstruct(pruned: nn.Module, spec: dict, example_input: torch.Tensor | None = None):
    """``(new_net, new_spec, counts)``: ``nets.build(spec | {"widths": kept stage widths})`` initialised from
    the pruned net's weights, ready to fine-tune (or to compare with the same narrow net trained from scratch)."""
    from ..nets import build

    if "widths" not in spec:
        raise LightSegError(f"architecture {spec.get('name')!r} has no width list to rebuild")
    new_widths = stage_widths(pruned, example_input)
    if len(new_widths) != len(spec["widths"]):
        raise LightSegError(f"pruned net has {len(new_widths)} stages, spec {len(spec['widths'])}")
    new_spec = dict(spec, widths=[int(w) for w in new_widths])
    net = build(new_spec)
    counts = transfer_weights(pruned.state_dict(), net)
    net.train(pruned.training)
    return net, new_spec, counts
