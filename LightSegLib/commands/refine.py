"""``lightseg refine``: one object of an image made or corrected from clicks, with a click model
(LightSegLib.interactive), written as a labelmap on the image's grid."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import LightSegError

CLICKS_HELP = ("a JSON file of clicks: a Slicer markups file (.mrk.json: points in mm, LPS or RAS as the file "
               "says; the first point list adds, a second list removes, and a point whose label starts with '-' "
               "removes), or a list of {\"ijk\": [i, j, k]} / {\"lps\": [x, y, z]} / {\"ras\": [x, y, z]} objects, "
               "each with \"positive\": false to remove")


def register(sub) -> None:
    parser = sub.add_parser(
        "refine", help="make or correct one object from clicks (a click model)",
        description="IMAGE is a volume file (NIfTI, NRRD, MHA) or a DICOM folder, read as 'lightseg segment' reads "
                    "it; OUTPUT a labelmap file (.nii.gz, .nii, .nrrd, .mha) on the image's exact grid. Clicks are "
                    "voxel indices i,j,k (SimpleITK order: column, row, slice) on axial slices; each one changes only "
                    "the part of the object connected to it. With --from, only that label's region is refined and "
                    "every other label is written back unchanged.")
    parser.add_argument("image", metavar="IMAGE")
    parser.add_argument("output", metavar="OUTPUT")
    parser.add_argument("--click", dest="clicks", action="append", default=[], type=click_arg(True),
                        metavar="I,J,K", help="a click that adds to the object (repeat; applied in order)")
    parser.add_argument("--remove", dest="clicks", action="append", type=click_arg(False), metavar="I,J,K",
                        help="a click that removes a false part (repeat; in order with the --click ones)")
    parser.add_argument("--clicks", dest="clicks_file", metavar="FILE", help=CLICKS_HELP + "; applied first")
    parser.add_argument("--from", dest="start", metavar="MASK",
                        help="a labelmap on the image's grid to start from (an automatic result)")
    parser.add_argument("--label", type=int, default=None, metavar="N",
                        help="the label to refine in --from (needed when it holds several), or the value of a new "
                             "object (default 1)")
    parser.add_argument("--propagate", action="store_true",
                        help="then extend the object slice by slice beyond the clicked slices, up and down, until "
                             "it ends or the model's confidence falls")
    parser.add_argument("--model", default=None,
                        help="a click model's id (see 'lightseg models', default click-refine) or an .onnx file")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all, at most 8)")
    parser.add_argument("--frame", type=int, default=None, metavar="N", help="time frame of a 4D (cine) image")
    parser.add_argument("--allow-gaps", action="store_true",
                        help="accept a DICOM series with missing or unevenly spaced slices (with a note)")
    parser.add_argument("--hu-offset", type=float, default=None, metavar="HU",
                        help="add this to the image's values first and read it as CT: -1024 for a CT stored as "
                             "HU + 1024 without its rescale (noted when an image looks like one)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT (an earlier labelmap)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)


def click_arg(positive: bool):
    def parse(text: str) -> tuple[bool, dict]:
        try:
            ijk = [int(v) for v in text.split(",")]
        except ValueError:
            ijk = []
        if len(ijk) != 3:
            raise ValueError(text)
        return positive, {"ijk": ijk}

    parse.__name__ = "I,J,K voxel index"  # argparse names the type in its error: "invalid I,J,K voxel index value"
    return parse


def read_clicks(path: Path) -> list[tuple[bool, dict]]:
    """(positive, point) in file order; a point is {"ijk": ...}, {"lps": ...} or {"ras": ...}."""
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LightSegError(f"cannot read clicks from {path}: {err}") from None
    if isinstance(document, dict) and "markups" in document:
        clicks = []
        for n, markup in enumerate(document["markups"][:2]):
            system = markup.get("coordinateSystem", "LPS").lower()
            if system not in ("lps", "ras"):
                raise LightSegError(f"{path}: coordinate system {system!r} (LPS or RAS expected)")
            for point in markup.get("controlPoints", []):
                positive = n == 0 and not str(point.get("label", "")).startswith("-")
                clicks.append((positive, {system: point["position"]}))
        return clicks
    if not isinstance(document, list) or not all(isinstance(c, dict) for c in document):
        raise LightSegError(f"{path}: expected a Slicer markups file or a list of click objects ({CLICKS_HELP})")
    clicks = []
    for c in document:
        kind = [k for k in ("ijk", "lps", "ras") if k in c]
        if len(kind) != 1:
            raise LightSegError(f"{path}: each click needs one of ijk, lps, ras: {json.dumps(c)}")
        clicks.append((bool(c.get("positive", True)), {kind[0]: c[kind[0]]}))
    return clicks


def to_index(image: sitk.Image, point: dict) -> tuple[int, int, int]:
    """A click's voxel index (i, j, k); a point in mm goes to its nearest voxel and must lie inside the image."""
    (kind, value), = point.items()
    if len(value) != 3:
        raise LightSegError(f"a click needs 3 coordinates: {kind} {value}")
    if kind == "ijk":
        index = tuple(int(v) for v in value)
    else:
        x, y, z = (float(v) for v in value)
        lps = (-x, -y, z) if kind == "ras" else (x, y, z)
        index = tuple(int(round(v)) for v in image.TransformPhysicalPointToContinuousIndex(lps))
    if not all(0 <= v < n for v, n in zip(index, image.GetSize())):
        raise LightSegError(f"click {kind.upper()} {list(value)} lies outside the image (voxel {list(index)}, "
                            f"size {list(image.GetSize())})")
    return index


def read_start(path: Path, image: sitk.Image, label: int | None) -> tuple[np.ndarray, int]:
    """The labelmap to start from, [z, y, x], on the image's grid, and the label to refine."""
    from ..grid import same_grid
    from ..io import read_image

    mask = read_image(path)
    if not same_grid(mask, image):
        raise LightSegError(f"{path.name} is not on the image's grid (size {list(mask.GetSize())} vs "
                            f"{list(image.GetSize())}, or spacing, origin or direction differ)")
    array = sitk.GetArrayFromImage(mask)
    if not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() > 255:
        raise LightSegError(f"{path.name} is not a labelmap (integer labels 0-255 expected)")
    present = [int(v) for v in np.unique(array) if v]
    if label is None:
        if len(present) != 1:
            raise LightSegError(f"{path.name} holds labels {present or 'none'}: name the one to refine with --label N")
        label = present[0]
    elif label not in present:
        raise LightSegError(f"{path.name} has no label {label} (it holds {present or 'none'})")
    return array.astype(np.uint8), label


def model_path(model: str | None) -> tuple[Path, object]:
    """The ONNX file of a click model (an id, default the shipped one, or a file) and its card (None for a file).
    A registered model must encode crops as this runtime does."""
    from .. import interactive as ia

    if model and model.endswith(".onnx"):
        path = Path(model)
        if not path.is_file():
            raise LightSegError(f"model file not found: {path}")
        return path, None
    card, path = ia.registered_model(model or ia.MODEL_ID)
    return path, card


def propagate_from(session, clicked_slices) -> list[dict]:
    """Extend the session's object up from each clicked slice to the next clicked one (or the object's end), and
    down from the lowest: the slices a user clicked keep their clicks' answer. Returns each propagation's start,
    direction, slices added and where and why it stopped."""
    zs = sorted(set(clicked_slices))
    runs = [(z, 1, limit) for z, limit in zip(zs, [b - a - 1 for a, b in zip(zs, zs[1:])] + [None])]
    done = []
    for z, direction, limit in runs + ([(zs[0], -1, None)] if zs else []):
        if session.mask[z].any() and limit != 0:
            session.propagate(direction, start=z, max_slices=limit)
            done.append({"from": z, "direction": "up" if direction > 0 else "down", **session.propagated})
    return done


def refine(image: sitk.Image, clicks: list[tuple[bool, tuple]], model: Path, threads: int, label: int,
           labels: np.ndarray | None = None, propagate: bool = False,
           modality: str | None = None, notes: list | None = None) -> tuple[np.ndarray, int, list[dict]]:
    """The labelmap [z, y, x] uint8 with object ``label`` made or refined (from its region in ``labels``; every
    other label kept as it is and never painted over), how many slices propagation added to the object, and what
    each propagation did (``propagate_from``). ``notes`` gets what the session says about the image."""
    from ..interactive import InteractiveSession

    session = InteractiveSession(image, model=model, threads=threads, modality=modality)
    if session.note and notes is not None:
        notes.append(f"{session.note}; if it is one, give --hu-offset -1024")
    if labels is None:
        labels = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    region = labels == label
    session.lock((labels != 0) & ~region)  # the object never paints over another label
    if region.any():
        session.start_from(region)
    for positive, index in clicks:
        session.click(index, positive=positive)
    before = int(session.mask.reshape(len(session.mask), -1).any(1).sum())
    runs = propagate_from(session, [index[2] for _, index in clicks]) if propagate else []
    obj = session.mask.astype(bool)
    out = labels.copy()
    out[region & ~obj] = 0
    out[obj] = label
    return out, int(session.mask.reshape(len(session.mask), -1).any(1).sum()) - before, runs


def run(args) -> int:
    from .. import domain
    from ..inference import default_threads
    from ..io import (LABELMAP_SUFFIXES, check_intensities, check_output, read_image, refuse_input_as_output,
                      suffix_of, write_labelmap)

    t = time.perf_counter()
    source, target = Path(args.image), Path(args.output)
    if args.threads is not None and args.threads < 1:
        raise LightSegError("--threads must be at least 1")
    if args.label is not None and not 1 <= args.label <= 255:
        raise LightSegError("--label must be 1-255")
    if suffix_of(target) not in LABELMAP_SUFFIXES:
        raise LightSegError(f"unsupported output type '{target.name}': use {', '.join(LABELMAP_SUFFIXES)}")
    inputs = [source] + ([Path(args.start)] if args.start else [])
    for path in inputs:
        if not path.exists():
            raise LightSegError(f"input not found: {path}")
    refuse_input_as_output(target, inputs)
    check_output(target, args.overwrite)
    points = (read_clicks(Path(args.clicks_file)) if args.clicks_file else []) + args.clicks
    if not points:
        raise LightSegError("no clicks: give --click I,J,K (or --remove, --clicks FILE)")
    path, card = model_path(args.model)
    threads = args.threads or default_threads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    notes: list[str] = []
    image = read_image(source, frame=args.frame, notes=notes, allow_gaps=args.allow_gaps)
    check_intensities(image, source.name)
    if args.hu_offset:
        image = domain.apply_hu_offset(image, args.hu_offset)
    clicks = [(positive, to_index(image, point)) for positive, point in points]
    start, label = read_start(Path(args.start), image, args.label) if args.start else (None, args.label or 1)
    labels, propagated, runs = refine(image, clicks, path, threads, label, start, args.propagate,
                                      "CT" if args.hu_offset else None, notes)
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(image)
    write_labelmap(out, target, overwrite=args.overwrite, notes=notes)
    voxels = int((labels == label).sum())
    positive = sum(p for p, _ in clicks)
    info = {"input": str(source), "output": str(target), "label": label, "voxels": voxels,
            "volume_ml": round(voxels * float(np.prod(image.GetSpacing())) / 1000.0, 3), "clicks": len(clicks),
            "positive": positive, "negative": len(clicks) - positive, "propagated_slices": propagated,
            "propagation": runs, "seconds": round(time.perf_counter() - t, 3), "model": card.id if card else str(path),
            "version": card.version if card else None, "status": card.status if card else None, "notes": notes}
    from ..cli import say

    for note in notes:
        say("note", f"{source.name}: {note}")
    if args.json:
        print(json.dumps(info))
        return 0
    ends = [r for r in runs if r["direction"] == "down"] + [r for r in runs if r["direction"] == "up"][-1:]
    spread = (f", propagated to {propagated} more slices ("
              + "; ".join(f"{r['direction']}: stopped {r['stopped']}" for r in ends) + ")") if args.propagate else ""
    preview = " | preview model: read its card before trusting the result" if info["status"] == "preview" else ""
    print(f"{source.name} -> {target} | label {label}: {voxels:,} voxels, {info['volume_ml']:.2f} mL | "
          f"{len(clicks)} clicks ({positive} adding, {len(clicks) - positive} removing){spread} | "
          f"{info['seconds']:.2f} s{preview}")
    return 0
