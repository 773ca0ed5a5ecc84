"""Whole-volume prediction and Dice, shared by validation during training, export checks and evaluation."""
from __future__ import annotations

import numpy as np
import torch

from ... import preprocess
from ..data.msd import Case
from ...metrics import dice_per_class


@torch.no_grad()
def predict_case(net, case: Case, device, batch: int = 8, context: int = 0) -> np.ndarray:
    """Labels [n, h, w] uint8 on the oriented native grid: slices through the net on the model grid, logits
    back to the input grid exactly as the inference engine does (``PlaneGeometry.labels_from_model``)."""
    net.eval()
    n = case.image.shape[0]
    out = []
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        idx = preprocess.context_indices(start, stop, context, n)
        x = preprocess.with_context(case.image[idx], context)
        logits = net(torch.from_numpy(np.ascontiguousarray(x)).to(device)).float().cpu().numpy()
        out.append(case.geometry.labels_from_model(logits))
    return np.concatenate(out, axis=0)


def validate(net, cases: list[Case], num_classes: int, device, context: int = 0) -> dict:
    """Per-case Dice rows and the per-class mean over cases (NaN-aware) and their mean."""
    rows = []
    for case in cases:
        pred = predict_case(net, case, device, context=context)
        rows.append(dice_per_class(pred, case.native_label, num_classes))
    per_class = np.nanmean(np.stack(rows), axis=0)
    return {"per_case": rows, "per_class": [float(v) for v in per_class], "mean": float(np.mean(per_class))}
