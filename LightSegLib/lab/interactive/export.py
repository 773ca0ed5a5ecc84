"""A click-refinement checkpoint -> ONNX, checked against torch on real encoded crops.

    python -m LightSegLib.lab.interactive.export runs/click/last.pt runs/click/click-refine.onnx
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ... import interactive as ia
from ...errors import LightSegError
from ..export import count_macs, export_onnx, load_checkpoint


def export(checkpoint, out, crops: np.ndarray | None = None) -> dict:
    """Write the ONNX file; returns its size, parameters, MACs per crop and the torch/ONNX largest difference."""
    import onnxruntime as ort
    import torch

    net, ckpt = load_checkpoint(checkpoint)
    if ckpt.get("task") != "click-refine":
        raise LightSegError(f"{checkpoint} is not a click-refinement checkpoint")
    out = export_onnx(net, out, ia.CHANNELS, trace_hw=(ia.CROP, ia.CROP))
    if crops is None:
        crops = np.random.default_rng(0).random((2, ia.CHANNELS, ia.CROP, ia.CROP), dtype=np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(crops)).numpy()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"image": crops})[0]
    return {"file": str(out), "bytes": out.stat().st_size, "params": int(sum(p.numel() for p in net.parameters())),
            "macs": int(count_macs(net, (1, ia.CHANNELS, ia.CROP, ia.CROP))), "step": ckpt.get("step"),
            "max_abs_diff": float(np.abs(expected - got).max())}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    args = parser.parse_args(argv)
    print(export(args.checkpoint, Path(args.out)))


if __name__ == "__main__":
    main()
