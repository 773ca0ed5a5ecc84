"""Publishing and reporting of the pneumonia classifier: ONNX export with the activation map, scores through the
ONNX engine on the validation images (read from their files, as a user's would be), the decision threshold, plots,
latency side by side, and the registry entry: the ``publish`` stage of the classifier's config.

Why the threshold is chosen by Youden's J and then bootstrapped: with about 400 validation images a threshold tuned
hard to them overfits; the bootstrap (threshold re-chosen on each resample, scored on the images left out) says how
much the chosen one moves and what accuracy it keeps on images it was not tuned on.
"""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...classify import Classifier, read_radiograph
from ...errors import LightSegError
from ...machine import machine, machine_line, widest_isa
from ...registry import ModelCard, get_model, models_dir, sha256_of
from ..binary_metrics import confusion, ece, roc_curve, youden_threshold
from ..cxr_protocol import REPO, card_fields, recipe
from ..data import cxr as radiographs
from ..export import count_macs, parity
from ..nets.blocks import count_params
from ..publish.writer import attach_file, register_model
from .config import load_config
from .cxr import final_checkpoint, load_net, roc_auc


class CamGraph(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, image):
        return self.net.forward_cam(image)


def export(net, path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(2, 1, size, size)
    axes = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(CamGraph(net.eval()), (x,), str(path), input_names=["image"],
                          output_names=["logits", "cam"], opset_version=17, dynamo=False,
                          dynamic_axes={"image": axes, "logits": axes, "cam": axes})
    return path


# ---------------------------------------------------------------- threshold
def bootstrap_threshold(prob: np.ndarray, y: np.ndarray, rounds: int = 500, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    thresholds, oob_acc = [], []
    for _ in range(rounds):
        idx = rng.integers(0, len(y), len(y))
        left = np.setdiff1d(np.arange(len(y)), idx)
        t = youden_threshold(prob[idx], y[idx])
        thresholds.append(t)
        if len(left):  # a resample of a few images may draw every one of them
            oob_acc.append(confusion(prob[left], y[left], t)["accuracy"])
    q = lambda a: [float(v) for v in np.percentile(a, [5, 50, 95])]  # noqa: E731
    return {"rounds": rounds, "threshold_p5_p50_p95": q(thresholds), "out_of_bag_accuracy_p5_p50_p95": q(oob_acc)}


def scores(onnx_path: Path, card: dict, size: int, paths) -> np.ndarray:
    """Positive-class probabilities through the engine (file -> radiograph -> preprocessing -> ONNX), for an ONNX
    file not registered yet: its card is the template's fields with this file, its hash and size."""
    entry = dict(card, file=onnx_path.name, sha256=sha256_of(onnx_path), input={"size": size}, threshold=0.5)
    classifier = Classifier(ModelCard(entry, onnx_path.parent), threads=2)
    return np.array([classifier(read_radiograph(p)).probability for p in paths])


# ---------------------------------------------------------------- latency
def latency_ms(onnx_path: Path, size: int, threads: int, repeat: int = 50) -> list[float]:
    """Per-image latency (batch 1) of one model, measured in a fresh process."""
    code = (
        "import json,sys,time,numpy as np,onnxruntime as ort\n"
        "o=ort.SessionOptions();o.intra_op_num_threads=int(sys.argv[3]);o.inter_op_num_threads=1\n"
        "s=ort.InferenceSession(sys.argv[1],o,providers=['CPUExecutionProvider'])\n"
        "x=np.random.default_rng(0).random((1,1,int(sys.argv[2]),int(sys.argv[2])),dtype=np.float32)\n"
        "[s.run(None,{'image':x}) for _ in range(5)]\n"
        "t=[]\n"
        "for _ in range(int(sys.argv[4])):\n"
        " a=time.perf_counter();s.run(None,{'image':x});t.append(1e3*(time.perf_counter()-a))\n"
        "print(json.dumps(t))\n")
    out = subprocess.run([sys.executable, "-c", code, str(onnx_path), str(size), str(threads), str(repeat)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def side_by_side_latency(models: dict[str, Path], size: int, threads: int, rounds: int = 3) -> dict:
    """Alternating fresh processes per model, so both see the same machine load; medians over all runs."""
    runs = {name: [] for name in models}
    for _ in range(rounds):
        for name, path in models.items():
            runs[name].extend(latency_ms(path, size, threads))
    return {name: {"median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)), "runs": len(t)}
            for name, t in runs.items()}


# ---------------------------------------------------------------- plots
def _figure(path: Path, title: str, xlabel: str, ylabel: str, series: list[tuple], legend: str) -> Path:
    """One square plot: each series is (x, y, style, label), with the diagonal for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.4), dpi=110)
    for x, y, style, label in series:
        ax.plot(x, y, style, label=label)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(loc=legend, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot(results: dict, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    op, t = results["compressed"]["at_threshold"], results["compressed"]["threshold"]
    roc = [(r["roc"]["fpr"], r["roc"]["tpr"], "-", f"{name} (AUC {r['auc']:.3f})") for name, r in results.items()]
    roc.append(([1 - op["specificity"]], [op["sensitivity"]], "ko", f"compressed at threshold {t:.2f}"))
    rel = [([b["mean_probability"] for b in r["reliability"]], [b["positive_fraction"] for b in r["reliability"]],
            "o-", f"{name} (ECE {r['ece']:.3f})") for name, r in results.items()]
    return [_figure(out_dir / "roc.png", "Pneumonia, validation images (by patient)", "1 - specificity",
                    "sensitivity", roc, "lower right"),
            _figure(out_dir / "reliability.png", "Reliability, validation images", "predicted probability of pneumonia",
                    "fraction with pneumonia", rel, "upper left")]


def evaluate(prob: np.ndarray, y: np.ndarray, threshold: float | None = None) -> dict:
    t = youden_threshold(prob, y) if threshold is None else threshold
    fpr, tpr, _ = roc_curve(prob, y)
    e, rows = ece(prob, y)
    return {"auc": roc_auc(prob, y), "threshold": t, "at_threshold": confusion(prob, y, t),
            "at_0.5": confusion(prob, y, 0.5), "ece": e, "reliability": rows,
            "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()}}


def training_time(ckpt: dict) -> dict:
    """A stage's epochs and its hours, summed from the per-epoch times its checkpoint's history recorded (a resumed
    run counts each epoch once)."""
    return {"epochs": len(ckpt["history"]), "hours": sum(row["seconds"] for row in ckpt["history"]) / 3600}


def report(baseline_ckpt: Path, compressed_ckpt: Path, onnx_out: Path, run_dir: Path, plots_dir: Path, card: dict,
           threads: int = 2, log=print) -> dict:
    baseline, b_ckpt = load_net(baseline_ckpt)
    compressed, c_ckpt = load_net(compressed_ckpt)
    cfg = c_ckpt["config"]
    size = int(cfg["size"])
    parts = radiographs.split_with_held_out(radiographs.list_images(cfg["data"]), cfg["held_out"],
                                            cfg["val_fraction"], cfg["seed"])
    val_paths = [p for p, _ in parts["val"]]
    y = np.array([label for _, label in parts["val"]])
    files = {"baseline": export(baseline, run_dir / "baseline.onnx", size), "compressed": export(compressed, onnx_out, size)}
    x_check = radiographs.load(parts["val"][:8], size)[0]
    results, nets = {}, {"baseline": baseline, "compressed": compressed}
    for name, path in files.items():
        diff = parity(nets[name], path, x_check)["max_abs_diff"]
        if diff > 1e-3:
            raise LightSegError(f"{name}: ONNX/torch parity failed (max |diff| {diff:.2e})")
        prob = scores(path, card, size, val_paths)
        results[name] = evaluate(prob, y) | {
            "params": count_params(nets[name]), "macs": count_macs(nets[name], (1, 1, size, size)),
            "file_bytes": path.stat().st_size, "onnx_parity_max_abs_diff": diff}
        results[name]["probabilities"] = prob.tolist()
        log(f"{name}: AUC {results[name]['auc']:.4f}, {results[name]['at_threshold']}")
    comp = results["compressed"]
    comp["bootstrap"] = bootstrap_threshold(np.array(comp["probabilities"]), y)
    latency = side_by_side_latency(files, size, threads)
    summary = {"machine": machine(), "threads": threads, "size": size, "validation_images": len(y),
               "training": {"baseline": training_time(b_ckpt), "compress": training_time(c_ckpt)},
               "validation_positive": int(y.sum()), "held_out_images": len(parts["held_out"]), "latency": latency,
               "points": json.loads((Path(compressed_ckpt).parent / "points.json").read_text())
               if (Path(compressed_ckpt).parent / "points.json").is_file() else None,
               "results": results, "ratios": c_ckpt.get("ratios")}
    (run_dir / "report.json").write_text(json.dumps(summary, indent=1))
    plot({k: v for k, v in results.items()}, plots_dir)
    return summary


# ---------------------------------------------------------------- registry entry and card
def _fig(r: dict) -> dict:
    keep = ("auc", "threshold", "ece", "params", "macs", "file_bytes", "onnx_parity_max_abs_diff")
    return {k: r[k] for k in keep} | {"at_threshold": r["at_threshold"], "at_0.5": r["at_0.5"]}


def registry_entry(summary: dict, card_path: Path, onnx_path: Path, spec: dict, status: str, reproduce: str) -> dict:
    comp = summary["results"]["compressed"]
    entry = json.loads(Path(card_path).read_text())
    entry.update({
        "status": status, "input": {"size": summary["size"]}, "threshold": round(comp["threshold"], 4),
        "file": onnx_path.name, "sha256": sha256_of(onnx_path), "params": comp["params"], "macs": comp["macs"],
        "architecture": spec, "reproduce": reproduce,
        "metrics": {"split": f"validation ({summary['validation_images']} images by patient, "
                             f"{summary['validation_positive']} pneumonia"
                             + (f"; {summary['held_out_images']} images of other children held out for the "
                                "protocol)" if summary["held_out_images"] else ")"),
                    "validation": _fig(comp), "baseline_validation": _fig(summary["results"]["baseline"]),
                    "threshold_bootstrap": comp["bootstrap"], "points": summary["points"],
                    "latency_ms_per_image": summary["latency"], "machine": summary["machine"],
                    "training": summary["training"],
                    "threads": summary["threads"], "macs_input_hw": [summary["size"], summary["size"]]},
    })
    return entry


def card_markdown(entry: dict, template: Path, protocol: dict | None) -> str:
    """``configs/cards/ID.md.in`` with its ``{{name}}`` fields filled from the registry entry's measurements, and
    the protocol section (between ``<!-- protocol -->`` and ``<!-- /protocol -->``) from ``protocol``, the
    ``ID.eval.json`` record, if it scored these very weights; otherwise that section says it has not."""
    m = entry["metrics"]
    b, c = m["baseline_validation"], m["validation"]
    lat = m["latency_ms_per_image"]

    def row(name, r, ms):
        t = r["at_threshold"]
        return (f"| {name} | {r['params']:,} | {r['macs'] / 1e6:.0f} M | {r['file_bytes'] / 1e6:.1f} MB | {ms:.1f} ms | "
                f"{t['accuracy']:.3f} | {t['sensitivity']:.3f} | {t['specificity']:.3f} | {r['auc']:.4f} | "
                f"{r['ece']:.3f} | {r['threshold']:.3f} |")

    table = "\n".join([
        "| model | params | MACs | ONNX file | latency (median) | accuracy | sensitivity | specificity | ROC AUC | ECE "
        "| threshold |", "|---|---|---|---|---|---|---|---|---|---|---|",
        row("ResNet50 (uncompressed)", b, lat["baseline"]["median_ms"]),
        row(f"{entry['id']} (pruned + Ghost, fine-tuned)", c, lat["compressed"]["median_ms"])])
    at05 = "\n".join(f"- {name}: accuracy {r['at_0.5']['accuracy']:.3f}, sensitivity {r['at_0.5']['sensitivity']:.3f}, "
                     f"specificity {r['at_0.5']['specificity']:.3f}" for name, r in (("ResNet50", b),
                                                                                    (entry["id"], c)))
    points = "\n".join(["| point | params | validation accuracy (p >= 0.5) | ROC AUC |", "|---|---|---|---|"]
                       + [f"| {p['point']} | {p['params']:,} | {p['val_acc']:.3f} | {p['val_auc']:.4f} |"
                          for p in m["points"] or []])
    boot = m["threshold_bootstrap"]
    machine_text = machine_line(m["machine"], m["threads"])
    if widest_isa(machine_text) == "AVX-512":
        machine_text += (". This CPU has AVX-512; ONNX Runtime picks its kernels by CPUID and cannot be held to "
                         "AVX2, so a laptop without AVX-512 will be slower")
    if "training" in m:
        trained = ("Training time, summed from each epoch's time in the checkpoints (on the machine and load it ran "
                   "on): " + "; ".join(f"{stage}: {t['epochs']} epochs in {t['hours']:.1f} h"
                                      for stage, t in m["training"].items()) + ".")
    else:
        trained = "This version's publish recorded no training time."
    fields = {
        "table": table, "at_0.5": at05, "points": points,
        "machine": machine_text, "training_time": trained,
        "speedup": f"{lat['baseline']['median_ms'] / lat['compressed']['median_ms']:.1f}",
        "threshold": f"{c['threshold']:.3f}",
        "boot_threshold": ", ".join(f"{v:.3f}" for v in boot["threshold_p5_p50_p95"]),
        "boot_accuracy": ", ".join(f"{v:.3f}" for v in boot["out_of_bag_accuracy_p5_p50_p95"]),
        "ratios": ", ".join(str(r) for r in load_config(REPO / recipe(entry)["config"])
                            ["compress"]["ratios"]),
        "size": str(entry["input"]["size"]), "split": m["split"], "training_data": entry["training_data"],
        "reproduce": entry["reproduce"], "status": entry["status"],
    }
    text = Path(template).read_text()
    head, rest = text.split("<!-- protocol -->\n")
    section, tail = rest.split("<!-- /protocol -->\n")
    if protocol is not None and protocol["sha256"] == entry["sha256"]:
        fields |= card_fields(protocol)
    else:
        section = (f"The protocol has not scored these weights (sha256 {entry['sha256'][:12]}) yet: "
                   f"`python benchmarks/cxr_protocol.py fix --model {entry['id']} --out runs/cxr_protocol/fixed.json`"
                   f" and `score --model {entry['id']} --out runs/cxr_protocol/new.json`, then `evaluate "
                   f"runs/cxr_protocol/fixed.json runs/cxr_protocol/new.json --out "
                   f"Resources/Models/{entry['id']}.eval.json --card` fill this section.\n\n")
    text = head + section + tail
    for key, value in fields.items():
        text = text.replace("{{" + key + "}}", value)
    if "{{" in text:
        raise LightSegError(f"{template}: unfilled field {text[text.index('{{'):text.index('{{') + 30]}")
    return text


def write_card(model_id: str, folder: Path | None = None) -> Path:
    """Render the registered classifier's card beside it, from its entry and ``ID.eval.json`` (no retraining):
    the template is ``ID.md.in`` beside the card JSON its recipe's ``[publish] card`` names, so a new version's
    JSON (its version, its data) shares the model's template."""
    card = get_model(model_id, folder)
    cfg = load_config(REPO / recipe(card.entry)["config"])
    record = card.folder / f"{model_id}.eval.json"
    protocol = json.loads(record.read_text()) if record.is_file() else None
    out = card.folder / card.entry["card"]
    out.write_text(card_markdown(card.entry, (REPO / cfg["publish"]["card"]).parent / f"{model_id}.md.in", protocol))
    return out


def reproduce_line(config_path, run) -> str:
    """The commands that made a published run: its training stages, then this one."""
    train = f"lightseg train --config {Path(config_path).as_posix()} --out {Path(run).as_posix()}"
    return f"{train} && {train} --stage publish"


def publish(cfg: dict, run: Path, config_path) -> None:
    """Export the compressed net of ``run``, score and time it beside the baseline, and register it with its card
    (``[publish]``: the card template, the status, where the plots go)."""
    torch.set_num_threads(int(cfg["train"]["threads"]))
    settings = cfg["publish"]
    card_path = Path(settings["card"])
    card = json.loads(card_path.read_text())
    folder = models_dir()
    onnx_path = folder / f"{card['id']}.onnx"
    baseline, compressed = final_checkpoint(run, "baseline"), final_checkpoint(run, "compress")
    summary = report(baseline, compressed, onnx_path, compressed.parent, Path(settings["plots"]), card,
                     threads=int(cfg["train"]["threads"]))
    spec = torch.load(compressed, map_location="cpu", weights_only=False)["spec"]
    entry = registry_entry(summary, card_path, onnx_path, spec, settings["status"], reproduce_line(config_path, run))
    register_model(entry, folder)
    appearance = folder / f"{card['id']}.appearance.onnx"  # made from the inputs, not the weights: it carries over
    if appearance.is_file():
        attach_file(card["id"], "appearance", appearance, folder)
    print(f"registered {card['id']} ({settings['status']}); card {write_card(card['id'], folder)}")
