"""Checks that an input holds what its header promises, before any voxel of it is trusted.

Each check here stands for a case where SimpleITK reads a damaged input without complaint and the model would
give a plausible-looking, wrong labelmap: a short NIfTI is zero-filled, NaN and Inf in NIfTI are read as 0, GDCM
drops an unreadable DICOM slice and spreads the others over the gap.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import LightSegError

FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes whose data may hold NaN or Inf
CHUNK = 1 << 22


def _nifti_header(head: bytes):
    """(data offset, data bytes, float dtype or None) from a NIfTI-1 or NIfTI-2 single-file header."""
    for order in "<>":
        if len(head) >= 348 and struct.unpack(order + "i", head[:4])[0] == 348:
            dims = struct.unpack(order + "8h", head[40:56])
            datatype, bitpix = struct.unpack(order + "2h", head[70:74])
            offset = int(struct.unpack(order + "f", head[108:112])[0])
            magic, minimum = head[344:348], 352
            break
        if len(head) >= 540 and struct.unpack(order + "i", head[:4])[0] == 540:
            dims = struct.unpack(order + "8q", head[16:80])
            datatype, bitpix = struct.unpack(order + "2h", head[12:16])
            offset = struct.unpack(order + "q", head[168:176])[0]
            magic, minimum = head[4:8], 544
            break
    else:
        return None
    if not magic.startswith((b"n+1", b"n+2")) or not 1 <= dims[0] <= 7:
        return None  # a .hdr/.img pair or not NIfTI: SimpleITK's own checks apply
    voxels = int(np.prod([max(int(d), 1) for d in dims[1:dims[0] + 1]], dtype=np.int64))
    dtype = FLOAT_TYPES.get(datatype)
    return max(offset, minimum), voxels * bitpix // 8, (order + dtype) if dtype else None


def _chunks(path: Path, compressed: bool):
    with open(path, "rb") as f:
        if not compressed:
            yield from iter(lambda: f.read(CHUNK), b"")
            return
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            for block in iter(lambda: f.read(CHUNK), b""):
                yield inflate.decompress(block)
                while inflate.eof and inflate.unused_data:  # a further gzip member
                    block, inflate = inflate.unused_data, zlib.decompressobj(16 + zlib.MAX_WBITS)
                    yield inflate.decompress(block)
        except zlib.error as err:
            raise LightSegError(f"{path} is damaged: its gzip data is corrupt ({err})") from None


def check_nifti(path) -> None:
    """Refuse a NIfTI whose file holds less data than its header implies, whose gzip data is corrupt, or with NaN/Inf
    voxels: SimpleITK reads the first and last as zeros and the second as whatever inflates. A .nii.gz is inflated
    once here for its checksum (about 0.35 s per 90 MB of voxels); an uncompressed integer file is checked by size."""
    path = Path(path)
    with open(path, "rb") as f:
        compressed, head = _head(f, path)
    header = _nifti_header(head)
    if header is None:
        return
    offset, size, dtype = header
    expected = offset + size
    if dtype is None and not compressed and path.stat().st_size >= expected:
        return
    seen, rest, bad = 0, b"", 0
    for block in _chunks(path, compressed):
        if dtype is not None and seen + len(block) > offset:
            data = rest + block[max(0, offset - seen):]
            usable = len(data) - len(data) % np.dtype(dtype).itemsize
            bad += int(np.count_nonzero(~np.isfinite(np.frombuffer(data[:usable], dtype))))
            rest = data[usable:]
        seen += len(block)
    if seen < expected:
        raise LightSegError(f"{path.name} is truncated: its header implies {expected:,} bytes of image, the file "
                            f"holds {seen:,} ({100 * max(seen - offset, 0) / max(size, 1):.0f}% of the voxels)")
    if bad:
        raise LightSegError(f"{path.name} has {bad:,} NaN or infinite voxels")


def nifti_complete(path) -> bool:
    """Whether a NIfTI just written holds its whole header and data: ITK's gzip writer ignores a full disk and
    leaves an empty or short file without an error. A written file needs no inflating: its size, or for gzip the
    trailer's length of the inflated data (a cut-off file ends in compressed bytes instead), says it all."""
    try:
        path = Path(path)
        with open(path, "rb") as f:
            compressed, head = _head(f, path)
            header = _nifti_header(head)
            if header is None:
                return False
            expected = header[0] + header[1]
            if not compressed:
                return path.stat().st_size >= expected
            f.seek(-4, 2)
            return struct.unpack("<I", f.read(4))[0] == expected % (1 << 32)
    except (LightSegError, OSError, struct.error):
        return False


def _head(f, path: Path, size: int = 544) -> tuple[bool, bytes]:
    """Whether the open file ``f`` is gzip, and the first ``size`` bytes of its data, inflating no more than that
    (a labelmap's 4 MB of gzip hold ~80 MB)."""
    compressed = f.read(2) == b"\x1f\x8b"
    f.seek(0)
    if not compressed:
        return False, f.read(size)
    try:
        return True, zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(f.read(1 << 16), size)
    except zlib.error as err:
        raise LightSegError(f"{path} is damaged: its gzip data is corrupt ({err})") from None


def is_dicom_file(path: Path) -> bool:
    """The DICOM Part 10 preamble marker; reading 132 bytes keeps a folder of large volumes cheap to sort out."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and is_dicom_file(p))


def check_dicom_slices(slices: list[dict], name: str, allow_gaps: bool) -> list[str]:
    """Refuse a series whose slices do not make one evenly spaced stack; ``slices`` holds each file's
    ``position``, ``orientation``, ``size`` and ``instance`` (None where absent). Returns notes."""
    notes: list[str] = []
    if len({s["size"] for s in slices}) > 1 or len({s["orientation"] for s in slices}) > 1:
        raise LightSegError(f"{name} mixes slices of different sizes or orientations (e.g. a localizer and an "
                            "axial stack): put each series in its own folder")
    numbers = [s["instance"] for s in slices if s["instance"] is not None]
    if len(set(numbers)) < len(numbers):
        dupes = sorted({n for n in numbers if numbers.count(n) > 1})
        raise LightSegError(f"{name} has duplicated slices (instance numbers {', '.join(map(str, dupes[:5]))} "
                            "appear twice): remove the copies")
    if len(slices) < 2 or any(s["position"] is None or s["orientation"] is None for s in slices):
        return notes
    o = np.asarray(slices[0]["orientation"], float)
    normal = np.cross(o[:3], o[3:])
    depth = np.sort([float(np.dot(normal, s["position"])) for s in slices])
    steps = np.diff(depth)
    if np.any(steps < 1e-3):
        raise LightSegError(f"{name} has duplicated slices (two files at the same position, "
                            f"{depth[np.argmax(steps < 1e-3)]:.2f} mm): remove the copies")
    step = float(np.median(steps))
    uneven = np.abs(steps - step) > max(0.01, 0.01 * step)
    if uneven.any():
        i = int(np.argmax(uneven))
        missing = int(round(steps[i] / step)) - 1
        what = (f"{missing} missing slice(s) between {depth[i]:.2f} and {depth[i + 1]:.2f} mm" if missing >= 1
                else f"uneven slice spacing ({steps.min():.3f} to {steps.max():.3f} mm)")
        if not allow_gaps:
            raise LightSegError(f"{name}: {what}; a labelmap on this series would be misplaced "
                                "(use allow_gaps=True to accept it)")
        notes.append(f"{what}: accepted as asked; the volume uses an average spacing, so positions across the gap "
                     "are off")
    if len(numbers) == len(slices) and max(numbers) - min(numbers) + 1 > len(numbers) and not uneven.any():
        notes.append(f"instance numbers {min(numbers)}-{max(numbers)} skip some values although the slice "
                     "positions are evenly spaced")
    return notes
