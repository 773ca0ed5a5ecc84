"""The trainer: 2D slices, DiceCE (+ deep supervision), AdamW with a poly/cosine schedule, best-by-validation-Dice.

Runs to a wall-clock budget when asked: the LR schedule follows ``progress = max(iterations done / planned,
time used / budget)``, so a budget-limited run still anneals its learning rate properly instead of stopping at
a high LR. Checkpoints (``last.pt``, at the end of every epoch: keep epochs a minute or two long) hold
everything needed to resume (weights, optimizer, scaler, counters, elapsed time, log); ``best.pt`` holds only
the weights, the architecture spec and the preprocessing, small enough to ship.
"""
from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import LightSegError
from . import distributed
from .config import prep_spec, to_toml


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class EpochSampler:
    """Indices ``epoch * n + i``: each epoch draws fresh samples (the dataset seeds its RNG by index) while the
    DataLoader workers stay persistent; resumable by setting the epoch."""

    def __init__(self, n: int):
        self.n = n
        self.epoch = 0

    def __iter__(self):
        return iter(range(self.epoch * self.n, (self.epoch + 1) * self.n))

    def __len__(self):
        return self.n


def worker_init(_):
    """Loader processes: one thread each, so they do not fight the training process for cores."""
    import torch

    torch.set_num_threads(1)


def device_name(device) -> str:
    """What a run records as where it trained: the GPU's name, or "cpu"."""
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def lr_at(cfg_train: dict, progress: float, iteration: int) -> float:
    base = float(cfg_train["lr"])
    warm = int(cfg_train.get("warmup_iters", 0))
    if warm and iteration < warm:
        return base * (iteration + 1) / warm
    p = min(max(progress, 0.0), 1.0)
    if cfg_train["schedule"] == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * p))
    if cfg_train["schedule"] == "poly":
        return base * (1 - p) ** float(cfg_train["poly_power"])
    raise LightSegError(f"unknown schedule {cfg_train['schedule']!r} (poly or cosine)")


def cpu_bf16_layout(net) -> bool:
    """Put ``net`` in channels_last for CPU bfloat16 training and say whether inputs should follow. Not for
    dilated convs: torch 2.13's oneDNN gives NaN weight gradients for channels_last bf16 dilated convs
    (measured on DPU-Net); bf16 alone is still most of the gain."""
    import torch

    if any(isinstance(m, torch.nn.Conv2d) and max(m.dilation) > 1 for m in net.modules()):
        return False
    net.to(memory_format=torch.channels_last)
    return True


def deep_supervision_loss(loss_fn, outputs, target, weights) -> "torch.Tensor":
    """Weighted sum over the heads' outputs (main output first), weights normalised to sum to 1."""
    if not isinstance(outputs, (list, tuple)):
        return loss_fn(outputs.float(), target)
    w = [float(v) for v in weights[:len(outputs)]] + [0.0] * max(0, len(outputs) - len(weights))
    total = sum(w)
    return sum(wi / total * loss_fn(o.float(), target) for wi, o in zip(w, outputs) if wi > 0)


def plot_curves(rows: list[dict], path: Path, labels: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].plot(ep, [r["train_loss"] for r in rows])
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("training loss (DiceCE)")
    ax[0].grid(alpha=0.3)
    vrows = [r for r in rows if r.get("val_mean") not in (None, "")]
    for i, name in enumerate(labels):
        ax[1].plot([r["epoch"] for r in vrows], [r[f"val_{i + 1}"] for r in vrows], label=name)
    ax[1].plot([r["epoch"] for r in vrows], [r["val_mean"] for r in vrows], "k--", label="mean")
    ax[1].set_xlabel("epoch")
    ax[1].set_ylabel("validation Dice")
    ax[1].grid(alpha=0.3)
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def train(cfg: dict, out_dir, resume: bool = False, config_path=None, log=print) -> dict:
    import torch
    from monai.losses import DiceCELoss
    from torch.utils.data import DataLoader

    from ..data.augment import build_transform
    from ..data.reader import load_split
    from ..data.slices import SliceDataset
    from ..nets import build
    from .evaluate_core import validate

    tcfg, dcfg = cfg["train"], cfg["data"]
    rank, world, device = distributed.init()
    main = rank == 0
    torch.set_num_threads(int(tcfg["threads"]))
    out = Path(out_dir)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out / "last.pt", out / "best.pt"
    if resume and not last_path.is_file():
        raise LightSegError(f"--resume: no checkpoint at {last_path}")
    if not resume and last_path.is_file():
        raise LightSegError(f"{out} already holds a run (last.pt); use --resume or another --out")
    seed = int(tcfg["seed"])
    seed_everything(seed + rank)
    if main:
        (out / "config.toml").write_text(to_toml(cfg))
        if config_path:
            shutil.copyfile(config_path, out / "config.source.toml")

    prep = prep_spec(cfg)
    context = prep["context_slices"]
    t0 = time.time()
    train_cases = load_split(cfg, dcfg["train_split"], prep)
    val_cases = load_split(cfg, dcfg["val_split"], prep) if main else []
    if main:
        log(f"data: {len(train_cases)} training volumes ({sum(c.image.shape[0] for c in train_cases)} slices), "
            f"{len(val_cases)} validation volumes, loaded in {time.time() - t0:.1f} s")

    ipe, batch = int(tcfg["iters_per_epoch"]), int(tcfg["batch_size"])
    dataset = SliceDataset(train_cases, dcfg["patch"], ipe * batch, float(dcfg["foreground_prob"]), context,
                           float(dcfg["crop_margin"]), build_transform(dcfg["patch"], cfg["augment"]),
                           seed=seed * 1000 + rank)
    sampler = EpochSampler(ipe * batch)
    workers = int(dcfg["num_workers"])
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True,
                        worker_init_fn=worker_init, persistent_workers=workers > 0,
                        pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)

    spec = dict(cfg["model"])
    net = build(spec).to(device)
    if tcfg["init_onnx"] and not resume:
        from ..export import warm_start_from_onnx

        calibration = [b[0] for b, _ in zip(loader, range(8))]
        gap = warm_start_from_onnx(net, tcfg["init_onnx"], calibration)
        if main:
            log(f"started from {tcfg['init_onnx']} (largest logit difference from ONNX Runtime {gap:.2e})")
    bf16 = bool(tcfg["cpu_bf16"]) and device.type == "cpu"
    channels_last = bf16 and cpu_bf16_layout(net)  # before DDP registers the parameters
    model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None) \
        if world > 1 else net
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    opt = torch.optim.AdamW(net.parameters(), lr=float(tcfg["lr"]), weight_decay=float(tcfg["weight_decay"]))
    amp = bool(tcfg["amp"]) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    num_classes = int(spec["num_classes"])
    label_names = list(cfg["labels"]["names"]) or [f"class {k}" for k in range(1, num_classes)]

    state = {"epoch": 0, "iteration": 0, "elapsed": 0.0, "best": -1.0, "best_epoch": -1, "rows": []}
    if resume:
        ckpt = torch.load(last_path, map_location=device, weights_only=False)
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        state = ckpt["state"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        np.random.set_state(ckpt["rng"]["numpy"])
        random.setstate(ckpt["rng"]["python"])
        if main:
            log(f"resumed from {last_path}: epoch {state['epoch']}, {state['elapsed'] / 60:.1f} min used, "
                f"best mean Dice {state['best']:.4f}")

    epochs = int(tcfg["epochs"])
    planned = epochs * ipe
    budget = float(tcfg["time_budget_min"]) * 60.0
    ds_weights = tcfg["deep_supervision_weights"]

    def progress_now(iteration: int, elapsed: float) -> float:
        p = iteration / planned
        return max(p, elapsed / budget) if budget > 0 else p

    def save_last():
        torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                    "state": state, "architecture": spec, "prep": prep, "config": cfg,
                    "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                            "python": random.getstate()}}, str(last_path) + ".tmp")
        os.replace(str(last_path) + ".tmp", last_path)

    from tqdm import tqdm

    tty = sys.stderr.isatty()
    bar = tqdm(total=planned, initial=state["iteration"], disable=not main, dynamic_ncols=True,
               mininterval=1.0 if tty else 30.0, desc="train", file=sys.stderr)
    session_start = time.time() - state["elapsed"]
    stop = progress_now(state["iteration"], state["elapsed"]) >= 1.0
    while not stop and state["epoch"] < epochs:
        epoch = state["epoch"]
        sampler.epoch = epoch
        model.train()
        losses, t_epoch = [], time.time()
        for image, label in loader:
            it = state["iteration"]
            elapsed = time.time() - session_start
            progress = distributed.max_across(progress_now(it, elapsed))
            if progress >= 1.0:
                stop = True
                break
            lr = lr_at(tcfg, progress, it)
            for g in opt.param_groups:
                g["lr"] = lr
            image, label = image.to(device, non_blocking=True), label.to(device, non_blocking=True)
            if channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16 if bf16 else torch.float16, enabled=amp or bf16):
                outputs = model(image)
                loss = deep_supervision_loss(loss_fn, outputs, label, ds_weights)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(float(loss.detach()))
            state["iteration"] = it + 1
            left_iter = (time.time() - t_epoch) / len(losses) * (planned - it - 1)
            left = min(left_iter, budget - elapsed) if budget > 0 else left_iter
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{lr:.2e}", ep=epoch, left=f"{left / 60:.1f}min",
                            refresh=False)
            bar.update(1)
        state["elapsed"] = time.time() - session_start
        if not losses:
            break
        state["epoch"] = epoch + 1
        row = {"epoch": epoch + 1, "iteration": state["iteration"], "elapsed_min": round(state["elapsed"] / 60, 2),
               "lr": lr, "train_loss": distributed.mean_across(float(np.mean(losses))),
               "it_per_s": round(len(losses) / (time.time() - t_epoch), 3), "val_mean": ""}
        last_epoch = stop or state["epoch"] >= epochs
        if main and (state["epoch"] % int(tcfg["val_every"]) == 0 or last_epoch):
            t = time.time()
            result = validate(net, val_cases, num_classes, device, context)
            row["val_mean"] = result["mean"]
            for k, v in enumerate(result["per_class"]):
                row[f"val_{k + 1}"] = v
            row["val_s"] = round(time.time() - t, 1)
            if result["mean"] > state["best"]:
                state["best"], state["best_epoch"] = result["mean"], state["epoch"]
                torch.save({"model": net.state_dict(), "architecture": spec, "prep": prep,
                            "epoch": state["epoch"], "iteration": state["iteration"],
                            "metrics": {"val_dice_mean": result["mean"], "val_dice": result["per_class"],
                                        "split": dcfg["val_split"]}}, best_path)
            bar.write(f"epoch {state['epoch']}: loss {row['train_loss']:.4f}, val Dice "
                      + ", ".join(f"{v:.4f}" for v in result["per_class"])
                      + f" (mean {result['mean']:.4f}; best {state['best']:.4f} @ {state['best_epoch']}), "
                      f"{row['it_per_s']} it/s, {state['elapsed'] / 60:.1f} min")
        if main:
            state["rows"].append(row)
            _write_csv(state["rows"], out / "log.csv")
            try:
                plot_curves(state["rows"], out / "curves.png", label_names)
            except Exception as err:  # a plotting problem must never kill a long run
                bar.write(f"(plot failed: {err})")
            save_last()
        distributed.barrier()
    bar.close()
    summary = {"epochs": state["epoch"], "iterations": state["iteration"], "minutes": round(state["elapsed"] / 60, 1),
               "best_val_dice_mean": state["best"], "best_epoch": state["best_epoch"],
               "device": device_name(device)}
    if main:
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        log(f"done: {json.dumps(summary)}")
    distributed.cleanup()
    return summary


def _write_csv(rows: list[dict], path: Path) -> None:
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    tmp = str(path) + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)
