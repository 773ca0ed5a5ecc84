"""Structured channel pruning of our plain U-Nets with Torch-Pruning's DependencyGraph (channels are removed,
not masked: the pruned net is smaller and faster).

Why Torch-Pruning and not hand-written slicing: a U-Net channel is shared by the encoder conv, its BN, the next
conv, the skip concatenation into a decoder conv (at an offset) and, in LFU-Net, several nested decoders and
deep-supervision heads; the dependency graph finds all of them. Known pitfalls handled here: the graph is traced
in training mode so every deep-supervision head is seen (eval mode only runs the last one), BN running stats are
frozen while tracing/estimating, output heads are ignored (their out-channels are the classes), and a forward pass
with a shape check follows every pruning step.

Importances: ``l1`` (L1 norm of filters, Li et al. 2017), ``bn`` (|BN gamma|, network slimming; train first with
``bn_l1_penalty`` added to the loss), ``taylor`` (|w * dL/dw| on real batches, Molchanov et al. 2019).
Ratios: one ``ratio`` for every layer (local), ``global_pruning`` to rank across layers, or ``stage_ratios``
(one per stage, shallow to deep; hierarchical as in CPGResNet50). A ratio is per channel: 0.5 keeps half the
channels of a layer, so about 75% of a plain conv's parameters go.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch
from torch import nn

from ...errors import LightSegError
from ..nets.blocks import count_params
from .layer_stages import head_layers, stage_blocks, stage_convs

IMPORTANCES = ("l1", "bn", "taylor")


def make_importance(kind: str):
    import torch_pruning as tp

    if kind == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1, target_types=[nn.modules.conv._ConvNd])
    if kind == "bn":
        return BNScaleOrL1()
    if kind == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise LightSegError(f"unknown importance {kind!r} (use {', '.join(IMPORTANCES)})")


class BNScaleOrL1:
    """Network slimming's BN-scale importance, and L1 of the filters for a group with no BatchNorm. Plain BN
    importance scores such groups as None, so Torch-Pruning skips them: in our U-Nets those are the transposed-
    conv upsamplers (concatenated, no BN), which then kept their full width, and the CPRUN rebuild could copy only
    part of them (the BN-pruned cardiac net lost the LV)."""

    def __init__(self):
        import torch_pruning as tp

        self.bn = tp.importance.BNScaleImportance()
        self.l1 = tp.importance.GroupMagnitudeImportance(p=1, target_types=[nn.modules.conv._ConvNd])

    def __call__(self, group):
        imp = self.bn(group)
        return self.l1(group) if imp is None else imp


def bn_l1_penalty(model: nn.Module, weight: float = 1e-4) -> torch.Tensor:
    """Network slimming's sparsity term ``weight * sum |gamma|`` over all BatchNorm scales: add it to the task
    loss during a sparsity-training phase so unimportant channels' gammas go to zero before ``bn`` pruning."""
    terms = [m.weight.abs().sum() for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.weight is not None]
    if not terms:
        return torch.zeros(())
    return weight * torch.stack(terms).sum()


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module):
    """Training mode (all deep-supervision heads run) without touching BN running statistics."""
    was_training = model.training
    saved = [(m, m.momentum) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m, _ in saved:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
    model.train()
    try:
        yield model
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.train(was_training)


def _as_list(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def output_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, list[tuple]]:
    """Output shapes in eval and (BN-frozen) training mode: what pruning must never change."""
    shapes = {}
    with torch.no_grad():
        was = model.training
        model.eval()
        shapes["eval"] = [tuple(o.shape) for o in _as_list(model(x))]
        with frozen_bn_stats(model):
            shapes["train"] = [tuple(o.shape) for o in _as_list(model(x))]
        model.train(was)
    return shapes


def check_forward(model: nn.Module, x: torch.Tensor, expected: dict[str, list[tuple]]) -> None:
    got = output_shapes(model, x)
    if got != expected:
        raise RuntimeError(f"pruning broke the network: output shapes {got}, expected {expected}")


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Out-channels of every conv (and transposed conv), by module name."""
    return {name: int(m.out_channels) for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))}


def stage_widths(model: nn.Module, x: torch.Tensor | None = None) -> list[int]:
    """Kept channels per stage: the channel count each stage block outputs (rounded mean over the stage's
    encoder/decoder blocks), i.e. the ``widths`` list a fresh net of this family would need."""
    if x is None:
        x = torch.zeros(1, _in_channels(model), 2 ** (len(model.widths) + 1), 2 ** (len(model.widths) + 1))
    seen: dict[int, list[int]] = {}
    hooks = []
    for stage, blocks in stage_blocks(model).items():
        for _, block in blocks:
            hooks.append(block.register_forward_hook(
                lambda m, i, o, s=stage: seen.setdefault(s, []).append(int(o.shape[1]))))
    try:
        with torch.no_grad(), frozen_bn_stats(model):
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return [int(round(sum(seen[s]) / len(seen[s]))) for s in sorted(seen)]


def widths(model: nn.Module, x: torch.Tensor | None = None) -> dict:
    """``{"stages": [...], "layers": {name: out_channels}}``: what pruning kept."""
    return {"stages": stage_widths(model, x), "layers": layer_widths(model)}


def _in_channels(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    raise LightSegError("model has no Conv2d")


def _default_loss(model: nn.Module, batch) -> torch.Tensor:
    """Cross-entropy (over every deep-supervision output) on a labelled batch: what Taylor importance needs."""
    x, y = batch
    y = y[:, 0].long() if y.dim() == 4 else y.long()
    return sum(nn.functional.cross_entropy(o, y) for o in _as_list(model(x)))


def accumulate_gradients(model: nn.Module, batches: Iterable, loss_fn: Callable | None = None) -> None:
    """Sum dL/dw over ``batches`` (BN stats untouched) for Taylor importance."""
    loss_fn = loss_fn or _default_loss
    model.zero_grad(set_to_none=True)
    with frozen_bn_stats(model):
        for batch in batches:
            loss_fn(model, batch).backward()


def _forward_training(model: nn.Module, x: torch.Tensor):
    """Torch-Pruning traces in eval mode; switch back so LFU-Net's deep-supervision heads are in the graph
    (BN statistics stay frozen by the caller's ``frozen_bn_stats``)."""
    model.train()
    return model(x)


def geometric_schedule(pruning_ratio: float, steps: int) -> list[float]:
    """Cumulative ratios after 0..steps steps, each step keeping the same fraction of the remaining channels.
    Torch-Pruning's default (linear) schedule makes the last step the harshest: at 0.9 in 3 steps it keeps
    0.7, 0.4, 0.1 of the channels, so the last step removes 75% of what is left (about 94% of the weights)."""
    keep = (1.0 - float(pruning_ratio)) ** (1.0 / int(steps))
    return [1.0 - keep ** i for i in range(int(steps) + 1)]


def prune(model: nn.Module, example_input: torch.Tensor, *, importance: str = "l1", ratio: float = 0.5,
          stage_ratios: list[float] | None = None, global_pruning: bool = False, steps: int = 1,
          batches: Callable[[], Iterable] | None = None, loss_fn: Callable | None = None,
          fine_tune: Callable[[nn.Module, int], None] | None = None, round_to: int | None = None,
          max_ratio: float = 0.95, log: Callable[[str], None] = lambda s: None) -> nn.Module:
    """Prune ``model`` in place (and return it) in ``steps`` geometric steps to the target ratio(s).

    ``batches()``: labelled (x, y) batches for Taylor importance (called before each step).
    ``fine_tune(model, step)``: called after each step (iterative prune -> fine-tune); it must leave the model
    in any mode, pruning resets what it needs. A forward pass checks the output shapes after every step.
    """
    import torch_pruning as tp

    if not hasattr(model, "widths"):
        raise LightSegError("pruning needs one of LightSeg's width-list nets (unet, lfunet, dpunet, tinyunet)")
    if any(type(m).__name__ == "GhostModule" for m in model.modules()):
        raise LightSegError("prune before Ghost conversion: a Ghost module's channel crop cannot be traced")
    if importance == "taylor" and batches is None:
        raise LightSegError("Taylor importance needs labelled batches (gradients of the loss)")
    n = len(model.widths)
    ratio_dict = None
    if stage_ratios is not None:
        if len(stage_ratios) != n:
            raise LightSegError(f"{len(stage_ratios)} stage ratios for a net with {n} stages")
        convs = stage_convs(model)
        ratio_dict = {tuple(convs[s]): float(r) for s, r in enumerate(stage_ratios) if convs[s]}
    for r in ([ratio] if stage_ratios is None else stage_ratios):
        if not 0.0 <= float(r) < 1.0:
            raise LightSegError(f"pruning ratio {r} outside [0, 1)")

    expected = output_shapes(model, example_input)
    params_before = count_params(model)
    with frozen_bn_stats(model):
        pruner = tp.pruner.MetaPruner(
            model, example_input, importance=make_importance(importance), global_pruning=global_pruning,
            pruning_ratio=float(ratio), pruning_ratio_dict=ratio_dict, iterative_steps=int(steps),
            iterative_pruning_ratio_scheduler=geometric_schedule,
            ignored_layers=head_layers(model), round_to=round_to, max_pruning_ratio=max_ratio,
            forward_fn=_forward_training, output_transform=lambda out: sum(o.sum() for o in _as_list(out)))
    for step in range(int(steps)):
        if importance == "taylor":
            accumulate_gradients(model, batches(), loss_fn)
        params_step = count_params(model)
        pruner.step()
        model.zero_grad(set_to_none=True)
        check_forward(model, example_input, expected)
        if count_params(model) == params_step and max(stage_ratios if stage_ratios is not None else [ratio]) > 0:
            # Seen with --global on TinyUNet: Torch-Pruning's global ranking skips groups whose importance
            # vector spans a concatenation (the CMRF cascade); say so instead of returning an unpruned net.
            raise LightSegError("Torch-Pruning removed no channel at this step"
                                + (" (global ranking; try local or per-stage ratios)" if global_pruning else ""))
        log(f"prune step {step + 1}/{steps}: params {params_before} -> {count_params(model)}, "
            f"stage widths {stage_widths(model, example_input)}")
        if fine_tune is not None:
            fine_tune(model, step)
            check_forward(model, example_input, expected)
    return model
