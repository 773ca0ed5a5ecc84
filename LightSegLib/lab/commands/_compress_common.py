"""Helpers shared by the compression commands (prune, distill, quantize): config/data and device resolution."""
from __future__ import annotations


def resolve_config(config_path, data, threads, spec=None) -> dict:
    """The training config (defaults when no file), with --data / --threads applied and the model section set
    to ``spec`` so num_classes etc. follow the checkpoint."""
    from ..train.config import DEFAULTS, load_config
    import copy

    cfg = load_config(config_path) if config_path else copy.deepcopy(DEFAULTS)
    if data:
        cfg["data"]["dataset"] = data
    if threads:
        cfg["train"]["threads"] = threads
    if spec is not None:
        cfg["model"] = dict(spec)
    return cfg


def set_threads(n: int | None) -> None:
    import torch

    torch.set_num_threads(int(n) if n else 2)


def example_input(spec: dict):
    """A zero batch of a size every net of this depth accepts (tracing and shape checks only)."""
    import torch

    side = 2 ** (len(spec.get("widths") or [0] * 5) + 1)
    return torch.zeros(1, int(spec.get("in_channels", 1)), side, side)


def apply_prep(cfg: dict, prep: dict | None, source: str) -> dict:
    """Make the data section preprocess as ``prep`` (a checkpoint's): a pruned net or a teacher must see the
    pixels it was trained on. Says so when a --config disagreed."""
    if not prep:
        return cfg
    from ...preprocess import Preprocessing

    data = cfg["data"]
    wanted = Preprocessing.from_prep(prep).to_prep()
    differs = [k for k, v in wanted.items() if data.get(k) != v]
    if differs:
        import sys

        print(f"lightseg: note: using the preprocessing of {source} ({', '.join(differs)} differ from the config)",
              file=sys.stderr)
    data.update(wanted)
    return cfg


def add_device_argument(parser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where training runs (auto: a CUDA GPU when there is one)")


def resolve_device(name: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
