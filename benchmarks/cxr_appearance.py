"""Build and check the chest X-ray classifier's appearance model (LightSegLib/lab/cxr_appearance.py): fitted on
the old subset's training part, limits chosen on its validation part, checked on new patients, shifted new
patients and images that are not paediatric AP chest X-rays.

    python benchmarks/cxr_appearance.py --record runs/cxr_appearance.json

writes Resources/Models/pneumonia-cxr.appearance.onnx (its limits in the file's metadata) and the record.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from LightSegLib.lab import cxr_appearance  # noqa: E402
from LightSegLib.lab.publish.writer import attach_file  # noqa: E402
from LightSegLib.registry import get_model  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", type=Path, required=True, help="JSON of the limits and every check's flag rate")
    parser.add_argument("--shared", type=Path, default=SHARED)
    args = parser.parse_args()
    card = get_model("pneumonia-cxr")
    start = time.perf_counter()
    record = cxr_appearance.build(args.shared / "chest_xray" / "train", args.shared, REPO, int(card.input["size"]),
                                  card.folder / f"{card.id}.appearance.onnx", args.record)
    attach_file(card.id, "appearance", card.folder / f"{card.id}.appearance.onnx", card.folder)
    for name, r in record["check"].items():
        print(f"{name}: {r['flagged']} of {r['images']} flagged")
    print(json.dumps(record["limits"]), f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
