"""Figures of a binary classifier from its positive-class probabilities and 0/1 labels: the confusion counts at a
threshold, the ROC curve and its rank AUC, Youden's threshold and the calibration error. Plain numpy (scipy for the
ranks), so the classifier's publish stage and its validation protocol score the same way."""
from __future__ import annotations

import numpy as np


def confusion(prob: np.ndarray, y: np.ndarray, threshold: float) -> dict:
    pred = prob >= threshold
    tp, tn = int((pred & (y == 1)).sum()), int((~pred & (y == 0)).sum())
    fp, fn = int((pred & (y == 0)).sum()), int((~pred & (y == 1)).sum())
    return {"accuracy": (tp + tn) / len(y), "sensitivity": tp / max(1, tp + fn), "specificity": tn / max(1, tn + fp),
            "tp": tp, "tn": tn, "fp": fp, "fn": fn}


def roc_curve(prob: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate, thresholds), one point per distinct score, descending."""
    thresholds = np.unique(prob)[::-1]
    tpr = np.array([((prob >= t) & (y == 1)).sum() / max(1, (y == 1).sum()) for t in thresholds])
    fpr = np.array([((prob >= t) & (y == 0)).sum() / max(1, (y == 0).sum()) for t in thresholds])
    return np.r_[0.0, fpr, 1.0], np.r_[0.0, tpr, 1.0], np.r_[1.0, thresholds, 0.0]


def rank_auc(prob: np.ndarray, y: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count half): fast enough for a thousand bootstrap rounds."""
    from scipy.stats import rankdata

    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(prob)
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def youden_threshold(prob: np.ndarray, y: np.ndarray) -> float:
    fpr, tpr, thr = roc_curve(prob, y)
    return float(thr[int(np.argmax(tpr - fpr))])


def ece(prob: np.ndarray, y: np.ndarray, bins: int = 10) -> tuple[float, list[dict]]:
    """Expected calibration error of the positive-class probability, and the reliability table."""
    edges = np.linspace(0, 1, bins + 1)
    rows, total = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (prob >= lo) & ((prob < hi) if hi < 1 else (prob <= hi))
        if not inside.any():
            continue
        mean_p, frac = float(prob[inside].mean()), float(y[inside].mean())
        rows.append({"bin": [float(lo), float(hi)], "n": int(inside.sum()), "mean_probability": mean_p,
                     "positive_fraction": frac})
        total += inside.sum() / len(y) * abs(mean_p - frac)
    return float(total), rows
