"""The chest X-ray classifier's validation protocol (LightSegLib/lab/cxr_protocol.py), in its two steps:

    python benchmarks/cxr_protocol.py fix --out runs/cxr_protocol/fixed.json        # validation + shifted check:
                                                                                    # threshold rule, temperature
    python benchmarks/cxr_protocol.py evaluate runs/cxr_protocol/fixed.json \
        --out Resources/Models/pneumonia-cxr.eval.json                              # new patients, all figures

``fix`` writes the operating point and the temperature before ``evaluate`` scores a single new patient.
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

DATA = REPO.parent / "shared" / "data" / "chest_xray" / "train"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["fix", "evaluate"])
    parser.add_argument("fixed", nargs="?", type=Path, help="evaluate: the JSON that fix wrote")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    start = time.perf_counter()
    if args.step == "fix":
        fixed = cxr_protocol.fix(args.data, args.out, args.threads)
        print(json.dumps({k: fixed[k] for k in ("card_threshold", "rule_threshold", "temperature")}))
    else:
        if args.fixed is None:
            parser.error("evaluate needs the JSON that fix wrote")
        result = cxr_protocol.evaluate(args.data, args.fixed, args.out, args.threads)
        print(result["decision"])
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
