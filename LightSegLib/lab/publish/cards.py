"""Model cards: ``configs/cards/ID.md.in`` -> the registry's ``ID.md``, every figure computed (from the model's
``ID.eval.json``, its registry entry, its training runs), none typed in."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from ...machine import widest_isa
from ...registry import get_model
from ..evaluate import slice_checks, volume_checks
from ..train.config import load_config


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
    for check in slice_checks():
        r = report.get(check["name"])
        if r:
            lines.append(f"| {check['measures']} {', '.join(r['per_case'])} | {r['slices']} slices, no 3D "
                         f"post-processing | {r['dice_mean_per_case']} per case "
                         f"({', '.join(f'{k}: {v}' for k, v in r['per_case'].items())}); {r['dice_pooled']} pooled |")
    for key, r in report.items():
        if isinstance(r, dict) and "slices_marked" in r:
            lines.append(f"| {key[:-len('_check')]}: held-out volumes of a reviewed organ-free slice list "
                         f"(configs/data/), 8-bit | {r['volumes']} volumes, {r['slices']} slices, no 3D "
                         f"post-processing; {r['training_use']} | organ marked on {r['slices_marked']} of "
                         f"{r['slices']} slices ({r['pixels_marked']} pixels) |")
    for check in volume_checks(cards=True):
        key, label = check["name"], check["measures"]
        r = report.get(key)
        if r:
            use = r.get("training_use", "")
            if use and use != "never trained on":
                label += f"; {use}"
            lies = ""
            if r.get("prediction_lies_on"):
                lies = "; the prediction lies on " + ", ".join(f"{k} {v}" for k, v in r["prediction_lies_on"].items())
                lies += " voxels of the reference map"
            lines.append(f"| {label} | full engine, 3D post-processing; {r['slices_with_organ_pred']} slices with "
                         f"prediction vs {r['slices_with_organ_ref']} in the reference, "
                         f"{r['false_positive_slices']} false-positive slices{lies}{_free(r)}{_flag(r)} | "
                         f"{r['dice']} |")
    return "\n".join(lines)


def int8_markdown(report: dict) -> str:
    """The int8 file against fp32 on the same checks (computed with the figures above)."""
    rows = report.get("int8")
    if not rows:
        return ""
    worst = max(rows.items(), key=lambda kv: abs(kv[1]["minus_fp32"]))
    return (f"\n\nThe int8 file (`--int8`, static QDQ, per-channel weights) on the same {len(rows)} checks: Dice "
            f"within {abs(worst[1]['minus_fp32']):.4f} of fp32 on every one (largest on {worst[0]}: "
            f"{worst[1]['dice']} against {worst[1]['dice'] - worst[1]['minus_fp32']:.4f}); per check in "
            f"`{report['model']}.eval.json`.")


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

    def run_line(run: Path) -> str:
        summary, cfg = json.loads((run / "summary.json").read_text()), load_config(run / "config.toml")
        t, device = cfg["train"], summary.get("device", "cpu")
        # What the run used (a CPU without native bfloat16 trains in fp32 whatever the config asks); older runs
        # did not record it.
        bf16 = summary["precision"] == "bf16" if "precision" in summary else t.get("cpu_bf16")
        where = (f"on one {device} GPU in mixed precision" if device != "cpu" else
                 f"on {t.get('threads', 1)} CPU thread(s){' in bfloat16' if bf16 else ' in fp32'}")
        start = f", starting from the weights of {t['init_onnx']}" if t.get("init_onnx") else ""
        return (f"{summary['iterations']} iterations of {t['batch_size']} slices in {summary['minutes']:.0f} minutes "
                f"{where} "
                f"({cfg['model']['name']} {cfg['model']['widths']}{start}); best validation Dice "
                f"{summary['best_val_dice_mean']:.3f} (epoch {summary['best_epoch']}, the checkpoint kept)")

    ckpt = torch.load(str(checkpoint), map_location="cpu", weights_only=False)
    kd = ckpt.get("distillation")
    if kd and kd.get("student_init"):  # lightseg distill from a checkpoint: how that was made, then the KD
        methods, teacher = " and ".join(kd["methods"]) or "no", Path(kd["teacher"])
        teacher = teacher if teacher.parent == Path(".") else Path(teacher.parent.name) / teacher.name  # or an id
        return (training_markdown(kd["student_init"]) + f"\n  - Then {methods} knowledge distillation from the "
                f"teacher ({teacher}): {kd['iterations']} "
                f"iterations in {kd['minutes']:.0f} minutes; validation Dice {kd.get('val_dice_mean', float('nan')):.3f} "
                f"after (the last iteration is the checkpoint).")
    report = ckpt.get("compression")
    if not report:
        return f"  - Training: {run_line(Path(checkpoint).parent)}."
    if report.get("method") == "fold":
        copied = report["copied"]
        return (f"  - Resolution folding of {report['source']} (`lightseg fold`): its full-resolution stage dropped, "
                f"the rest run at half resolution as {report['architecture']['name']} "
                f"{report['architecture']['widths']} ({copied['exact']} weight tensors kept, {copied['partial']} "
                f"in part, {copied['missing']} new: the sub-pixel heads); {report['params_before']:,} -> "
                f"{report['params_after']:,} parameters.")
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


def speed_markdown(speed: dict | None, model_id: str) -> str:
    """The card's speed section from the registry entry's ``speed`` (what ``lightseg bench --record`` stores)."""
    if not speed:
        return ("Not measured for this model: `python benchmarks/big_ct.py --write-ct ct512.nrrd && lightseg bench "
                f"--models {model_id} --input ct512.nrrd --repeat 3 --threads 2 --record`.")
    others = speed.get("compared_with") or []
    spread = (f" (min {speed['wall_min_s']:.2f}, max {speed['wall_max_s']:.2f})" if "wall_min_s" in speed else "")
    network = f", of which the network {speed['network_s']:.2f} s" if "network_s" in speed else ""
    beside = f", side by side with {', '.join(others)}" if others else ""
    what = ("a 512x512x300 int16 CT made of real slices stacked (`python benchmarks/big_ct.py --write-ct ct512.nrrd`)"
            if speed["input"] == "ct512.nrrd" else speed["input"])
    return (f"`lightseg bench --models {','.join([model_id, *others])} --input {speed['input']} "
            f"--repeat {speed.get('repeat', '?')} --threads {speed['threads']} --record` on {what}, each run in its "
            f"own process{beside}: median {speed['wall_s']:.2f} s wall{spread}{network}; peak RSS "
            f"{speed['peak_rss_mb']:.0f} MB. Target: <= 5 s and <= 1 GB with 2 threads on an AVX2 laptop CPU. "
            f"Machine: {machine_text(speed['machine'], speed['threads'])}.")


def machine_text(line: str, threads: int) -> str:
    """The machine a speed record names, and what an AVX-512 figure means for an AVX2 laptop."""
    text = f"{line}; {threads} threads, no GPU"
    if widest_isa(line) == "AVX-512":
        text += (" (an AVX-512 figure: ONNX Runtime picks its kernels by CPUID and cannot be held to AVX2, so an "
                 "AVX2 laptop is slower; benchmarks/ct_engine.py compares engines side by side)")
    return text


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


def render_card(model_id: str, card_path, report: dict, entry: dict, folder: Path) -> None:
    """``configs/cards/ID.md.in`` -> the registry's ``ID.md``: figures, generated prose and entry facts filled in."""
    template = Path(card_path).with_suffix(".md.in")
    if not template.is_file():
        return
    text = template.read_text().replace("{{figures}}", figures_markdown(report) + int8_markdown(report))
    text = text.replace("{{speed}}", speed_markdown(entry.get("speed"), model_id))
    for key, value in report["card_text"].items():
        text = text.replace("{{" + key + "}}", value)
    text = text.replace("{{entry}}", json.dumps({k: entry[k] for k in ("params", "macs", "sha256", "architecture",
                                                                         "input", "normalization")}, indent=1))
    (folder / entry.get("card", f"{model_id}.md")).write_text(text)


def refresh_card(model_id: str, folder: Path) -> bool:
    """Re-render a published card after its registry entry changed (a new speed record), when its template is
    in the checkout that holds the models folder (``configs/cards/ID.md.in``). False if there is none."""
    template = folder.resolve().parents[1] / "configs" / "cards" / f"{model_id}.json"
    evaluation = folder / f"{model_id}.eval.json"
    if not (template.with_suffix(".md.in").is_file() and evaluation.is_file()):
        return False
    report = json.loads(evaluation.read_text())
    if "card_text" not in report:
        return False
    render_card(model_id, template, report, get_model(model_id, folder).entry, folder)
    return True
