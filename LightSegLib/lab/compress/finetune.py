"""What the compression commands (prune, distill, fold) share around the trainer's loop: their data and the
``best.pt`` layout they write."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def load_data(cfg: dict, val: bool = True, limit: int | None = None):
    """(train cases, validation cases), read as ``lightseg train`` reads them."""
    from ..data.reader import load_split

    dcfg = cfg["data"]
    train_cases = load_split(cfg, dcfg["train_split"], limit=limit)
    return train_cases, load_split(cfg, dcfg["val_split"]) if val else []


def save_checkpoint(path, net: nn.Module, spec: dict, prep: dict, metrics: dict | None = None, **extra) -> None:
    """The ``best.pt`` layout of ``lightseg train`` ({"model", "architecture", "prep", "metrics"}): exportable."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": net.state_dict(), "architecture": spec, "prep": prep, "metrics": metrics or {}, **extra},
               str(path))
