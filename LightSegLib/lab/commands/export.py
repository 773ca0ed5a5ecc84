"""``lightseg export CHECKPOINT --out FILE.onnx [--register ID --card CARD.json]``."""
from __future__ import annotations

from ...registry import SAMPLES_DIR

DEFAULT_PARITY = SAMPLES_DIR / "acdc_patient002_ED.nii.gz"


def register(sub) -> None:
    parser = sub.add_parser("export", help="export a training checkpoint to ONNX (and register it)")
    parser.add_argument("checkpoint", help="best.pt (or last.pt) from lightseg train")
    parser.add_argument("--out", required=True, help="ONNX file to write")
    parser.add_argument("--register", metavar="ID", help="add/replace this registry entry (ONNX must be in the models folder)")
    parser.add_argument("--card", help="JSON card template: title, task, modality, status, labels, postprocessing, licence, ...")
    parser.add_argument("--status", choices=["stable", "preview", "reference"], help="override the card's status")
    parser.add_argument("--parity-image", help="real volume for the torch/ONNX parity check "
                        "(default: the bundled ACDC sample)")
    parser.add_argument("--macs-hw", type=int, nargs=2, default=[256, 256], metavar=("H", "W"),
                        help="slice size at which MACs are counted (default 256 256)")
    parser.add_argument("--torch-file", action="store_true", help="also save the weights as ID.pt (torch backend)")
    parser.add_argument("--reproduce", help="command that reproduces the weights, stored in the entry")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ...errors import LightSegError
    from ..export import export_checkpoint

    parity_image = args.parity_image or (DEFAULT_PARITY if DEFAULT_PARITY.is_file() else None)
    if parity_image is None:
        raise LightSegError("no parity image: pass --parity-image VOLUME")
    export_checkpoint(args.checkpoint, args.out, card_path=args.card, register_id=args.register,
                      parity_image=parity_image, macs_hw=tuple(args.macs_hw), with_torch=args.torch_file,
                      status=args.status, reproduce=args.reproduce)
    return 0
