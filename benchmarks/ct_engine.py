"""Today's CT engine against an older one, side by side: each run its own `lightseg segment` process, the two
engines alternating run by run (the machine's load drifts; alternation shares it fairly), medians and ratios,
and how far the new labels are from the old ones (Dice per model, same input, LightSegLib.metrics: NaN when
neither engine marks anything).

The old engine is `git archive REF LightSegLib Resources/Models` unpacked in a scratch folder and run from there,
so it keeps its own code and registry. The input defaults to the 512x512x300 CT of benchmarks/big_ct.py.

    .venv/bin/python benchmarks/ct_engine.py --old 6f173d0 [--models liver-ct,pancreas-ct] [--repeat 3]
        [--threads 2] [--input ct512.nrrd] [--json out.json]

The machine line says which instruction sets the kernels had: ONNX Runtime's wheel picks them by CPUID at run
time and cannot be held to AVX2, so on an AVX-512 machine these are AVX-512 figures.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import SimpleITK as sitk

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from big_ct import make_ct  # noqa: E402
from LightSegLib.lab.bench import time_once  # noqa: E402
from LightSegLib.machine import machine, machine_line  # noqa: E402
from LightSegLib.metrics import dice  # noqa: E402


def unpack(ref: str, folder: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "LightSegLib", "Resources/Models"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="git ref of the engine to compare with")
    parser.add_argument("--models", default="liver-ct,pancreas-ct")
    parser.add_argument("--input", help="CT volume (default: benchmarks/big_ct.py's 512x512x300 CT)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ct-engine-") as tmp:
        tmp = Path(tmp)
        (tmp / "old").mkdir()
        old_repo = unpack(args.old, tmp / "old")
        ct = Path(args.input) if args.input else tmp / "ct512.nrrd"
        if not args.input:
            make_ct(ct)
        engines = {"old": old_repo, "new": REPO}
        result = {"input": str(args.input or "512x512x300 int16 CT (benchmarks/big_ct.py)"), "old": args.old,
                  "threads": args.threads, "repeat": args.repeat, "machine": machine(), "models": []}
        print(f"machine: {machine_line(result['machine'], args.threads)}", file=sys.stderr)
        for model in [m.strip() for m in args.models.split(",") if m.strip()]:
            runs = {name: [] for name in engines}
            outs = {name: tmp / f"out_{name}" for name in engines}
            for name, repo in engines.items():  # warm-up: file cache, compiled imports
                outs[name].mkdir(exist_ok=True)
                time_once(model, False, ct, args.threads, outs[name], repo=repo)
            for i in range(args.repeat):
                for name, repo in (engines.items() if i % 2 == 0 else reversed(engines.items())):
                    runs[name].append(time_once(model, False, ct, args.threads, outs[name], repo=repo))
                    print(f"{model} {name} run {i + 1}: {runs[name][-1]['wall_s']:.2f} s", file=sys.stderr)
            labels = {n: sitk.GetArrayFromImage(sitk.ReadImage(str(outs[n] / "bench_out.nii.gz"))) for n in engines}
            row = {"model": model, "dice_new_vs_old": round(dice(labels["new"], labels["old"]), 5)}
            for name in engines:
                for key, field in (("wall_s", "wall_s"), ("engine_s", "work_s"), ("network_s", "infer_s")):
                    row[f"{name}_{key}"] = round(statistics.median(r[field] for r in runs[name]), 3)
                row[f"{name}_peak_rss_mb"] = round(max(r["peak_rss_mb"] for r in runs[name]), 1)
            for key in ("wall_s", "engine_s", "network_s"):
                row[f"speedup_{key}"] = round(row[f"old_{key}"] / row[f"new_{key}"], 3)
            result["models"].append(row)
            print(json.dumps(row), file=sys.stderr)
    print(f"machine: {machine_line(result['machine'], args.threads)}; old engine: {args.old}; medians of "
          f"{args.repeat} alternating runs, one process each")
    print(f"{'model':<12} {'old s':>7} {'new s':>7} {'x':>6} {'old net':>8} {'new net':>8} {'x':>6} "
          f"{'old MB':>7} {'new MB':>7} {'Dice new/old':>12}")
    for r in result["models"]:
        print(f"{r['model']:<12} {r['old_wall_s']:7.2f} {r['new_wall_s']:7.2f} {r['speedup_wall_s']:6.2f} "
              f"{r['old_network_s']:8.2f} {r['new_network_s']:8.2f} {r['speedup_network_s']:6.2f} "
              f"{r['old_peak_rss_mb']:7.0f} {r['new_peak_rss_mb']:7.0f} {r['dice_new_vs_old']:12.5f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
