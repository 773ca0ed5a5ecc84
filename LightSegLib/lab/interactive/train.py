"""Train the click-conditioned net with simulated clicks (the RITM recipe), resumably, on a CPU.

Each sample: a structure on a training slice, a zoomed crop around it (sometimes a wide one, as before the
first click, sometimes cutting the object), 1-3 interior positives and 0-3 negatives, or a distorted copy of
the object as the previous mask (refining an automatic result, or the neighbouring slice when propagating).
Then 0..``max_rounds`` rounds without gradient, each adding a click at the deepest error of the current
prediction, and one round with gradient. The previous mask is dropped with probability ``drop_prev``. With
``session_rounds`` the rounds carry the mask a session would keep (binary, changed only next to the click) instead
of the net's whole probability, so the net meets the states a user's clicks build. With ``average = [from, every]``
the run also keeps the uniform mean of its weights (and BatchNorm buffers) every ``every`` steps from step ``from``
(SWA at a constant rate: where SGD happens to stop varies more than the mean of where it passed) and writes it as
``averaged.pt``, a checkpoint like ``last.pt``.

    python -m LightSegLib.lab.interactive.train --config configs/models/click-refine.toml --out runs/click [--resume]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from ... import interactive as ia
from ...errors import LightSegError
from ..train.config import read_toml  # TOML with `extends`, as every recipe of the workshop
from .clicker import interior_points, next_click, outside_points
from .data import BENCHMARK, Slice, load_slices, object_mask, objects, superpixel_slice


def sample_window(gt: np.ndarray, rng: np.random.Generator) -> ia.Window:
    ys, xs = np.nonzero(gt)
    if rng.random() < 0.3:  # wide, as the first crop around a click
        k = rng.integers(len(ys))
        return ia.first_window((ys[k], xs[k]), gt.shape, fraction=rng.uniform(0.35, 0.7))
    side = max(float(max(np.ptp(ys), np.ptp(xs)) + 1) * rng.uniform(1.1, 2.5), 32.0)
    cy, cx = (ys.min() + ys.max()) / 2 + rng.uniform(-0.15, 0.15) * side, \
        (xs.min() + xs.max()) / 2 + rng.uniform(-0.15, 0.15) * side
    return ia.Window(cy - side / 2, cx - side / 2, side)


def distorted(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible wrong mask: shifted, grown or shrunk (an automatic result, or the next slice's outline)."""
    out = np.roll(gt, (int(rng.integers(-4, 5)), int(rng.integers(-4, 5))), axis=(0, 1))
    k = int(rng.integers(1, 5))
    change = ndimage.binary_dilation if rng.random() < 0.5 else ndimage.binary_erosion
    out = change(out, iterations=k)
    return out.astype(np.float32)


def make_sample(s: Slice, name: str, rng: np.random.Generator, prev_mask: float = 0.25):
    """(image crop, prev crop, gt crop, positives, negatives) in crop pixels, or None if the crop lost the object."""
    gt_full = object_mask(s, name)
    w = sample_window(gt_full, rng)
    ys, xs = w.grid()
    image = ia.bilinear(s.image.astype(np.float32), ys, xs, fill=float(s.image.min()))
    gt = ia.bilinear(gt_full.astype(np.float32), ys, xs) > 0.5
    others = ia.bilinear(((s.label > 0) & ~gt_full).astype(np.float32), ys, xs) > 0.5
    if gt.sum() < 8:
        return None
    if rng.random() < 0.5:
        image, gt, others = image[:, ::-1], gt[:, ::-1], others[:, ::-1]
    image = ia.scale_intensity(image) ** rng.uniform(0.7, 1.4)
    if rng.random() < prev_mask:  # a previous mask to correct: as when refining a result or propagating
        prev = distorted(gt, rng)
        positives, negatives = interior_points(gt, 1, rng), []
    else:
        prev = np.zeros(gt.shape, np.float32)
        positives = interior_points(gt, int(rng.choice([1, 2, 3], p=[0.6, 0.25, 0.15])), rng)
        negatives = outside_points(gt, int(rng.choice([0, 1, 2, 3], p=[0.5, 0.25, 0.15, 0.1])), rng, others=others)
    return np.ascontiguousarray(image), prev, np.ascontiguousarray(gt), positives, negatives


def accepted(prob: np.ndarray, prev: np.ndarray, click) -> np.ndarray:
    """The mask a session keeps after ``click`` ((y, x), positive) got the answer ``prob``: binary, the clicked
    pixel following the click, changed only where the change touches the click (the whole answer when there was
    no single last click, as after the sample's initial clicks)."""
    new = prob > 0.5
    if click is not None:
        (y, x), positive = click
        new[y, x] = positive
        old = prev > 0.5
        new = np.where(ia.touching(new != old, (y, x), radius=1.5), new, old)
    return new.astype(np.float32)


def batch_input(samples, prevs) -> np.ndarray:
    x = np.zeros((len(samples), ia.CHANNELS, ia.CROP, ia.CROP), np.float32)
    for b, (image, _, _, pos, neg) in enumerate(samples):
        x[b] = [image, prevs[b], ia.disks(pos), ia.disks(neg)]
    return x


def outline_band(target, width: int = 5):
    """Pixels whose ``width`` x ``width`` neighbourhood holds both object and background: the true outline's band."""
    import torch.nn.functional as F

    grown = F.max_pool2d(target, width, stride=1, padding=width // 2)
    shrunk = -F.max_pool2d(-target, width, stride=1, padding=width // 2)
    return grown - shrunk


def loss_fn(logits, target, outline_weight: float = 0.0):
    """BCE + Dice; with ``outline_weight`` the BCE of the outline's band counts 1 + that much (the outline is where a
    thin structure's IoU is lost)."""
    import torch.nn.functional as F

    prob = logits.sigmoid()
    inter = (prob * target).sum((1, 2, 3))
    dice = 1 - (2 * inter + 1) / (prob.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
    weight = 1 + outline_weight * outline_band(target) if outline_weight else None
    return F.binary_cross_entropy_with_logits(logits, target, weight=weight) + dice.mean()


def train(cfg: dict, out: Path, resume: bool) -> None:
    import torch

    from ..nets import build

    t = cfg["train"]
    torch.set_num_threads(int(t.get("threads", 1)))
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "log.txt", "a", buffering=1)

    def say(text: str) -> None:
        log.write(f"{time.strftime('%H:%M:%S')} {text}\n")

    left_out = set(cfg["data"].get("left_out", []))
    slices = load_slices(cfg, "train")
    names = sorted({n for s in slices for n in s.names} - left_out)
    found = objects(slices, names)
    pool = {n: [i for i, m in found if m == n] for n in names}
    structures = [n for n in names if pool[n]]
    groups = {"benchmark": [n for n in structures if n in BENCHMARK],
              "other": [n for n in structures if n not in BENCHMARK]}
    mix = dict(t.get("mix", {"benchmark": 1.0}))
    prev_mask = float(t.get("prev_mask", 0.25))
    weights = dict(t.get("weights", {}))  # within a group, structures drawn in these proportions (default 1 each)
    say(f"training objects: {', '.join(f'{n} {len(pool[n])}' for n in groups['benchmark'])}; "
        f"{len(groups['other'])} other structures, {sum(len(pool[n]) for n in groups['other'])} objects; "
        f"mix {mix}, weights {weights or 'equal'} (left out: {', '.join(sorted(left_out)) or 'none'})")

    def draw():
        group = rng.choice(list(mix), p=np.array(list(mix.values())) / sum(mix.values()))
        if group == "superpixel":
            s = superpixel_slice(slices[rng.integers(len(slices))], rng)
            return None if s is None else make_sample(s, "superpixel", rng, prev_mask)
        names_in = groups[group]
        if weights:
            w = np.array([float(weights.get(n, 1.0)) for n in names_in])
            name = names_in[rng.choice(len(names_in), p=w / w.sum())]
        else:
            name = names_in[rng.integers(len(names_in))]
        return make_sample(slices[pool[name][rng.integers(len(pool[name]))]], name, rng, prev_mask)

    arch = dict(cfg["model"], in_channels=ia.CHANNELS, num_classes=1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # a lent GPU only shortens it
    net = build(arch)
    only = t.get("train_only")  # one top-level part of the net trained alone; the rest frozen, its BatchNorms fixed
    if only:
        if not any(name == only for name, _ in net.named_children()):
            raise LightSegError(f"train_only: the net has no part {only!r}")
        for name, p in net.named_parameters():
            p.requires_grad_(name.split(".")[0] == only)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=float(t["lr"]), weight_decay=1e-4)
    step, seconds = 0, 0.0
    average = [int(v) for v in t["average"]] if t.get("average") else None  # [from step, every steps]
    mean, count = ({}, 0) if average else (None, 0)
    seeded = {}  # where a run started from a shipped ONNX file (seed.py), kept in every checkpoint for its card
    last = out / "last.pt"
    if resume and last.is_file():
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
        net.load_state_dict(ckpt["model"])
        if ckpt.get("optimizer"):  # a seeded checkpoint starts a fresh optimizer
            opt.load_state_dict(ckpt["optimizer"])
        step, seconds = ckpt["step"], ckpt.get("seconds", 0.0)
        seeded = {k: ckpt[k] for k in ("seeded_from", "seeded_step") if k in ckpt}
        if average and ckpt.get("average"):  # a run resumed without ``average`` keeps training, not averaging
            mean, count = ckpt["average"]["weights"], ckpt["average"]["count"]
        say(f"resumed at step {step}")
    net.to(device)
    for state in opt.state.values():  # a checkpoint written on one device resumes on the other
        for k, v in state.items():
            if torch.is_tensor(v) and k != "step":
                state[k] = v.to(device)
    rng = np.random.default_rng(int(t.get("seed", 0)) + step)
    batch, max_rounds, drop = int(t["batch"]), int(t["max_rounds"]), float(t["drop_prev"])
    as_session = bool(t.get("session_rounds", False))
    every = float(t["checkpoint_minutes"]) * 60
    saved, started, running = time.time(), time.time() - seconds, []

    def save() -> None:
        state = {"model": {k: v.cpu() for k, v in net.state_dict().items()}, "optimizer": opt.state_dict(), "architecture": arch, "step": step,
                 "seconds": time.time() - started, "config": cfg, "task": "click-refine",
                 "crop": ia.CROP, "disk_radius": ia.DISK_RADIUS, "structures": structures, **seeded}
        if mean is not None:
            state["average"] = {"weights": mean, "count": count}
        torch.save(state, out / "last.tmp")
        (out / "last.tmp").replace(last)
        if count:
            state = {k: v for k, v in state.items() if k not in ("optimizer", "average")}
            state.update(model=mean, averaged={"from": average[0], "every": average[1], "count": count})
            torch.save(state, out / "averaged.tmp")
            (out / "averaged.tmp").replace(out / "averaged.pt")

    def rate(at: int) -> float:
        """``lr`` until the first of ``lr_drops`` ([step, rate] pairs), then each drop's rate from its step."""
        return next((float(r) for s, r in sorted(t.get("lr_drops", []), reverse=True) if at >= int(s)), float(t["lr"]))

    while step < int(t["steps"]):
        for group in opt.param_groups:
            group["lr"] = rate(step)
        samples = []
        while len(samples) < batch:
            s = draw()
            if s is not None:
                samples.append(s)
        prevs = [s[1] for s in samples]
        rounds = int(rng.integers(0, max_rounds + 1))
        net.train()
        for name, part in net.named_children():
            if only and name != only:
                part.eval()
        with torch.no_grad():
            latest = [None] * len(samples)  # each sample's latest simulated click
            for _ in range(rounds):
                prob = net(torch.from_numpy(batch_input(samples, prevs)).to(device)).sigmoid()[:, 0].cpu().numpy()
                for b, (_, _, gt, pos, neg) in enumerate(samples):
                    prevs[b] = accepted(prob[b], prevs[b], latest[b]) if as_session else prob[b]
                    click = next_click(prevs[b] > 0.5, gt)
                    if click is not None:
                        (pos if click[1] else neg).append(click[0])
                    latest[b] = click
        prevs = [np.zeros_like(p) if rng.random() < drop else p for p in prevs]
        x = torch.from_numpy(batch_input(samples, prevs)).to(device)
        target = torch.from_numpy(np.stack([s[2] for s in samples])[:, None].astype(np.float32)).to(device)
        logits = net(x)
        loss = loss_fn(logits, target, float(t.get("outline_weight", 0.0)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        with torch.no_grad():
            pred, gt = logits > 0, target > 0.5
            iou = ((pred & gt).sum((1, 2, 3)) / (pred | gt).sum((1, 2, 3)).clamp(min=1)).mean().item()
        running.append((loss.item(), iou, rounds))
        if average and step >= average[0] and (step - average[0]) % average[1] == 0:
            count += 1
            for k, v in net.state_dict().items():
                v = v.detach().cpu()
                if count == 1 or not v.is_floating_point():  # integer buffers (BatchNorm's batch count): the latest
                    mean[k] = v.clone()
                else:
                    mean[k] += (v - mean[k]) / count
        if step % 25 == 0:
            a = np.array(running)
            say(f"step {step} loss {a[:, 0].mean():.4f} IoU {a[:, 1].mean():.3f} rounds {a[:, 2].mean():.1f} "
                f"elapsed {(time.time() - started) / 60:.1f} min")
            running = []
        if time.time() - saved > every:
            save()
            saved = time.time()
    save()
    say(f"done at step {step}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    train(read_toml(Path(args.config)), Path(args.out), args.resume)


if __name__ == "__main__":
    main()
