"""A compact training loop for compression work: fine-tune after pruning / Ghost conversion, and distillation.

Why not the issue-3 trainer: it has no hook for extra loss terms or extra trainable modules (distillation
adapters), nor for a model that is not ``nets.build(spec)`` (a pruned, irregular net). This loop reuses the same
pieces (the data reader, SliceDataset, MONAI augmentation, DiceCE with deep supervision, whole-volume validation), so
the numbers it reports are comparable with ``lightseg train``'s.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import LightSegError


def load_data(cfg: dict, val: bool = True, limit: int | None = None):
    """(train cases, validation cases), read as ``lightseg train`` reads them."""
    from ..data.reader import load_split

    dcfg = cfg["data"]
    train_cases = load_split(cfg, dcfg["train_split"], limit=limit)
    return train_cases, load_split(cfg, dcfg["val_split"]) if val else []


def batch_iterator(cfg: dict, cases, iters: int, seed: int = 0, augment: bool = True, start: int = 0,
                   workers: int = 0):
    """A DataLoader of (image, label) training batches ``start``..``iters`` drawn as ``lightseg train`` draws
    them. Every sample is a pure function of (seed, index), so a resumed run sees the batches it would have, with
    any number of loader ``workers``."""
    from torch.utils.data import DataLoader

    from ..data.augment import build_transform
    from ..data.slices import SliceDataset
    from ..train.trainer import worker_init

    dcfg, tcfg = cfg["data"], cfg["train"]
    batch = int(tcfg["batch_size"])
    dataset = SliceDataset(cases, dcfg["patch"], iters * batch, float(dcfg["foreground_prob"]),
                           int(dcfg["context_slices"]), float(dcfg["crop_margin"]),
                           build_transform(dcfg["patch"], cfg["augment"]) if augment else None, seed=seed)
    return DataLoader(dataset, batch_size=batch, sampler=range(start * batch, iters * batch), num_workers=workers,
                      drop_last=True, worker_init_fn=worker_init if workers else None)


def train_loop(net: nn.Module, cfg: dict, iters: int, *, extra_loss: Callable | None = None,
               extra_modules: nn.Module | None = None, train_cases=None, val_cases=None, lr: float | None = None,
               penalty: Callable[[nn.Module], torch.Tensor] | None = None, log: Callable[[str], None] = print,
               seed: int = 0, time_budget_min: float | None = None, state_path=None,
               save_every: int = 100, device: str = "cpu") -> dict:
    """Train ``net`` for ``iters`` iterations with DiceCE (+ deep supervision) + ``extra_loss(image, label,
    outputs)`` + ``penalty(net)``; AdamW over the net and ``extra_modules`` (e.g. distillation adapters), poly
    LR. Validates on ``val_cases`` at the end. Returns {"iterations", "minutes", "device", "val_dice",
    "val_dice_mean"}.

    ``time_budget_min``: stop there too; the LR schedule follows whichever of iterations and time runs out
    first (as ``lightseg train``). ``state_path``: save net, optimiser and progress there every ``save_every``
    iterations and resume from it when it exists, so an hours-long distillation survives being killed.
    ``device="cuda"`` trains there (bfloat16 autocast, ``data.num_workers`` loader processes) and hands the net
    back on the CPU; the default CPU keeps ``train.cpu_bf16``."""
    from monai.losses import DiceCELoss

    from ..train.evaluate_core import validate
    from ..train.trainer import cpu_bf16_layout, deep_supervision_loss, device_name, lr_at

    tcfg = dict(cfg["train"])
    if lr is not None:
        tcfg["lr"] = lr
    tcfg["warmup_iters"] = min(int(tcfg.get("warmup_iters", 0)), iters // 10)
    device = torch.device(device)
    cuda = device.type == "cuda"
    net.to(device)
    if extra_modules is not None:
        extra_modules.to(device)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    params = list(net.parameters()) + (list(extra_modules.parameters()) if extra_modules is not None else [])
    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=float(tcfg["lr"]),
                            weight_decay=float(tcfg["weight_decay"]))
    num_classes = int(cfg["model"]["num_classes"])
    bf16 = cuda or bool(tcfg.get("cpu_bf16", False))  # see train.config: bfloat16 autocast + channels_last on the CPU
    channels_last = bf16 and not cuda and cpu_bf16_layout(net)
    budget_s = 60.0 * float(time_budget_min) if time_budget_min else None
    it, spent = 0, 0.0  # spent: training seconds of earlier (resumed) processes
    losses: list[float] = []
    if state_path is not None and Path(state_path).is_file():
        state = torch.load(str(state_path), map_location="cpu", weights_only=False)
        net.load_state_dict(state["net"])
        if extra_modules is not None and state.get("extra") is not None:
            extra_modules.load_state_dict(state["extra"])
        opt.load_state_dict(state["opt"])
        it, spent, losses = int(state["iteration"]), float(state["seconds"]), list(state["losses"])
        log(f"  resumed from {state_path} at iteration {it} ({spent / 60:.1f} min)")
    t0 = time.time()

    def elapsed() -> float:
        return spent + time.time() - t0

    def save_state() -> None:
        tmp = Path(str(state_path) + ".tmp")
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "iteration": it, "seconds": elapsed(),
                    "losses": losses[-50:],
                    "extra": extra_modules.state_dict() if extra_modules is not None else None}, str(tmp))
        tmp.replace(state_path)

    def progress() -> float:
        p = it / iters
        return max(p, elapsed() / budget_s) if budget_s else p

    if iters > it and not (budget_s and elapsed() >= budget_s):
        if train_cases is None:
            raise LightSegError("training needs data")
        net.train()
        if extra_modules is not None:
            extra_modules.train()
        workers = int(cfg["data"].get("num_workers", 0)) if cuda else 0
        for image, label in batch_iterator(cfg, train_cases, iters, seed=seed, start=it, workers=workers):
            for g in opt.param_groups:
                g["lr"] = lr_at(tcfg, progress(), it)
            image, label = image.to(device, non_blocking=True), label.to(device, non_blocking=True)
            if channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                outputs = net(image)
                loss = deep_supervision_loss(loss_fn, outputs, label, tcfg["deep_supervision_weights"])
                if extra_loss is not None:
                    loss = loss + extra_loss(image, label, outputs)
            if penalty is not None:
                loss = loss + penalty(net)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            it += 1
            done = it == iters or (budget_s is not None and elapsed() >= budget_s)
            if it % 50 == 0 or done:
                log(f"  iter {it}/{iters}: loss {np.mean(losses[-50:]):.4f} ({elapsed() / 60:.1f} min)")
            if state_path is not None and (it % save_every == 0 or done):
                save_state()
            if done:
                break
    result = {"iterations": it, "minutes": round(elapsed() / 60, 2),
              "device": device_name(device)}
    if val_cases:
        v = validate(net, val_cases, num_classes, device, int(cfg["data"]["context_slices"]))
        result.update(val_dice=v["per_class"], val_dice_mean=v["mean"])
        log(f"  validation Dice {', '.join(f'{d:.4f}' for d in v['per_class'])} (mean {v['mean']:.4f})")
    net.eval().cpu()
    if extra_modules is not None:
        extra_modules.cpu()
    return result


def save_checkpoint(path, net: nn.Module, spec: dict, prep: dict, metrics: dict | None = None, **extra) -> None:
    """The ``best.pt`` layout of ``lightseg train`` ({"model", "architecture", "prep", "metrics"}): exportable."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": net.state_dict(), "architecture": spec, "prep": prep, "metrics": metrics or {}, **extra},
               str(path))
