"""The model registry, read: ``Resources/Models/models.json``, validated against its JSON schema (the workshop's
publishing is its one writer).

A model card carries everything inference needs (labels, terminology, orientation, spacing, normalisation,
post-processing), so adding a model is adding a file and an entry, not code.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LightSegError

STATUSES = ("stable", "preview", "reference")
#: the task of click models: they refine one object from clicks (LightSegLib.interactive), never run on a whole image
INTERACTIVE = "interactive"


def _resources_dir() -> Path:
    """``Resources`` inside the package (a wheel), else beside it (a source checkout, the Slicer extension)."""
    package = Path(__file__).resolve().parent
    inside = package / "Resources"
    return inside if (inside / "Models" / "models.json").is_file() else package.parent / "Resources"


RESOURCES = _resources_dir()
SAMPLES_DIR = RESOURCES / "Samples"


def models_dir() -> Path:
    """``$LIGHTSEG_MODELS_DIR``, else the shipped ``Resources/Models``."""
    env = os.environ.get("LIGHTSEG_MODELS_DIR")
    return Path(env) if env else RESOURCES / "Models"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ModelCard:
    entry: dict
    folder: Path
    _verified: set = field(default_factory=set, repr=False)

    def __getattr__(self, name):  # card fields read as attributes: card.labels, card.input, ...
        try:
            return self.__dict__["entry"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def num_classes(self) -> int:
        return max(label["value"] for label in self.entry["labels"]) + 1

    @property
    def version(self) -> str:
        """The entry's version; a registry made by hand (a researcher's, the tests') may leave it out."""
        return str(self.entry.get("version", "unversioned"))

    def label_names(self) -> dict[int, str]:
        return {label["value"]: label["name"] for label in self.entry["labels"]}

    def path(self, key: str = "file") -> Path:
        return self.folder / self.entry[key]

    def has_int8(self) -> bool:
        return "int8_file" in self.entry

    def verified_path(self, key: str = "file") -> Path:
        """A file of the model (``file``, ``int8_file``, ``appearance_file``), after checking it exists and
        matches the registry's sha256 for it (``sha256``, ``int8_sha256``, ``appearance_sha256``)."""
        path = self.path(key)
        if key in self._verified:
            return path
        if not path.is_file():
            raise LightSegError(f"model file for '{self.id}' is missing: {path}")
        expected = self.entry.get(sha256_key(key))
        if expected and sha256_of(path) != expected:
            raise LightSegError(f"model file for '{self.id}' is corrupt (sha256 mismatch): {path}")
        self._verified.add(key)
        return path


def sha256_key(key: str) -> str:
    """The entry field holding the sha256 of the file named by ``key``: ``file`` -> ``sha256``, ``X_file`` ->
    ``X_sha256`` (the torch checkpoint has none: it is not shipped)."""
    return "sha256" if key == "file" else f"{key.removesuffix('_file')}_sha256"


SCHEMA = RESOURCES / "Models" / "models.schema.json"


def _schema() -> dict:
    return json.loads(SCHEMA.read_text())


def validate(document: dict) -> None:
    try:
        import jsonschema
    except ImportError:  # Slicer's bundled Python may lack it; the test suite validates every registry entry
        jsonschema = None
    if jsonschema is not None:
        # Not jsonschema.validate(): it first checks our schema against the metaschema, 50 ms of every
        # segmentation's start-up (Testing/test_engine.py checks the schema once instead).
        schema = _schema()
        err = jsonschema.exceptions.best_match(jsonschema.validators.validator_for(schema)(schema).iter_errors(document))
        if err is not None:
            where = "/".join(str(p) for p in err.absolute_path)
            raise LightSegError(f"model registry is invalid at '{where}': {err.message}")
    ids = [m["id"] for m in document["models"]]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise LightSegError(f"model registry lists these ids twice: {', '.join(sorted(dupes))}")


def validated_stamp(text: str) -> str:
    """What ``models.json.sha256`` holds once ``text`` has passed the schema: its hash and the schema's."""
    return hashlib.sha256(SCHEMA.read_bytes() + b"\0" + text.encode()).hexdigest()


def read_registry(folder: Path | None = None) -> dict:
    """The registry document, schema-checked unless ``models.json.sha256`` says this exact text already passed
    (the workshop's registry writer stamps it): importing jsonschema and validating cost 0.1-0.2 s of every
    segmentation."""
    folder = Path(folder) if folder else models_dir()
    path = folder / "models.json"
    if not path.is_file():
        raise LightSegError(f"model registry not found: {path}")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key in _READ:  # a Slicer run asks at the start, at the import and for the panel: check the file once
        return json.loads(_READ[key])  # a private copy: parsing is several times faster than a deepcopy
    text = path.read_text()
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise LightSegError(f"model registry {path} is not valid JSON: {err}") from None
    stamp = folder / "models.json.sha256"
    if not (stamp.is_file() and stamp.read_text().strip() == validated_stamp(text)):
        validate(document)
    _READ.clear()
    _READ[key] = text
    return document


_READ: dict = {}  # (path, mtime, size) -> the registry text last read and checked there


def list_models(include_reference: bool = True, folder: Path | None = None,
                include_interactive: bool = False) -> list[ModelCard]:
    """The models run on a whole image (segmenters, classifiers); click models only with ``include_interactive``,
    so a model picker, the demo or a loop over labels never meets a model without labels."""
    folder = Path(folder) if folder else models_dir()
    cards = [ModelCard(m, folder) for m in read_registry(folder)["models"]]
    return [c for c in cards if (include_reference or c.status != "reference")
            and (include_interactive or c.task != INTERACTIVE)]


def get_model(model_id: str, folder: Path | None = None) -> ModelCard:
    cards = list_models(folder=folder, include_interactive=True)
    for card in cards:
        if card.id == model_id:
            return card
    known = ", ".join(c.id for c in cards) or "none registered"
    raise LightSegError(f"unknown model id '{model_id}' (known: {known})")


def get_segmenter(model_id: str, folder: Path | None = None) -> ModelCard:
    """A segmentation model's card; a classifier's id gets the command that does run it."""
    card = get_model(model_id, folder)
    if card.task == "classification":
        raise LightSegError(f"'{model_id}' classifies 2D radiographs, it does not segment: use "
                            f"'lightseg classify --model {model_id}'")
    if card.task == INTERACTIVE:
        raise LightSegError(f"'{model_id}' refines one object from clicks, it does not segment a whole image: use "
                            f"'lightseg refine IMAGE OUTPUT --click i,j,k'")
    return card


def get_click_model(model_id: str, folder: Path | None = None) -> ModelCard:
    """A click model's card; another model's id is refused in one line."""
    card = get_model(model_id, folder)
    if card.task != INTERACTIVE:
        raise LightSegError(f"'{model_id}' is a {card.task} model, not a click model (task '{INTERACTIVE}'): see "
                            "'lightseg models'")
    return card
