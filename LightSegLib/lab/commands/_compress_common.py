"""What the compression commands (prune, distill, fold, quantize) share: their config, data, device and the
``best.pt`` layout they write."""
from __future__ import annotations

from pathlib import Path


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


def load_data(cfg: dict, val: bool = True, limit: int | None = None):
    """(train cases, validation cases), read as ``lightseg train`` reads them."""
    from ..data.reader import load_split

    dcfg = cfg["data"]
    train_cases = load_split(cfg, dcfg["train_split"], limit=limit)
    return train_cases, load_split(cfg, dcfg["val_split"]) if val else []


def save_checkpoint(path, net, spec: dict, prep: dict, metrics: dict | None = None, **extra) -> None:
    """The ``best.pt`` layout of ``lightseg train`` ({"model", "architecture", "prep", "metrics"}): exportable."""
    import torch

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": net.state_dict(), "architecture": spec, "prep": prep, "metrics": metrics or {}, **extra},
               str(path))


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
