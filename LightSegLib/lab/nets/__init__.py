"""Segmentation/classification networks as plain torch modules described by a spec dict.

``build({"name": "unet", "in_channels": 1, "num_classes": 4, "widths": [16, 32, 64, 128, 256]})``: the spec
is what a checkpoint and a registry entry store (``architecture``), so a model can always be rebuilt.
"""
from __future__ import annotations

import importlib

# name -> (module, class); imported on demand so one net's import cost (MONAI for resnet) is paid only if used.
NETS = {
    "unet": ("unet", "UNet"),
    "lfunet": ("lfunet", "LFUNet"),
    "dpunet": ("dpunet", "DPUNet"),
    "tinyunet": ("tinyunet", "TinyUNet"),
    "resnet50": ("resnet", "ResNet50Classifier"),
}


def build(spec: dict):
    from ...errors import LightSegError

    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in NETS:
        raise LightSegError(f"unknown architecture {name!r} (known: {', '.join(NETS)})")
    module, cls = NETS[name]
    net_cls = getattr(importlib.import_module(f"{__name__}.{module}"), cls)
    try:
        return net_cls(**spec)
    except TypeError as err:
        raise LightSegError(f"bad architecture spec for {name!r}: {err}") from None
