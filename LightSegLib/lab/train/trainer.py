"""The trainer: one loop for every segmentation training run (training from scratch, fine-tuning a pruned net,
sparsity training, distillation), DiceCE with MONAI's deep supervision, AdamW with a poly/cosine schedule.

``train_loop`` is the loop; a task swaps its parts through a ``Recipe`` (an extra loss and extra trainable modules
for distillation, a penalty for sparsity, its own batches, loss, optimiser or schedule) and adds what happens
around the steps as hooks (``Every`` for validation and checkpoints, ``ResumableState``, ``LogLoss``,
``TimeBudget``), which read the ``RunState``. ``train`` is ``lightseg train``: data, net, the loop,
best-by-validation-Dice (``EpochValidation``).

Runs to a wall-clock budget when asked: the LR schedule follows ``progress = max(iterations done / planned,
time used / budget)``, so a budget-limited run still anneals its learning rate properly instead of stopping at
a high LR. The resumable state (``last.pt`` for ``lightseg train``) holds the weights, optimiser, counters and
elapsed time; every sample is a pure function of (seed, index), so a resumed run sees the batches it would have.
``best.pt`` holds only the weights, the architecture spec and the preprocessing, small enough to ship.
"""
from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ...errors import LightSegError
from . import distributed
from ..data.reader import prep_spec
from .config import to_toml


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def cpu_has_bf16() -> bool:
    """Native bfloat16 arithmetic: with it CPU autocast is about 2x faster than fp32; without it (AVX2 alone) it
    was measured 26x slower."""
    from ...machine import machine

    isa = machine()["isa"] or {}
    return bool(isa.get("AVX512-BF16") or isa.get("AMX"))


def cpu_bf16_layout(net) -> bool:
    """Put ``net`` in channels_last for CPU bfloat16 training and say whether inputs should follow. Not for
    dilated convs: torch 2.13's oneDNN gives NaN weight gradients for channels_last bf16 dilated convs
    (measured on DPU-Net); bf16 alone is still most of the gain."""
    import torch

    if any(isinstance(m, torch.nn.Conv2d) and max(m.dilation) > 1 for m in net.modules()):
        return False
    net.to(memory_format=torch.channels_last)
    return True


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


def segmentation_loss(weights) -> "torch.nn.Module":
    """DiceCE on every deep-supervision head (main output first) through MONAI's DeepSupervisionLoss, with the
    weights of the heads a net has (missing ones 0) normalised to sum to 1; logits are cast to float32 first
    (they may come out of bfloat16 autocast)."""
    from monai.losses import DeepSupervisionLoss, DiceCELoss

    class FloatDiceCE(DiceCELoss):
        def forward(self, input, target):
            return super().forward(input.float(), target)

    class Normalised(DeepSupervisionLoss):
        def get_weights(self, levels: int = 1) -> list[float]:
            w = ([float(v) for v in weights] + [0.0] * levels)[:max(1, levels)]
            return [v / sum(w) for v in w]

    return Normalised(FloatDiceCE(to_onehot_y=True, softmax=True, include_background=False, batch=True))


def batch_iterator(cfg: dict, cases, iters: int, seed: int = 0, augment: bool = True, start: int = 0,
                   workers: int = 0):
    """A DataLoader of (image, label) training batches ``start``..``iters``. Every sample is a pure function of
    (seed, index), so a resumed run sees the batches it would have, with any number of loader ``workers``."""
    from torch.utils.data import DataLoader

    from ..data.augment import build_transform
    from ..data.slices import SliceDataset

    dcfg, tcfg = cfg["data"], cfg["train"]
    batch = int(tcfg["batch_size"])
    dataset = SliceDataset(cases, dcfg["patch"], iters * batch, float(dcfg["foreground_prob"]),
                           int(dcfg["context_slices"]), float(dcfg["crop_margin"]),
                           build_transform(dcfg["patch"], cfg["augment"]) if augment else None, seed=seed)
    return DataLoader(dataset, batch_size=batch, sampler=range(start * batch, iters * batch), num_workers=workers,
                      drop_last=True, worker_init_fn=worker_init if workers else None,
                      persistent_workers=False, prefetch_factor=4 if workers else None)


@dataclass
class Recipe:
    """The parts a task swaps in the loop. ``batches(start)`` yields (image, label) from iteration ``start``
    (default: slices of the training cases); ``loss_fn(outputs, label)`` (default: the segmentation loss);
    ``extra_loss(image, label, outputs)`` (distillation); ``penalty(net)`` (sparsity); ``optimizer(params)``
    (default: AdamW); ``schedule(progress, iteration)``, the learning rate (default: the config's warm-up and
    cosine or poly decay, from ``lr`` where given instead of the config's)."""
    batches: Callable | None = None
    loss_fn: Callable | None = None
    extra_loss: Callable | None = None
    penalty: Callable | None = None
    optimizer: Callable | None = None
    schedule: Callable | None = None
    lr: float | None = None


@dataclass
class RunState:
    """Where a run stands: what the hooks read, and what the resumable state saves."""
    net: object
    optimizer: object
    extra_modules: object
    iterations: int  # planned
    hooks: list
    iteration: int = 0
    seconds: float = 0.0  # training seconds of earlier (resumed) processes
    losses: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def elapsed(self) -> float:
        return self.seconds + time.time() - self.started

    def used(self) -> float:
        """The share of the run used up, by iterations or by what a hook limits (a time budget)."""
        return max([self.iteration / self.iterations] + [h.used(self) for h in self.hooks])

    def progress(self) -> float:
        """``used`` agreed across processes: the schedule and the stop follow the furthest one."""
        return distributed.max_across(self.used())


class Hook:
    """Something a run does besides training: ``start`` before the first iteration (a resume), ``after`` each
    iteration (``last``: the run stops after it)."""

    def start(self, run: RunState) -> None:
        pass

    def after(self, run: RunState, last: bool) -> None:
        pass

    def used(self, run: RunState) -> float:
        return 0.0


class TimeBudget(Hook):
    """Stop at a wall-clock budget; the learning rate anneals on the time used, so a budget-limited run still ends
    at a low rate."""

    def __init__(self, minutes: float):
        self.seconds = 60.0 * float(minutes)

    def used(self, run: RunState) -> float:
        return run.elapsed() / self.seconds


class LogLoss(Hook):
    def __init__(self, every: int, log: Callable[[str], None]):
        self.every, self.log = every, log

    def after(self, run: RunState, last: bool) -> None:
        if run.iteration % self.every == 0 or last:
            self.log(f"  iter {run.iteration}/{run.iterations}: loss {np.mean(run.losses[-self.every:]):.4f} "
                     f"({run.elapsed() / 60:.1f} min)")


class Every(Hook):
    """``fn(iteration, losses, last, elapsed_s)`` every ``every`` iterations (0: only the last) and at the end:
    validation, the best checkpoint, history rows."""

    def __init__(self, every: int, fn: Callable):
        self.every, self.fn = every, fn

    def after(self, run: RunState, last: bool) -> None:
        if (self.every and run.iteration % self.every == 0) or last:
            self.fn(run.iteration, run.losses, last, run.elapsed())


class ResumableState(Hook):
    """The state a killed run resumes from, at ``path`` every ``every`` iterations and at the end: the weights,
    the optimiser, the counters, the elapsed time, the last ``keep`` losses and what ``extra()`` adds."""

    def __init__(self, path, every: int = 100, keep: int = 50, extra: Callable | None = None,
                 log: Callable[[str], None] = print):
        self.path, self.every, self.keep, self.extra, self.log = Path(path), every, keep, extra, log

    def start(self, run: RunState) -> None:
        import torch

        if not self.path.is_file():
            return
        state = torch.load(str(self.path), map_location="cpu", weights_only=False)
        run.net.load_state_dict(state["model"])
        if run.extra_modules is not None and state.get("extra") is not None:
            run.extra_modules.load_state_dict(state["extra"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.iteration, run.seconds, run.losses = int(state["iteration"]), float(state["seconds"]), list(state["losses"])
        self.log(f"  resumed from {self.path} at iteration {run.iteration} ({run.seconds / 60:.1f} min)")

    def after(self, run: RunState, last: bool) -> None:
        import torch

        if not (run.iteration % self.every == 0 or last):
            return
        tmp = Path(str(self.path) + ".tmp")
        torch.save({"model": run.net.state_dict(), "optimizer": run.optimizer.state_dict(),
                    "iteration": run.iteration, "seconds": run.elapsed(), "losses": run.losses[-self.keep:],
                    "extra": run.extra_modules.state_dict() if run.extra_modules is not None else None,
                    **(self.extra() if self.extra is not None else {})}, str(tmp))
        tmp.replace(self.path)


def train_loop(net, cfg: dict, iters: int, *, recipe: Recipe | None = None, hooks=(), train_cases=None,
               val_cases=None, extra_modules=None, seed: int = 0, device="cpu",
               log: Callable[[str], None] = print) -> dict:
    """Train ``net`` for ``iters`` iterations on the ``recipe``'s loss and optimiser over the net and
    ``extra_modules`` (e.g. distillation adapters), calling the ``hooks`` after each iteration in their order
    (the first one able to resume does). Validates on ``val_cases`` at the end. Returns {"iterations", "minutes",
    "device", "precision", "val_dice", "val_dice_mean"}. ``device="cuda"`` trains there and hands the net back on
    the CPU; bfloat16 autocast on CUDA with ``train.amp``, on the CPU with ``train.cpu_bf16``."""
    import torch

    from .evaluate_core import validate

    recipe = recipe or Recipe()
    tcfg = dict(cfg["train"])
    if recipe.lr is not None:
        tcfg["lr"] = recipe.lr
    tcfg["warmup_iters"] = min(int(tcfg.get("warmup_iters", 0)), iters // 10)
    device = torch.device(device)
    cuda = device.type == "cuda"
    net.to(device)
    if extra_modules is not None:
        extra_modules.to(device)
    bf16 = bool(tcfg.get("amp", True)) if cuda else bool(tcfg.get("cpu_bf16", False))
    if bf16 and not cuda and not cpu_has_bf16():
        log("  cpu_bf16 off: this CPU has no AVX512-BF16 or AMX, where bfloat16 runs many times slower than fp32")
        bf16 = False
    channels_last = bf16 and not cuda and cpu_bf16_layout(net)  # before DDP registers the parameters
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if cuda else None) \
        if world > 1 else net
    loss_fn = recipe.loss_fn or segmentation_loss(tcfg["deep_supervision_weights"])
    schedule = recipe.schedule or (lambda progress, iteration: lr_at(tcfg, progress, iteration))
    params = list(net.parameters()) + (list(extra_modules.parameters()) if extra_modules is not None else [])
    params = [p for p in params if p.requires_grad]
    opt = recipe.optimizer(params) if recipe.optimizer is not None else \
        torch.optim.AdamW(params, lr=float(tcfg["lr"]), weight_decay=float(tcfg["weight_decay"]))
    run = RunState(net, opt, extra_modules, iters, list(hooks))
    for hook in run.hooks:
        hook.start(run)
    run.started = time.time()

    if iters > run.iteration and run.used() < 1.0:
        if train_cases is None and recipe.batches is None:
            raise LightSegError("training needs data")
        workers = int(cfg["data"].get("num_workers", 0))
        rank = torch.distributed.get_rank() if world > 1 else 0
        source = recipe.batches(run.iteration) if recipe.batches is not None else \
            batch_iterator(cfg, train_cases, iters, seed=seed + rank, start=run.iteration, workers=workers)
        for image, label in source:
            model.train()  # a hook may have validated in eval mode
            if extra_modules is not None:
                extra_modules.train()
            for g in opt.param_groups:
                g["lr"] = schedule(run.progress(), run.iteration)
            image, label = image.to(device, non_blocking=True), label.to(device, non_blocking=True)
            if channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                outputs = model(image)
                loss = loss_fn(outputs, label)
                if recipe.extra_loss is not None:
                    loss = loss + recipe.extra_loss(image, label, outputs)
            if recipe.penalty is not None:
                loss = loss + recipe.penalty(net)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run.losses.append(float(loss.detach()))
            run.iteration += 1
            last = run.iteration == iters or run.progress() >= 1.0
            for hook in run.hooks:
                hook.after(run, last)
            if last:
                break
    result = dict(iterations=run.iteration, minutes=round(run.elapsed() / 60, 2), device=device_name(device),
                  precision="bf16" if bf16 else "fp32")
    if val_cases:
        v = validate(net, val_cases, int(cfg["model"]["num_classes"]), device, int(cfg["data"]["context_slices"]))
        result.update(val_dice=v["per_class"], val_dice_mean=v["mean"])
        log(f"  validation Dice {', '.join(f'{d:.4f}' for d in v['per_class'])} (mean {v['mean']:.4f})")
    net.eval().cpu()
    if extra_modules is not None:
        extra_modules.cpu()
    return result


class EpochValidation:
    """``lightseg train``'s end of epoch: a log row; on the main process, validation every ``val_every`` epochs and
    at the end, ``best.pt`` at the best mean Dice, ``log.csv`` and ``curves.png``. ``book`` (the best mean Dice,
    its epoch, the rows) goes into the resumable state and comes back from it (``saved``)."""

    def __init__(self, cfg: dict, net, out: Path, val_cases, device, main: bool, log, saved: dict | None = None):
        self.cfg, self.net, self.out, self.val_cases, self.device = cfg, net, out, val_cases, device
        self.main, self.log, self.prep = main, log, prep_spec(cfg)
        self.ipe = int(cfg["train"]["iters_per_epoch"])
        self.book = {"best": -1.0, "best_epoch": -1, "rows": []}
        self.book.update({k: saved[k] for k in self.book if k in (saved or {})})

    def __call__(self, iteration: int, losses: list[float], last: bool, elapsed: float) -> None:
        import torch

        from .evaluate_core import validate

        cfg, book, net = self.cfg, self.book, self.net
        epoch = math.ceil(iteration / self.ipe)
        row = {"epoch": epoch, "iteration": iteration, "elapsed_min": round(elapsed / 60, 2),
               "train_loss": distributed.mean_across(float(np.mean(losses[-self.ipe:]))), "val_mean": ""}
        if self.main and (epoch % int(cfg["train"]["val_every"]) == 0 or last):
            t = time.time()
            result = validate(net, self.val_cases, int(cfg["model"]["num_classes"]), self.device,
                              self.prep["context_slices"])
            row["val_mean"] = result["mean"]
            for k, v in enumerate(result["per_class"]):
                row[f"val_{k + 1}"] = v
            row["val_s"] = round(time.time() - t, 1)
            if result["mean"] > book["best"]:
                book["best"], book["best_epoch"] = result["mean"], epoch
                torch.save({"model": net.state_dict(), "architecture": dict(cfg["model"]), "prep": self.prep,
                            "epoch": epoch, "iteration": iteration,
                            "metrics": {"val_dice_mean": result["mean"], "val_dice": result["per_class"],
                                        "split": cfg["data"]["val_split"]}}, self.out / "best.pt")
            self.log(f"epoch {epoch}: loss {row['train_loss']:.4f}, val Dice "
                     + ", ".join(f"{v:.4f}" for v in result["per_class"])
                     + f" (mean {result['mean']:.4f}; best {book['best']:.4f} @ {book['best_epoch']}), "
                     f"{elapsed / 60:.1f} min")
        if self.main:
            book["rows"].append(row)
            _write_csv(book["rows"], self.out / "log.csv")
            names = list(cfg["labels"]["names"]) or [f"class {k}" for k in range(1, int(cfg["model"]["num_classes"]))]
            try:
                plot_curves(book["rows"], self.out / "curves.png", names)
            except Exception as err:  # a plotting problem must never kill a long run
                self.log(f"(plot failed: {err})")
        distributed.barrier()


def train(cfg: dict, out_dir, resume: bool = False, config_path=None, log=print) -> dict:
    """``lightseg train``: the config's net from scratch (or from ``train.init_onnx``), validated every
    ``train.val_every`` epochs of ``iters_per_epoch`` iterations; ``best.pt`` is the best validation Dice."""
    import torch

    from ..data.reader import load_split
    from ..nets import build

    tcfg, dcfg = cfg["train"], cfg["data"]
    rank, world, device = distributed.init()
    main = rank == 0
    torch.set_num_threads(int(tcfg["threads"]))
    out = Path(out_dir)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    last_path = out / "last.pt"
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
    t0 = time.time()
    train_cases = load_split(cfg, dcfg["train_split"], prep)
    val_cases = load_split(cfg, dcfg["val_split"], prep) if main else []
    if main:
        log(f"data: {len(train_cases)} training volumes ({sum(c.image.shape[0] for c in train_cases)} slices), "
            f"{len(val_cases)} validation volumes, loaded in {time.time() - t0:.1f} s")

    ipe = int(tcfg["iters_per_epoch"])
    spec = dict(cfg["model"])
    net = build(spec)
    if tcfg["init_onnx"] and not resume:
        from ..export import warm_start_from_onnx

        calibration = [b[0] for b in batch_iterator(cfg, train_cases, 8, seed=seed * 1000 + rank)]
        gap = warm_start_from_onnx(net, tcfg["init_onnx"], calibration)
        if main:
            log(f"started from {tcfg['init_onnx']} (largest logit difference from ONNX Runtime {gap:.2e})")
    epochs = EpochValidation(cfg, net, out, val_cases, device, main, log,
                             torch.load(last_path, map_location="cpu", weights_only=False) if resume else None)
    if resume and main:
        log(f"resuming {last_path}: epoch {len(epochs.book['rows'])}, best mean Dice {epochs.book['best']:.4f}")
    hooks = [Every(ipe, epochs)]
    if main:
        hooks.append(ResumableState(last_path, ipe, max(50, ipe), log=log,
                                    extra=lambda: {**epochs.book, "architecture": spec, "prep": prep, "config": cfg}))
    if float(tcfg["time_budget_min"]):
        hooks.append(TimeBudget(float(tcfg["time_budget_min"])))
    result = train_loop(net, cfg, int(tcfg["epochs"]) * ipe, hooks=hooks, train_cases=train_cases,
                        seed=seed * 1000, device=device, log=log)
    book = epochs.book
    summary = {"epochs": math.ceil(result["iterations"] / ipe), "iterations": result["iterations"],
               "minutes": round(result["minutes"], 1), "best_val_dice_mean": book["best"],
               "best_epoch": book["best_epoch"], "device": result["device"],
               "precision": result["precision"]}
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
