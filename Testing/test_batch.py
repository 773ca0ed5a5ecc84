"""Cohorts on a real local Dask cluster (2 worker processes, nannies restart a killed one) over real files: the
bundled samples repeated, and shared data where it is present."""
import csv
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk
from distributed import Client, LocalCluster

from conftest import REPO, SHARED_DATA, shared
from LightSegLib import batch
from LightSegLib.cli import main

SAMPLES = REPO / "Resources" / "Samples"
ED, ES = SAMPLES / "acdc_patient002_ED.nii.gz", SAMPLES / "acdc_patient002_ES.nii.gz"
CT = SAMPLES / "totalseg_example_ct_sm.nii.gz"
FAST = "cardiac-acdc-fast"


@pytest.fixture(scope="module")
def client():
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=logging.ERROR)
    with Client(cluster) as c:
        yield c
    cluster.close()


def lightseg(*args, **kw):
    return subprocess.run([sys.executable, "-m", "LightSegLib.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=600, **kw)


def single(model, source, target) -> dict:
    """What one ``lightseg segment`` process says of one input: its JSON summary."""
    proc = lightseg("segment", "--model", model, "--progress", "jsonl", source, target)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])["summary"]


def repeated(folder, sources, count):
    """``count`` cases by linking the sources in turn: case names differ, files are real."""
    folder.mkdir()
    for i in range(count):
        source = sources[i % len(sources)]
        (folder / f"case{i:02d}_{source.name}").symlink_to(source)
    return folder


def labels_of(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_rows_equal_single_process_segment(client, tmp_path):
    cohort = repeated(tmp_path / "in", [ED, ES], 20)
    table = batch.run(cohort, FAST, client, tmp_path / "out", progress="none")
    assert len(table) == 20 and table["case"].is_unique and table["error"].isna().all()
    assert table["worker"].nunique() == 2, "both workers took cases"
    expected = {p: single(FAST, p, tmp_path / f"{p.name}") for p in (ED, ES)}
    for row in table.to_dict("records"):
        source = os.path.realpath(row["image"])
        info = expected[ED if source == str(ED) else ES]
        for name, count in info["voxels"].items():
            key = name.replace(" ", "_")
            assert row[f"{key}_voxels"] == count and row[f"{key}_ml"] == info["volumes_ml"][name], (row["case"], name)
        quality = info["quality"]
        assert row["quality"] == ("flagged" if quality["flag"] else "ok")
        assert (row["quality_reasons"] if quality["reasons"] else None) in ("; ".join(quality["reasons"]), None)
        assert (row["model"], row["model_version"]) == (FAST, info["version"])
        assert np.array_equal(labels_of(row["output"]), labels_of(tmp_path / os.path.basename(source)))
        assert row["seconds_total"] == pytest.approx(sum(row[f"seconds_{s}"] for s in batch.STAGES))
        assert 0 < row["peak_rss_mib"] < 4096
    import pandas

    assert pandas.read_parquet(table.attrs["summary"]["parquet"]).equals(table)
    assert table.attrs["summary"] | {"seconds": 0, "cases_per_minute": 0} == {
        "cases": 20, "ran": 20, "skipped": 0, "failed": 0, "flagged": int((table["quality"] == "flagged").sum()),
        "seconds": 0, "cases_per_minute": 0, "table": str(tmp_path / "out" / "results.csv"),
        "parquet": table.attrs["summary"]["parquet"]}


def test_killed_worker_loses_and_duplicates_nothing(client, tmp_path):
    cohort = repeated(tmp_path / "in", [ED], 20)
    before = client.run(os.getpid)
    killed = {}

    def kill_a_busy_worker():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            busy = [w for w, tasks in client.processing().items() if tasks]
            if busy and rows_in(tmp_path / "out") >= 3:
                killed["worker"], killed["tasks"] = busy[0], client.processing()[busy[0]]
                os.kill(before[busy[0]], signal.SIGKILL)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_busy_worker)
    killer.start()
    table = batch.run(cohort, FAST, client, tmp_path / "out", progress="none")
    killer.join()
    assert killed.get("tasks"), "a worker was killed while it ran a case"
    assert len(table) == 20 and sorted(table["case"]) == sorted(p.name.split(".")[0] for p in cohort.iterdir())
    assert table["error"].isna().all(), table["error"].dropna().tolist()
    with open(tmp_path / "out" / "results.csv") as f:
        assert sum(1 for _ in csv.DictReader(f)) == 20
    first = labels_of(table["output"][0])
    assert all(np.array_equal(labels_of(p), first) for p in table["output"])
    client.wait_for_workers(2, timeout=60)
    assert len(set(client.run(os.getpid).values()) - set(before.values())) == 1, "the nanny started a new worker"
    time.sleep(0.5)  # the cleanup process removes a write cut short by the kill
    assert sorted(p.name for p in (tmp_path / "out" / "labels").iterdir()) == sorted(
        os.path.basename(p) for p in table["output"])


def rows_in(out) -> int:
    """Rows the table of a running cohort holds so far."""
    table = out / "results.csv"
    return len(table.read_text().splitlines()) - 1 if table.exists() else 0


@pytest.mark.slow
def test_interrupted_run_resumed_does_only_the_missing_cases(client, tmp_path):
    """``lightseg batch`` interrupted (Ctrl-C) after a few cases, then resumed on another cluster."""
    cohort = repeated(tmp_path / "in", [ED, ES], 20)
    out = tmp_path / "out"
    # Ctrl-C as in a terminal: a suite started in the background (nohup, `&`) ignores SIGINT, and a child inherits that
    proc = subprocess.Popen([sys.executable, "-m", "LightSegLib.cli", "batch", "--model", FAST,
                             "--workers", "1", "--progress", "none", str(cohort), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    started = time.monotonic()
    deadline, sent = started + 240, None
    while time.monotonic() < deadline and proc.poll() is None:
        if rows_in(out) >= 4:
            proc.send_signal(signal.SIGINT)
            sent = (rows_in(out), round(time.monotonic() - started, 1))
            break
        time.sleep(0.05)
    got, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (f"exit {proc.returncode}; SIGINT sent at (rows, seconds) {sent}; rows now "
                                    f"{rows_in(out)}; stdout {got!r}; stderr {err!r}")
    with open(out / "results.csv") as f:
        first = list(csv.DictReader(f))
    assert 4 <= len(first) < 20, len(first)
    resumed = batch.run(cohort, FAST, client, out, progress="none")
    summary = resumed.attrs["summary"]
    assert (summary["ran"], summary["skipped"], summary["failed"]) == (20 - len(first), len(first), 0)
    assert len(resumed) == 20 and resumed["case"].is_unique
    kept = resumed.set_index("case")
    for row in first:  # not redone: the same worker and timings as the first run's
        assert (kept.loc[row["case"], "worker"], str(kept.loc[row["case"], "seconds_total"])) == (
            row["worker"], row["seconds_total"])
    # An output changed since its row was written is redone; nothing else is.
    changed = resumed["output"][3]
    sitk.WriteImage(sitk.ReadImage(changed) * 0, changed, True)
    again = batch.run(cohort, FAST, client, out, progress="none").attrs["summary"]
    assert (again["ran"], again["skipped"]) == (1, 19)
    assert labels_of(changed).any()


def test_damaged_cases_get_their_error_rows(client, tmp_path):
    """Through ``lightseg batch --scheduler`` (an existing cluster): a truncated NIfTI and a file that is not an
    image among CTs (the bundled sample, and a real abdomen where the shared data has it)."""
    cohort = tmp_path / "in"
    cohort.mkdir()
    abdomen = SHARED_DATA / "totalseg_s0009" / "ct.nii.gz"
    sources = [CT] + ([abdomen] if abdomen.is_file() else [CT])
    for i, source in enumerate(sources):
        (cohort / f"ct{i}.nii.gz").symlink_to(source)
    data = CT.read_bytes()
    (cohort / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    (cohort / "text.nii.gz").write_text("not an image\n")
    proc = lightseg("batch", "--model", "liver-ct", "--scheduler", client.scheduler.address, "--progress", "none",
                    cohort, tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    assert f"{len(sources) + 2} cases: {len(sources) + 2} run, 0 already in the table, 2 failed" in proc.stdout
    with open(tmp_path / "out" / "results.csv") as f:
        rows = {row["case"]: row for row in csv.DictReader(f)}
    assert set(rows) == {f"ct{i}" for i in range(len(sources))} | {"truncated", "text"}
    assert "truncated" in rows["truncated"]["error"] or "short" in rows["truncated"]["error"], rows["truncated"]
    assert "not a readable image" in rows["text"]["error"], rows["text"]
    assert "lightseg: failed: truncated:" in proc.stderr and "lightseg: failed: text:" in proc.stderr
    for i in range(len(sources)):
        assert not rows[f"ct{i}"]["error"] and int(rows[f"ct{i}"]["liver_voxels"]) > 1000
        assert not os.path.exists(rows["text"]["output"])
    assert client.run(os.getpid), "the cluster outlives the command that used it"


def test_cardiac_cohort_gives_the_ef_of_cardiac_function(client, tmp_path, capsys):
    subjects = [("p002", ED, ES)]
    if (SHARED_DATA / "acdc").is_dir():
        subjects += [(p, *(shared(f"acdc/imagesTr/{p}_frame0{i}.nii.gz") for i in (1, 2)))
                     for p in ("patient028", "patient085", "patient019")]
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("case,ed,es\n" + "".join(f"{c},{ed},{es}\n" for c, ed, es in subjects))
    table = batch.run(manifest, FAST, client, tmp_path / "out", progress="none")
    assert list(table["case"]) == [c for c, _, _ in subjects] and table["error"].isna().all()
    singles = tmp_path / "single"
    proc = lightseg("segment", "--model", FAST, *(p for _, ed, es in subjects for p in (ed, es)), singles)
    assert proc.returncode == 0, proc.stderr
    for case, ed, es in subjects:
        assert main(["cardiac-function", "--json", "--ed", str(singles / ed.name), "--es", str(singles / es.name)]) == 0
        expected = json.loads(capsys.readouterr().out)
        row = table.set_index("case").loc[case]
        for key in batch.CARDIAC_FIELDS:
            assert row[key] == expected[key], (case, key)
        assert all(note in row["notes"] for note in expected["notes"])
        assert 10 < row["lv_ef_percent"] < 90


def test_a_manifest_names_what_is_missing(tmp_path, capsys):
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("case,image\na,x.nii.gz\nb,\n")
    assert main(["batch", "--model", FAST, str(manifest), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == "lightseg: error: case 2 of the cohort has no image (columns: case,image)\n"
    manifest.write_text("case,image\na,x.nii.gz\na,y.nii.gz\n")
    assert main(["batch", "--model", FAST, str(manifest), str(tmp_path / "out")]) == 2
    assert "case id 'a' appears twice" in capsys.readouterr().err
