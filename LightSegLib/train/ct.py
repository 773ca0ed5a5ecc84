"""Liver / pancreas CT models: evaluate an exported model through the inference engine (the path users run), on
held-out 8-bit slices and on true-HU CT; prune with the CT readers; publish (export, register, card).

    lightseg train --config configs/liver_lits2d.toml [--out runs/X] [--resume]     (or: python -m LightSegLib.train.ct train ...)
    lightseg train --config configs/liver_msd.toml --data PATH/Task03_Liver
    python -m LightSegLib.train.ct evaluate --model liver-ct --config configs/liver_lits2d.toml --split test
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"


# ---------------------------------------------------------------- evaluation through the engine
WHOLE_VOLUME_CHECKS = ("totalseg_ct_3mm_vs_auto_v1", "totalseg_dicom_20slices_vs_auto_v2", "s0009_1p5mm_vs_totalseg_v2",
                       "ircadb17_vs_manual", "dcmqi_3slices_vs_semiauto")
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
    result = segment_image(image, card, threads=threads)
    pred = sitk.GetArrayFromImage(result.labelmap) > 0
    z_truth = truth.any(axis=(1, 2))
    z_pred = pred.any(axis=(1, 2))
    out = {"dice": round(dice(pred, truth), 4), "voxels_pred": int(pred.sum()), "voxels_ref": int(truth.sum()),
           "slices_with_organ_ref": int(z_truth.sum()), "slices_with_organ_pred": int(z_pred.sum()),
           "false_positive_slices": int((z_pred & ~z_truth).sum()),
           "voxels_on_organ_free_slices": int(pred[~z_truth].sum()), "quality_flag": result.quality["flag"]}
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
    s9 = SHARED / "totalseg_s0009"
    if s9.is_dir():
        report["s0009_1p5mm_vs_totalseg_v2"] = eval_volume(card, s9 / "ct.nii.gz", s9 / "seg.nii.gz",
                                                           {"liver": [5], "pancreas": [7]}[organ], threads,
                                                           totalseg_class_names("total"))
    ircadb = SHARED / "ircadb"
    if organ == "liver" and ircadb.is_dir():  # its pancreas is not labelled: never a pancreas check
        report["ircadb17_vs_manual"] = eval_volume(card, ircadb / "imagesTr" / "ircadb1_17.nii.gz",
                                                   ircadb / "labelsTr" / "ircadb1_17.nii.gz", [1], threads)
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


# ---------------------------------------------------------------- export + register + evaluate + card
def figures_markdown(report: dict) -> str:
    """The measured part of a model card, from an ``evaluate_model`` report (nothing typed in by hand)."""
    lines = ["| data | what | Dice |", "|---|---|---|"]
    for key, label in (("val_8bit", "validation split (model selection), 8-bit slices"),
                       ("test_8bit", "held-out test split, 8-bit slices"),
                       ("test_8bit_noise30", "the same test slices with Gaussian noise of 30 HU added (seed 0), "
                                             "as on a grainy low-dose scan")):
        r = report.get(key)
        if r:
            lines.append(f"| {label} | {r['cases']} cases, {r['slices']} slices, no 3D post-processing | "
                         f"{r['dice_mean_per_case']} +- {r['dice_sd_per_case']} per case; {r['dice_pooled']} pooled; "
                         f"{r['dice_mean_per_slice']} per slice |")
    r = report.get("nih_true_hu")
    if r:
        lines.append(f"| NIH true-HU slices (int16 HU, flipped into radiological view), test patients "
                     f"{', '.join(r['per_case'])} | {r['slices']} slices, no 3D post-processing | "
                     f"{r['dice_mean_per_case']} per case ({', '.join(f'{k}: {v}' for k, v in r['per_case'].items())});"
                     f" {r['dice_pooled']} pooled |")
    for key, label in (("totalseg_ct_3mm_vs_auto_v1", ("TotalSegmentator example CT (HU, 3 mm, 112 slices) vs its "
                        "automatic v1 map; its organ-free slices were training negatives")),
                       ("totalseg_dicom_20slices_vs_auto_v2", ("TotalSegmentator 20-slice DICOM series (HU, 0.98 mm) "
                        "vs its automatic v2 map")),
                       ("s0009_1p5mm_vs_totalseg_v2", ("TotalSegmentator subject s0009 (HU, 1.5 mm, 185 slices, "
                        "non-contrast, small field of view) vs its expert-reviewed v2 labels")),
                       ("ircadb17_vs_manual", ("3D-IRCADb-01 patient 17 (HU, 0.74 x 0.74 x 1.6 mm, 119 slices; never "
                        "trained on) vs its manual liver mask")),
                       ("dcmqi_3slices_vs_semiauto", "dcmqi 3-slice CT (HU) vs its semi-automatic liver mask")):
        r = report.get(key)
        if r:
            lies = ""
            if r.get("prediction_lies_on"):
                lies = "; the prediction lies on " + ", ".join(f"{k} {v}" for k, v in r["prediction_lies_on"].items())
                lies += " voxels of the reference map"
            lines.append(f"| {label} | full engine, 3D post-processing; {r['slices_with_organ_pred']} slices with "
                         f"prediction vs {r['slices_with_organ_ref']} in the reference, "
                         f"{r['false_positive_slices']} false-positive slices{lies}{_free(r)}{_flag(r)} | "
                         f"{r['dice']} |")
    return "\n".join(lines)


def _free(r: dict) -> str:
    n = r.get("voxels_on_organ_free_slices")
    return f"; {n} voxels predicted on slices without the organ" if n else ""


def _flag(r: dict) -> str:
    if "quality_flag" not in r:
        return ""
    return "; quality flag raised (low confidence)" if r["quality_flag"] else "; quality flag not raised"


def training_markdown(checkpoint) -> str:
    """How the shipped checkpoint was made (card sub-bullets), read from the run folders (summary.json, config.toml and a pruned
    checkpoint's compression report), so a republished card never carries the previous run's numbers."""
    import torch

    from .config import load_config

    def run_line(run: Path) -> str:
        summary, cfg = json.loads((run / "summary.json").read_text()), load_config(run / "config.toml")
        t, device = cfg["train"], summary.get("device", "cpu")
        where = (f"on one {device} GPU in mixed precision" if device != "cpu" else
                 f"on {t.get('threads', 1)} CPU thread(s){' in bfloat16' if t.get('cpu_bf16') else ''}")
        return (f"{summary['iterations']} iterations of {t['batch_size']} slices in {summary['minutes']:.0f} minutes "
                f"{where} "
                f"({cfg['model']['name']} {cfg['model']['widths']}); best validation Dice "
                f"{summary['best_val_dice_mean']:.3f} (epoch {summary['best_epoch']}, the checkpoint kept)")

    ckpt = torch.load(str(checkpoint), map_location="cpu", weights_only=False)
    kd = ckpt.get("distillation")
    if kd and kd.get("student_init"):  # lightseg distill from a checkpoint: how that was made, then the KD
        methods, teacher = " and ".join(kd["methods"]) or "no", Path(kd["teacher"])
        return (training_markdown(kd["student_init"]) + f"\n  - Then {methods} knowledge distillation from the "
                f"teacher ({teacher.parent.name}/{teacher.name}): {kd['iterations']} "
                f"iterations in {kd['minutes']:.0f} minutes; validation Dice {kd.get('val_dice_mean', float('nan')):.3f} "
                f"after (the last iteration is the checkpoint).")
    report = ckpt.get("compression")
    if not report:
        return f"  - Training: {run_line(Path(checkpoint).parent)}."
    lines = [f"  - Training: {run_line(Path(report['source']).parent)}."]
    rec = report.get("reconstruct") or {}
    tuned = rec.get("finetune") or {}
    copied = rec.get("copied") or {}
    importance = {"l1": "L1 filter-norm", "bn": "BN-scale", "taylor": "Taylor"}.get(report["importance"], "")
    removed = (f"per-stage ratios {report['stage_ratios']}" if report.get("stage_ratios")
               else f"{int(100 * report['ratio'])}% of each layer's channels")
    lines.append(f"  - Then {importance} channel pruning ({removed} removed, widths "
                 f"{rec.get('widths', report['widths']['stages'])}: {report['params_before']:,} -> "
                 f"{report['params_after']:,} parameters), CPRUN reconstruction into a regular net of those widths "
                 f"({copied.get('exact', 0)} weight tensors copied whole, {copied.get('partial', 0)} in part)"
                 + (f" and {tuned['iterations']} iterations of fine-tuning ({tuned['minutes']:.0f} minutes"
                    f"{'' if tuned.get('device', 'cpu') == 'cpu' else ' on the GPU'}); "
                    f"validation Dice {tuned.get('val_dice_mean', float('nan')):.3f} after." if tuned else "."))
    return "\n".join(lines)


def speed_markdown(bench: dict | None, model_id: str) -> str:
    """The card's speed section from a ``lightseg bench --json`` document that includes ``model_id``."""
    row = next((r for r in (bench or {}).get("models", []) if r["model"] == model_id), None)
    if row is None:
        return ("Not measured for this model: `python benchmarks/big_ct.py --write-ct ct512.nrrd && lightseg bench "
                f"--models {model_id} --input ct512.nrrd --repeat 3 --threads 2 --json`, passed to publish as --speed.")
    others = ", ".join(r["model"] for r in bench["models"] if r is not row)
    return (f"`lightseg bench --models {','.join(r['model'] for r in bench['models'])} --input {Path(bench['input']).name} "
            f"--repeat {bench['repeat']} --threads {bench['threads']}` on a 512x512x300 int16 CT made of real slices "
            f"stacked (`python benchmarks/big_ct.py --write-ct ct512.nrrd`), each run in its own process"
            f"{f', side by side with {others}' if others else ''}: median {row['latency_median_s']:.2f} s wall "
            f"(min {row['latency_min_s']:.2f}, max {row['latency_max_s']:.2f}), of which the network "
            f"{row.get('network_median_s', float('nan')):.2f} s; peak RSS {row['peak_rss_mb']:.0f} MB. Target: "
            f"<= 10 s and <= 1.5 GB with 2 threads. Machine: 2-core shared AMD EPYC, no GPU.")


def crossval_markdown(cv: dict | None) -> str:
    """The card's cross-validation sentence from ``benchmarks/ct_crossval.py``'s crossval.json."""
    if not cv:
        return ("No cross-validation was run (CPU budget); the test figure is one split "
                "(`benchmarks/ct_crossval.py` runs one).")
    folds = ", ".join(f"{m:.3f}" for m in cv["fold_means"])
    epochs, minutes, prune = cv.get("epochs_per_fold"), cv.get("minutes_per_fold"), cv.get("prune")
    budget, stage = ((f"--epochs {epochs}", f"{epochs} epochs") if epochs else
                     (f"--minutes {minutes:g}", f"{minutes:g} minutes"))
    if epochs and minutes:
        iterations = ", ".join(str(f["iterations"]) for f in cv.get("per_fold", []))
        budget, stage = (f"{budget} --minutes {minutes:g}",
                         f"{epochs} epochs or {minutes:g} minutes, whichever came first ({iterations} iterations)")
    distill = cv.get("distill")
    command = (f"python benchmarks/ct_crossval.py --config {cv['config']} --folds {cv['folds']} {budget}"
               + (f' --prune="{prune}"' if prune else "") + (f' --distill="{distill}"' if distill else ""))
    if prune:
        then = f", then distillation (`{distill}`) from that checkpoint into the pruned net" if distill else ""
        scope = (f"Each fold ran the training stage for {stage}, then the pruning stage (`{prune}`) on its last "
                 f"checkpoint{then}, with no selection on the fold.")
    else:
        scope = (f"That is the config's training stage alone (no pruning, no teacher) at {stage} per fold, "
                 f"far shorter than this model's run: it shows how the recipe varies across patients, not this "
                 f"model's accuracy.")
    per_case = sorted((v, c) for f in cv.get("per_fold", []) for c, v in f["per_case"].items())
    spread = (f"median {statistics.median(v for v, _ in per_case):.3f}; lowest "
              + ", ".join(f"{c} {v:.2f}" for v, c in per_case[:2]) + "; ") if per_case else ""
    return (f"Cross-validated by volume / patient over the {cv['cases']} non-test cases ({cv['folds']} folds; "
            f"`{command}`), each case scored once through the engine by a model that never saw it: "
            f"Dice {cv['dice_mean_per_case']:.4f} +- {cv['dice_sd_per_case']:.3f} per case ({spread}fold means "
            f"{folds}). " + scope)


def publish(checkpoint, model_id: str, card_path, config_path, status: str = "preview", reproduce: str | None = None,
            threads: int = 1, speed: dict | None = None, crossval: dict | None = None, log=print) -> dict:
    """Checkpoint -> ONNX in the models folder -> registry entry -> evaluation through the engine -> metrics
    in the entry, ``ID.eval.json`` and the card's measured section (``configs/cards/ID.md.in`` -> ``ID.md``)."""
    from ..export import export_checkpoint
    from ..registry import models_dir
    from .config import load_config

    folder = models_dir()
    cfg = load_config(config_path)
    size = cfg["data"]["inplane"].get("size", [256, 256])
    parity = REPO / "Resources" / "Samples" / "totalseg_example_ct_sm.nii.gz"
    export_checkpoint(checkpoint, folder / f"{model_id}.onnx", card_path=card_path, register_id=model_id,
                      parity_image=parity, macs_hw=tuple(size), status=status, reproduce=reproduce, log=log)
    card_text = {"training": training_markdown(checkpoint), "speed": speed_markdown(speed, model_id),
                 "crossval": crossval_markdown(crossval)}
    report = evaluate_and_card(model_id, card_path, cfg, threads, card_text, crossval)
    log(json.dumps(report, indent=1))
    return report


def evaluate_and_card(model_id: str, card_path, cfg: dict, threads: int, card_text: dict,
                      crossval: dict | None = None) -> dict:
    """Evaluate the registered model through the engine; its figures go into the registry entry, ``ID.eval.json``
    (with the card's generated prose, so the card can be re-rendered without the run folders, and the recipe's
    cross-validation per case) and the card."""
    from ..registry import get_model, models_dir, register_model

    folder = models_dir()
    card = get_model(model_id)
    report = evaluate_model(card, cfg, card.task, threads, splits=("val", "test"))
    report["card_text"] = card_text
    if crossval is not None:
        report["crossval"] = crossval
    (folder / f"{model_id}.eval.json").write_text(json.dumps(report, indent=1) + "\n")
    entry = dict(card.entry)
    metrics = dict(entry["metrics"])
    for key in ("val_8bit", "test_8bit", "nih_true_hu"):
        if key in report:
            metrics[key] = {k: v for k, v in report[key].items() if k != "per_case"}
    for key in WHOLE_VOLUME_CHECKS:
        if key in report:
            metrics[key] = report[key]["dice"]
    entry["metrics"] = metrics
    register_model(entry, folder)
    render_card(model_id, card_path, report, entry, folder)
    return report


def render_card(model_id: str, card_path, report: dict, entry: dict, folder: Path) -> None:
    """``configs/cards/ID.md.in`` -> the registry's ``ID.md``: figures, generated prose and entry facts filled in."""
    template = Path(card_path).with_suffix(".md.in")
    if not template.is_file():
        return
    text = template.read_text().replace("{{figures}}", figures_markdown(report))
    for key, value in report["card_text"].items():
        text = text.replace("{{" + key + "}}", value)
    text = text.replace("{{entry}}", json.dumps({k: entry[k] for k in ("params", "macs", "sha256", "architecture",
                                                                         "input", "normalization")}, indent=1))
    (folder / entry.get("card", f"{model_id}.md")).write_text(text)


def recard(model_id: str, card_path, config_path=None, threads: int = 1, speed: dict | None = None,
           crossval: dict | None = None, status: str | None = None) -> None:
    """Re-render a published model's card from its ``ID.eval.json`` (no checkpoint needed), with a new speed
    measurement, cross-validation result or registry status when given (a cross-validation can settle whether a
    model meets its target); with the training config, re-evaluate the registered model first (new checks)."""
    from ..errors import LightSegError
    from ..registry import get_model, models_dir, register_model
    from .config import load_config

    folder = models_dir()
    path = folder / f"{model_id}.eval.json"
    report = json.loads(path.read_text())
    if "card_text" not in report:
        raise LightSegError(f"{path.name} predates --card-only: publish {model_id} again from its checkpoint")
    text = report["card_text"]
    if status is not None:
        register_model({**get_model(model_id).entry, "status": status}, folder)
    if speed is not None:
        text["speed"] = speed_markdown(speed, model_id)
    if crossval is not None:
        text["crossval"] = crossval_markdown(crossval)
        report["crossval"] = crossval
    if config_path:
        evaluate_and_card(model_id, card_path, load_config(config_path), threads, text, report.get("crossval"))
        return
    path.write_text(json.dumps(report, indent=1) + "\n")
    render_card(model_id, card_path, report, get_model(model_id).entry, folder)


def _publish_cmd(args) -> int:
    from ..errors import LightSegError

    speed = json.loads(Path(args.speed).read_text()) if args.speed else None
    crossval = json.loads(Path(args.crossval).read_text()) if args.crossval else None
    if args.card_only:
        recard(args.id, args.card, args.config, args.threads, speed, crossval, args.status)
    elif not (args.checkpoint and args.config):
        raise LightSegError("publish needs the checkpoint and --config (or --card-only to re-render the card)")
    else:
        publish(args.checkpoint, args.id, args.card, args.config, args.status or "preview", args.reproduce,
                args.threads, speed, crossval)
    return 0


def _prune_cmd(args, rest) -> int:
    """``lightseg prune`` (issue-4 toolkit) with the CT data readers routed in for its fine-tuning."""
    from ..cli import main as lightseg
    from ..data import ct2d
    from .config import load_config

    cfg = load_config(args.config)
    with ct2d.trainer_data_hook(cfg):
        return lightseg(["prune", *rest, "--config", args.config])


def main(argv=None) -> int:
    from ..errors import LightSegError

    parser = argparse.ArgumentParser(prog="python -m LightSegLib.train.ct", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    from ..commands.train import add_arguments

    add_arguments(sub.add_parser("train", help="train from a CT config (same options as lightseg train)"))
    e = sub.add_parser("evaluate", help="Dice of a registered model via the engine: held-out slices and HU checks")
    e.add_argument("--model", required=True)
    e.add_argument("--config", help="the training config (for the held-out split of the 2D sets)")
    e.add_argument("--split", nargs="+", default=["test"])
    e.add_argument("--models-dir")
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--json", help="also write the report here")
    e.set_defaults(func=_evaluate_cmd)
    p = sub.add_parser("publish", help="export a checkpoint, register it, evaluate it, write its card figures")
    p.add_argument("checkpoint", nargs="?", help="the model's checkpoint (not needed with --card-only)")
    p.add_argument("--id", required=True)
    p.add_argument("--card", required=True, help="card template JSON (configs/cards/ID.json; ID.md.in beside it)")
    p.add_argument("--config", help="the training config (held-out split)")
    p.add_argument("--status", choices=["stable", "preview", "reference"],
                   help="registry status (default: preview when publishing; kept by --card-only unless given)")
    p.add_argument("--reproduce")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--speed", help="`lightseg bench --json` output that includes this model (the card's speed section)")
    p.add_argument("--crossval", help="crossval.json of benchmarks/ct_crossval.py for this recipe (the card's text)")
    p.add_argument("--card-only", action="store_true",
                   help="re-render the published card from ID.eval.json with a new --speed / --crossval; with --config, "
                        "re-evaluate the registered model first (no checkpoint needed)")
    p.set_defaults(func=_publish_cmd)
    q = sub.add_parser("prune-ct", help="lightseg prune with the CT readers (other options passed through)")
    q.add_argument("--config", required=True)
    q.set_defaults(func=_prune_cmd)
    args, rest = parser.parse_known_args(argv)
    if args.command == "prune-ct":
        try:
            return int(_prune_cmd(args, rest) or 0)
        except LightSegError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return int(args.func(args) or 0)
    except LightSegError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
