"""Teacher -> student distillation wiring: which layers to match, hooks on both nets, the combined extra loss.

Layers are chosen by scale (same resolution in both nets), so a teacher and a student of different families
and depths pair up: encoder outputs for feature KD, the deepest encoder output for graph KD, decoder outputs at
every scale plus the bottleneck for MAVKD. Any layer can be named explicitly instead.
"""
from __future__ import annotations

import torch
from torch import nn

from ....errors import LightSegError
from .features import FeatureCapture, FeatureKD
from .gcn_spatial import GraphKD
from .logits import LogitKD
from .mavkd import MAVKD

METHODS = ("logit", "feature", "gcn", "mavkd")


def scale_outputs(model: nn.Module, part: str) -> dict[int, str]:
    """{scale index (0 = full resolution): module name} of the encoder or decoder outputs of our nets."""
    n = len(model.widths)
    names = dict(model.named_modules())
    if "nodes.0_0" in names:  # LFU-Net: encoder column j = 0; decoder = the last node of each scale
        if part == "encoder":
            return {i: f"nodes.{i}_0" for i in range(n)}
        return {i: f"nodes.{i}_{n - 1 - i}" for i in range(n - 1)}
    if part == "encoder":
        return {i: f"encoders.{i}" for i in range(n) if f"encoders.{i}" in names}
    return {n - 2 - k: f"decoders.{k}" for k in range(n - 1) if f"decoders.{k}" in names}


def default_layers(student: nn.Module, teacher: nn.Module, method: str) -> tuple[list[str], list[str]]:
    se, te = scale_outputs(student, "encoder"), scale_outputs(teacher, "encoder")
    common = sorted(set(se) & set(te))
    if method == "feature":
        pairs = [(se[i], te[i]) for i in common[1:] or common]
    elif method == "gcn":
        pairs = [(se[common[-1]], te[common[-1]])]
    elif method == "mavkd":
        sd, td = scale_outputs(student, "decoder"), scale_outputs(teacher, "decoder")
        pairs = [(sd[i], td[i]) for i in sorted(set(sd) & set(td))] + [(se[common[-1]], te[common[-1]])]
    else:
        raise LightSegError(f"no feature layers for method {method!r}")
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _channels(model: nn.Module, names: list[str], x: torch.Tensor) -> list[int]:
    with FeatureCapture(model, names) as cap, torch.no_grad():
        was = model.training
        model.eval()
        model(x)
        model.train(was)
        return [int(f.shape[1]) for f in cap.features]


class Distiller(nn.Module):
    """Holds the distillation losses (their adapters train with the student) and the hooks on both nets.

    ``methods``: {"logit": {"weight", "temperature"}, "feature": {"weight", "student_layers", "teacher_layers"},
    "gcn": {"weight", "keypoints", "neighbours", ...}, "mavkd": {"weight", ...}}. Call ``extra_loss(image,
    label, student_outputs)`` after the student's forward pass: it runs the frozen teacher under no_grad."""

    def __init__(self, teacher: nn.Module, student: nn.Module, methods: dict, example_input: torch.Tensor):
        super().__init__()
        unknown = set(methods) - set(METHODS)
        if unknown:
            raise LightSegError(f"unknown distillation method(s) {', '.join(sorted(unknown))} "
                                f"(use {', '.join(METHODS)})")
        self.teacher = [teacher.eval()]  # a list: keeps the teacher out of this module's parameters
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.methods = {k: dict(v) for k, v in methods.items()}
        self.losses = nn.ModuleDict()
        self.layers: dict[str, tuple[list[str], list[str]]] = {}
        for name, opts in self.methods.items():
            if name == "logit":
                self.losses[name] = LogitKD(float(opts.get("temperature", 2.0)))
                continue
            s_names, t_names = default_layers(student, teacher, name)
            s_names = list(opts.get("student_layers") or s_names)
            t_names = list(opts.get("teacher_layers") or t_names)
            if len(s_names) != len(t_names):
                raise LightSegError(f"{name}: {len(s_names)} student layers but {len(t_names)} teacher layers")
            sc, tc = _channels(student, s_names, example_input), _channels(teacher, t_names, example_input)
            if name == "feature":
                self.losses[name] = FeatureKD(sc, tc)
            elif name == "gcn":
                if len(sc) != 1:
                    raise LightSegError("gcn: one layer pair (a deep feature map)")
                self.losses[name] = GraphKD(sc[0], tc[0], keypoints=int(opts.get("keypoints", 64)),
                                            neighbours=int(opts.get("neighbours", 8)))
            elif name == "mavkd":
                self.losses[name] = MAVKD(sc, tc, cos_weight=float(opts.get("cos_weight", 1.0)))
            self.layers[name] = (s_names, t_names)
        s_all = sorted({n for s, _ in self.layers.values() for n in s})
        t_all = sorted({n for _, t in self.layers.values() for n in t})
        self.s_cap = FeatureCapture(student, s_all) if s_all else None
        self.t_cap = FeatureCapture(teacher, t_all) if t_all else None

    def _apply(self, fn, *args, **kwargs):
        """``.to(device)`` / ``.cpu()`` move the teacher too (it is kept out of this module's parameters)."""
        self.teacher[0]._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def extra_loss(self, image: torch.Tensor, label, outputs) -> torch.Tensor:
        with torch.no_grad():
            t_out = self.teacher[0](image)
        s_main = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
        t_main = t_out[0] if isinstance(t_out, (list, tuple)) else t_out
        total = s_main.new_zeros(())
        s_feats = dict(zip(self.s_cap.names, self.s_cap.features)) if self.s_cap else {}
        t_feats = dict(zip(self.t_cap.names, self.t_cap.features)) if self.t_cap else {}
        for name, loss in self.losses.items():
            w = float(self.methods[name].get("weight", 1.0))
            if name == "logit":
                total = total + w * loss(s_main.float(), t_main.float())
                continue
            s_names, t_names = self.layers[name]
            s = [s_feats[n].float() for n in s_names]  # float: the losses stay fp32 under CPU bf16 autocast
            t = [t_feats[n].float() for n in t_names]
            total = total + w * (loss(s[0], t[0]) if name == "gcn" else loss(s, t))
        return total

    def remove_hooks(self) -> None:
        for cap in (self.s_cap, self.t_cap):
            if cap is not None:
                cap.remove()
