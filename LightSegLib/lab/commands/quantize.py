"""``lightseg quantize MODEL.onnx --calib DATASET_DIR --out MODEL.int8.onnx``: static int8 (QDQ, per-channel).

The preprocessing used for calibration must be the model's: from a registry card (--model ID, or found by file
name in the models folder), a checkpoint (--checkpoint best.pt) or a training config (--config). Example::

    lightseg quantize Resources/Models/cardiac-acdc.onnx --calib ../shared/data/acdc \\
        --out Resources/Models/cardiac-acdc.int8.onnx --register cardiac-acdc
"""
from __future__ import annotations

import json
from pathlib import Path

from ...errors import LightSegError
from ...preprocess import Preprocessing
from ...registry import get_model, list_models, sha256_of
from ..publish.writer import update_model


def register(sub) -> None:
    p = sub.add_parser("quantize", help="int8 static quantization of an ONNX model, calibrated on real slices")
    p.add_argument("model", help="fp32 ONNX file")
    p.add_argument("--calib", required=True, help="dataset folder (MSD layout) whose training images calibrate")
    p.add_argument("--out", required=True, help="int8 ONNX file to write")
    p.add_argument("--model-id", help="registry id whose card gives the preprocessing")
    p.add_argument("--checkpoint", help="training checkpoint whose 'prep' gives the preprocessing")
    p.add_argument("--config", help="training config whose data section gives the preprocessing")
    p.add_argument("--split", default="training", help="dataset split to calibrate on (default training)")
    p.add_argument("--volumes", type=int, default=20, help="calibration volumes (spread over the split)")
    p.add_argument("--slices", type=int, default=4, help="slices per volume (evenly spaced)")
    p.add_argument("--method", choices=("minmax", "entropy", "percentile"), default="minmax")
    p.add_argument("--per-tensor", action="store_true", help="per-tensor weights (default per-channel)")
    p.add_argument("--register", metavar="ID", help="add int8_file/int8_sha256 to this registry entry")
    p.set_defaults(func=run)


def card_prep(card) -> dict:
    return Preprocessing.from_card(card).to_prep()


def resolve_prep(args) -> dict:
    if args.model_id:
        return card_prep(get_model(args.model_id))
    if args.checkpoint:
        from ..export import load_checkpoint

        _, ckpt = load_checkpoint(args.checkpoint)
        if not ckpt.get("prep"):
            raise LightSegError(f"{args.checkpoint} holds no preprocessing ('prep')")
        return ckpt["prep"]
    if args.config:
        from ..data.reader import prep_spec
        from ..train.config import load_config

        return prep_spec(load_config(args.config))
    name = Path(args.model).name
    try:
        for card in list_models():
            if card.entry.get("file") == name:
                return card_prep(card)
    except LightSegError:
        pass
    raise LightSegError("say which preprocessing calibrates the model: --model-id, --checkpoint or --config")


def run(args) -> int:
    from ..compress.quantize import agreement, calibration_images, preprocessed_slices, quantize_model

    prep = resolve_prep(args)
    out = quantize_model(args.model, args.out, prep, args.calib, split=args.split, max_volumes=args.volumes,
                         slices_per_volume=args.slices, method=args.method, per_channel=not args.per_tensor)
    # A check on slices of another split when there is one (else the calibration split): int8 vs fp32.
    try:
        images = calibration_images(args.calib, "validation", 2)
    except LightSegError:
        images = calibration_images(args.calib, args.split, 2)
    # Volumes differ in size on the model grid: compare per volume, pool by pixel count.
    checks = [agreement(args.model, out, preprocessed_slices(p, prep, 4)) for p in images[:2]]
    total = sum(c["pixels"] for c in checks)
    report = {"int8": str(out), "bytes": Path(out).stat().st_size, "fp32_bytes": Path(args.model).stat().st_size,
              "argmax_agreement": sum(c["argmax_agreement"] * c["pixels"] for c in checks) / total,
              "max_abs_logit_diff": max(c["max_abs_logit_diff"] for c in checks), "check_volumes": len(checks)}
    if args.register:
        card = get_model(args.register)
        if Path(out).resolve().parent != card.folder.resolve():
            raise LightSegError(f"--register needs the int8 file inside the models folder {card.folder}")
        update_model(card.id, card.folder, int8_file=Path(out).name, int8_sha256=sha256_of(Path(out)))
        report["registered"] = args.register
    print(json.dumps(report))
    return 0
