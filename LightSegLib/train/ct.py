"""Liver / pancreas CT models: train with the issue-3 trainer on the CT readers of ``data/ct2d.py``, and
evaluate an exported model through the inference engine (the path users run), on held-out 8-bit slices and on
true-HU CT.

    python -m LightSegLib.train.ct train --config configs/liver_lits2d.toml [--out runs/X] [--resume]
    python -m LightSegLib.train.ct train --config configs/liver_msd.toml --data PATH/Task03_Liver
    python -m LightSegLib.train.ct evaluate --model liver-ct --config configs/liver_lits2d.toml --split test

``train`` takes the same options as ``lightseg train``; it exists because the trainer reads MSD volumes as
stored (no label merging, no 2D npz sets, no organ-free slices). Once the trainer takes its loader from
``ct2d.loader_for(cfg)`` (one line), ``lightseg train`` runs these configs directly.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"


# ---------------------------------------------------------------- training
def train_ct(cfg: dict, out, resume: bool = False, config_path=None, log=print) -> dict:
    from ..data import ct2d
    from .trainer import train

    if not resume:
        ct2d.write_split(cfg, out)
    with ct2d.trainer_data_hook(cfg):
        return train(cfg, out, resume=resume, config_path=config_path, log=log)


def _train_cmd(args) -> int:
    from .config import load_config

    cfg = load_config(args.config)
    if args.data:
        cfg["data"]["dataset"] = args.data
    if args.time_budget is not None:
        cfg["train"]["time_budget_min"] = args.time_budget
    if args.epochs is not None:
        cfg["train"]["epochs"] = args.epochs
    if args.threads is not None:
        cfg["train"]["threads"] = args.threads
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    train_ct(cfg, out, resume=args.resume, config_path=args.config)
    return 0


# ---------------------------------------------------------------- evaluation through the engine
def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Binary Dice; NaN when both are empty (no organ to find, none found)."""
    p, t = pred > 0, truth > 0
    denom = int(p.sum()) + int(t.sum())
    return float("nan") if denom == 0 else 2.0 * float(np.logical_and(p, t).sum()) / denom


def engine_predict(card, slices_zyx: np.ndarray, spacing_xyz=(1.0, 1.0, 1.0), postprocess: bool = True,
                   threads: int = 1) -> np.ndarray:
    """Labels for slices already in radiological view (LPS grid, identity direction) via ``segment_image``.
    ``postprocess=False`` for stacks of scattered slices, where 3D connected components mean nothing."""
    import SimpleITK as sitk

    from ..inference import segment_image
    from ..registry import ModelCard

    if not postprocess:
        card = ModelCard({**card.entry, "postprocessing": {}}, card.folder)
    image = sitk.GetImageFromArray(np.ascontiguousarray(slices_zyx))
    image.SetSpacing([float(s) for s in spacing_xyz])
    result = segment_image(image, card, threads=threads)
    return sitk.GetArrayFromImage(result.labelmap)


def summarise(rows: list[dict]) -> dict:
    """Mean per-case Dice (NaN-aware), pooled Dice over all slices and the mean per-slice Dice."""
    case = np.array([r["dice"] for r in rows], float)
    inter = sum(r["inter"] for r in rows)
    total = sum(r["total"] for r in rows)
    per_slice = np.concatenate([r["slice_dice"] for r in rows]) if rows else np.array([])
    return {"cases": len(rows), "slices": int(per_slice.size),
            "dice_mean_per_case": round(float(np.nanmean(case)), 4) if rows else None,
            "dice_sd_per_case": round(float(np.nanstd(case)), 4) if rows else None,
            "dice_pooled": round(2.0 * inter / total, 4) if total else None,
            "dice_mean_per_slice": round(float(np.nanmean(per_slice)), 4) if per_slice.size else None}


def _row(name, pred, truth) -> dict:
    p, t = pred > 0, truth > 0
    return {"case": name, "dice": dice(p, t), "inter": int(np.logical_and(p, t).sum()), "total": int(p.sum() + t.sum()),
            "slice_dice": np.array([dice(a, b) for a, b in zip(p, t)])}


def eval_npz_split(card, cfg: dict, split: str, threads: int = 1) -> dict:
    """Held-out 8-bit slices (real geometry only), one case per volume/patient, no 3D post-processing."""
    from ..data import ct2d

    dcfg = cfg["data"]
    names = ct2d.split_ids(ct2d.dataset_ids(dcfg), dcfg["holdout"])[split]
    files = ct2d._npz_files(Path(dcfg["dataset"]))
    rows = []
    for n in names:
        with np.load(files[n]) as f:
            keep = f["crop_margin"] == 0 if "crop_margin" in f.files else np.ones(len(f["image"]), bool)
            image, label = f["image"][keep], f["label"][keep]
        if len(image):
            rows.append(_row(n, engine_predict(card, image, postprocess=False, threads=threads), label))
    out = summarise(rows)
    out["per_case"] = {r["case"]: round(r["dice"], 4) for r in rows}
    return out


def eval_nih_hu(card, threads: int = 1) -> dict:
    """The true-HU NIH slices (int16), flipped on axis 1 into radiological view as the data README says."""
    rows = []
    for p in sorted((SHARED / "nih_pancreas").glob("PANCREAS_*.npz")):
        with np.load(p) as f:
            image, label = np.flip(f["image"], 1), np.flip(f["label"], 1)
        rows.append(_row(p.stem, engine_predict(card, image.astype(np.int16), postprocess=False, threads=threads),
                         label))
    out = summarise(rows)
    out["per_case"] = {r["case"]: round(r["dice"], 4) for r in rows}
    return out


def eval_volume(card, image_path, label_path, values, threads: int = 1) -> dict:
    """A HU CT volume through the full engine (3D post-processing on) against a label map (``values`` = organ)."""
    import SimpleITK as sitk

    from ..inference import segment_image

    image = sitk.ReadImage(str(image_path))
    truth = np.isin(sitk.GetArrayFromImage(sitk.ReadImage(str(label_path))), list(values))
    pred = sitk.GetArrayFromImage(segment_image(image, card, threads=threads).labelmap) > 0
    z_truth = truth.any(axis=(1, 2))
    z_pred = pred.any(axis=(1, 2))
    return {"dice": round(dice(pred, truth), 4), "voxels_pred": int(pred.sum()), "voxels_ref": int(truth.sum()),
            "slices_with_organ_ref": int(z_truth.sum()), "slices_with_organ_pred": int(z_pred.sum()),
            "false_positive_slices": int((z_pred & ~z_truth).sum())}


def evaluate_model(card, cfg: dict | None, organ: str, threads: int = 1, splits=("test",)) -> dict:
    import SimpleITK as sitk

    report = {"model": card.id}
    if cfg is not None and cfg["data"].get("holdout"):
        for s in splits:
            report[f"{s}_8bit"] = eval_npz_split(card, cfg, s, threads)
    ts = SHARED / "totalseg_example"
    if organ == "pancreas" and (SHARED / "nih_pancreas").is_dir():
        report["nih_true_hu"] = eval_nih_hu(card, threads)
    if ts.is_dir():
        v1 = {"liver": [5], "pancreas": [10]}[organ]
        v2 = {"liver": [5], "pancreas": [7]}[organ]
        report["totalseg_ct_3mm_vs_auto_v1"] = eval_volume(card, ts / "example_ct.nii.gz",
                                                           ts / "example_seg_v1_full_5de6e4d.nii.gz", v1, threads)
        from ..io import read_image

        series = read_image(ts / "example_ct_dicom")
        tmp = Path("/tmp") / f"lightseg_eval_{card.id}_dicom.nii.gz"
        sitk.WriteImage(series, str(tmp))
        report["totalseg_dicom_20slices_vs_auto_v2"] = eval_volume(card, tmp, ts / "example_seg_dicom.nii.gz", v2,
                                                                   threads)
    dq = SHARED / "dcmqi_ct3slice"
    if organ == "liver" and dq.is_dir():
        from ..io import read_image

        series = read_image(dq)
        tmp = Path("/tmp") / f"lightseg_eval_{card.id}_dcmqi.nii.gz"
        sitk.WriteImage(series, str(tmp))
        report["dcmqi_3slices_vs_semiauto"] = eval_volume(card, tmp, dq / "liver_seg.nrrd", [1], threads)
    return report


def _evaluate_cmd(args) -> int:
    from ..registry import get_model
    from .config import load_config

    card = get_model(args.model, folder=args.models_dir)
    cfg = load_config(args.config) if args.config else None
    organ = card.task
    report = evaluate_model(card, cfg, organ, args.threads, tuple(args.split))
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


def main(argv=None) -> int:
    from ..errors import LightSegError

    parser = argparse.ArgumentParser(prog="python -m LightSegLib.train.ct", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train from a CT config (same options as lightseg train)")
    t.add_argument("--config", required=True)
    t.add_argument("--data")
    t.add_argument("--out")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--time-budget", type=float, metavar="MIN")
    t.add_argument("--epochs", type=int)
    t.add_argument("--threads", type=int)
    t.set_defaults(func=_train_cmd)
    e = sub.add_parser("evaluate", help="Dice of a registered model via the engine: held-out slices and HU checks")
    e.add_argument("--model", required=True)
    e.add_argument("--config", help="the training config (for the held-out split of the 2D sets)")
    e.add_argument("--split", nargs="+", default=["test"])
    e.add_argument("--models-dir")
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--json", help="also write the report here")
    e.set_defaults(func=_evaluate_cmd)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LightSegError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
