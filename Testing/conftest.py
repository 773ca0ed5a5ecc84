import os
import sys
from pathlib import Path

import pytest

TESTING = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTING))

REPO = TESTING.parent
SHARED_DATA = Path(os.environ.get("LIGHTSEG_SHARED_DATA", REPO.parent / "shared" / "data"))


# Local copies of the inference dependencies as wheels (`make env` fills it): fresh environments install from it.
WHEELHOUSE = Path(os.environ.get("LIGHTSEG_WHEELHOUSE", REPO / ".venv" / "wheelhouse"))
# Nothing of this tree or of the test's environment may leak into a fresh environment.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LIGHTSEG_MODELS_DIR")}


def pip(python: Path, *args: str) -> None:
    """``pip`` of a fresh environment, offline, from the wheelhouse."""
    import subprocess

    if not any(WHEELHOUSE.glob("onnxruntime-*.whl")):
        pytest.skip(f"needs the inference dependencies as wheels in {WHEELHOUSE} (`make env` downloads them)")
    subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", "--quiet", *args,
                    "--no-index", "--find-links", str(WHEELHOUSE)], check=True, env=CLEAN_ENV,
                   cwd=WHEELHOUSE)  # `python -m` puts the working directory on sys.path: not the source tree


def inference_python(folder: Path) -> Path:
    """A fresh virtual environment with only the plain install's dependencies (pyproject's ``dependencies``), not
    LightSegLib itself: its python."""
    import tomllib
    import venv

    venv.EnvBuilder(with_pip=True).create(folder)
    python = folder / "bin" / "python"
    pip(python, "install", *tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    return python


def extension_files() -> list[str]:
    """The files the extension installs beside the module, as CMake itself evaluates LightSegLibFiles.cmake."""
    import shutil
    import subprocess

    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("needs cmake (Debian package cmake; `make env` installs it) to evaluate the extension's file list")
    run = subprocess.run([cmake, f"-DLIGHTSEG_SOURCE_ROOT={REPO}", "-P", str(REPO / "Testing" / "extension_files.cmake")],
                         capture_output=True, text=True, check=True)
    return [line.removeprefix("-- ").strip() for line in (run.stdout + run.stderr).splitlines() if line.startswith("-- ")]


def hu_and_offset_files(image, folder: Path) -> dict[str, Path]:
    """``image`` (a HU CT) written as a scanner stores it (int16, "hu") and without its rescale (uint16 HU + 1024,
    "uint16"), each with the image's geometry."""
    import numpy as np
    import SimpleITK as sitk

    hu = np.clip(np.round(sitk.GetArrayFromImage(image)), -1024, None).astype(np.int16)
    files = {}
    for name, array in (("hu", hu), ("uint16", (hu.astype(np.int32) + 1024).astype(np.uint16))):
        coded = sitk.GetImageFromArray(array)
        coded.CopyInformation(image)
        files[name] = folder / f"{name}.nii.gz"
        sitk.WriteImage(coded, str(files[name]))
    return files


def shared(relative: str) -> Path:
    """A file of ../shared/data, or skip with the reason (a user's clone does not have it)."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"needs the shared real data ({path} is absent)")
    return path


@pytest.fixture
def quantiser(tmp_path, monkeypatch):
    """A registry folder with the analytic test model, active for this test."""
    from model_fixtures import make_model_folder

    folder = make_model_folder(tmp_path / "models")
    monkeypatch.setenv("LIGHTSEG_MODELS_DIR", str(folder))
    return folder


def segment_path_modules(tmp_path: Path) -> dict[str, str | None]:
    """Every module loaded by ``lightseg segment`` as the Slicer logic runs it (its own process, the bundled MRI
    sample, the shipped cardiac model, JSON progress), by name, with its file."""
    import json
    import subprocess

    sample = REPO / "Resources" / "Samples" / "acdc_patient002_ED.nii.gz"
    args = ["segment", "--model", "cardiac-acdc", "--progress", "jsonl", "--threads", "1", str(sample),
            str(tmp_path / "labels.nrrd")]
    code = ("import json, sys; from LightSegLib.cli import main; code = main(sys.argv[1:]); "
            "print(json.dumps({n: getattr(m, '__file__', None) for n, m in sys.modules.items()})); sys.exit(code)")
    run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.splitlines()[-1])
