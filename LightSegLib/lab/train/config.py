"""Training configuration: a TOML file merged over defaults, so a config only states what it changes.

A classifier's config (``task = "classification"``) has no defaults to merge over: its file is the whole recipe of
its stages (``CLASSIFIER``), as the shipped model was made."""
from __future__ import annotations

import copy
import tomllib
from pathlib import Path

from ...errors import LightSegError

DEFAULTS = {
    "model": {"name": "unet", "in_channels": 1, "num_classes": 2, "widths": [16, 32, 64, 128, 256]},
    "data": {
        "dataset": "",
        "train_split": "training",
        "val_split": "validation",
        "patch": [160, 160],
        "foreground_prob": 0.33,
        "crop_margin": 1.25,
        "orientation": "native",
        "context_slices": 0,
        "inplane": {"mode": "spacing", "spacing": [1.5, 1.5]},
        "normalization": {"type": "percentile", "lower": 0.5, "upper": 99.5},
        "num_workers": 1,
    },
    "augment": {"affine_prob": 0.5, "rotate_deg": 30.0, "scale": 0.15, "elastic_prob": 0.1, "noise_prob": 0.15,
                "noise_std": 0.03, "blur_prob": 0.1, "intensity_prob": 0.3, "intensity_shift": 0.1, "gamma_prob": 0.3,
                "histogram_shift_prob": 0.0, "flip_prob": 0.0, "lowres_prob": 0.0, "lowres_zoom": [0.4, 0.9]},
    "train": {
        "seed": 0,
        "batch_size": 16,
        "epochs": 100,
        "iters_per_epoch": 100,
        "lr": 3e-3,
        "weight_decay": 1e-4,
        "schedule": "poly",       # poly | cosine
        "poly_power": 0.9,
        "warmup_iters": 50,
        "deep_supervision_weights": [1.0, 0.5, 0.25, 0.125],
        "time_budget_min": 0.0,   # 0 = no budget; otherwise the LR schedule runs on elapsed time too
        "val_every": 1,           # epochs
        "threads": 2,
        "amp": True,              # used on CUDA only
        "cpu_bf16": False,        # CPU: bfloat16 autocast + channels_last (about 2x on CPUs with AVX512-BF16/AMX)
        "init_onnx": "",          # start from an exported model's weights (same architecture) instead of random
    },
    "labels": {"names": []},      # for logs and plots only
}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if key in out and isinstance(out[key], dict) and isinstance(value, dict) and key not in ("inplane", "normalization", "labels"):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_toml(path: Path, chain: tuple = ()) -> dict:
    """The file's TOML on top of the file it ``extends`` (a path relative to it): a variant config (a wider
    teacher, a longer budget) states only what differs, so the shared data and schedule live in one place."""
    if not path.is_file():
        raise LightSegError(f"config file not found: {path}")
    if path.resolve() in chain:
        raise LightSegError(f"config {path}: 'extends' comes back to a file it started from")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise LightSegError(f"config {path} is not valid TOML: {err}") from None
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise LightSegError(f"config {path}: 'extends' must be a file name, not {base!r}")
    return _merge(read_toml(path.parent / base, chain + (path.resolve(),)), raw)


CLASSIFIER = {
    "model": ("name", "in_channels", "num_classes"),
    "data": ("dataset", "size", "val_fraction"),
    "train": ("seed", "epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "bn_l1", "threads"),
    "compress": ("ratios", "epochs", "lr", "warmup_epochs", "bn_l1", "kd_weight", "kd_temperature"),
    "publish": ("card", "status", "plots"),
}
#: Keys a classifier's recipe may leave out, at the values the shipped recipe (configs/models/pneumonia-cxr.toml,
#: which has none of them) ran with: ``held_out``, the share of the children the shipped model never saw kept out
#: for the final scoring (``lab.data.cxr.split_with_held_out``); ``label_smoothing`` of the cross-entropy;
#: ``balanced``, each epoch's images drawn with equal weight per class (with replacement); ``appearance``, each
#: training image through a random chain of the protocol's transformation families (``lab.data.cxr_augment``).
CLASSIFIER_OPTIONAL = {"data": {"held_out": 0.0},
                       "train": {"label_smoothing": 0.0, "balanced": False, "appearance": False}}


def _classifier(path: Path, raw: dict) -> dict:
    """Every section and key of ``CLASSIFIER``, none else but ``CLASSIFIER_OPTIONAL``'s (filled in where left
    out): a typo would otherwise train another recipe."""
    sections = set(raw) - {"task"}
    wrong = sorted(sections ^ set(CLASSIFIER))
    if wrong:
        raise LightSegError(f"config {path}: a classifier's config has the sections {', '.join(CLASSIFIER)} "
                            f"(not: {', '.join(wrong)})")
    for section, keys in CLASSIFIER.items():
        optional = CLASSIFIER_OPTIONAL.get(section, {})
        wrong = sorted((set(raw[section]) - set(optional)) ^ set(keys))
        if wrong:
            may = f", and may have {', '.join(optional)}" if optional else ""
            raise LightSegError(f"config {path}: [{section}] has the keys {', '.join(keys)}{may} "
                                f"(not: {', '.join(wrong)})")
        raw[section] = optional | raw[section]
    return raw


def load_config(path) -> dict:
    path = Path(path)
    raw = read_toml(path)
    task = raw.get("task", "segmentation")
    if task == "classification":
        return _classifier(path, raw)
    if task != "segmentation":
        raise LightSegError(f"config {path}: task must be segmentation or classification, not {task!r}")
    raw.pop("task", None)
    unknown = set(raw) - set(DEFAULTS)
    if unknown:
        raise LightSegError(f"config {path}: unknown section(s) {', '.join(sorted(unknown))}")
    return _merge(DEFAULTS, raw)


def to_toml(cfg: dict) -> str:
    """Minimal TOML writer (tomllib reads only) for the resolved config saved beside checkpoints."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        raise TypeError(type(v))

    lines = []
    for section, body in cfg.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in body.items()]
        lines.append("")
    return "\n".join(lines)
