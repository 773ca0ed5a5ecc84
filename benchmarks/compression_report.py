"""The cardiac compression report (docs/compression.md, section "Results"): export every checkpoint of
benchmarks/cardiac_compression.sh, quantize the chosen ones, measure validation Dice through the inference engine
(ONNX Runtime + post-processing, fp32 and int8 alike), time all side by side with ``lightseg bench``, and write
the plots and the table.

The models go into a scratch registry (``RUNS/cc_models``, via LIGHTSEG_MODELS_DIR) so the shipped registry holds
only what ships; each step skips what already exists, so the script resumes.

    python benchmarks/compression_report.py --runs runs --data ../shared/data/acdc
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "Resources" / "Samples" / "acdc_patient002_ED.nii.gz"
CARD = REPO / "configs" / "cards" / "cardiac-acdc.json"

# (registry id in the scratch registry, checkpoint under --runs, plot label, also int8)
EXPERIMENTS = [
    ("teacher", "cardiac_unet32/best.pt", "teacher U-Net 32-512", True),
    ("ghost", "cc_ghost/best.pt", "Ghost teacher", False),
    ("lfunet", "cardiac_lfunet/best.pt", "LFU-Net 8-128", False),
    ("dpunet", "cardiac_dpunet/best.pt", "DPU-Net", False),
    ("dpunet-same-loop", "cc_dpu_none/best.pt", "DPU-Net, distill loop without KD", False),
    ("dpunet-mavkd", "cc_dpu_mavkd/best.pt", "DPU-Net + MAVKD", True),
    ("pruned-l1", "cc_l1/best.pt", "L1-pruned + CPRUN", True),
    ("pruned-bn", "cc_bn/best.pt", "BN-slimmed + CPRUN", False),
    ("tiny", "cc_tiny_none/best.pt", "TinyUNet", False),
    ("tiny-long", "cc_tiny_none1200/best.pt", "TinyUNet, 2x iterations", False),
    ("tiny-feature", "cc_tiny_feature/best.pt", "TinyUNet + feature KD", True),
    ("tiny-gcn", "cc_tiny_gcn/best.pt", "TinyUNet + feature + GCN KD", True),
]
SHIPPED = ("cardiac-acdc", "shipped U-Net 8-128")


def sh(cmd: list[str], env: dict) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


def lightseg() -> str:
    return str(Path(sys.executable).with_name("lightseg"))


def export_all(runs: Path, models: Path, data: str, env: dict) -> list[tuple[str, str]]:
    """Export (and quantize) what exists; returns [(bench name, label)] in report order."""
    from LightSegLib.registry import read_registry, register_model

    models.mkdir(parents=True, exist_ok=True)
    names = []
    for mid, ckpt, label, int8 in EXPERIMENTS:
        path = runs / ckpt
        if not path.is_file():
            print(f"(not run yet: {path})")
            continue
        onnx = models / f"{mid}.onnx"
        if not onnx.is_file():
            sh([lightseg(), "export", str(path), "--out", str(onnx), "--register", mid, "--card", str(CARD),
                "--status", "reference", "--reproduce", "bash benchmarks/cardiac_compression.sh"], env)
        names.append((mid, label))
        if int8:
            q = models / f"{mid}.int8.onnx"
            if not q.is_file():
                sh([lightseg(), "quantize", str(onnx), "--calib", data, "--out", str(q), "--register", mid,
                    "--model-id", mid], env)
            names.append((f"{mid}:int8", label + " int8"))
    # The shipped model, copied in as it is, for comparison.
    shipped = {m["id"]: m for m in read_registry(REPO / "Resources" / "Models")["models"]}[SHIPPED[0]]
    for key in ("file", "int8_file"):
        if shipped.get(key) and not (models / shipped[key]).is_file():
            shutil.copyfile(REPO / "Resources" / "Models" / shipped[key], models / shipped[key])
    register_model({k: v for k, v in shipped.items() if k != "card"}, models)
    names += [(SHIPPED[0], SHIPPED[1]), (f"{SHIPPED[0]}:int8", SHIPPED[1] + " int8")]
    return names


def evaluate_all(names, runs: Path, data: str) -> dict:
    from LightSegLib.evaluate import evaluate

    out = {}
    for name, _ in names:
        folder = runs / "cc_eval" / name.replace(":", "_")
        summary = folder / "summary.json"
        if not summary.is_file():
            evaluate(name, data, "validation", folder, threads=2, log=lambda s: None)
        out[name] = json.loads(summary.read_text())
        print(f"{name}: validation mean Dice {out[name]['mean_dice']:.4f}", flush=True)
    return out


def per_label(summary: dict) -> list[float]:
    return [summary["per_label"][n]["dice"]["mean"] for n in ("right ventricle", "myocardium", "left ventricle")]


def training_only_rows(runs: Path) -> list[tuple[str, dict]]:
    """Points that were validated in torch but not exported: the pruned nets before CPRUN fine-tuning and the
    same narrow U-Net trained from scratch."""
    rows = []
    for run, what in (("cc_l1", "L1"), ("cc_bn", "BN")):
        f = runs / run / "best.pt"
        if not f.is_file():
            continue
        import torch

        report = torch.load(f, map_location="cpu", weights_only=False).get("compression", {})
        tuned = [t for t in report.get("finetune") or [] if t]
        if tuned:
            rows.append((f"{what}-pruned, {report['steps']} steps x {tuned[-1]['iterations']} it fine-tune, before "
                         "reconstruction", tuned[-1]))
        if report.get("scratch"):
            rows.append((f"same widths {report['reconstruct']['widths']} from scratch, same iterations",
                         report["scratch"]))
    return rows


def write_markdown(path: Path, names, evals: dict, bench: dict, extra_rows, threads: int) -> None:
    rows = {r["model"]: r for r in bench["models"]}
    teacher = rows["teacher"]
    t_dice = evals["teacher"]["mean_dice"]
    lines = ["| model | params | MACs / 256² slice | file MB | median s per volume (wall) | network s | "
             "RV | MYO | LV | mean Dice | % of teacher Dice | params % | speed-up (wall) | speed-up (network) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, label in names:
        r, e = rows[name], evals[name]
        rv, myo, lv = per_label(e)
        lines.append(
            f"| {label} (`{name}`) | {r['params']:,} | {r['macs'] / 1e9:.3f} G | {r['file_bytes'] / 1e6:.2f} | "
            f"{r['latency_median_s']:.3f} | {r.get('network_median_s', float('nan')):.3f} | {rv:.3f} | {myo:.3f} | "
            f"{lv:.3f} | **{e['mean_dice']:.3f}** | {100 * e['mean_dice'] / t_dice:.1f} | "
            f"{100 * r['params'] / teacher['params']:.2f} | {teacher['latency_median_s'] / r['latency_median_s']:.1f}x | "
            f"{teacher['network_median_s'] / r['network_median_s']:.1f}x |")
    text = ["<!-- generated by benchmarks/compression_report.py; do not edit by hand -->", "",
            f"Validation split of ACDC (20 volumes), Dice through the inference engine (ONNX Runtime, post-processing "
            f"as shipped). Latency: `lightseg bench` on `{SAMPLE.relative_to(REPO)}` ({bench['repeat']} timed runs "
            f"after a warm-up, one process per run, {threads} threads); wall time includes interpreter start-up, "
            "network time is the ONNX session alone.", "", *lines, ""]
    if extra_rows:
        text += ["Validated in torch during training (fp32, no post-processing), not exported:", "",
                 "| run | RV | MYO | LV | mean Dice |", "|---|---|---|---|---|"]
        for what, res in extra_rows:
            d = res["val_dice"]
            text.append(f"| {what} | {d[0]:.3f} | {d[1]:.3f} | {d[2]:.3f} | {res['val_dice_mean']:.3f} |")
        text.append("")
    # The targets, for the best model with <= 1% of the teacher's parameters.
    small = [(n, l) for n, l in names if rows[n]["params"] <= 0.01 * teacher["params"]]
    if small:
        best, label = max(small, key=lambda nl: evals[nl[0]]["mean_dice"])
        r = rows[best]
        text += [f"Targets, best model with <= 1% of the teacher's parameters ({label}, `{best}`): "
                 f"{100 * evals[best]['mean_dice'] / t_dice:.1f}% of the teacher's mean Dice (target >= 98%), "
                 f"{100 * r['params'] / teacher['params']:.2f}% of its parameters (target <= 1%), "
                 f"{teacher['latency_median_s'] / r['latency_median_s']:.1f}x faster per volume in wall time and "
                 f"{teacher['network_median_s'] / r['network_median_s']:.1f}x in network time (target >= 20x).", ""]
    path.write_text("\n".join(text))


def publish_teacher(models: Path, evals: dict) -> None:
    """Register the teacher in the shipped registry as ``cardiac-acdc-teacher`` (status reference: hidden in
    Slicer, left out of the extension), its metrics the engine's, so anyone can bench against it."""
    from LightSegLib.registry import read_registry, register_model

    shipped = REPO / "Resources" / "Models"
    entry = {m["id"]: m for m in read_registry(models)["models"]}["teacher"]
    card = json.loads((REPO / "configs" / "cards" / "cardiac-acdc-teacher.json").read_text())
    entry = {k: v for k, v in entry.items() if not k.startswith("int8")}
    entry.update({k: card[k] for k in ("id", "title", "description", "status", "card")})
    entry["file"] = "cardiac-acdc-teacher.onnx"
    shutil.copyfile(models / "teacher.onnx", shipped / entry["file"])
    e = evals["teacher"]
    names = ("right ventricle", "myocardium", "left ventricle")
    metrics = dict(entry["metrics"])
    metrics.update({
        "dice_checkpoint": metrics.pop("dice"), "dice_checkpoint_mean": metrics.pop("dice_mean"),
        "dice": {n: round(e["per_label"][n]["dice"]["mean"], 4) for n in names},
        "dice_mean": round(e["mean_dice"], 4),
        "hd95_mm": {n: round(e["per_label"][n]["hd95_mm"]["mean"], 2) for n in names},
        "note": "dice: ONNX engine with post-processing, 3D Dice per volume over the 20 validation volumes "
                "(benchmarks/compression_report.py); dice_checkpoint: torch, no post-processing (selection metric)",
    })
    entry["metrics"] = metrics
    entry["reproduce"] = ("lightseg train --config configs/cardiac_unet32.toml --data ../shared/data/acdc "
                          "--out runs/cardiac_unet32 && lightseg export runs/cardiac_unet32/best.pt --out "
                          "Resources/Models/cardiac-acdc-teacher.onnx --register cardiac-acdc-teacher --card "
                          "configs/cards/cardiac-acdc-teacher.json (engine metrics: benchmarks/compression_report.py)")
    register_model(entry, shipped)
    print(f"registered cardiac-acdc-teacher in {shipped}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--data", default="../shared/data/acdc")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--docs", default=str(REPO / "docs"))
    ap.add_argument("--no-bench", action="store_true",
                    help="stop after export and evaluation (e.g. while other jobs make timings meaningless)")
    ap.add_argument("--publish-teacher", action="store_true",
                    help="also register the teacher in Resources/Models as cardiac-acdc-teacher")
    args = ap.parse_args()
    runs = Path(args.runs).resolve()
    models = runs / "cc_models"
    os.environ["LIGHTSEG_MODELS_DIR"] = str(models)
    env = dict(os.environ)
    names = export_all(runs, models, args.data, env)
    evals = evaluate_all(names, runs, args.data)
    if args.no_bench:
        return 0
    bench_file = runs / "cc_bench.json"
    if not bench_file.is_file():
        from LightSegLib.compress.bench import bench

        result = bench([n for n, _ in names], SAMPLE, repeat=args.repeat, threads=args.threads,
                       log=lambda s: print(s, flush=True))
        bench_file.write_text(json.dumps(result, indent=1))
    result = json.loads(bench_file.read_text())
    from LightSegLib.compress.bench import format_table, plot

    print(format_table(result))
    docs = Path(args.docs)
    labels = dict(names)
    for r in result["models"]:  # the plots label points with the readable names
        r["model"] = labels.get(r["model"], r["model"])
    plot(result, docs / "img" / "compression", {labels[n]: evals[n]["mean_dice"] for n, _ in names})
    result = json.loads(bench_file.read_text())
    write_markdown(docs / "compression_results.md", names, evals, result, training_only_rows(runs), args.threads)
    print(f"wrote {docs / 'compression_results.md'} and {docs / 'img' / 'compression'}")
    if args.publish_teacher:
        publish_teacher(models, evals)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
