"""A click-refinement checkpoint -> ONNX, checked against torch on real encoded crops.

    python -m LightSegLib.lab.interactive.export runs/click/last.pt runs/click/click-refine.onnx
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ... import interactive as ia
from ...errors import LightSegError
from ...registry import SAMPLES_DIR
from ..export import count_macs, export_onnx, load_checkpoint

SAMPLE = "acdc_patient002_ED"  # the bundled cardiac sample and its reference labels


def sample_crops() -> np.ndarray:
    """Real encoded crops (2, CHANNELS, CROP, CROP) of the bundled ACDC sample's LV: a first click on an empty
    mask in the wide first crop, and a correction with the true mask as the previous one in the object's crop."""
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLES_DIR / f"{SAMPLE}.nii.gz"))).astype(np.float32)
    lv = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLES_DIR / f"{SAMPLE}_label.nii.gz"))) == 3
    z = int(np.argmax(lv.reshape(len(lv), -1).sum(1)))
    click = ia.deepest_point(lv[z])
    empty = np.zeros(lv[z].shape, np.float32)
    first = ia.encode(image[z], empty, [click], [], ia.first_window(click, empty.shape))
    window = ia.window_around(np.argwhere(lv[z]).astype(float), empty.shape)
    again = ia.encode(image[z], lv[z].astype(np.float32), [click], [], window)
    return np.stack([first, again])


def export(checkpoint, out, crops: np.ndarray | None = None) -> dict:
    """Write the ONNX file; returns its size, parameters, MACs per crop and the torch/ONNX largest difference
    (on ``crops``, by default the bundled sample's)."""
    import onnxruntime as ort
    import torch

    net, ckpt = load_checkpoint(checkpoint)
    if ckpt.get("task") != "click-refine":
        raise LightSegError(f"{checkpoint} is not a click-refinement checkpoint")
    out = export_onnx(net, out, ia.CHANNELS, trace_hw=(ia.CROP, ia.CROP))
    crops = sample_crops() if crops is None else crops
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
