"""Evaluation on a labelled split: Dice and HD95 (mm) per case and label (LightSegLib.metrics), CSV, markdown, figure;
and the CT models' card figures (``evaluate_model``: held-out 8-bit slices, and the true-HU CT listed in
``configs/data/ct_checks.toml``; ``lightseg evaluate-ct``).

A registry id is evaluated through the inference engine (ONNX, with the card's post-processing): the figures
are those of what ships. A checkpoint is evaluated through torch on the same preprocessing, without
post-processing (what training validation measures), unless ``postprocessing`` is given.
"""
from __future__ import annotations

import ast
import csv
import json
import os
import time
import tomllib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import LightSegError
from ..inference import make_runner, segment_image
from ..io import read_image
from ..metrics import dice, dice_from_counts, dice_per_class, hd95_per_class
from ..postprocess import apply
from ..registry import SAMPLES_DIR, ModelCard, get_model
from .data import reader
from .data.msd import load_case, read_split
from .export import load_checkpoint


def case_metrics(pred: np.ndarray, truth: np.ndarray, num_classes: int, spacing_zyx) -> tuple[np.ndarray, np.ndarray]:
    """Dice and HD95 (mm, physical spacing) per foreground label (NaN: see LightSegLib.metrics)."""
    return dice_per_class(pred, truth, num_classes), hd95_per_class(pred, truth, num_classes, spacing_zyx)


def _predictor(model: str, threads: int, postprocessing: dict | None):
    """(predict(entry) -> (image, prediction array in file order), label names, num_classes)."""
    path = Path(model)
    if path.suffix in (".pt", ".pth") or path.is_file():
        import torch

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


# ---------------------------------------------------------------- CT models through the engine (model cards)
#: the shared real data of a development checkout (the CT card figures need it; absent data is skipped)
SHARED = Path(os.environ.get("LIGHTSEG_SHARED_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")
#: the CT checks beyond a training set's held-out split: which data, which label values, what each measures
CHECKS_FILE = Path(__file__).resolve().parents[2] / "configs" / "data" / "ct_checks.toml"
ROOTS = {"shared": SHARED, "samples": SAMPLES_DIR}


def _checks_file() -> dict:
    with open(CHECKS_FILE, "rb") as f:
        return tomllib.load(f)


def volume_checks(organ: str | None = None, cards: bool = False) -> list[dict]:
    """The whole-volume checks of CHECKS_FILE in its order, paths resolved; with ``organ``, those that label it;
    with ``cards``, those a model card reports."""
    checks = []
    for check in _checks_file()["volume"]:
        root = ROOTS[check.get("root", "shared")]
        check = {**check, "image": root / check["image"], "reference": root / check["reference"]}
        if (organ is None or organ in check["values"]) and not (cards and not check.get("card", True)):
            checks.append(check)
    return checks


def slice_checks(organ: str | None = None) -> list[dict]:
    """The true-HU slice checks of CHECKS_FILE (one case per file), for ``organ`` when given."""
    return [c for c in _checks_file()["slices"] if organ is None or c["organ"] == organ]


def check_slices(check: dict):
    """(case name, int16 HU slices in radiological view, label) of each file of a slice check."""
    for path in sorted(SHARED.glob(check["files"])):
        with np.load(path) as f:
            image, label = f["image"], f["label"]
        if "flip_axis" in check:
            image, label = np.flip(image, check["flip_axis"]), np.flip(label, check["flip_axis"])
        yield path.stem, np.ascontiguousarray(image, np.int16), label


def check_volume(check: dict) -> tuple[sitk.Image, np.ndarray]:
    """A volume check's CT (a file or a DICOM series, read as the engine reads it) and its reference map on the
    CT's grid: a reference may be stored on a differently oriented grid (the DICOM series' NIfTI label is
    y-flipped), so it is resampled (nearest) in physical space."""
    image = read_image(check["image"])
    reference = sitk.Resample(sitk.ReadImage(str(check["reference"])), image, sitk.Transform(),
                              sitk.sitkNearestNeighbor, 0)
    return image, sitk.GetArrayFromImage(reference)


def engine_predict(card, slices_zyx: np.ndarray, spacing_xyz=(1.0, 1.0, 1.0), postprocess: bool = True,
                   threads: int = 1) -> np.ndarray:
    """Labels for slices already in radiological view (LPS grid, identity direction) via ``segment_image``.
    ``postprocess=False`` for stacks of scattered slices, where 3D connected components mean nothing."""
    if not postprocess:  # nor a slice search: the slices are not neighbours
        card = ModelCard({**card.entry, "postprocessing": {}, "input": {**card.entry["input"], "z_search": 0}},
                         card.folder)
    image = sitk.GetImageFromArray(np.ascontiguousarray(slices_zyx))
    image.SetSpacing([float(s) for s in spacing_xyz])
    result = segment_image(image, card, threads=threads)
    return sitk.GetArrayFromImage(result.labelmap)


def summarise_slices(rows: list[dict]) -> dict:
    """Mean per-case Dice (NaN-aware), pooled Dice over all slices and the mean per-slice Dice."""
    case = np.array([r["dice"] for r in rows], float)
    inter = sum(r["inter"] for r in rows)
    total = sum(r["total"] for r in rows)
    per_slice = np.concatenate([r["slice_dice"] for r in rows]) if rows else np.array([])
    return {"cases": len(rows), "slices": int(per_slice.size),
            "dice_mean_per_case": round(float(np.nanmean(case)), 4) if rows else None,
            "dice_sd_per_case": round(float(np.nanstd(case)), 4) if rows else None,
            "dice_pooled": round(dice_from_counts(inter, total), 4) if total else None,
            "dice_mean_per_slice": round(float(np.nanmean(per_slice)), 4) if per_slice.size else None}


def _row(name, pred, truth) -> dict:
    p, t = pred > 0, truth > 0
    return {"case": name, "dice": dice(p, t), "inter": int(np.logical_and(p, t).sum()), "total": int(p.sum() + t.sum()),
            "slice_dice": np.array([dice(a, b) for a, b in zip(p, t)])}


def split_slices(dcfg: dict, split: str):
    """(case name, 8-bit slices, label) of each volume/patient of a held-out split of a 2D slice set: the slices of
    real geometry only (a crop's margin slices left out)."""
    files = reader._npz_files(Path(dcfg["dataset"]))
    for name in reader.split_ids(reader.dataset_ids(dcfg), dcfg["holdout"])[split]:
        with np.load(files[name]) as f:
            keep = f["crop_margin"] == 0 if "crop_margin" in f.files else np.ones(len(f["image"]), bool)
            yield name, f["image"][keep], f["label"][keep]


def eval_npz_split(card, cfg: dict, split: str, threads: int = 1, noise_sd: float = 0.0) -> dict:
    """Held-out 8-bit slices (real geometry only), one case per volume/patient, no 3D post-processing.
    ``noise_sd``: add Gaussian noise of that many HU (fixed seed) first, as on a grainy low-dose scan."""
    rng = np.random.default_rng(0)
    rows = []
    for n, image, label in split_slices(cfg["data"], split):
        if noise_sd:
            image = np.clip(image + rng.normal(0.0, noise_sd, image.shape), 0, 255).astype(np.int16)
        if len(image):
            rows.append(_row(n, engine_predict(card, image, postprocess=False, threads=threads), label))
    out = summarise_slices(rows)
    out["per_case"] = {r["case"]: round(r["dice"], 4) for r in rows}
    return out


def eval_slice_check(card, check: dict, threads: int = 1) -> dict:
    """A slice check of CHECKS_FILE, slice by slice, without 3D post-processing."""
    rows = [_row(name, engine_predict(card, image, postprocess=False, threads=threads), label)
            for name, image, label in check_slices(check)]
    out = summarise_slices(rows)
    out["per_case"] = {r["case"]: round(r["dice"], 4) for r in rows}
    return out


def eval_listed_negatives(card, spec: dict, threads: int = 1) -> dict:
    """The held-out (``check``) volumes of a reviewed organ-free slice list: how many of their slices the model
    still marks, and how much."""
    held_out = reader.listed_slices(spec, "check")
    marked = total = pixels = 0
    for image in held_out.values():
        pred = engine_predict(card, image.astype(np.int16), postprocess=False, threads=threads) > 0
        total += len(pred)
        marked += int(pred.any(axis=(1, 2)).sum())
        pixels += int(pred.sum())
    return {"volumes": len(held_out), "slices": total, "slices_marked": marked, "pixels_marked": pixels,
            "training_use": "never trained on (the list's check volumes)"}


def totalseg_class_names(map_name: str) -> dict[int, str]:
    """A TotalSegmentator class map ("total_v1", "total") from the shared copy of its map_to_binary.py."""
    tree = ast.parse((SHARED / "totalseg_example" / "map_to_binary.py.txt").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "class_map":
            return ast.literal_eval(node.value)[map_name]
    raise KeyError("class_map")


def listed_negatives(cfg: dict | None) -> list[dict]:
    """The config's reviewed organ-free slice lists that hold out volumes to check."""
    return [s for s in reader.negative_specs((cfg or {}).get("data", {})) if "slices" in s and int(s.get("check", 0))]


def training_use(cfg: dict | None, image_path) -> dict | None:
    """The ``data.negatives`` entry of ``cfg`` that trained on this volume, if any."""
    for spec in reader.negative_specs((cfg or {}).get("data", {})):
        if "image" in spec and Path(spec["image"]).resolve() == Path(image_path).resolve():
            return spec
    return None


def describe_use(spec: dict | None) -> str:
    if spec is None:
        return "never trained on"
    what = "its slices with and without the organ" if spec.get("positives") else "its organ-free slices"
    if spec.get("blocks"):
        return (f"{what} of alternate {spec['blocks']}-slice blocks trained; scored on the other blocks only "
                f"({spec.get('guard', 2)} guard slices at each block edge in neither)")
    return f"{what} were trained on"


def eval_volume(card, check: dict, organ: str, threads: int = 1, trained: dict | None = None) -> dict:
    """A volume check of CHECKS_FILE through the full engine (3D post-processing on) against its reference map.
    With the map's ``class_map``, also which reference structures the prediction lies on (where it goes wrong).
    ``trained``: the training spec that used this volume; with blocks, only the held-out blocks are scored."""
    image, reference = check_volume(check)
    truth = np.isin(reference, check["values"][organ])
    result = segment_image(image, card, threads=threads)
    pred = sitk.GetArrayFromImage(result.labelmap) > 0
    if trained is not None and trained.get("blocks"):
        keep = reader.block_slices(pred.shape[0], trained, "check")
        pred, truth, reference = pred[keep], truth[keep], reference[keep]
    z_truth = truth.any(axis=(1, 2))
    z_pred = pred.any(axis=(1, 2))
    out = {"dice": round(dice(pred, truth), 4), "voxels_pred": int(pred.sum()), "voxels_ref": int(truth.sum()),
           "slices_with_organ_ref": int(z_truth.sum()), "slices_with_organ_pred": int(z_pred.sum()),
           "false_positive_slices": int((z_pred & ~z_truth).sum()),
           "voxels_on_organ_free_slices": int(pred[~z_truth].sum()), "quality_flag": result.quality["flag"],
           "training_use": describe_use(trained)}
    if check.get("class_map") and pred.any():
        class_names = totalseg_class_names(check["class_map"])
        found, counts = np.unique(reference[pred], return_counts=True)
        order = np.argsort(-counts)[:3]
        out["prediction_lies_on"] = {class_names.get(int(found[i]), "background" if found[i] == 0 else str(found[i])):
                                     int(counts[i]) for i in order}
    return out


def evaluate_model(card, cfg: dict | None, organ: str, threads: int = 1, splits=("test",)) -> dict:
    """Every check a CT card reports; with an int8 file, the same checks through it too (``int8``: its Dice and
    the difference from fp32 per check)."""
    report = _checks(card, cfg, organ, threads, splits)
    if card.has_int8():
        int8 = ModelCard({**card.entry, "file": card.entry["int8_file"], "sha256": card.entry["int8_sha256"]},
                         card.folder)
        report["int8"] = {k: {"dice": _dice_of(v), "minus_fp32": round(_dice_of(v) - _dice_of(report[k]), 4)}
                          for k, v in _checks(int8, cfg, organ, threads, splits).items() if isinstance(v, dict)}
    return report


def _dice_of(check: dict) -> float:
    return check.get("dice", check.get("dice_mean_per_case"))


def _checks(card, cfg: dict | None, organ: str, threads: int, splits) -> dict:
    report = {"model": card.id}
    if cfg is not None and cfg["data"].get("holdout"):
        for s in splits:
            report[f"{s}_8bit"] = eval_npz_split(card, cfg, s, threads)
        if "test" in splits:
            report["test_8bit_noise30"] = eval_npz_split(card, cfg, "test", threads, noise_sd=30.0)
    for spec in listed_negatives(cfg):
        report[f"{Path(spec['slices']).name.split('.')[0]}_check"] = eval_listed_negatives(card, spec, threads)
    for check in slice_checks(organ):
        if any(SHARED.glob(check["files"])):
            report[check["name"]] = eval_slice_check(card, check, threads)
    for check in volume_checks(organ, cards=True):
        if check["image"].exists():
            report[check["name"]] = eval_volume(card, check, organ, threads, training_use(cfg, check["image"]))
    return report
