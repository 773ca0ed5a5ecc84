"""``lightseg segment``: one volume, several, or a folder of them, to labelmaps on the inputs' grids."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import SimpleITK as sitk

from ..cli import cli_wording, say
from ..errors import LightSegError
from ..stages import INFER

FORMATS = ("nii.gz", "nrrd", "mha", "seg.nrrd", "dcm")


def register(sub) -> None:
    parser = sub.add_parser(
        "segment", help="segment volumes with a registered model",
        description="INPUT is a volume file (NIfTI, NRRD, MHA) or a DICOM folder; OUTPUT a labelmap file "
                    "(.nii.gz, .nrrd, .mha), a Slicer .seg.nrrd on the input's grid, or for a DICOM input a DICOM "
                    "SEG (.dcm) referencing its images. With several inputs, or a "
                    "folder of volumes, OUTPUT is a folder (created if missing). A folder holding DICOM files is "
                    "one series, whatever else is in it.")
    parser.add_argument("paths", nargs="+", metavar="INPUT... OUTPUT")
    parser.add_argument("--model", required=True, help="model id (see 'lightseg models')")
    parser.add_argument("--backend", choices=("onnx", "torch"), default="onnx")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all, at most 8)")
    parser.add_argument("--int8", action="store_true", help="use the model's int8 version (faster, if it has one)")
    parser.add_argument("--frame", type=frame_arg, default=None, metavar="N|all",
                        help="time frame of a 4D (cine) image; 'all' writes one output per frame, "
                             "named OUTPUT_frameNN")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--skip-existing", action="store_true",
                        help="leave inputs whose output exists alone (resume an interrupted batch)")
    parser.add_argument("--allow-gaps", action="store_true",
                        help="accept a DICOM series with missing or unevenly spaced slices (with a note)")
    parser.add_argument("--hu-offset", type=float, default=None, metavar="HU",
                        help="add this to a CT's values first: -1024 for a CT stored as HU + 1024 without its "
                             "rescale (refused without it)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes for several inputs")
    parser.add_argument("--format", choices=FORMATS, default="nii.gz", help="output type in folder mode")
    parser.add_argument("--progress", choices=("auto", "bar", "jsonl", "none"), default="auto",
                        help="'jsonl': one JSON object per line on stdout, for programs (the Slicer module)")
    parser.set_defaults(func=run)


def frame_arg(text: str):
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a frame number or 'all'") from None


def frame_count(path: Path) -> int:
    """Time frames of a 4D file, from its header alone (1 for a 3D file or a DICOM folder)."""
    if path.is_dir():
        return 1
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return 1  # reading the image itself will say what is wrong
    return reader.GetSize()[3] if reader.GetDimension() == 4 else 1


def with_frames(pairs: list[tuple[Path, Path]], frame, outputs: "Outputs") -> list[tuple[Path, object, Path]]:
    """``--frame all``: one job per time frame, each writing ``<output stem>_frameNN<suffix>``."""
    from ..io import suffix_of

    if frame != "all":
        return [(source, frame, target) for source, target in pairs]
    jobs = []
    for source, target in pairs:
        count = frame_count(source)
        if count == 1:
            jobs.append((source, None, target))
            continue
        suffix = suffix_of(target)
        stem = target.name[: -len(suffix)]
        for f in range(count):
            framed = outputs.claim(source, target.parent / f"{stem}_frame{f:02d}{suffix}")
            if framed is not None:
                jobs.append((source, f, framed))
    return jobs


class Outputs:
    """Checks each output before any work starts; with ``--skip-existing`` an existing one is set aside. An output
    that is one of the inputs (the same path, a link to it, a file inside an input DICOM folder) is refused
    whatever the flags: nothing of the user's is ever overwritten."""

    def __init__(self, overwrite: bool, skip_existing: bool):
        self.overwrite, self.skip_existing, self.skipped = overwrite, skip_existing, []
        self.inputs: list[Path] = []

    def claim(self, source: Path, target: Path) -> Path | None:
        from ..io import check_output, refuse_input_as_output

        refuse_input_as_output(target, self.inputs)
        if target.name.lower().endswith(".dcm"):
            refuse_dicom_seg_without_series(source)
        if self.skip_existing and not self.overwrite and target.exists():
            self.skipped.append((source, target))
            return None
        return check_output(target, self.overwrite)


def refuse_dicom_seg_without_series(source: Path) -> None:
    """A DICOM SEG references the images it was made from: only a DICOM series has them, and only with the extra."""
    from ..dicom_seg import require
    from ..validate import dicom_files

    if not (source.is_dir() and dicom_files(source)):
        raise LightSegError(f"{source.name} is not a DICOM series, so a DICOM SEG (.dcm) has no images to reference: "
                            "write .nii.gz, .nrrd, .mha or .seg.nrrd")
    require()


def is_folder_path(path: Path, text: str) -> bool:
    """An OUTPUT that is clearly meant as a folder: it exists as one, ends with a separator, or has no suffix."""
    from ..io import suffix_of

    return path.is_dir() or text.endswith(("/", os.sep)) or not suffix_of(path)


def plan(paths: list[str], fmt: str, outputs: Outputs) -> list[tuple[Path, Path]]:
    """Pair every input with its output, checking all outputs before any work starts."""
    from ..io import VOLUME_SUFFIXES, is_volume_file, suffix_of
    from ..validate import dicom_files

    if len(paths) < 2:
        raise LightSegError("give an INPUT and an OUTPUT")
    *inputs, output = (Path(p) for p in paths)
    for path in inputs:
        if not path.exists():
            raise LightSegError(f"input not found: {path}")
    outputs.inputs = list(inputs)
    volumes_in_folder = (len(inputs) == 1 and inputs[0].is_dir() and not dicom_files(inputs[0])
                         and sorted(p for p in inputs[0].iterdir() if is_volume_file(p)))
    if len(inputs) == 1 and not volumes_in_folder and not output.is_dir() and not paths[-1].endswith(("/", os.sep)):
        target = outputs.claim(inputs[0], output)
        return [(inputs[0], target)] if target is not None else []
    sources = volumes_in_folder or inputs
    if not output.is_dir():
        if not is_folder_path(output, paths[-1]) or output.exists():
            raise LightSegError(f"with several inputs OUTPUT must be a folder: {output}")
        try:
            output.mkdir(parents=True)
        except OSError as err:
            raise LightSegError(f"cannot create output folder {output}: {err.strerror or err}") from None
    pairs = []
    for source in sources:
        stem = source.name[: -len(suffix_of(source))] if suffix_of(source) in VOLUME_SUFFIXES else source.name
        pairs.append((source, output / f"{stem}.{fmt}"))
    names = [o for _, o in pairs]
    if len(set(names)) != len(names):
        raise LightSegError("two inputs would write the same output name; rename them or segment them apart")
    claimed = [(source, outputs.claim(source, target)) for source, target in pairs]
    return [(source, target) for source, target in claimed if target is not None]


class Reporter:
    """Progress as a terminal bar, JSON lines for programs, or nothing."""

    def __init__(self, mode: str, name: str):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "none"
        self.mode, self.bar, self.last = mode, None, 0.0
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=100, desc=name, unit="%", leave=False, file=sys.stderr,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")

    def __call__(self, fraction: float, stage: str) -> None:
        if self.mode == "jsonl":
            now = time.monotonic()
            if fraction >= 1.0 or stage != INFER or now - self.last > 0.2:
                self.last = now
                print(json.dumps({"stage": stage, "progress": round(fraction, 4)}), flush=True)
        elif self.bar is not None:
            self.bar.set_description_str(stage)
            self.bar.update(round(100 * fraction) - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def segment_file(card, source: Path, frame, target: Path, args) -> dict:
    from ..cases import segment_case

    if target.name.lower().endswith(".dcm"):  # the series' headers load while the volume is read and segmented
        from ..dicom_seg import prefetch
        from ..io import series_files

        prefetch(source, series_files)
    reporter = Reporter(args.progress, source.name)
    try:
        return segment_case(card, source, target, frame=frame, backend=args.backend, threads=args.threads,
                            int8=args.int8, overwrite=args.overwrite, allow_gaps=args.allow_gaps,
                            hu_offset=args.hu_offset, progress=reporter)
    finally:
        reporter.close()


def summary_line(info: dict) -> str:
    stages = " ".join(f"{k} {v:.2f}s" for k, v in info["seconds"].items())
    voxels = ", ".join(f"{name} {n:,}" for name, n in info["voxels"].items())
    from ..quality import summary

    preview = " | preview model: read its card before trusting the result" if info.get("status") == "preview" else ""
    return (f"{Path(info['input']).name} -> {info['output']} | {info['total_seconds']:.2f} s ({stages}) | "
            f"voxels: {voxels} | {summary(info['quality'])}{preview}")


def _job(card, source: Path, frame, target: Path, args) -> dict:
    try:
        return segment_file(card, source, frame, target, args)
    except LightSegError as err:
        return {"input": str(source), "frame": frame, "error": cli_wording(str(err))}


def input_name(info: dict) -> str:
    frame = info.get("frame")
    return Path(info["input"]).name + (f" frame {frame}" if frame is not None else "")


def run(args) -> int:
    from ..registry import get_segmenter

    card = get_segmenter(args.model)
    if args.int8 and not card.has_int8():
        raise LightSegError(f"model '{card.id}' has no int8 version: run it without --int8")
    card.verified_path("int8_file" if args.int8 else "file")
    if args.threads is not None and args.threads < 1:
        raise LightSegError("--threads must be at least 1")
    if args.jobs < 1:
        raise LightSegError("--jobs must be at least 1")
    outputs = Outputs(args.overwrite, args.skip_existing)
    pairs = with_frames(plan(args.paths, args.format, outputs), args.frame, outputs)
    for source, target in outputs.skipped:
        say("note", f"{source.name}: skipped, {target} exists (--skip-existing)", args)
    if len(pairs) > 1 and args.jobs > 1:
        if args.threads is None:
            from ..inference import default_threads

            args.threads = max(1, default_threads() // args.jobs)
        args.progress = "none" if args.progress != "jsonl" else "jsonl"
        pool = ProcessPoolExecutor(max_workers=args.jobs)
        results = pool.map(_job, *zip(*[(card, s, f, t, args) for s, f, t in pairs]))
    else:
        pool = None
        results = (_job(card, s, f, t, args) for s, f, t in pairs)
    failed = []
    try:
        for info in results:  # each line as its input finishes, not all at the end
            name = input_name(info)
            if "error" in info:
                failed.append(name)
                said = info["error"] if Path(info["input"]).name in info["error"] else f"{info['input']}: {info['error']}"
                say("error", said, args)
                continue
            for note in info["notes"]:
                say("note", f"{name}: {note}", args)
            if args.progress == "jsonl":
                print(json.dumps({"done": True, "output": info["output"], "summary": info}), flush=True)
            else:
                print(summary_line(info), flush=True)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if failed and len(pairs) > 1:
        if args.progress == "jsonl":
            say("error", f"{len(failed)} of {len(pairs)} inputs failed: {', '.join(failed)}", args)
        else:
            print(f"lightseg: {len(failed)} of {len(pairs)} inputs failed: {', '.join(failed)}", file=sys.stderr)
    return 2 if failed else 0
