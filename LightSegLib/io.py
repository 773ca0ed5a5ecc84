"""Reading volumes (NIfTI, NRRD, MHA, DICOM series) and writing labelmaps on the input's exact grid.

Every write is atomic (temporary file in the target folder, then rename) and refuses to replace an existing
file unless asked, so a crash or a cancel never leaves a half-written or clobbered output. ITK and GDCM print
their warnings straight to the process's stderr; reads and writes capture them and hand them on as notes.
"""
from __future__ import annotations

import errno
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import validate
from .errors import LightSegError, LightSegWarning
from .segments import named_segments, terminology_string

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".nhdr", ".mha", ".mhd")
LABELMAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def suffix_of(path) -> str:
    name = Path(path).name.lower()
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(path).suffix.lower()


def is_volume_file(path) -> bool:
    return Path(path).is_file() and suffix_of(path) in VOLUME_SUFFIXES


@contextmanager
def itk_notes(notes: list[str] | None, name):
    """Catch what ITK, GDCM and the image codecs (libjpeg, libpng) write to file descriptors 1 and 2 while the block
    runs and turn each warning into a note (or, when nobody collects notes, a LightSegWarning naming ``name``):
    nothing of theirs reaches the user raw, and stdout stays ours (JSON for programs)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            for fd, kept in zip((1, 2), saved):
                os.dup2(kept, fd)
                os.close(kept)
            sink.seek(0)
            text = sink.read().decode(errors="replace")
    for message in _itk_messages(text):
        if notes is None:
            warnings.warn(f"{Path(name).name}: {message}", LightSegWarning, stacklevel=3)
        else:
            notes.append(message)


def _itk_messages(text: str) -> list[str]:
    """``WARNING: In file, line N`` / ``Class (0x...): message`` blocks to their messages, one line each."""
    messages = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.startswith(("WARNING: In", "ERROR: In"))]
        if lines:
            message = re.sub(r"^\w+ \(0x[0-9a-f]+\): ", "", " ".join(lines))
            messages.append(f"reader/writer said: {re.sub(r'  +', ' ', message)[:240]}")
    return messages


def dicom_series(folder: Path) -> list[tuple[str, list[str]]]:
    """The DICOM series in a folder, largest first: ``[(series_uid, files), ...]``."""
    reader = sitk.ImageSeriesReader
    with itk_notes([], folder):
        try:
            uids = reader.GetGDCMSeriesIDs(str(folder))
        except RuntimeError:
            uids = ()
        series = [(uid, list(reader.GetGDCMSeriesFileNames(str(folder), uid))) for uid in uids]
    return sorted(series, key=lambda s: -len(s[1]))


def _header(path: str) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    return reader


def series_name(uid: str, files: list[str]) -> str:
    """A series as a person finds it in a viewer: its UID, or when that is empty its description and number."""
    if uid.strip():
        return uid
    try:
        with itk_notes([], files[0]):
            header = _header(files[0])
        said = {tag: header.GetMetaData(tag).strip() if header.HasMetaDataKey(tag) else ""
                for tag in ("0008|103e", "0020|0011")}
    except RuntimeError:
        said = {}
    description, number = said.get("0008|103e"), said.get("0020|0011")
    if not (description or number):
        return f"without a SeriesInstanceUID (first file {Path(files[0]).name})"
    return " ".join(filter(None, [f"'{description}'" if description else "", f"number {number}" if number else ""]))


def _odd_slice(files: list[str]) -> str | None:
    """After GDCM failed on a series: the file whose slice size differs from the others', named."""
    sizes = {}
    with itk_notes([], Path(files[0]).parent):
        for f in files:
            try:
                sizes[f] = tuple(_header(f).GetSize()[:2])
            except RuntimeError:
                return f"{Path(f).name} cannot be read as DICOM"
    common = max(set(sizes.values()), key=list(sizes.values()).count)
    odd = [f for f, size in sizes.items() if size != common]
    if not odd:
        return None
    w, h = sizes[odd[0]]
    more = f" (and {len(odd) - 1} more)" if len(odd) > 1 else ""
    return (f"slice {Path(odd[0]).name}{more} is {w}x{h} pixels, the other {len(files) - len(odd)} slices "
            f"{common[0]}x{common[1]}: a series' slices must share one size")


def _slice_facts(reader: sitk.ImageSeriesReader, i: int) -> dict:
    def numbers(tag):
        if not reader.HasMetaDataKey(i, tag):
            return None
        try:
            return tuple(round(float(v), 4) for v in reader.GetMetaData(i, tag).split("\\"))
        except ValueError:
            return None
    instance = numbers("0020|0013")
    return {"position": numbers("0020|0032"), "orientation": numbers("0020|0037"),
            "instance": int(instance[0]) if instance else None,
            "size": (reader.GetMetaData(i, "0028|0010") if reader.HasMetaDataKey(i, "0028|0010") else None,
                     reader.GetMetaData(i, "0028|0011") if reader.HasMetaDataKey(i, "0028|0011") else None)}


def read_dicom_folder(folder: Path, notes: list[str] | None = None, allow_gaps: bool = False) -> sitk.Image:
    notes = [] if notes is None else notes
    series = dicom_series(folder)
    if not series:
        raise LightSegError(f"no readable DICOM series in folder: {folder}")
    uid, files = series[0]
    name = series_name(uid, files)
    if len(series) > 1:
        others = ", ".join(f"{series_name(u, f)} ({len(f)} files)" for u, f in series[1:])
        notes.append(f"folder holds {len(series)} DICOM series; using the largest, {name} "
                     f"({len(files)} files); others: {others}")
    listed = {Path(f).resolve() for _, fs in series for f in fs}
    unreadable = [p.name for p in validate.dicom_files(folder) if p.resolve() not in listed]
    if unreadable and not allow_gaps:
        raise LightSegError(f"{folder}: {len(unreadable)} DICOM file(s) cannot be read ({', '.join(unreadable[:3])}): "
                            "the series would have a hole (use allow_gaps=True to read the rest)")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    itk_said: list[str] = []
    with itk_notes(itk_said, folder):
        try:
            image = reader.Execute()
        except RuntimeError as err:
            odd = _odd_slice(files)
            raise LightSegError(f"cannot read DICOM series {name} in {folder}: "
                                f"{odd or _first_line(err)}") from None
    slices = [_slice_facts(reader, i) for i in range(len(files))]
    gaps = validate.check_dicom_slices(slices, f"DICOM series in {folder.name}", allow_gaps)
    if unreadable:
        gaps.append(f"{len(unreadable)} unreadable DICOM file(s) left out as asked ({', '.join(unreadable[:3])})")
    notes.extend(gaps)
    if not gaps:  # ITK's own "non uniform sampling" warning is said better by the checks above
        notes.extend(itk_said)
    return image


def _first_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    useful = [ln for ln in lines if "Exception" not in ln and not ln.startswith("sitk::")]
    return (useful or lines or ["unknown error"])[-1][:200]


def read_image(path, frame: int | None = None, notes: list[str] | None = None, allow_gaps: bool = False) -> sitk.Image:
    """A 3D scalar image with its geometry. ``frame`` picks one time frame of a 4D image; ``notes`` collects
    things the user should hear about (e.g. which DICOM series was used). A damaged file (short NIfTI, NaN or
    Inf voxels, a DICOM series with missing, duplicated or unreadable slices) is refused; ``allow_gaps``
    accepts a DICOM series with gaps, with a note."""
    path = Path(path)
    if not path.exists():
        raise LightSegError(f"input not found: {path}")
    if path.is_dir():
        image = read_dicom_folder(path, notes, allow_gaps)
    else:
        # The NIfTI check inflates the file a second time: it runs beside ITK's read (both release the GIL), and
        # what it finds wins over ITK's own complaint, since it says why.
        nifti = suffix_of(path) in (".nii", ".nii.gz")
        with ThreadPoolExecutor(1) as pool:
            checked = pool.submit(validate.check_nifti, path) if nifti else None
            try:
                with itk_notes(notes, path):
                    image = sitk.ReadImage(str(path))
            except RuntimeError:
                image = None
            if checked is not None:
                checked.result()
        if image is None:
            short = validate.nrrd_shortfall(path) if suffix_of(path) in (".nrrd", ".nhdr") else None
            raise LightSegError(f"{path}: {short}" if short else f"not a readable image: {path}")
    image = as_3d_scalar(image, path, frame)
    validate.check_geometry(image.GetSpacing(), image.GetDirection(), path.name)
    if not path.is_dir() and suffix_of(path) in (".nii", ".nii.gz"):
        validate.check_nifti_geometry(path, (image.GetSpacing(), image.GetOrigin(), image.GetDirection()))
    check_finite(image, path.name)
    return image


def as_3d_scalar(image: sitk.Image, name, frame: int | None = None) -> sitk.Image:
    dim = image.GetDimension()
    if dim == 4:
        frames = image.GetSize()[3]
        if frame is None:
            raise LightSegError(f"{name} is 4D with {frames} time frames: pick one with frame=N (0-{frames - 1})")
        if not 0 <= frame < frames:
            raise LightSegError(f"frame={frame} is out of range: {name} has frames 0-{frames - 1}")
        size = list(image.GetSize())
        size[3] = 0
        image = sitk.Extract(image, size, [0, 0, 0, frame], sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX)
    elif frame not in (None, 0):
        raise LightSegError(f"frame={frame} given but {name} is a 3D volume, not a time series")
    elif dim != 3:
        raise LightSegError(f"{name} is {dim}D: a 3D volume is needed")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise LightSegError(f"{name} has {image.GetNumberOfComponentsPerPixel()} components per voxel "
                            "(colour or vector image): a scalar volume is needed")
    return image


def check_finite(image: sitk.Image, name) -> None:
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        bad = int(np.count_nonzero(~np.isfinite(sitk.GetArrayViewFromImage(image))))
        if bad:
            raise LightSegError(f"{name} has {bad:,} NaN or infinite voxels")


def check_intensities(image: sitk.Image, name) -> None:
    """Refuse volumes a model cannot mean anything on: non-finite, empty, constant, or a labelmap."""
    if min(image.GetSize()) < 1:
        raise LightSegError(f"{name} is empty")
    check_finite(image, name)
    array = sitk.GetArrayViewFromImage(image)  # numpy's SIMD min/max: 4-5x ITK's filter on a 512x512x300 CT
    low, high = float(array.min()), float(array.max())
    if low == high:
        raise LightSegError(f"{name} is constant (every voxel is {low:g}): nothing to segment")
    values = looks_like_labelmap(image) if low == 0 and high <= 255 else None
    if values is not None:
        shown = ", ".join(map(str, values[:6])) + (f", ... ({len(values)} values)" if len(values) > 6 else "")
        raise LightSegError(f"{name} looks like a labelmap (only the values {shown}), not an image: give the "
                            "scan itself")


def looks_like_labelmap(image: sitk.Image) -> list[int] | None:
    """The values of an integer image holding at most 128 distinct values in 0-255, mostly 0 (what a segmentation
    looks like and no scan does: even an 8-bit scan uses nearly all 256), else None."""
    if image.GetPixelID() not in (sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16,
                                  sitk.sitkUInt32, sitk.sitkInt32, sitk.sitkUInt64, sitk.sitkInt64):
        return None
    array = sitk.GetArrayViewFromImage(image)
    sample = array[::2, ::2, ::2]
    values = np.unique(sample)
    if len(values) > 128 or values[0] != 0 or values[-1] > 255 or np.count_nonzero(sample) > sample.size / 2:
        return None
    values = np.unique(array)
    return [int(v) for v in values] if len(values) <= 128 and values[0] == 0 and values[-1] <= 255 else None


# ---------------------------------------------------------------- writing
def check_output(path, overwrite: bool) -> Path:
    path = Path(path)
    try:
        if not path.parent.is_dir():
            raise LightSegError(f"output folder does not exist: {path.parent}")
        if path.exists() and not overwrite:
            raise LightSegError(f"output exists: {path} (use overwrite=True to replace it)")
    except OSError as err:  # e.g. a name too long for the file system
        raise LightSegError(f"cannot write {path}: {err.strerror or err}") from None
    suffix = suffix_of(path)
    if suffix not in LABELMAP_SUFFIXES + (".seg.nrrd", ".dcm"):
        raise LightSegError(f"unsupported output type '{path.name}': use .nii.gz, .nii, .nrrd, .mha, .seg.nrrd "
                            "or .dcm (DICOM SEG)")
    if overwrite and path.is_file() and not (is_dicom_result(path) if suffix == ".dcm" else is_labelmap_file(path)):
        raise LightSegError(f"{path} exists and is not a labelmap: overwrite=True replaces only earlier "
                            "segmentation outputs, never an image")
    return path


# Segmentation Storage and Comprehensive 3D SR: the DICOM objects LightSeg writes (a UID ends where its digits do)
DICOM_RESULT_CLASS = re.compile(rb"1\.2\.840\.10008\.5\.1\.4\.1\.1\.(66\.4|88\.34)(?![0-9.])")


def is_dicom_result(path: Path) -> bool:
    """Whether an existing .dcm is a DICOM SEG or SR (an earlier result), by the SOP class in the file meta header
    that opens the file: never a source image."""
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError:
        return False
    return head[128:132] == b"DICM" and DICOM_RESULT_CLASS.search(head[132:]) is not None


def is_labelmap_file(path: Path) -> bool:
    """Whether an existing file is a segmentation output (ours or another tool's): uint8 with at most 128 values
    (an 8-bit scan uses nearly all 256). Anything else (a CT, an MR, a file no reader knows) is the user's and is
    never replaced."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with itk_notes([], path):
            reader.ReadImageInformation()
            if reader.GetPixelID() != sitk.sitkUInt8 or reader.GetNumberOfComponents() != 1:
                return False
            return len(np.unique(sitk.GetArrayViewFromImage(reader.Execute()))) <= 128
    except RuntimeError:
        return False


def refuse_input_as_output(target: Path, inputs: list[Path]) -> None:
    """An output may not be an input: the same path, a symbolic or hard link to it, or a file inside an input
    folder (a DICOM series). Refused whatever overwrite says."""
    resolved = Path(os.path.realpath(target))
    for source in inputs:
        real = Path(os.path.realpath(source))
        if resolved == real or (target.exists() and source.exists() and os.path.samefile(target, source)):
            raise LightSegError(f"output {target} is the input {source}: choose another output name")
        if real.is_dir() and resolved.is_relative_to(real) and validate.dicom_files(real):
            raise LightSegError(f"output {target} is inside the input DICOM folder {source}: write it elsewhere")


_TEMP_COUNT = itertools.count()


@contextmanager
def _janitor(tmp: Path):
    """A tiny shell process, in its own session, that removes ``tmp`` once this process's end of a pipe closes:
    after the write, or when this process is killed (SIGKILL, the out-of-memory killer) and can clean up nothing
    itself."""
    try:
        proc = subprocess.Popen(["/bin/sh", "-c", 'cat >/dev/null; rm -f -- "$1"', "lightseg-cleanup", str(tmp)],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError:  # no /bin/sh (Windows): the finally clause below is all there is
        proc = None
    try:
        yield
    finally:
        if proc is not None:
            proc.stdin.close()
            proc.wait()


def _write_failure(path: Path, err: Exception) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    try:
        if shutil.disk_usage(path.parent).free < 1 << 20:
            return os.strerror(errno.ENOSPC)
    except OSError:
        pass
    try:
        if os.statvfs(path.parent).f_flag & os.ST_RDONLY:
            return os.strerror(errno.EROFS)
    except (OSError, AttributeError):
        pass
    if not os.access(path.parent, os.W_OK):
        return os.strerror(errno.EACCES)
    return _first_line(err)


def _atomic(path: Path, overwrite: bool, write, notes: list[str] | None = None) -> None:
    """Write through a temporary file beside the target, then rename; any failure (permissions, a full disk, a
    name too long) is one LightSegError and leaves neither the target nor the temporary file."""
    path = check_output(path, overwrite)
    tmp = path.parent / f".lightseg-{os.getpid()}-{next(_TEMP_COUNT)}.tmp{suffix_of(path)}"
    with _janitor(tmp):
        try:
            with itk_notes(notes, path):
                write(tmp)
            if suffix_of(path) in (".nii", ".nii.gz") and not validate.nifti_complete(tmp):
                raise RuntimeError("the written file is incomplete")
            if not overwrite and path.exists():
                raise LightSegError(f"output exists: {path} (use overwrite=True to replace it)")
            os.replace(tmp, path)
        except (OSError, RuntimeError) as err:
            raise LightSegError(f"cannot write {path}: {_write_failure(path, err)}") from None
        finally:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass


def write_labelmap(label: sitk.Image, path, overwrite: bool = False, notes: list[str] | None = None) -> None:
    """uint8 labelmap; NRRD/NIfTI/MHA chosen by the file name."""
    label = sitk.Cast(label, sitk.sitkUInt8) if label.GetPixelID() != sitk.sitkUInt8 else label
    _atomic(Path(path), overwrite, lambda tmp: sitk.WriteImage(label, str(tmp), True), notes)


def seg_nrrd_segments(label_array: np.ndarray, labels: list[dict]) -> list[dict]:
    """The card's named segments (slicerio form) for a labelmap ``[z, y, x]``, each with its layer and extent."""
    from .postprocess import bounding_box

    segments = []
    for segment in named_segments(labels):
        box = bounding_box(label_array == segment["labelValue"])
        # extent in i, j, k order (array axes are k, j, i), inclusive
        extent = ([v for axis in reversed(box) for v in (axis.start, axis.stop - 1)] if box
                  else [0, -1, 0, -1, 0, -1])
        segments.append({**segment, "layer": 0, "extent": [int(v) for v in extent]})
    return segments


def seg_nrrd_fields(segments: list[dict]) -> dict[str, str]:
    """The header fields Slicer and slicerio read from a ``.seg.nrrd``, in slicerio's spelling."""
    fields = {"Segmentation_ContainedRepresentationNames": "Binary labelmap|",
              "Segmentation_MasterRepresentation": "Binary labelmap",
              "Segmentation_ReferenceImageExtentOffset": "0 0 0"}
    for i, seg in enumerate(segments):
        fields.update({
            f"Segment{i}_ID": seg["id"],
            f"Segment{i}_Name": seg["name"],
            f"Segment{i}_Color": " ".join(str(c) for c in seg["color"]),
            f"Segment{i}_LabelValue": str(seg["labelValue"]),
            f"Segment{i}_Layer": str(seg["layer"]),
            f"Segment{i}_Extent": " ".join(str(v) for v in seg["extent"]),
            f"Segment{i}_Tags": f"TerminologyEntry:{terminology_string(seg['terminology'])}|",
        })
    return fields


def write_seg_nrrd(label: sitk.Image, path, labels: list[dict], overwrite: bool = False,
                   notes: list[str] | None = None) -> None:
    """A Slicer ``.seg.nrrd`` with named, coloured segments and their terminology.

    ITK's NRRD writer with the segment fields as key/value pairs: the same header slicerio writes, without
    pynrrd's transposed copy of the voxels (about 30x faster on a 512x512x300 CT)."""
    # The fields go on a uint8 image with no header of its own (nothing of the input's, e.g. NIfTI fields, leaks
    # in). The engine's labelmap is one already: it carries them while it is written and loses them after, which
    # spares a copy of the voxels (copy-on-write: 0.04 s of 0.1 on a 512x512x300 CT).
    borrowed = label.GetPixelID() == sitk.sitkUInt8 and not label.GetMetaDataKeys()
    out = label if borrowed else sitk.Cast(label, sitk.sitkUInt8)
    for key in out.GetMetaDataKeys():
        out.EraseMetaData(key)
    fields = seg_nrrd_fields(seg_nrrd_segments(sitk.GetArrayViewFromImage(out), labels))
    for key, value in fields.items():
        out.SetMetaData(key, value)
    try:
        _atomic(Path(path), overwrite, lambda tmp: sitk.WriteImage(out, str(tmp), True, 1), notes)
    finally:
        if borrowed:
            for key in fields:
                out.EraseMetaData(key)


def write_dicom(dataset, path, overwrite: bool = False, notes: list[str] | None = None) -> None:
    """A pydicom dataset (DICOM SEG or SR) as a DICOM file with its meta header."""
    _atomic(Path(path), overwrite, lambda tmp: dataset.save_as(tmp, enforce_file_format=True), notes)


def series_files(folder) -> list[str]:
    """The files of the series ``read_dicom_folder`` reads from ``folder``, in its slice order."""
    return dicom_series(Path(folder))[0][1]


def write_output(label: sitk.Image, path, labels: list[dict], overwrite: bool = False,
                 notes: list[str] | None = None, dicom: dict | None = None) -> None:
    """The labelmap as the file name says. A ``.dcm`` (DICOM SEG) also needs ``dicom``: ``source`` (the DICOM
    folder read), ``card``, ``quality`` and ``voxels`` (the result's), which it references and carries."""
    if suffix_of(path) == ".dcm":
        from .dicom_seg import build_seg

        if not dicom:
            raise LightSegError(f"{Path(path).name}: a DICOM SEG needs the DICOM series it was made from")
        write_dicom(build_seg(label, series_files=series_files, notes=notes, **dicom), path, overwrite, notes)
    elif suffix_of(path) == ".seg.nrrd":
        write_seg_nrrd(label, path, labels, overwrite, notes)
    else:
        write_labelmap(label, path, overwrite, notes)
