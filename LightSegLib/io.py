"""Reading volumes (NIfTI, NRRD, MHA, DICOM series) and writing labelmaps on the input's exact grid.

Every write is atomic (temporary file in the target folder, then rename) and refuses to replace an existing
file unless asked, so a crash or a cancel never leaves a half-written or clobbered output.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import LightSegError

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


def dicom_series(folder: Path) -> list[tuple[str, list[str]]]:
    """The DICOM series in a folder, largest first: ``[(series_uid, files), ...]``."""
    reader = sitk.ImageSeriesReader
    try:
        uids = reader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError:
        uids = ()
    series = [(uid, list(reader.GetGDCMSeriesFileNames(str(folder), uid))) for uid in uids]
    return sorted(series, key=lambda s: -len(s[1]))


def read_dicom_folder(folder: Path, notes: list[str] | None = None) -> sitk.Image:
    series = dicom_series(folder)
    if not series:
        raise LightSegError(f"no readable DICOM series in folder: {folder}")
    uid, files = series[0]
    if len(series) > 1 and notes is not None:
        others = ", ".join(f"{u} ({len(f)} files)" for u, f in series[1:])
        notes.append(f"folder holds {len(series)} DICOM series; using the largest, {uid} ({len(files)} files); "
                     f"others: {others}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as err:
        raise LightSegError(f"cannot read DICOM series {uid} in {folder}: {_first_line(err)}") from None


def _first_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    useful = [ln for ln in lines if "Exception" not in ln and not ln.startswith("sitk::")]
    return (useful or lines or ["unknown error"])[-1][:200]


def read_image(path, frame: int | None = None, notes: list[str] | None = None) -> sitk.Image:
    """A 3D scalar image with its geometry. ``frame`` picks one time frame of a 4D image; ``notes`` collects
    things the user should hear about (e.g. which DICOM series was used)."""
    path = Path(path)
    if not path.exists():
        raise LightSegError(f"input not found: {path}")
    if path.is_dir():
        image = read_dicom_folder(path, notes)
    else:
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError:
            raise LightSegError(f"not a readable image: {path}") from None
    return as_3d_scalar(image, path, frame)


def as_3d_scalar(image: sitk.Image, name, frame: int | None = None) -> sitk.Image:
    dim = image.GetDimension()
    if dim == 4:
        frames = image.GetSize()[3]
        if frame is None:
            raise LightSegError(f"{name} is 4D with {frames} time frames: pick one with --frame N (0-{frames - 1})")
        if not 0 <= frame < frames:
            raise LightSegError(f"--frame {frame} is out of range: {name} has frames 0-{frames - 1}")
        size = list(image.GetSize())
        size[3] = 0
        image = sitk.Extract(image, size, [0, 0, 0, frame], sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX)
    elif frame not in (None, 0):
        raise LightSegError(f"--frame {frame} given but {name} is a 3D volume, not a time series")
    elif dim != 3:
        raise LightSegError(f"{name} is {dim}D: a 3D volume is needed")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise LightSegError(f"{name} has {image.GetNumberOfComponentsPerPixel()} components per voxel "
                            "(colour or vector image): a scalar volume is needed")
    return image


def check_intensities(image: sitk.Image, name) -> None:
    """Refuse volumes a model cannot mean anything on: non-finite, empty or constant."""
    if min(image.GetSize()) < 1:
        raise LightSegError(f"{name} is empty")
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        array = sitk.GetArrayViewFromImage(image)
        if not np.isfinite(array).all():
            raise LightSegError(f"{name} has NaN or infinite voxels")
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(image)
    if stats.GetMinimum() == stats.GetMaximum():
        raise LightSegError(f"{name} is constant (every voxel is {stats.GetMinimum():g}): nothing to segment")


# ---------------------------------------------------------------- writing
def check_output(path, overwrite: bool) -> Path:
    path = Path(path)
    if not path.parent.is_dir():
        raise LightSegError(f"output folder does not exist: {path.parent}")
    if path.exists() and not overwrite:
        raise LightSegError(f"output exists: {path} (use --overwrite to replace it)")
    suffix = suffix_of(path)
    if suffix not in LABELMAP_SUFFIXES + (".seg.nrrd",):
        raise LightSegError(f"unsupported output type '{path.name}': use .nii.gz, .nii, .nrrd, .mha or .seg.nrrd")
    return path


def _atomic(path: Path, overwrite: bool, write) -> None:
    path = check_output(path, overwrite)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp{suffix_of(path)}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_labelmap(label: sitk.Image, path, overwrite: bool = False) -> None:
    """uint8 labelmap; NRRD/NIfTI/MHA chosen by the file name."""
    label = sitk.Cast(label, sitk.sitkUInt8) if label.GetPixelID() != sitk.sitkUInt8 else label
    _atomic(Path(path), overwrite, lambda tmp: sitk.WriteImage(label, str(tmp), True))


def ijk_to_lps(image: sitk.Image) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def seg_nrrd_segments(label_array: np.ndarray, labels: list[dict]) -> list[dict]:
    """Segment records (slicerio form) for a labelmap ``[z, y, x]``: name, colour, terminology, extent."""
    from .postprocess import bounding_box

    segments = []
    for item in sorted(labels, key=lambda it: it["value"]):
        box = bounding_box(label_array == item["value"])
        # extent in i, j, k order (array axes are k, j, i), inclusive
        extent = ([v for axis in reversed(box) for v in (axis.start, axis.stop - 1)] if box
                  else [0, -1, 0, -1, 0, -1])
        segments.append({
            "id": f"Segment_{item['value']}",
            "name": item["name"],
            "color": [round(c / 255.0, 6) for c in item["color"]],
            "labelValue": int(item["value"]),
            "layer": 0,
            "extent": [int(v) for v in extent],
            "terminology": item["terminology"],
        })
    return segments


def seg_nrrd_fields(segments: list[dict]) -> dict[str, str]:
    """The header fields Slicer and slicerio read from a ``.seg.nrrd``, in slicerio's spelling."""
    from slicerio.segmentation import terminology_entry_to_string

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
            f"Segment{i}_Tags": f"TerminologyEntry:{terminology_entry_to_string(seg['terminology'])}|",
        })
    return fields


def write_seg_nrrd(label: sitk.Image, path, labels: list[dict], overwrite: bool = False) -> None:
    """A Slicer ``.seg.nrrd`` with named, coloured segments and their terminology.

    ITK's NRRD writer with the segment fields as key/value pairs: the same header slicerio writes, without
    pynrrd's transposed copy of the voxels (about 30x faster on a 512x512x300 CT)."""
    out = sitk.Cast(label, sitk.sitkUInt8) if label.GetPixelID() != sitk.sitkUInt8 else sitk.Image(label)
    for key in out.GetMetaDataKeys():  # nothing of the input's own header (e.g. NIfTI fields) leaks in
        out.EraseMetaData(key)
    for key, value in seg_nrrd_fields(seg_nrrd_segments(sitk.GetArrayViewFromImage(out), labels)).items():
        out.SetMetaData(key, value)
    _atomic(Path(path), overwrite, lambda tmp: sitk.WriteImage(out, str(tmp), True, 1))


def write_output(label: sitk.Image, path, labels: list[dict], overwrite: bool = False) -> None:
    if suffix_of(path) == ".seg.nrrd":
        write_seg_nrrd(label, path, labels, overwrite)
    else:
        write_labelmap(label, path, overwrite)
