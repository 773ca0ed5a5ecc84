import os
import sys
from pathlib import Path

import pytest

TESTING = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTING))

REPO = TESTING.parent
SHARED_DATA = Path(os.environ.get("LIGHTSEG_SHARED_DATA", REPO.parent / "shared" / "data"))


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
