"""The package installed the ordinary way: a wheel built from this tree, installed (not editable) into a fresh
virtual environment with no extras, must carry the registry and the models and segment a bundled sample."""
from __future__ import annotations

import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import CLEAN_ENV, REPO, WHEELHOUSE, pip

SAMPLE = REPO / "Resources" / "Samples" / "acdc_patient002_ED.nii.gz"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if not any(WHEELHOUSE.glob("onnxruntime-*.whl")):
        pytest.skip(f"needs the inference dependencies as wheels in {WHEELHOUSE} (`make env` downloads them)")
    dist = tmp_path_factory.mktemp("dist")
    # From a copy of the tree: an in-tree build leaves build/ behind, whose stale modules a later wheel would carry.
    source = tmp_path_factory.mktemp("source") / "LightSeg"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "dist", "runs", "demo-output",
                                                                "__pycache__", "*.egg-info", ".pytest_cache"))
    pip(Path(sys.executable), "wheel", "--no-deps", "--wheel-dir", str(dist), str(source))
    (found,) = dist.glob("lightseglib-*.whl")
    return found


def test_wheel_carries_registry_models_and_samples(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    from LightSegLib.registry import list_models

    shipped = {f"LightSegLib/Resources/Models/{c.entry[k]}" for c in list_models(include_interactive=True)
               for k in ("file", "int8_file", "appearance_file") if k in c.entry}
    expected = shipped | {"LightSegLib/Resources/Models/models.json", "LightSegLib/Resources/Models/models.schema.json",
                          f"LightSegLib/Resources/Samples/{SAMPLE.name}"}
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    sources = {p.relative_to(REPO).as_posix() for p in (REPO / "LightSegLib").rglob("*.py")}
    modules = {n for n in names if n.endswith(".py")}
    assert modules == sources, f"missing: {sorted(sources - modules)}, not in the tree: {sorted(modules - sources)}"
    assert not any(n.endswith(".pt") for n in names), "torch checkpoints do not belong in the wheel"


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh environment with the wheel installed the plain way (no extras): its folder."""
    env_dir = tmp_path_factory.mktemp("installed") / "env"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    pip(env_dir / "bin" / "python", "install", str(wheel))
    return env_dir


@pytest.mark.slow
def test_wheel_segments_in_a_fresh_environment(installed, tmp_path):
    env_dir = installed
    python = env_dir / "bin" / "python"
    out = tmp_path / "ed.nii.gz"
    # Run from outside the source tree, so only the installed package can be imported.
    run = subprocess.run([str(env_dir / "bin" / "lightseg"), "segment", str(SAMPLE), str(out), "--model",
                          "cardiac-acdc", "--threads", "2"], cwd=tmp_path, env=CLEAN_ENV, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    where = subprocess.run([str(python), "-c", "import LightSegLib.registry as r, importlib.util as u; "
                            "print(r.models_dir()); print(u.find_spec('torch') is not None)"],
                           cwd=tmp_path, env=CLEAN_ENV, capture_output=True, text=True, check=True).stdout.split()
    assert where == [str(env_dir / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
                         / "LightSegLib" / "Resources" / "Models"), "False"]
    from LightSegLib import get_model, read_image, segment_image

    expected = segment_image(read_image(SAMPLE), get_model("cardiac-acdc"), threads=2).labelmap
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), sitk.GetArrayFromImage(expected))


@pytest.mark.slow
def test_a_plain_install_says_which_commands_need_the_training_install(installed, tmp_path):
    """The wheel carries the workshop's code but not torch: `--help` marks its commands, and running one refuses in
    one line before anything is written."""
    lightseg = str(installed / "bin" / "lightseg")
    shown = subprocess.run([lightseg, "--help"], cwd=tmp_path, env=CLEAN_ENV, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    lines = {line.split()[0]: line for line in shown.stdout.split("COMMAND", 1)[1].splitlines()
             if line.startswith("    ") and line.split()}
    assert "[needs" not in lines["segment"] and "[needs" not in lines["models"], shown.stdout
    for name in ("train", "prune", "publish", "export", "distill", "quantize", "bench"):
        assert "[needs pip install 'lightseglib[train]']" in lines[name], shown.stdout
    out = tmp_path / "run"
    train = subprocess.run([lightseg, "train", "--config", "x.toml", "--out", str(out)], cwd=tmp_path, env=CLEAN_ENV,
                           capture_output=True, text=True)
    assert train.returncode == 2, train.stderr
    assert train.stderr.splitlines() == [
        "lightseg: error: 'lightseg train' needs the training install (torch, monai, torch_pruning, onnx missing): "
        "pip install 'lightseglib[train]'"], train.stderr
    assert not out.exists()


@pytest.mark.slow
def test_a_plain_install_says_a_cohort_needs_the_cluster_install(installed, tmp_path):
    """`lightseg batch` without Dask and pandas: one line naming what is missing and the extra, nothing written."""
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    shutil.copy(SAMPLE, cohort / SAMPLE.name)
    out = tmp_path / "results"
    run = subprocess.run([str(installed / "bin" / "lightseg"), "batch", str(cohort), str(out), "--model", "cardiac-acdc"],
                         cwd=tmp_path, env=CLEAN_ENV, capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    (line,) = run.stderr.splitlines()
    assert line.startswith("lightseg: error: cohorts need the cluster install (dask, distributed, pandas missing)")
    assert "pip install 'lightseglib[cluster]'" in line, line
    assert not out.exists()
