"""A trained U-Net made wider by a whole factor without changing its answer (Net2Net's split; Chen et al., ICLR 2016):
a run can then go on from the trained weights with more capacity, instead of starting again.

Each channel of a widened layer is copied ``factor`` times (its filter, its BatchNorm); the next layer reads the copies
with weights that sum to the old weight (split with zero-sum noise, so the copies' gradients differ and they drift
apart in training, while the sum keeps the answer the same).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .unet import UNet


def _copies(width: int, factor: int) -> np.ndarray:
    """The old channel each new channel copies: [0..w-1] repeated ``factor`` times."""
    return np.tile(np.arange(width), factor)


def _split(shape, copies: np.ndarray, factor: int, noise: float, rng: np.random.Generator) -> torch.Tensor:
    """Multipliers for weights reading copied channels along dim 1 of ``shape``: 1/factor plus noise that sums to
    zero over each old channel's copies (per weight element)."""
    eps = rng.normal(0.0, noise, size=(shape[0], len(copies)) + tuple(shape[2:]))
    for old in np.unique(copies):
        members = copies == old
        eps[:, members] -= eps[:, members].mean(axis=1, keepdims=True)
    return torch.from_numpy(1.0 / factor + eps).float()


def _conv(new: nn.Module, old: nn.Module, rows, cols, factor: int, noise: float, rng, transposed=False) -> None:
    """``new``'s weight from ``old``'s: output channels gathered by ``rows``, input channels by ``cols`` (None:
    not widened), inputs split when widened."""
    w = old.weight.detach()
    if transposed:  # ConvTranspose2d stores (in, out, kh, kw)
        w = w.transpose(0, 1)
    w = w[torch.as_tensor(rows)] if rows is not None else w
    if cols is not None:
        w = w[:, torch.as_tensor(cols)] * _split(w[:, torch.as_tensor(cols)].shape, cols, factor, noise, rng)
    new.weight.data.copy_(w.transpose(0, 1) if transposed else w)
    if old.bias is not None:
        new.bias.data.copy_(old.bias.detach()[torch.as_tensor(rows)] if rows is not None else old.bias.detach())


def _bn(new: nn.BatchNorm2d, old: nn.BatchNorm2d, rows) -> None:
    index = torch.as_tensor(rows)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(new, name).data.copy_(getattr(old, name).detach()[index])
    new.num_batches_tracked.data.copy_(old.num_batches_tracked)


def widen_unet(net: UNet, factor: int, noise: float = 0.01, seed: int = 0) -> UNet:
    """A UNet with every width times ``factor`` that answers as ``net`` does (in eval mode, to float error)."""
    if net.refiner is not None:
        raise ValueError("a U-Net with a full-resolution refiner is not widened")
    if any(isinstance(m, nn.Conv2d) and m.groups != 1 for m in net.modules()):
        raise ValueError("only a U-Net of standard convs is widened (not Ghost convs)")
    rng = np.random.default_rng(seed)
    widths = net.widths
    first = net.encoders[0][0][0]
    wide = UNet(first.in_channels // net.fold ** 2, net.head.out_channels // net.fold ** 2,
                [w * factor for w in widths], fold=net.fold)
    f = factor

    def double(new_block, old_block, width, cols):
        rows = _copies(width, f)
        _conv(new_block[0][0], old_block[0][0], rows, cols, f, noise, rng)
        _bn(new_block[0][1], old_block[0][1], rows)
        _conv(new_block[1][0], old_block[1][0], rows, rows, f, noise, rng)
        _bn(new_block[1][1], old_block[1][1], rows)

    for k, (new, old) in enumerate(zip(wide.encoders, net.encoders)):
        double(new, old, widths[k], None if k == 0 else _copies(widths[k - 1], f))
    for j, (up_new, up_old, dec_new, dec_old) in enumerate(zip(wide.ups, net.ups, wide.decoders, net.decoders)):
        i = len(widths) - 2 - j
        _conv(up_new, up_old, _copies(widths[i], f), _copies(widths[i + 1], f), f, noise, rng, transposed=True)
        concat = np.concatenate([_copies(widths[i], f), widths[i] + _copies(widths[i], f)])  # [skip, upsampled]
        double(dec_new, dec_old, widths[i], concat)
    _conv(wide.head, net.head, None, _copies(widths[0], f), f, noise, rng)
    return wide
