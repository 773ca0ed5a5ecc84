"""``lightseg prune``'s stages in order: Ghost conversion, or sparsity training, channel pruning (fine-tuning after
each step) and CPRUN reconstruction (with its own fine-tuning, and a from-scratch twin to compare). Each
fine-tuning stage resumes from its own state file: pruning is deterministic, so a rerun rebuilds the same nets."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ...errors import LightSegError
from ..export import count_macs
from ..nets import build
from ..train.trainer import LogLoss, Recipe, ResumableState, batch_iterator, train_loop
from . import prune as P


@dataclass(frozen=True)
class PruneSettings:
    importance: str = "l1"
    ratio: float = 0.5
    stage_ratios: list[float] | None = None
    global_pruning: bool = False
    steps: int = 1
    finetune_iters: int = 0
    sparsity_iters: int = 0
    sparsity: float = 1e-4  # weight of the BN-gamma L1 penalty
    taylor_batches: int = 4
    reconstruct: bool = True  # False: keep the pruned module itself
    reconstruct_iters: int = 0
    compare_scratch: bool = False
    ghost: bool = False

    def needs_data(self) -> bool:
        return bool(self.finetune_iters or self.sparsity_iters or self.reconstruct_iters
                    or self.importance == "taylor")


class FineTuner:
    """The training stages between the others, on the config's data, each with its state file beside ``out``
    (``OUT.<stage>.state.pt``); without ``resume`` earlier state files are deleted first."""

    def __init__(self, cfg: dict, train_cases, val_cases, lr: float, device, out, resume: bool = False,
                 log: Callable[[str], None] = print):
        self.cfg, self.train_cases, self.val_cases, self.lr, self.device = cfg, train_cases, val_cases, lr, device
        self.out, self.log = Path(out), log
        if not resume:
            for old in self.out.parent.glob(f"{self.out.stem}.*.state.pt"):
                old.unlink()

    def state_for(self, label: str) -> Path:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        return self.out.parent / f"{self.out.stem}.{re.sub(r'[^a-z0-9]+', '-', label.lower()).strip('-')}.state.pt"

    def __call__(self, net, iters: int, label: str, penalty: Callable | None = None) -> dict | None:
        """Train ``net`` ``iters`` iterations (none: None); the trainer's result."""
        if iters <= 0:
            return None
        self.log(f"{label}: {iters} iterations")
        return train_loop(net, self.cfg, iters, recipe=Recipe(penalty=penalty, lr=self.lr),
                          hooks=[LogLoss(50, self.log), ResumableState(self.state_for(label), log=self.log)],
                          train_cases=self.train_cases, val_cases=self.val_cases, device=self.device, log=self.log)


@dataclass
class Pruned:
    """What the stages made: the net, its architecture, the report, and whether ``net`` is the pruned module
    itself (not rebuilt as a regular net: saved as a pickle)."""
    net: object
    spec: dict
    report: dict
    module_only: bool = False

    def metrics(self, cfg: dict) -> dict:
        """The validation Dice of the training that produced the saved weights, for the checkpoint; none claimed
        for a net never validated."""
        last = _last_training(self.report)
        if not last or "val_dice" not in last:
            return {}
        return {"val_dice": last["val_dice"], "val_dice_mean": last["val_dice_mean"],
                "split": cfg["data"]["val_split"]}


def run_stages(net, spec: dict, x, settings: PruneSettings, tune: FineTuner, log: Callable[[str], None] = print) \
        -> Pruned:
    """All the stages ``settings`` asks for on ``net`` (its architecture ``spec``; ``x`` an example input)."""
    hw = (1, int(spec.get("in_channels", 1)), 256, 256)
    report = {"params_before": P.count_params(net), "macs_before": count_macs(net, hw)}
    if settings.ghost:
        net, spec = convert_to_ghost(net, spec, settings, tune, report, log)
    else:
        prune_channels(net, x, settings, tune, report, log)
        if not settings.reconstruct:
            report.update(params_after=P.count_params(net), macs_after=count_macs(net, hw))
            return Pruned(net, spec, report, module_only=True)
        net, spec = rebuild_narrow(net, spec, x, settings, tune, report, log)
    report.update(params_after=P.count_params(net), macs_after=count_macs(net, hw), architecture=spec)
    return Pruned(net, spec, report)


def convert_to_ghost(net, spec: dict, settings: PruneSettings, tune: FineTuner, report: dict, log) -> tuple:
    from .ghost_convert import convert_checkpoint_net

    net, new_spec, n = convert_checkpoint_net(net, spec)
    if new_spec is None:
        raise LightSegError(f"{spec.get('name')} has no Ghost variant to save as a checkpoint")
    log(f"Ghost conversion: {n} convolutions replaced")
    report.update(method="ghost", converted=n, finetune=tune(net, settings.finetune_iters, "fine-tune"))
    return net, new_spec


def prune_channels(net, x, settings: PruneSettings, tune: FineTuner, report: dict, log) -> None:
    """Sparsity training where asked, then channel pruning in ``steps`` steps, in place."""
    if settings.sparsity_iters:
        log(f"sparsity training (L1 on BN gammas, weight {settings.sparsity})")
        report["sparsity"] = tune(net, settings.sparsity_iters, "sparsity",
                                  penalty=lambda m: P.bn_l1_penalty(m, settings.sparsity))
    batches = None
    if settings.importance == "taylor":
        def batches():
            return list(batch_iterator(tune.cfg, tune.train_cases, settings.taylor_batches, augment=False))
    tunes = []
    fine_tune = (lambda m, s: tunes.append(tune(m, settings.finetune_iters, f"fine-tune after step {s + 1}"))) \
        if settings.finetune_iters else None
    P.prune(net, x, importance=settings.importance, ratio=settings.ratio, stage_ratios=settings.stage_ratios,
            global_pruning=settings.global_pruning, steps=settings.steps, batches=batches, fine_tune=fine_tune,
            log=log)
    report.update(method="prune", importance=settings.importance, ratio=settings.ratio,
                  stage_ratios=settings.stage_ratios, global_pruning=settings.global_pruning, steps=settings.steps,
                  finetune=tunes, widths=P.widths(net.eval(), x))


def rebuild_narrow(net, spec: dict, x, settings: PruneSettings, tune: FineTuner, report: dict, log) -> tuple:
    """The pruned net rebuilt as a regular narrow one (CPRUN), fine-tuned; with ``compare_scratch`` the same
    narrow net trained from scratch as long, for the report."""
    from .reconstruct import reconstruct

    net, spec, counts = reconstruct(net.eval(), spec, x)
    log(f"CPRUN reconstruction: widths {spec['widths']}, tensors copied {counts}")
    report["reconstruct"] = {"widths": spec["widths"], "copied": counts,
                             "finetune": tune(net, settings.reconstruct_iters, "fine-tune reconstructed net")}
    if settings.compare_scratch and settings.reconstruct_iters:
        report["scratch"] = tune(build(spec), settings.reconstruct_iters, "same narrow net from scratch")
    return net, spec


def _last_training(report: dict) -> dict | None:
    """The last training result that produced the saved weights (reconstruction fine-tune, else the last
    step's fine-tune, else the Ghost fine-tune). None when the saved net was never validated (a pruned net's Dice
    is then unknown, and none is claimed)."""
    recon = report.get("reconstruct") or {}
    if recon.get("finetune"):
        return recon["finetune"]
    copied = recon.get("copied") or {}
    if copied.get("partial") or copied.get("missing"):
        return None  # the rebuilt net is not the validated pruned net
    tuned = report.get("finetune")
    if isinstance(tuned, list):
        return tuned[-1] if tuned and tuned[-1] else None
    return tuned or None
