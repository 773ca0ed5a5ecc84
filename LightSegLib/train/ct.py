"""Liver / pancreas CT models: evaluate an exported model through the inference engine (the path users run), on
held-out 8-bit slices and on true-HU CT (``lightseg evaluate-ct``; the figures ``lightseg publish`` writes).

    lightseg evaluate-ct --model liver-ct --config configs/liver_lits2d.toml --split test

``python -m LightSegLib.train.ct COMMAND ...`` is ``lightseg COMMAND ...`` (``evaluate``: ``evaluate-ct``), the
spelling of the cards' and the registry's reproduce commands.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..metrics import dice

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"


# ---------------------------------------------------------------- evaluation through the engine
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


def eval_npz_split(card, cfg: dict, split: str, threads: int = 1, noise_sd: float = 0.0) -> dict:
    """Held-out 8-bit slices (real geometry only), one case per volume/patient, no 3D post-processing.
    ``noise_sd``: add Gaussian noise of that many HU (fixed seed) first, as on a grainy low-dose scan."""
    from ..data import ct2d

    dcfg = cfg["data"]
    names = ct2d.split_ids(ct2d.dataset_ids(dcfg), dcfg["holdout"])[split]
    files = ct2d._npz_files(Path(dcfg["dataset"]))
    rng = np.random.default_rng(0)
    rows = []
    for n in names:
        with np.load(files[n]) as f:
            keep = f["crop_margin"] == 0 if "crop_margin" in f.files else np.ones(len(f["image"]), bool)
            image, label = f["image"][keep], f["label"][keep]
        if noise_sd:
            image = np.clip(image + rng.normal(0.0, noise_sd, image.shape), 0, 255).astype(np.int16)
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


def totalseg_class_names(map_name: str) -> dict[int, str]:
    """A TotalSegmentator class map ("total_v1", "total") from the shared copy of its map_to_binary.py."""
    import ast

    tree = ast.parse((SHARED / "totalseg_example" / "map_to_binary.py.txt").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "class_map":
            return ast.literal_eval(node.value)[map_name]
    raise KeyError("class_map")


def eval_volume(card, image_path, label_path, values, threads: int = 1, class_names: dict | None = None) -> dict:
    """A HU CT volume through the full engine (3D post-processing on) against a label map (``values`` = organ).
    With the map's ``class_names``, also which reference structures the prediction lies on (where it goes wrong)."""
    import SimpleITK as sitk

    from ..inference import segment_image

    image = sitk.ReadImage(str(image_path))
    # The reference may be stored on a differently oriented grid (the DICOM series' NIfTI label is y-flipped):
    # compare in physical space, the label resampled (nearest) onto the image grid.
    reference = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(label_path)), image, sitk.Transform(),
                                                     sitk.sitkNearestNeighbor, 0))
    truth = np.isin(reference, list(values))
    pred = sitk.GetArrayFromImage(segment_image(image, card, threads=threads).labelmap) > 0
    z_truth = truth.any(axis=(1, 2))
    z_pred = pred.any(axis=(1, 2))
    out = {"dice": round(dice(pred, truth), 4), "voxels_pred": int(pred.sum()), "voxels_ref": int(truth.sum()),
           "slices_with_organ_ref": int(z_truth.sum()), "slices_with_organ_pred": int(z_pred.sum()),
           "false_positive_slices": int((z_pred & ~z_truth).sum())}
    if class_names is not None and pred.any():
        found, counts = np.unique(reference[pred], return_counts=True)
        order = np.argsort(-counts)[:3]
        out["prediction_lies_on"] = {class_names.get(int(found[i]), "background" if found[i] == 0 else str(found[i])):
                                     int(counts[i]) for i in order}
    return out


def evaluate_model(card, cfg: dict | None, organ: str, threads: int = 1, splits=("test",)) -> dict:
    import SimpleITK as sitk

    report = {"model": card.id}
    if cfg is not None and cfg["data"].get("holdout"):
        for s in splits:
            report[f"{s}_8bit"] = eval_npz_split(card, cfg, s, threads)
        if "test" in splits:
            report["test_8bit_noise30"] = eval_npz_split(card, cfg, "test", threads, noise_sd=30.0)
    ts = SHARED / "totalseg_example"
    if organ == "pancreas" and (SHARED / "nih_pancreas").is_dir():
        report["nih_true_hu"] = eval_nih_hu(card, threads)
    if ts.is_dir():
        v1 = {"liver": [5], "pancreas": [10]}[organ]
        v2 = {"liver": [5], "pancreas": [7]}[organ]
        report["totalseg_ct_3mm_vs_auto_v1"] = eval_volume(card, ts / "example_ct.nii.gz",
                                                           ts / "example_seg_v1_full_5de6e4d.nii.gz", v1, threads,
                                                           totalseg_class_names("total_v1"))
        from ..io import read_image

        series = read_image(ts / "example_ct_dicom")
        tmp = Path("/tmp") / f"lightseg_eval_{card.id}_dicom.nii.gz"
        sitk.WriteImage(series, str(tmp))
        report["totalseg_dicom_20slices_vs_auto_v2"] = eval_volume(card, tmp, ts / "example_seg_dicom.nii.gz", v2,
                                                                   threads, totalseg_class_names("total"))
    dq = SHARED / "dcmqi_ct3slice"
    if organ == "liver" and dq.is_dir():
        from ..io import read_image

        series = read_image(dq)
        tmp = Path("/tmp") / f"lightseg_eval_{card.id}_dcmqi.nii.gz"
        sitk.WriteImage(series, str(tmp))
        report["dcmqi_3slices_vs_semiauto"] = eval_volume(card, tmp, dq / "liver_seg.nrrd", [1], threads)
    return report


if __name__ == "__main__":  # the cards' and the registry's `reproduce` strings spell commands this way
    from LightSegLib.cli import main

    command, *rest = sys.argv[1:] or ["--help"]
    sys.exit(main([{"evaluate": "evaluate-ct"}.get(command, command), *rest]))
