"""The torch backend of the engine: PyTorch eager on a registered model's checkpoint, for checking ONNX parity and
for researchers' checkpoints. Offered to the runtime as the ``torch`` entry point of ``lightseglib.backends``."""
from __future__ import annotations

import numpy as np

from ..errors import LightSegError
from ..registry import ModelCard


class TorchRunner:
    """PyTorch eager, for checking ONNX parity and for researchers' checkpoints (needs the training extras)."""

    def __init__(self, card: ModelCard, threads: int):
        try:
            import torch
        except ImportError:
            raise LightSegError("the torch backend needs PyTorch: pip install 'lightseglib[train]'") from None
        from .nets import build

        if "torch_file" not in card.entry or "architecture" not in card.entry:
            raise LightSegError(f"model '{card.id}' has no torch weights; use the onnx backend")
        torch.set_num_threads(threads)
        self.torch = torch
        self.net = build(card.architecture)
        state = torch.load(card.verified_path("torch_file"), map_location="cpu", weights_only=True)
        self.net.load_state_dict(state.get("model", state))
        self.net.eval()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.net(self.torch.from_numpy(batch)).numpy()
