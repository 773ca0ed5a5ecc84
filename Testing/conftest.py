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
