"""The chest X-ray classifier's validation protocol (LightSegLib/lab/cxr_protocol.py), in three steps:

    python benchmarks/cxr_protocol.py fix --out runs/cxr_protocol/fixed.json       # validation + shifted check:
                                                                                   # threshold rule, temperature
    python benchmarks/cxr_protocol.py score --out runs/cxr_protocol/new.json       # new patients' probabilities
    python benchmarks/cxr_protocol.py evaluate runs/cxr_protocol/fixed.json runs/cxr_protocol/new.json \
        --out Resources/Models/pneumonia-cxr.eval.json --card                      # every figure, and the card
    python benchmarks/cxr_protocol.py card                                         # the card alone, re-rendered

``fix`` writes the operating point and the temperature before ``evaluate`` computes any new patient's figure;
``score`` stores probabilities only, so it may run beside ``fix``. The sets are drawn by the split the registered
model (``--model``) was trained with. ``--card`` (or ``card``) re-renders the model's card from its registry entry
and ``ID.eval.json`` beside it, without retraining; its protocol section is filled only from a record of the
registered weights.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from LightSegLib.lab import cxr_protocol  # noqa: E402
from LightSegLib.lab.train.cxr_report import write_card  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "chest_xray" / "train"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["fix", "score", "evaluate", "card"])
    parser.add_argument("inputs", nargs="*", type=Path, help="evaluate: the JSONs that fix and score wrote")
    parser.add_argument("--model", default="pneumonia-cxr")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, help="fix, score, evaluate: the JSON to write")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--card", action="store_true", help="evaluate: then re-render the model's card")
    args = parser.parse_args()
    if args.step != "card" and args.out is None:
        parser.error(f"{args.step} needs --out")
    start = time.perf_counter()
    if args.step == "fix":
        fixed = cxr_protocol.fix(args.data, args.out, args.threads, args.model)
        print(json.dumps({k: fixed[k] for k in ("card_threshold", "rule_threshold", "temperature")}))
    elif args.step == "score":
        cxr_protocol.score_new_patients(args.data, args.out, args.threads, args.model)
    elif args.step == "evaluate":
        if len(args.inputs) != 2:
            parser.error("evaluate needs the JSONs that fix and score wrote")
        print(cxr_protocol.evaluate(*args.inputs, args.out)["decision"])
    if args.step == "card" or args.card:
        print(f"card {write_card(args.model)}")
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
