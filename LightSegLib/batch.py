"""Cohorts on a Dask cluster, with a results table that is the record of what finished.

A case is one Dask task that moves by path: the worker reads its input and writes its output on a file system the
workers share, and only the row of the table (a small dict) comes back, never an image. Each worker process loads
the model once (``cases.runner_for``). The table (``results.csv``; ``results.parquet`` too with pyarrow) is
rewritten when a run starts and a row is appended as each case finishes, so an interrupted run leaves its record: a
rerun skips the cases whose row is complete and whose outputs exist with the checksums the row names, and does the
rest. A case that raises anything but a LightSegError is retried (``retries``), and a case whose worker dies is
rerun elsewhere by Dask; each case still gives exactly one row. Dask, distributed and pandas are the ``cluster``
extra, imported only here and only when a cohort runs.
"""
from __future__ import annotations

import csv
import importlib.util
import os
import socket
import sys
import time
import uuid
from dataclasses import fields
from pathlib import Path

from .cardiac import VALUES_BY_NAME, CardiacFunction
from .errors import LightSegError
from .io import VOLUME_SUFFIXES, suffix_of

INSTALL = "pip install 'lightseglib[cluster]'"
FORMATS = ("nii.gz", "nrrd", "mha", "seg.nrrd")
TABLE = "results.csv"
STAGES = ("read", "load", "preprocess", "infer", "resample", "postprocess", "write")
PHASES = ("ed", "es")
CARDIAC_FIELDS = tuple(f.name for f in fields(CardiacFunction) if f.name not in ("voxel_ml", "slices_with", "notes"))
#: columns that hold text (the rest are numbers)
TEXT_COLUMNS = ("case", "image", *PHASES, "output", *(f"output_{p}" for p in PHASES), "model", "model_version",
                "error", "quality", "quality_reasons", "notes", "worker", "output_sha256")


def require() -> None:
    """Refuse in one line, before any work, where the cluster extra is not installed."""
    missing = [name for name in ("dask", "distributed", "pandas") if importlib.util.find_spec(name) is None]
    if missing:
        raise LightSegError(f"cohorts need the cluster install ({', '.join(missing)} missing): {INSTALL}")


# ---------------------------------------------------------------- the cohort
def read_cases(cases) -> list[dict]:
    """The cohort as ``{"case", "image"}`` or, for cardiac function, ``{"case", "ed", "es"}`` dicts with absolute
    paths (a worker elsewhere has another working folder). ``cases``: a folder of volumes and DICOM series
    folders, a manifest CSV (columns case,image or case,ed,es; relative paths are the manifest's), or rows (dicts
    or a pandas DataFrame) with those keys."""
    base = Path.cwd()
    if isinstance(cases, (str, Path)):
        path = Path(cases)
        if path.is_dir():
            return _folder_cases(path)
        if not path.is_file():
            raise LightSegError(f"cohort not found: {path}")
        if path.suffix.lower() != ".csv":
            raise LightSegError(f"a cohort is a folder of volumes or a manifest .csv, not {path.name}")
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        base = path.parent.absolute()
    elif hasattr(cases, "to_dict"):
        rows = cases.to_dict("records")
    else:
        rows = list(cases)
    if not rows:
        raise LightSegError("the cohort has no cases")
    keys = ("case", "ed", "es") if "ed" in rows[0] else ("case", "image")
    cohort = []
    for i, row in enumerate(rows, 1):
        absent = [k for k in keys if not str(row.get(k) or "").strip()]
        if absent:
            raise LightSegError(f"case {i} of the cohort has no {', '.join(absent)} (columns: {','.join(keys)})")
        cohort.append({"case": str(row["case"]).strip(),
                       **{k: str(base / Path(str(row[k]).strip()).expanduser()) for k in keys[1:]}})
    _check_ids([c["case"] for c in cohort])
    return cohort


def _folder_cases(folder: Path) -> list[dict]:
    from .validate import dicom_files

    cohort = []
    for path in sorted(folder.absolute().iterdir()):
        if path.is_file() and suffix_of(path) in VOLUME_SUFFIXES:
            cohort.append({"case": path.name[: -len(suffix_of(path))], "image": str(path)})
        elif path.is_dir() and dicom_files(path):
            cohort.append({"case": path.name, "image": str(path)})
    if not cohort:
        raise LightSegError(f"no volumes or DICOM series in {folder}")
    _check_ids([c["case"] for c in cohort])
    return cohort


def _check_ids(ids: list[str]) -> None:
    seen = set()
    for case in ids:
        if case in seen:
            raise LightSegError(f"case id '{case}' appears twice in the cohort: ids name the outputs")
        if case in (".", "..") or "/" in case or os.sep in case:
            raise LightSegError(f"case id '{case}' cannot name a file: use letters, digits, '-', '_' or '.'")
        seen.add(case)


def outputs_of(case: dict, folder: Path, fmt: str) -> dict[str, str]:
    if "ed" in case:
        return {f"output_{p}": str(folder / f"{case['case']}_{p.upper()}.{fmt}") for p in PHASES}
    return {"output": str(folder / f"{case['case']}.{fmt}")}


def columns(card, cardiac: bool) -> list[str]:
    """The table's columns for ``card``: fixed before the first case, so rows are appended as cases finish."""
    names = [name.replace(" ", "_") for name in card.label_names().values()]
    prefixes = [f"{p}_" for p in PHASES] if cardiac else [""]
    measures = [f"{prefix}{name}_{unit}" for prefix in prefixes for name in names for unit in ("voxels", "ml")]
    inputs, outputs = ([*PHASES], [f"output_{p}" for p in PHASES]) if cardiac else (["image"], ["output"])
    return ["case", *inputs, *outputs, "model", "model_version", "error", "quality", "quality_reasons", *measures,
            *(CARDIAC_FIELDS if cardiac else ()), "notes", *(f"seconds_{s}" for s in STAGES), "seconds_total",
            "worker", "peak_rss_mib", "output_sha256"]


# ---------------------------------------------------------------- one case, on a worker
def run_case(case: dict, outputs: dict, model: str, sha256: str, settings: dict) -> dict:
    """One case on a worker: its row. A LightSegError (a damaged file, an implausible input) is the case's error
    row at once; anything else raises, so Dask retries the case."""
    from .registry import get_segmenter, sha256_of

    card = get_segmenter(model)
    if card.sha256 != sha256:
        raise LightSegError(f"the worker on {socket.gethostname()} has another '{model}' (version {card.version}) "
                            "than the client: install the same release on every worker")
    settings = {**settings, "threads": settings["threads"] or _threads_here(settings["threads_by_host"])}
    settings.pop("threads_by_host")
    row = {**case, **outputs, "model": card.id, "model_version": card.version, "worker": _worker_name()}
    try:
        row.update(_cardiac_measures(card, case, outputs, settings) if "ed" in case
                   else _measures(_segment(card, case["image"], outputs["output"], settings)))
        row["output_sha256"] = " ".join(sha256_of(Path(path)) for path in outputs.values())
    except LightSegError as err:
        row["error"] = str(err)
    row["peak_rss_mib"] = _peak_rss_mib()
    return row


def _segment(card, source: str, target: str, settings: dict) -> dict:
    from .cases import segment_case

    # The batch owns its output folder: a case redone (after a dead worker, or a row that does not vouch for its
    # file) replaces its earlier labelmap; io never replaces a file that is not one.
    return segment_case(card, Path(source), Path(target), overwrite=True, **settings)


def _measures(info: dict, prefix: str = "") -> dict:
    row = {}
    for name, count in info["voxels"].items():
        key = prefix + name.replace(" ", "_")
        row[f"{key}_voxels"], row[f"{key}_ml"] = count, info["volumes_ml"][name]
    if prefix:
        return row
    quality = info["quality"]
    row["quality"] = "flagged" if quality["flag"] else "ok" if quality["calibrated"] else "not calibrated"
    row["quality_reasons"] = "; ".join(quality["reasons"])
    row["notes"] = "; ".join(info["notes"])
    row.update({f"seconds_{stage}": info["seconds"].get(stage, 0.0) for stage in STAGES})
    row["seconds_total"] = info["total_seconds"]
    return row


def _cardiac_measures(card, case: dict, outputs: dict, settings: dict) -> dict:
    """ED and ES segmented, then cardiac function from the labelmaps as written: the files that
    ``lightseg cardiac-function`` reads."""
    from .cardiac import cardiac_function
    from .io import read_image

    infos = {p: _segment(card, case[p], outputs[f"output_{p}"], settings) for p in PHASES}
    function = cardiac_function(*(read_image(outputs[f"output_{p}"]) for p in PHASES))
    row = {key: value for p in PHASES for key, value in _measures(infos[p], f"{p}_").items()}
    flagged = [p for p in PHASES if infos[p]["quality"]["flag"]]
    calibrated = all(infos[p]["quality"]["calibrated"] for p in PHASES)
    row["quality"] = "flagged" if flagged else "ok" if calibrated else "not calibrated"
    row["quality_reasons"] = "; ".join(f"{p.upper()}: {r}" for p in PHASES for r in infos[p]["quality"]["reasons"])
    row["notes"] = "; ".join([f"{p.upper()}: {n}" for p in PHASES for n in infos[p]["notes"]] + function.notes)
    row.update({f"seconds_{stage}": sum(infos[p]["seconds"].get(stage, 0.0) for p in PHASES) for stage in STAGES})
    row["seconds_total"] = sum(infos[p]["total_seconds"] for p in PHASES)
    row.update({key: getattr(function, key) for key in CARDIAC_FIELDS})
    return row


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _cores() -> int:
    """This process's cores: its CPU affinity (a Slurm allocation) and cgroup quota (a Kubernetes pod) counted."""
    from dask.system import cpu_count

    return cpu_count()


def _threads_here(threads_by_host: dict) -> int:
    """Threads for one case on this worker: the host's cores shared among the cases its workers run at once."""
    from distributed import get_worker

    host = socket.gethostname()
    if host in threads_by_host:
        return threads_by_host[host]
    try:
        return max(1, _cores() // get_worker().state.nthreads)
    except ValueError:  # not in a Dask worker (a direct call)
        return 1


def _peak_rss_mib() -> float | None:
    """This process's peak resident memory so far: the worker's, since it is never reset."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)


# ---------------------------------------------------------------- the record
def _read_table(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {row["case"]: row for row in csv.DictReader(f) if row.get("case")}


def _complete(row: dict | None, case: dict, outputs: dict, card) -> bool:
    """Whether a row of an earlier run vouches for this case: no error, the same model and inputs, and every
    output present with the checksum the row names."""
    from .registry import sha256_of

    if row is None or None in row.values() or row.get("error"):
        return False
    if (row.get("model"), row.get("model_version")) != (card.id, str(card.version)):
        return False
    if any(row.get(key) != value for key, value in {**case, **outputs}.items()):
        return False
    sums = (row.get("output_sha256") or "").split()
    paths = [Path(p) for p in outputs.values()]
    return len(sums) == len(paths) and all(p.is_file() and sha256_of(p) == s for p, s in zip(paths, sums))


def _write_table(path: Path, cols: list[str], rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _frame(path: Path, cols: list[str]):
    import pandas as pd

    return pd.read_csv(path, dtype={c: "string" for c in cols if c in TEXT_COLUMNS})


def _write_parquet(frame, path: Path) -> bool:
    if importlib.util.find_spec("pyarrow") is None:
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return True


# ---------------------------------------------------------------- the run
def run(cases, model: str, client=None, out="lightseg-cohort", *, fmt: str = "nii.gz", workers: int | None = None,
        threads: int | None = None, retries: int = 2, backend: str = "onnx", int8: bool = False,
        allow_gaps: bool = False, hu_offset: float | None = None, progress: str = "auto"):
    """Segment a cohort (or measure cardiac function per subject) and return its table as a pandas DataFrame.

    ``client``: a ``distributed.Client`` of an existing cluster (Slurm, Kubernetes, ...); without one a local
    cluster sized to this machine runs the cases (``workers`` processes, default one per core). ``out`` gets the
    labelmaps (``labels/``) and the table (``results.csv``, ``results.parquet``). ``threads`` per case default
    to each host's cores shared among its workers' task slots. ``progress``: "bar", "none" or "auto" (a bar on a
    terminal). The summary of the run (cases, failed, flagged, skipped, seconds, cases per minute) is in the
    frame's ``attrs["summary"]``."""
    require()
    from .registry import get_segmenter

    if fmt not in FORMATS:
        raise LightSegError(f"unknown output format '{fmt}' (use {', '.join(FORMATS)})")
    for name, value in (("workers", workers), ("threads", threads)):
        if value is not None and value < 1:
            raise LightSegError(f"{name} must be at least 1")
    card = get_segmenter(model)
    card.verified_path("int8_file" if int8 else "file")
    if int8 and not card.has_int8():
        raise LightSegError(f"model '{card.id}' has no int8 version")
    cohort = read_cases(cases)
    cardiac = "ed" in cohort[0]
    if cardiac and card.label_names() != {v: k for k, v in VALUES_BY_NAME.items()}:
        raise LightSegError(f"model '{card.id}' does not segment the ventricles (1 RV, 2 myocardium, 3 LV): "
                            "cardiac function needs a cardiac model")
    out = Path(out).absolute()
    labels = out / "labels"
    try:
        labels.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LightSegError(f"cannot create output folder {labels}: {err.strerror or err}") from None
    cols = columns(card, cardiac)
    table = out / TABLE
    record = _read_table(table)
    planned = [(case, outputs_of(case, labels, fmt)) for case in cohort]
    rows = {case["case"]: record[case["case"]] for case, outputs in planned
            if _complete(record.get(case["case"]), case, outputs, card)}
    todo = [(case, outputs) for case, outputs in planned if case["case"] not in rows]
    skipped = len(rows)
    _write_table(table, cols, [rows[c["case"]] for c, _ in planned if c["case"] in rows])
    settings = {"backend": backend, "threads": threads, "int8": int8, "allow_gaps": allow_gaps,
                "hu_offset": hu_offset}
    started = time.perf_counter()
    try:
        if todo:
            _run_on_dask(todo, card, settings, client, workers, retries, progress, table, cols, rows)
    finally:
        _write_table(table, cols, [rows[c["case"]] for c, _ in planned if c["case"] in rows])
    seconds = time.perf_counter() - started
    frame = _frame(table, cols)
    parquet = _write_parquet(frame, out / "results.parquet")
    done = len(todo)
    frame.attrs["summary"] = {
        "cases": len(planned), "ran": done, "skipped": skipped, "failed": int(frame["error"].notna().sum()),
        "flagged": int((frame["quality"] == "flagged").sum()), "seconds": seconds,
        "cases_per_minute": 60.0 * done / seconds if done and seconds > 0 else None,
        "table": str(table), "parquet": str(out / "results.parquet") if parquet else None}
    return frame


def _run_on_dask(todo, card, settings, client, workers, retries, progress, table, cols, rows) -> None:
    """Submit each case by path, append each row to the table as its case finishes, with a progress bar."""
    import logging

    from distributed import Client, LocalCluster, as_completed
    from tqdm import tqdm

    own = None
    if client is None:
        n = workers or max(1, min(_cores(), len(todo)))
        own = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=logging.ERROR)
        client = Client(own)
    show = progress == "bar" or progress == "auto" and sys.stderr.isatty()
    bar = tqdm(total=len(todo), unit="case", desc="cohort", file=sys.stderr, disable=not show, dynamic_ncols=True)
    try:
        settings = {**settings, "threads_by_host": _threads_by_host(client)}
        dashboard = "dashboard" in client.scheduler_info().get("services", {})
        if dashboard and importlib.util.find_spec("bokeh") is not None:  # its pages need bokeh
            bar.write(f"lightseg: Dask dashboard: {client.dashboard_link}", file=sys.stderr)
        token = uuid.uuid4().hex[:8]
        futures = {client.submit(run_case, case, outputs, card.id, card.sha256, settings, pure=False,
                                 retries=retries, key=f"lightseg-{case['case']}-{token}"): (case, outputs)
                   for case, outputs in todo}
        failed = flagged = 0
        with open(table, "a", newline="") as f:
            writer = csv.DictWriter(f, cols, extrasaction="ignore")
            for future in as_completed(futures):
                case, outputs = futures.pop(future)
                if future.status == "finished":
                    row = future.result()
                else:  # every retry failed, or the case's workers kept dying
                    error = future.exception()
                    row = {**case, **outputs, "model": card.id, "model_version": card.version,
                           "error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"}
                writer.writerow(row)
                f.flush()
                rows[case["case"]] = row
                failed += bool(row.get("error"))
                flagged += row.get("quality") == "flagged"
                bar.set_postfix(failed=failed, flagged=flagged, refresh=False)
                bar.update()
    finally:
        bar.close()
        if own is not None:
            client.close()
            own.close()


def _threads_by_host(client) -> dict:
    """Each host's cores shared among the task slots of the workers on it (several workers on one machine must
    not each take every core)."""
    info = client.scheduler_info(n_workers=-1)["workers"]
    cores = client.run(lambda: (socket.gethostname(), _cores()))
    slots: dict = {}
    for address, (host, _) in cores.items():
        slots[host] = slots.get(host, 0) + info[address]["nthreads"]
    return {host: max(1, count // slots[host]) for host, count in dict(cores.values()).items()}
