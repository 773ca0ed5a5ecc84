"""A resumable checkpoint from a shipped click model's ONNX file, for a run whose own checkpoint is gone.

The export folded each BatchNorm into its conv; ``warm_start_from_onnx`` re-inflates them from real training crops, so
the net answers as the ONNX file does (eval mode) and close to it in train mode. Layers of the config's architecture
that the ONNX file lacks (a full-resolution refiner) keep their fresh initialisation, zero where the architecture
says so. The checkpoint is written as the trainer writes its own, at ``--step``, with no optimizer state (the
trainer starts a fresh one).

    python -m LightSegLib.lab.interactive.seed --config configs/models/click-refine.toml --out runs/click6 \\
        --onnx Resources/Models/click-refine.onnx --step 28000

``--widen F --checkpoint last.pt`` seeds instead from a run's own checkpoint made F times wider without changing its
answer (``LightSegLib.lab.nets.widen``): the config names the wider widths.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ... import interactive as ia
from ...errors import LightSegError
from ..export import warm_start_from_onnx
from ..train.config import read_toml
from .data import BENCHMARK, load_slices, objects
from .train import batch_input, make_sample


def calibration_batches(cfg: dict, count: int = 8, size: int = 12, seed: int = 0) -> list[np.ndarray]:
    """Encoded crops of training objects (the benchmark's structures), as the trainer makes them."""
    rng = np.random.default_rng(seed)
    slices = load_slices(cfg, "train")
    found = objects(slices, list(BENCHMARK))
    batches = []
    while len(batches) < count:
        samples = []
        while len(samples) < size:
            i, name = found[rng.integers(len(found))]
            s = make_sample(slices[i], name, rng)
            if s is not None:
                samples.append(s)
        batches.append(batch_input(samples, [s[1] for s in samples]))
    return batches


def refuse_existing(out: Path) -> None:
    if (out / "last.pt").exists():
        raise LightSegError(f"{out / 'last.pt'} exists: seeding would overwrite a run")


def write_seeded(out: Path, weights: dict, arch: dict, cfg: dict, step: int, source: str) -> None:
    """``out``/last.pt as the trainer writes its own, at ``step``, with no optimizer state (the trainer starts a
    fresh one), and where it came from for the card."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    torch.save({"model": weights, "optimizer": None, "architecture": arch, "step": int(step), "seconds": 0.0,
                "config": cfg, "task": "click-refine", "crop": ia.CROP, "disk_radius": ia.DISK_RADIUS,
                "seeded_from": source, "seeded_step": int(step)}, out / "last.pt")


def seed(cfg: dict, onnx_path: Path, out: Path, step: int, batches=None) -> float:
    """Write ``out``/last.pt; returns the largest logit difference from the ONNX file on a calibration batch
    (``batches``: encoded crops for the BatchNorms; by default training crops made as the trainer makes them)."""
    from ..nets import build

    refuse_existing(out)
    arch = dict(cfg["model"], in_channels=ia.CHANNELS, num_classes=1)
    base_arch = dict(arch, refine=0)
    base = build(base_arch)
    diff = warm_start_from_onnx(base, onnx_path, calibration_batches(cfg) if batches is None else batches)
    net = build(arch)
    missing, unexpected = net.load_state_dict(base.state_dict(), strict=False)
    if unexpected or any(not k.startswith("refiner.") for k in missing):
        raise LightSegError(f"{onnx_path} does not fit the config's architecture: {missing or unexpected}")
    write_seeded(out, net.state_dict(), arch, cfg, step, str(onnx_path))
    return diff


def seed_widened(cfg: dict, checkpoint: Path, out: Path, factor: int) -> float:
    """Write ``out``/last.pt: ``checkpoint``'s net ``factor`` times wider, at its step, with no optimizer state.
    Returns the largest logit difference from the checkpoint's net on a calibration batch (eval mode)."""
    import torch

    from ..nets import build
    from ..nets.widen import widen_unet

    refuse_existing(out)
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    net = build(state["architecture"])
    net.load_state_dict(state["model"])
    wide = widen_unet(net.eval(), factor).eval()
    arch = dict(cfg["model"], in_channels=ia.CHANNELS, num_classes=1)
    if list(arch["widths"]) != list(wide.widths):
        raise LightSegError(f"the config's widths {arch['widths']} are not {factor} x {state['architecture']['widths']}")
    x = torch.from_numpy(calibration_batches(cfg, count=1)[0])
    with torch.no_grad():
        diff = float((net(x) - wide(x)).abs().max())
    write_seeded(out, wide.state_dict(), arch, cfg, state["step"], f"{checkpoint} widened x{factor}")
    return diff


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--onnx", default="Resources/Models/click-refine.onnx")
    parser.add_argument("--step", type=int, help="the step the ONNX file's run had reached")
    parser.add_argument("--widen", type=int, metavar="F", help="seed from --checkpoint made F times wider")
    parser.add_argument("--checkpoint", help="a run's last.pt (with --widen)")
    args = parser.parse_args(argv)
    cfg = read_toml(Path(args.config))
    if args.widen:
        if not args.checkpoint:
            parser.error("--widen needs --checkpoint")
        diff, source = seed_widened(cfg, Path(args.checkpoint), Path(args.out), args.widen), args.checkpoint
    else:
        if args.step is None:
            parser.error("--step is needed with --onnx")
        diff, source = seed(cfg, Path(args.onnx), Path(args.out), args.step), args.onnx
    print(f"{args.out}/last.pt written; largest logit difference from {source}: {diff:.2e}")


if __name__ == "__main__":
    main()
