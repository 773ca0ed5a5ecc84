"""Cohort throughput: ``LightSegLib.batch`` on a local Dask cluster with 1 and 2 workers against one
``lightseg segment`` process running the same cases in a loop, and each worker's peak memory.

Two cohorts of copies (links) of one CT each: the bundled 30-slice TotalSegmentator crop, and a 512x512x300 CT
made from IRCADb patient 17 (512x512x119 at 1.6 mm) resampled along z to 300 slices (linear, 0.635 mm), written as
compressed NIfTI like a cohort's files. The cluster is started before the clock runs (its start is reported
apart: a cohort pays it once); the loop's time includes its one process start and model load, as a batch's
includes each worker's. On a shared machine wall time swings with the neighbours' load, so the CPU seconds each
way spends per case (the loop process's; the workers' processes') are reported too: the overhead figure that
load does not move. The loop runs before and after the Dask runs; its faster run is the baseline.

    .venv/bin/python benchmarks/batch_throughput.py [--model liver-ct] [--cases 8] [--big-cases 4]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parent.parent
IRCADB = REPO.parent / "shared" / "data" / "ircadb" / "imagesTr" / "ircadb1_17.nii.gz"
BUNDLED = REPO / "Resources" / "Samples" / "totalseg_example_ct_sm.nii.gz"


def make_big_ct(path: Path, slices: int = 300) -> None:
    image = sitk.ReadImage(str(IRCADB))
    size, spacing = image.GetSize(), image.GetSpacing()
    new_spacing = (spacing[0], spacing[1], spacing[2] * (size[2] - 1) / (slices - 1))
    resampled = sitk.Resample(image, (size[0], size[1], slices), sitk.Transform(), sitk.sitkLinear,
                              image.GetOrigin(), new_spacing, image.GetDirection(), -1024.0, sitk.sitkInt16)
    sitk.WriteImage(resampled, str(path), True)


def cohort(folder: Path, source: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        (folder / f"case{i:03d}.nii.gz").symlink_to(source)
    return folder


def cpu_seconds(usage) -> float:
    return usage.ru_utime + usage.ru_stime


def worker_cpu() -> float:
    times = os.times()
    return times.user + times.system


def loop(model: str, folder: Path, out: Path, threads: int) -> tuple[float, float]:
    """One ``lightseg segment`` process over the folder: its wall time and CPU seconds."""
    t, cpu = time.perf_counter(), cpu_seconds(resource.getrusage(resource.RUSAGE_CHILDREN))
    subprocess.run([sys.executable, "-m", "LightSegLib.cli", "segment", "--model", model, "--threads", str(threads),
                    str(folder), str(out) + "/"], check=True, capture_output=True)
    return time.perf_counter() - t, cpu_seconds(resource.getrusage(resource.RUSAGE_CHILDREN)) - cpu


def on_dask(model: str, folder: Path, out: Path, workers: int) -> dict:
    from distributed import Client, LocalCluster

    from LightSegLib import batch

    t = time.perf_counter()
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=logging.ERROR)
    client = Client(cluster)
    started = time.perf_counter() - t
    try:
        pids = client.run(os.getpid)
        cpu = client.run(worker_cpu)
        limits = [w["memory_limit"] for w in client.scheduler_info()["workers"].values()]
        t = time.perf_counter()
        table = batch.run(folder, model, client, out, progress="none")
        wall = time.perf_counter() - t
        cpu = sum(client.run(worker_cpu).values()) - sum(cpu.values())
        restarted = set(client.run(os.getpid).values()) != set(pids.values())
    finally:
        client.close()
        cluster.close()
    return {"workers": workers, "cluster_start_s": round(started, 2), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "failed": int(table["error"].notna().sum()), "worker_restarted": restarted,
            "peak_rss_mib_per_worker": {w: float(v) for w, v in table.groupby("worker")["peak_rss_mib"].max().items()},
            "memory_limit_mib": sorted({round(v / 2**20) for v in limits}),
            "case_seconds_median": round(float(np.median(table["seconds_total"])), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="liver-ct")
    parser.add_argument("--cases", type=int, default=8, help="cases of the bundled CT")
    parser.add_argument("--big-cases", type=int, default=4, help="cases of the 512x512x300 CT")
    args = parser.parse_args()
    from LightSegLib.machine import machine, machine_line

    info = machine()
    cores = info["cpu_count"]
    print(f"machine: {machine_line(info)}; load average before {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        big = tmp / "ct512x512x300.nii.gz"
        make_big_ct(big)
        for name, source, count in (("bundled CT 30 slices", BUNDLED, args.cases),
                                    ("512x512x300 CT", big, args.big_cases)):
            folder = cohort(tmp / name.replace(" ", "_"), source, count)
            first = loop(args.model, folder, tmp / f"loop1-{folder.name}", cores)
            runs = {workers: on_dask(args.model, folder, tmp / f"dask{workers}-{folder.name}", workers)
                    for workers in (1, 2)}
            looped, loop_cpu = min(first, loop(args.model, folder, tmp / f"loop2-{folder.name}", cores))
            result = {"cohort": name, "cases": count, "model": args.model,
                      "loop": {"threads": cores, "wall_s": round(looped, 2), "cpu_s": round(loop_cpu, 2),
                               "cases_per_minute": round(60 * count / looped, 2)}}
            for workers, run in runs.items():
                run["threads_per_case"] = max(1, cores // workers)
                run["cases_per_minute"] = round(60 * count / run["wall_s"], 2)
                run["wall_overhead_vs_loop"] = round(run["wall_s"] / looped - 1, 3)
                run["cpu_overhead_vs_loop"] = round(run["cpu_s"] / loop_cpu - 1, 3)
                result[f"dask_{workers}_workers"] = run
            result["load_average_after"] = round(os.getloadavg()[0], 1)
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
