"""Evaluation on a labelled split: Dice and HD95 (mm) per case and label (LightSegLib.metrics), CSV, markdown, figure.

A registry id is evaluated through the inference engine (ONNX, with the card's post-processing): the figures
are those of what ships. A checkpoint is evaluated through torch on the same preprocessing, without
post-processing (what training validation measures), unless ``postprocessing`` is given.
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import LightSegError


def case_metrics(pred: np.ndarray, truth: np.ndarray, num_classes: int, spacing_zyx) -> tuple[np.ndarray, np.ndarray]:
    """Dice and HD95 (mm, physical spacing) per foreground label (NaN: see LightSegLib.metrics)."""
    from .metrics import dice_per_class, hd95_per_class

    return dice_per_class(pred, truth, num_classes), hd95_per_class(pred, truth, num_classes, spacing_zyx)


def _predictor(model: str, threads: int, postprocessing: dict | None):
    """(predict(entry) -> (image, prediction array in file order), label names, num_classes)."""
    path = Path(model)
    if path.suffix in (".pt", ".pth") or path.is_file():
        import torch

        from .data.msd import load_case
        from .export import load_checkpoint
        from .postprocess import apply
        from .train.evaluate_core import predict_case

        torch.set_num_threads(threads)
        net, ckpt = load_checkpoint(path)
        k = int(ckpt["architecture"]["num_classes"])

        def predict(entry):
            case = load_case(entry, ckpt["prep"])
            labels = np.ascontiguousarray(case.orientation.invert(predict_case(net, case, "cpu",
                                                                               context=ckpt["prep"].get("context_slices", 0))))
            if postprocessing:
                apply(labels, postprocessing)
            return sitk.ReadImage(entry["image"]), labels

        return predict, {v: f"label {v}" for v in range(1, k)}, k

    from .inference import make_runner, segment_image
    from .registry import get_model

    model_id, _, variant = model.partition(":")  # "ID:int8" evaluates the int8 file, as lightseg bench names it
    if variant not in ("", "int8"):
        raise LightSegError(f"model {model!r}: the only variant is ID:int8")
    card = get_model(model_id)
    runner = make_runner(card, "onnx", threads, int8=variant == "int8")

    def predict(entry):
        image = sitk.ReadImage(entry["image"])
        return image, sitk.GetArrayFromImage(segment_image(image, card, runner).labelmap)

    return predict, card.label_names(), card.num_classes


def evaluate(model: str, data, split: str, out, threads: int = 2, limit: int | None = None,
             postprocessing: dict | None = None, log=print) -> dict:
    from .data.msd import read_split

    entries = [e for e in read_split(data, split) if e.get("label")][:limit or None]
    if not entries:
        raise LightSegError(f"split {split!r} of {data} has no labelled cases")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    predict, names, k = _predictor(model, threads, postprocessing)
    rows, keep = [], {}
    t0 = time.time()
    for i, entry in enumerate(entries):
        image, pred = predict(entry)
        truth = sitk.GetArrayFromImage(sitk.ReadImage(entry["label"])).astype(np.uint8)
        if truth.shape != pred.shape:
            raise LightSegError(f"label grid differs from image grid: {entry['label']}")
        dice, hd = case_metrics(pred, truth, k, image.GetSpacing()[::-1])
        name = Path(entry["image"]).name.split(".")[0]
        for v in range(1, k):
            rows.append({"case": name, "label": v, "name": names.get(v, str(v)), "dice": float(dice[v - 1]),
                         "hd95_mm": float(hd[v - 1])})
        keep[name] = (entry, float(np.nanmean(dice)))
        log(f"[{i + 1}/{len(entries)}] {name}: Dice " + ", ".join(f"{d:.3f}" for d in dice))
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary = summarise(rows, names)
    summary.update({"model": str(model), "data": str(data), "split": split, "cases": len(entries),
                    "seconds": round(time.time() - t0, 1)})
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "summary.md").write_text(markdown(summary, names))
    ranked = sorted(keep.items(), key=lambda kv: kv[1][1])
    figure(rows, names, [ranked[-1], ranked[0]], predict, out / "evaluation.png")
    log(f"mean Dice {summary['mean_dice']:.4f}; wrote {out}/metrics.csv, summary.md, evaluation.png")
    return summary


def summarise(rows: list[dict], names: dict) -> dict:
    per = {}
    for v, name in names.items():
        d = np.array([r["dice"] for r in rows if r["label"] == v], float)
        h = np.array([r["hd95_mm"] for r in rows if r["label"] == v], float)
        per[name] = {m: {"mean": float(np.nanmean(a)), "sd": float(np.nanstd(a)), "median": float(np.nanmedian(a)),
                         "n": int(np.sum(~np.isnan(a)))} for m, a in (("dice", d), ("hd95_mm", h)) if np.any(~np.isnan(a))}
    means = [p["dice"]["mean"] for p in per.values() if "dice" in p]
    return {"per_label": per, "mean_dice": float(np.mean(means)) if means else float("nan")}


def markdown(summary: dict, names: dict) -> str:
    lines = [f"# Evaluation: {summary['model']}", "",
             f"Data: `{summary['data']}`, split `{summary['split']}`, {summary['cases']} cases. "
             f"Mean Dice over labels: **{summary['mean_dice']:.4f}**.", "",
             "| label | Dice mean | Dice sd | Dice median | HD95 mean (mm) | HD95 sd | HD95 median |",
             "|---|---|---|---|---|---|---|"]
    for name, p in summary["per_label"].items():
        d, h = p.get("dice"), p.get("hd95_mm")
        fmt = lambda s, key, nd: f"{s[key]:.{nd}f}" if s else "n/a"  # noqa: E731
        lines.append(f"| {name} | {fmt(d, 'mean', 4)} | {fmt(d, 'sd', 4)} | {fmt(d, 'median', 4)} | "
                     f"{fmt(h, 'mean', 2)} | {fmt(h, 'sd', 2)} | {fmt(h, 'median', 2)} |")
    return "\n".join(lines) + "\n"


def figure(rows, names, cases, predict, path) -> None:
    """Box plot of Dice per label, then the best and the worst case (by mean Dice): mid-heart slice with
    the reference (contour) and the prediction (fill)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 4.2))
    data = [[r["dice"] for r in rows if r["label"] == v and not np.isnan(r["dice"])] for v in names]
    ax[0].boxplot(data, tick_labels=list(names.values()))
    ax[0].set_ylabel("Dice")
    ax[0].set_ylim(0, 1)
    ax[0].grid(alpha=0.3)
    for a, (name, (entry, score)), title in zip(ax[1:], cases, ("best", "worst")):
        image, pred = predict(entry)
        img = sitk.GetArrayFromImage(image)
        truth = sitk.GetArrayFromImage(sitk.ReadImage(entry["label"]))
        z = int(np.argmax((truth > 0).sum(axis=(1, 2))))
        a.imshow(img[z], cmap="gray")
        a.imshow(np.ma.masked_equal(pred[z], 0), cmap="autumn", alpha=0.45, vmin=0, vmax=max(names))
        a.contour(truth[z], levels=np.arange(0.5, max(names) + 0.5), colors="cyan", linewidths=0.8)
        a.set_title(f"{title}: {name} (mean Dice {score:.3f}), slice {z}", fontsize=9)
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
