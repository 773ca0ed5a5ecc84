"""``lightseg classify --model pneumonia-cxr [--json] [--threshold T] [--heatmap DIR] INPUT...``.

Each input is handled on its own: a bad one gets one line on stderr and the others still run; the exit code is 2
if any input failed. An input that does not look like the model's training images is still classified, and its
line says ``low confidence: check carefully`` with the reason (``quality`` in ``--json``).
"""
from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    parser = sub.add_parser("classify", help="classify 2D radiographs (PNG, JPEG, DICOM, or folders of them)")
    parser.add_argument("paths", nargs="+", metavar="INPUT")
    parser.add_argument("--model", required=True, help="a classification model id (see 'lightseg models')")
    parser.add_argument("--threshold", type=float, default=None,
                        help="probability of the positive class above which it is given (default: the card's)")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list of {path, label, probability, quality}")
    parser.add_argument("--heatmap", metavar="DIR", help="write each input's activation map overlay as DIR/NAME.png")
    parser.add_argument("--overwrite", action="store_true", help="replace existing heatmap files")
    parser.add_argument("--threads", type=int, default=2)
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..classify import Classifier, heatmap_png, radiograph_inputs, read_radiograph
    from ..cli import say
    from ..errors import LightSegError
    from ..registry import get_model

    classifier = Classifier(get_model(args.model), threads=args.threads)
    heat_dir = Path(args.heatmap) if args.heatmap else None
    if heat_dir is not None:
        heat_dir.mkdir(parents=True, exist_ok=True)
    results, failed = [], 0

    def fail(err) -> None:
        nonlocal failed
        failed += 1
        say("error", str(err))

    for arg in args.paths:
        try:
            paths = radiograph_inputs([arg])
        except LightSegError as err:  # an empty folder: the other inputs still run
            fail(err)
            continue
        for path in paths:
            try:
                array = read_radiograph(path)
                result = classifier(array, args.threshold, path=path)
                if heat_dir is not None:
                    target = heat_dir / f"{path.stem}.png"
                    if target.exists() and not args.overwrite:
                        raise LightSegError(f"{target} exists (use --overwrite to replace it)")
                    heatmap_png(array, result.cam, target)
            except (LightSegError, OSError) as err:
                fail(err)
                continue
            results.append(result.as_dict())
            if not args.json:
                quality = result.quality_text()
                print(f"{path}: {result.label} (p = {result.probability:.3f}, threshold {result.threshold:.3f})"
                      + (f"; {quality}" if quality else ""))
    if args.json:
        print(json.dumps(results, indent=1))
    if not results and not failed:
        say("error", "no radiograph found in the inputs")
        return 2
    return 2 if failed else 0
