"""``lightseg demo``: every registered model on the bundled samples, with overlays, timings and Dice."""
from __future__ import annotations

import time
from pathlib import Path

import SimpleITK as sitk

from ..registry import SAMPLES_DIR as SAMPLES

# sample -> (modality, reference labelmap, {model label value: reference label value} per task)
CASES = {
    "acdc_patient002_ED.nii.gz": ("MR", "acdc_patient002_ED_label.nii.gz", {"cardiac": {1: 1, 2: 2, 3: 3}}),
    "acdc_patient002_ES.nii.gz": ("MR", "acdc_patient002_ES_label.nii.gz", {"cardiac": {1: 1, 2: 2, 3: 3}}),
    "totalseg_example_ct_sm.nii.gz": ("CT", "totalseg_example_seg_sm.nii.gz", {"liver": {1: 5}, "pancreas": {1: 7}}),
}


def register(sub) -> None:
    parser = sub.add_parser("demo", help="segment the bundled samples with every registered model")
    parser.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    parser.add_argument("--threads", type=int, default=None)
    parser.set_defaults(func=run)


def fresh_folder(wanted: Path) -> Path:
    """The folder asked for, or when it already holds files the first free ``NAME-2``, ``NAME-3``...: a second
    demo never replaces the first one's files, and says where it wrote."""
    out, n = wanted, 1
    while out.exists() and (not out.is_dir() or any(out.iterdir())):
        n += 1
        out = wanted.with_name(f"{wanted.name}-{n}")
    if out != wanted:
        print(f"{wanted} exists: writing to {out}")
    out.mkdir(parents=True, exist_ok=True)
    return out


def run(args) -> int:
    from ..inference import make_runner, segment_image
    from ..io import read_image, write_output
    from ..metrics import dice
    from ..overlay import overlay_png
    from ..quality import summary
    from ..registry import list_models

    out = fresh_folder(Path(args.out))
    cards = [c for c in list_models() if c.task not in ("test", "classification")]
    for card in [c for c in cards if c.status == "reference" and not c.path().is_file()]:
        # The Slicer extension leaves the reference teacher's weights out (they measure compression only).
        print(f"{card.id}: a reference model whose weights this installation does not carry; skipped")
        cards.remove(card)
    for card in list_models():
        if card.task == "classification":
            print(f"{card.id}: a radiograph classifier; no radiograph is bundled (the training images' licence "
                  f"keeps them out of the repository): try 'lightseg classify --model {card.id} IMAGE'")
    if not cards:
        print("no models registered: nothing to demonstrate")
        return 0
    for card in cards:
        runner = make_runner(card, threads=args.threads)
        for sample, (modality, reference, mapping) in CASES.items():
            if modality != card.modality:
                continue
            image = read_image(SAMPLES / sample)
            t = time.perf_counter()
            result = segment_image(image, card, runner)
            seconds = time.perf_counter() - t
            stem = f"{card.id}__{sample.split('.')[0]}"
            write_output(result.labelmap, out / f"{stem}.seg.nrrd", card.labels, overwrite=True)
            overlay_png(image, result.labelmap, card.labels, out / f"{stem}.png", card.input["orientation"],
                        modality=card.modality)
            scores = ""
            if card.task in mapping:
                predicted = sitk.GetArrayViewFromImage(result.labelmap)
                truth = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLES / reference)))
                names = card.label_names()
                scores = " | Dice " + ", ".join(
                    f"{names[v]} {dice(predicted == v, truth == r):.3f}" for v, r in mapping[card.task].items())
            status = "" if card.status == "stable" else f" [{card.status}]"
            print(f"{card.id}{status} on {sample}: {seconds:.2f} s ({image.GetSize()[0]}x{image.GetSize()[1]}x"
                  f"{image.GetSize()[2]}){scores} | {summary(result.quality)} -> {out / stem}.png")
            if card.status == "preview" and card.entry.get("caveat"):
                print(f"  why: {card.caveat}")
    return 0
