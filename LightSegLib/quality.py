"""A quality estimate for every result, from what the engine already has: the network's softmax confidence inside
the predicted region, how much of the raw prediction the largest 3D component kept, and whether the organ's size
and position inside the body are plausible.

A 2D network that meets a volume unlike its training slices does not fail quietly in one way: it marks a
neighbouring organ with high confidence, scatters small islands over many slices, or finds a sliver. Each
check catches one of these. The thresholds are calibrated per model on validation data and stored in the
registry entry's ``quality`` block (``benchmarks/quality_calibration.py``); a model without one gets the figures
but no flag.
"""
from __future__ import annotations

import numpy as np

from .postprocess import bounding_box
from .preprocess import argmax_classes

LOW = "low confidence: check carefully"


class Confidence:
    """Running per-label sums of the softmax probability of the predicted class, on the model's grid."""

    def __init__(self, num_classes: int):
        self.sum = np.zeros(num_classes)
        self.count = np.zeros(num_classes, np.int64)

    def add(self, logits: np.ndarray, pred: np.ndarray | None = None) -> None:
        """``pred``: the logits' argmax, where the caller has it already."""
        if logits.shape[1] == 2:  # one organ: the top probability is a sigmoid of the logit margin
            margin = logits[:, 1] - logits[:, 0]
            fg = margin[margin > 0].astype(np.float64)
            self.sum[1] += float(np.sum(1.0 / (1.0 + np.exp(-fg))))
            self.count[1] += fg.size
            return
        pred = argmax_classes(logits) if pred is None else pred
        fg = pred > 0
        if not fg.any():
            return
        scores = np.moveaxis(logits, 1, -1)[fg].astype(np.float64)  # only foreground pixels: [m, K]
        scores -= scores.max(axis=1, keepdims=True)
        p = np.exp(scores)
        top = 1.0 / p.sum(axis=1)  # the maximum's probability: exp(0) / sum
        cls = pred[fg]
        self.sum += np.bincount(cls, weights=top, minlength=self.sum.size)
        self.count += np.bincount(cls, minlength=self.count.size)

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        return self.sum.copy(), self.count.copy()

    def restore(self, saved: tuple[np.ndarray, np.ndarray]) -> None:
        """Forget what was added since ``saved``: slices the engine runs again."""
        self.sum, self.count = saved[0].copy(), saved[1].copy()

    def mean(self, value: int) -> float | None:
        return float(self.sum[value] / self.count[value]) if self.count[value] else None


def _percentiles(counts: np.ndarray, q: float) -> np.ndarray:
    """Per row of ``counts`` (how many samples sit at each index), ``np.percentile`` of the indices, without
    listing them: the sorted list's k-th element is the first index whose cumulative count exceeds k."""
    cums = np.cumsum(counts, axis=1)
    pos = q / 100.0 * (cums[:, -1] - 1)
    lo = np.floor(pos)
    at = [(cums > k[:, None]).argmax(axis=1) for k in (lo, np.minimum(lo + 1, cums[:, -1] - 1))]
    return at[0] + (at[1] - at[0]) * (pos - lo)


# Body boxes are drawn from every BOX_STEP-th pixel of each row and column: a box needs no more.
BOX_STEP = 4


def _body_boxes(sample: np.ndarray, threshold: float, step: int = BOX_STEP):
    """Per slice, the rows and columns spanned by tissue (robust to a stray table edge): 1st-99th percentile of
    tissue pixels in ``sample`` (every ``step``-th pixel of the slices), and the tissue area in full-resolution
    pixels. ``valid``: slices with enough tissue for a box."""
    tissue = sample > threshold
    rows, cols = tissue.sum(axis=2), tissue.sum(axis=1)
    area = rows.sum(axis=1)
    enough = area >= 50
    rows, cols = rows[enough], cols[enough]
    # a sample stands for the step after it
    r0, r1 = (_percentiles(rows, q) * step + end for q, end in ((1, 0), (99, step - 1)))
    c0, c1 = (_percentiles(cols, q) * step + end for q, end in ((1, 0), (99, step - 1)))
    valid = np.zeros(len(sample), bool)
    valid[np.flatnonzero(enough)[(r1 > r0) & (c1 > c0)]] = True
    keep = valid[enough]
    return valid, r0[keep], r1[keep], c0[keep], c1[keep], area[valid] * step * step


def organ_figures(volume: np.ndarray, labels: np.ndarray, value: int, body_threshold: float) -> dict:
    """Size and position of one label inside the body, slice by slice in radiological view (LPS stacks):
    ``area_fraction``: the largest cross-section as a fraction of that slice's tissue area; ``position``:
    the label's centroid within the body's box (x 0 = patient's right, 1 = left; y 0 = anterior, 1 = posterior),
    area-weighted over slices. Fractions, not mm: the 2D training sets have no pixel size."""
    mask = labels == value
    where = bounding_box(mask)
    if where is None:
        return {}
    zs, ys_box, xs_box = where
    # Per-slice row and column profiles of the label: all the centroid needs, without copying the mask.
    sub = mask[where]
    row_profile = np.count_nonzero(sub, axis=2)
    col_profile = np.count_nonzero(sub, axis=1)
    size = row_profile.sum(axis=1)
    present = np.flatnonzero(size > 0)
    sample = volume[zs, ::BOX_STEP, ::BOX_STEP][present]
    valid, r0, r1, c0, c1, tissue = _body_boxes(sample, body_threshold)
    if not valid.any():
        return {}
    chosen = present[valid]
    weights = size[chosen]
    rows = (row_profile[chosen] * np.arange(row_profile.shape[1])).sum(axis=1) / weights
    cols = (col_profile[chosen] * np.arange(col_profile.shape[1])).sum(axis=1) / weights
    ys = (rows + ys_box.start - r0) / (r1 - r0)
    xs = (cols + xs_box.start - c0) / (c1 - c0)
    return {"area_fraction": round(float(np.max(weights / tissue)), 4),
            "position": [round(float(np.average(xs, weights=weights)), 3),
                         round(float(np.average(ys, weights=weights)), 3)]}


def _body_threshold(card) -> float | None:
    """Tissue is what the CT window keeps (above its lower bound, as in the 8-bit training slices, where fat is
    0); MR has no absolute scale and its cardiac stacks are cropped to the heart, so no body box there."""
    norm = card.normalization
    if card.modality == "CT" and norm["type"] == "window" and card.input["orientation"] == "LPS":
        return float(norm["window"][0])
    return None


def check(name: str, figures: dict, limits: dict) -> list[str]:
    """Why one label's figures fall outside the card's limits (empty when they do not)."""
    reasons = []
    conf = figures.get("confidence")
    if conf is not None and conf < limits.get("min_confidence", 0.0):
        reasons.append(f"{name}: mean confidence {conf:.2f} < {limits['min_confidence']}")
    kept = figures.get("kept_fraction")
    if kept is not None and kept < limits.get("min_kept_fraction", 0.0):
        reasons.append(f"{name}: only {kept:.0%} of the prediction is in one piece")
    area = figures.get("area_fraction")
    if area is not None and "area_fraction" in limits:
        lo, hi = limits["area_fraction"]
        if not lo <= area <= hi:
            reasons.append(f"{name}: largest cross-section {area:.1%} of the body, expected {lo:.1%}-{hi:.1%}")
    pos = figures.get("position")
    if pos is not None and "position" in limits:
        (x0, x1), (y0, y1) = limits["position"]
        if not (x0 <= pos[0] <= x1 and y0 <= pos[1] <= y1):
            reasons.append(f"{name}: not where it usually lies (centre at {pos[0]:.2f}, {pos[1]:.2f} of the body box)")
    return reasons


def assess(card, volume: np.ndarray, labels: np.ndarray, counts: dict[int, int], removed: dict[int, int],
           confidence: Confidence) -> dict:
    """The quality block of a result. ``volume`` and ``labels`` are in the model's slice order (oriented);
    ``counts`` are each label's final voxels, ``removed`` those the largest-component step took away."""
    spec = card.entry.get("quality") or {}
    body_threshold = _body_threshold(card)
    checks = spec.get("labels", {})
    names = card.label_names()
    per_label, reasons = {}, []
    for value, name in names.items():
        kept = counts.get(value, 0)
        cut = removed.get(value, 0)
        figures = {"confidence": None if confidence.mean(value) is None else round(confidence.mean(value), 4),
                   "kept_fraction": round(1 - cut / (kept + cut), 4) if kept + cut else None}
        if kept and body_threshold is not None:
            figures.update(organ_figures(volume, labels, value, body_threshold))
        per_label[name] = figures
        if kept:  # "nothing found" is reported as a note already
            reasons += check(name, figures, checks.get(name, {}))
    return {"flag": bool(reasons), "calibrated": bool(checks), "reasons": reasons, "labels": per_label}


def mark_outside(assessed: dict, reasons: list[str]) -> dict:
    """Flag a result whose input or output lies outside the model's world (``domain``): whatever the confidence
    says, such a result is never "quality ok"."""
    if reasons:
        assessed["flag"] = True
        assessed["outside"] = list(reasons)
        assessed["reasons"] = [f"outside what the model knows: {r}" for r in reasons] + assessed["reasons"]
    return assessed


def summary(quality: dict | None) -> str:
    """One phrase for a summary line: "quality ok" or "low confidence: check carefully (...)"."""
    if not quality:
        return ""
    if quality.get("flag"):
        return f"{LOW} ({'; '.join(quality['reasons'])})"
    confidences = [f"{name} {q['confidence']:.2f}" for name, q in quality["labels"].items()
                   if q.get("confidence") is not None]
    word = "quality ok" if quality.get("calibrated") else "quality not calibrated for this model"
    return f"{word} (confidence {', '.join(confidences)})" if confidences else word
