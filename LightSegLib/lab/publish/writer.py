"""The one writer of the model registry: ``models.json``, validated whole before every write and written
atomically, and its ``models.json.sha256`` stamp (LightSegLib.registry.read_registry skips the schema check for
the text it names)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ...errors import LightSegError
from ...registry import get_model, models_dir, read_registry, sha256_of, sha256_key, validate, validated_stamp


def register_model(entry: dict, folder: Path | None = None) -> None:
    """Add or replace a registry entry (by id)."""
    folder = Path(folder) if folder else models_dir()
    document = read_registry(folder) if (folder / "models.json").is_file() else {"version": 1, "models": []}
    models = [m for m in document["models"] if m["id"] != entry["id"]]
    document["models"] = sorted([*models, entry], key=lambda m: m["id"])
    _write(document, folder)


def update_model(model_id: str, folder: Path | None = None, **fields) -> dict:
    """Set some fields of a registered entry (an int8 file, a status, a speed record); returns the new entry."""
    entry = {**get_model(model_id, folder).entry, **fields}
    register_model(entry, folder)
    return entry


def attach_file(model_id: str, role: str, path, folder: Path | None = None) -> dict:
    """Record a file the model needs beside its weights (``role`` "appearance": the classifier's appearance model;
    "int8") as ``ROLE_file`` and its ``ROLE_sha256``, so the runtime verifies it where it loads it."""
    folder = Path(folder) if folder else models_dir()
    path = Path(path)
    if path.resolve().parent != folder.resolve():
        raise LightSegError(f"{path} is not in the models folder {folder}: the registry names files beside it")
    key = f"{role}_file"
    return update_model(model_id, folder, **{key: path.name, sha256_key(key): sha256_of(path)})


def _write(document: dict, folder: Path) -> None:
    validate(document)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".models.", suffix=".json")
    os.chmod(tmp, 0o644)  # mkstemp makes it private; the registry is read by every user of an install
    text = json.dumps(document, indent=1) + "\n"
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, folder / "models.json")
    (folder / "models.json.sha256").write_text(validated_stamp(text) + "\n")
