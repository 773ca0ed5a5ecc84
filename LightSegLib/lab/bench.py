"""Side-by-side benchmark of registered models: whole-volume ``lightseg segment``, one process per run.

Why one process per run: ONNX Runtime and PyTorch thread pools fight inside one process, and peak RSS is only
meaningful per process. A tiny measuring process starts ``python -m LightSegLib.cli segment`` and reads the
child's wall time and ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` (the pattern of benchmarks/big_ct.py), so the
figures include start-up, reading, preprocessing, the network and writing: what a user waits for.

A model is named by its registry id; ``ID:int8`` runs its int8 file (``--int8``). Storing a measurement in the
registry and the card is publishing's (``publish.model.record_speed``).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import LightSegError
from ..inference import default_threads
from ..machine import machine, machine_line
from ..registry import get_model

MEASURE = r"""
import resource, subprocess, sys, time
t = time.perf_counter()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
wall = time.perf_counter() - t
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"{wall} {peak_kb} {proc.returncode}")
print(proc.stdout)
sys.stderr.write(proc.stderr)
"""


def parse_model(text: str) -> tuple[str, bool]:
    model, _, variant = text.strip().partition(":")
    if variant not in ("", "int8", "fp32"):
        raise LightSegError(f"model {text!r}: the only variants are ID:int8 and ID:fp32")
    return model, variant == "int8"


def model_facts(model: str, int8: bool) -> dict:
    """Params, MACs (from the registry card) and model file size."""
    card = get_model(model)
    if int8 and not card.has_int8():
        raise LightSegError(f"model '{model}' has no int8 version")
    path = card.path("int8_file" if int8 else "file")
    if not path.is_file():
        raise LightSegError(f"model file for '{model}' is missing: {path}")
    metrics = card.entry.get("metrics") or {}
    facts = {"params": int(card.entry.get("params", 0)), "macs": int(card.entry.get("macs", 0)),
             "file_bytes": int(path.stat().st_size)}
    # The card's validation Dice, for the accuracy/cost plots: fp32 figures never stand in for the int8 file.
    key = "int8_dice_mean" if int8 else "dice_mean"
    if key in metrics:
        facts["val_dice_mean"] = float(metrics[key])
    return facts


def time_once(model: str, int8: bool, input_path: Path, threads: int | None, out_dir: Path,
              backend: str = "onnx", repo=None, env_extra: dict | None = None) -> dict:
    """One ``lightseg segment`` run in a fresh process: {"wall_s", "peak_rss_mb", "infer_s", "work_s"}.

    ``wall_s`` is what a user waits for (interpreter start-up and imports included); ``infer_s`` is the network
    alone and ``work_s`` the engine's in-process total (read + preprocess + network + back to the grid + write),
    both from the segment command's JSON summary: on small volumes start-up dominates ``wall_s``, and these
    show what the model itself costs. ``repo``: run another checkout's LightSegLib (an older engine, side by
    side); ``env_extra``: environment for the child (e.g. a models folder)."""
    out = Path(out_dir).resolve() / "bench_out.nii.gz"
    input_path = Path(input_path).resolve()  # the child runs in ``repo`` (``-m`` imports from its folder)
    cmd = [sys.executable, "-c", MEASURE, sys.executable, "-m", "LightSegLib.cli", "segment", "--model", model,
           "--backend", backend, "--progress", "jsonl", "--overwrite", str(input_path), str(out)]
    if threads:
        cmd[cmd.index("--model"):cmd.index("--model")] = ["--threads", str(threads)]
    if int8:
        cmd.insert(cmd.index("--progress"), "--int8")
    env = {**os.environ, **(env_extra or {})}
    repo = str(repo or Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=repo)
    lines = proc.stdout.splitlines()
    try:
        wall, peak_kb, code = lines[0].split()
    except (ValueError, IndexError):
        raise LightSegError(f"benchmark of '{model}' failed: {proc.stderr.strip()[-400:]}") from None
    if code != "0":
        raise LightSegError(f"'lightseg segment --model {model}' failed: {proc.stderr.strip()[-400:]}")
    run = {"wall_s": float(wall), "peak_rss_mb": int(peak_kb) / 1024.0}
    for line in reversed(lines[1:]):
        if line.startswith("{") and '"done"' in line:
            summary = json.loads(line)["summary"]
            run["infer_s"] = float(summary["seconds"].get("infer", 0.0))
            run["work_s"] = float(summary["total_seconds"])
            break
    return run


def bench(models: list[str], input_path, repeat: int = 3, threads: int | None = None, backend: str = "onnx",
          warmup: bool = True, log=lambda s: None) -> dict:
    """{"models": [...]} with latency median/min/max, peak RSS, params, MACs, file size and ratios against the
    first model. ``warmup`` does one untimed run per model first (file cache, imports compiled)."""
    input_path = Path(input_path)
    if not input_path.exists():
        raise LightSegError(f"input not found: {input_path}")
    if repeat < 1:
        raise LightSegError("--repeat must be at least 1")
    if not models:
        raise LightSegError("no models to benchmark")
    rows = []
    with tempfile.TemporaryDirectory(prefix="lightseg-bench-") as tmp:
        tmp = Path(tmp)
        for text in models:
            model, int8 = parse_model(text)
            facts = model_facts(model, int8)
            if warmup:
                time_once(model, int8, input_path, threads, tmp, backend)
            runs = []
            for i in range(repeat):
                runs.append(time_once(model, int8, input_path, threads, tmp, backend))
                log(f"{text}: run {i + 1}/{repeat}: {runs[-1]['wall_s']:.3f} s, {runs[-1]['peak_rss_mb']:.0f} MB")
            walls = [r["wall_s"] for r in runs]
            row = {"model": text, **facts,
                   "latency_median_s": round(statistics.median(walls), 4),
                   "latency_min_s": round(min(walls), 4), "latency_max_s": round(max(walls), 4),
                   "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1)}
            if all("infer_s" in r for r in runs):
                row["network_median_s"] = round(statistics.median(r["infer_s"] for r in runs), 4)
                row["engine_median_s"] = round(statistics.median(r["work_s"] for r in runs), 4)
            rows.append(row)
    first = rows[0]
    for r in rows:
        r["speedup_vs_first"] = round(first["latency_median_s"] / r["latency_median_s"], 3)
        if "network_median_s" in r and "network_median_s" in first and r["network_median_s"] > 0:
            r["network_speedup_vs_first"] = round(first["network_median_s"] / r["network_median_s"], 3)
        if "engine_median_s" in r and "engine_median_s" in first and r["engine_median_s"] > 0:
            r["engine_speedup_vs_first"] = round(first["engine_median_s"] / r["engine_median_s"], 3)
        r["params_ratio_vs_first"] = _ratio(r["params"], first["params"])
        r["macs_ratio_vs_first"] = _ratio(r["macs"], first["macs"])
        r["file_ratio_vs_first"] = _ratio(r["file_bytes"], first["file_bytes"])
        r["rss_ratio_vs_first"] = _ratio(r["peak_rss_mb"], first["peak_rss_mb"])
    return {"input": str(input_path), "repeat": repeat, "threads": threads or default_threads(), "backend": backend,
            "machine": machine(), "models": rows}


def _ratio(a, b):
    return round(a / b, 5) if b else None


def format_table(result: dict) -> str:
    head = ["model", "params", "MACs", "file MB", "median s", "min s", "max s", "network s", "engine s", "peak MB",
            "speed-up", "engine speed-up", "net speed-up", "params x"]
    lines = [head]
    for r in result["models"]:
        lines.append([r["model"], f"{r['params']:,}", f"{r['macs'] / 1e9:.3f} G", f"{r['file_bytes'] / 1e6:.2f}",
                      f"{r['latency_median_s']:.3f}", f"{r['latency_min_s']:.3f}", f"{r['latency_max_s']:.3f}",
                      f"{r['network_median_s']:.3f}" if "network_median_s" in r else "-",
                      f"{r['engine_median_s']:.3f}" if "engine_median_s" in r else "-",
                      f"{r['peak_rss_mb']:.0f}", f"{r['speedup_vs_first']:.2f}x",
                      f"{r['engine_speedup_vs_first']:.2f}x" if "engine_speedup_vs_first" in r else "-",
                      f"{r['network_speedup_vs_first']:.2f}x" if "network_speedup_vs_first" in r else "-",
                      "-" if r["params_ratio_vs_first"] is None else f"{r['params_ratio_vs_first']:.4f}"])
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(head))]
    table = "\n".join("  ".join(str(c).rjust(w) if j else str(c).ljust(w) for j, (c, w) in enumerate(zip(row, widths)))
                      for row in lines)
    return f"machine: {machine_line(result['machine'], result['threads'])}\n{table}"


def to_json(result: dict) -> str:
    return json.dumps(result)


def plot(result: dict, folder, dice: dict | None = None) -> list[Path]:
    """``dice_vs_macs.png`` and ``dice_vs_latency.png`` (log x) for the models that have a Dice: from
    ``dice`` ({model: mean Dice}, e.g. measured int8 Dice) or the registry card's ``metrics.dice_mean``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dice = dict(dice or {})
    rows = [(r, dice.get(r["model"], r.get("val_dice_mean"))) for r in result["models"]]
    rows = [(r, d) for r, d in rows if d is not None]
    if not rows:
        raise LightSegError("no model has a Dice to plot (card metrics.dice_mean or --dice)")
    written = []
    for key, label, name in (("macs", "MACs per slice (log)", "dice_vs_macs.png"),
                             ("latency_median_s", f"median CPU latency per volume, s (log; "
                              f"{result.get('threads') or 'default'} threads)", "dice_vs_latency.png")):
        many = len(rows) > 6  # beyond a few points, labels collide: a legend, one marker/colour pair each
        fig, ax = plt.subplots(figsize=(9.5, 5) if many else (6.5, 4.5))
        for i, (r, d) in enumerate(rows):
            ax.scatter(max(r[key], 1e-9), d, s=36, marker="osD^v<>P*X"[i % 10], color=plt.cm.tab20(i % 20),
                       label=r["model"])
            if not many:  # staggered labels: an int8 file sits at its fp32 model's MACs
                ax.annotate(r["model"], (max(r[key], 1e-9), d), fontsize=7, xytext=(4, 2 - 9 * (i % 3)),
                            textcoords="offset points")
        if many:
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("validation Dice (mean over structures)")
        ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        written.append(folder / name)
    return written
