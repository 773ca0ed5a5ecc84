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


def _qform_matrix(b: float, c: float, d: float, qfac: float, pixdim, offset) -> np.ndarray:
    """The NIfTI-1 qform as a 4x4 voxel-to-RAS matrix (the standard's quaternion formula)."""
    a = np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
    rotation = np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                         [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                         [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b]])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag([pixdim[0], pixdim[1], pixdim[2] * qfac])
    matrix[:3, 3] = offset
    return matrix


def _describe(matrix: np.ndarray) -> str:
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    return (f"spacing ({', '.join(f'{s:.3g}' for s in spacing)}) mm, origin "
            f"({', '.join(f'{o:.1f}' for o in matrix[:3, 3])})")


def check_nifti_geometry(path, used=None) -> None:
    """Refuse a NIfTI whose header geometry cannot be trusted, in plain words: a voxel size that is zero or not a
    number (SimpleITK quietly takes 1 mm), a qform and an sform that place the voxels differently (which one a
    reader uses decides every volume in mL), or an sform that is not a rotation times a scale (sheared).
    ``used``: the (spacing, origin, direction) SimpleITK read, to say which transform it took."""
    path = Path(path)
    with open(path, "rb") as f:
        _, head = _head(f, path)
    order = next((o for o in "<>" if len(head) >= 348 and struct.unpack(o + "i", head[:4])[0] == 348), None)
    if order is None or not head[344:348].startswith(b"n+1"):
        return  # NIfTI-2 or a .hdr/.img pair: SimpleITK's own reading applies
    ndim = struct.unpack(order + "h", head[40:42])[0]
    pixdim = struct.unpack(order + "8f", head[76:108])
    axes = "xyz"
    for axis in range(min(max(ndim, 1), 3)):
        size = pixdim[axis + 1]
        if not np.isfinite(size) or size == 0:
            raise LightSegError(f"{path.name}: its header gives no voxel size along {axes[axis]} (pixdim[{axis + 1}] "
                                f"= {size:g}): distances and volumes would be guesses; fix the header's spacing")
    qcode, scode = struct.unpack(order + "2h", head[252:256])
    b, c, d, *qoffset = struct.unpack(order + "6f", head[256:280])
    srow = np.array(struct.unpack(order + "12f", head[280:328]), dtype=np.float64).reshape(3, 4)
    if scode > 0:
        if not np.all(np.isfinite(srow)):
            raise LightSegError(f"{path.name}: its sform holds values that are not numbers")
        columns = srow[:, :3] / np.maximum(np.linalg.norm(srow[:, :3], axis=0), 1e-12)
        skew = np.abs(columns.T @ columns - np.eye(3)).max()
        if skew > 1e-3:
            raise LightSegError(f"{path.name}: its sform is sheared (axes {np.degrees(np.arccos(1 - skew)):.1f} "
                                "degrees from perpendicular): no reader places these voxels as the scanner did")
    if qcode > 0 and scode > 0:
        qfac = -1.0 if pixdim[0] < 0 else 1.0
        qform = _qform_matrix(b, c, d, qfac, [abs(p) for p in pixdim[1:4]], qoffset)
        sform = np.vstack([srow, [0, 0, 0, 1]])
        scale = max(1.0, float(np.abs(sform[:3, :3]).max()))
        if np.abs(qform[:3, :3] - sform[:3, :3]).max() > 1e-3 * scale or np.abs(qform[:3, 3] - sform[:3, 3]).max() > 0.1:
            which = ""
            if used is not None:
                spacing, origin, direction = used
                read = np.eye(4)
                read[:3, :3] = np.asarray(direction).reshape(3, 3) @ np.diag(spacing)
                read[:3, 3] = origin
                read[:2] *= -1  # ITK's LPS to NIfTI's RAS
                near = {name: np.abs(m - read).max() for name, m in (("qform", qform), ("sform", sform))}
                which = f"; SimpleITK would use the {min(near, key=near.get)}"
            raise LightSegError(f"{path.name}: its two transforms disagree: the qform (code {qcode}) gives "
                                f"{_describe(qform)}, the sform (code {scode}) {_describe(sform)}{which}; "
                                "fix the header so both say where the voxels are")


def check_geometry(spacing, direction, name) -> None:
    """Any format: a voxel size that is zero, negative or not a number, or axes that are not perpendicular unit
    vectors, make every distance and volume a guess."""
    spacing = np.asarray(spacing, dtype=np.float64)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise LightSegError(f"{name}: voxel size ({', '.join(f'{s:g}' for s in spacing)}) mm is not usable (zero, "
                            "negative or not a number): fix the header's spacing")
    matrix = np.asarray(direction, dtype=np.float64).reshape(len(spacing), len(spacing))
    if not np.all(np.isfinite(matrix)) or np.abs(matrix.T @ matrix - np.eye(len(spacing))).max() > 1e-3:
        raise LightSegError(f"{name}: its direction matrix is not a rotation (axes not perpendicular unit vectors): "
                            "no reader places these voxels as the scanner did")


NRRD_BYTES = {"uchar": 1, "unsigned char": 1, "uint8": 1, "uint8_t": 1, "signed char": 1, "int8": 1, "int8_t": 1,
              "short": 2, "short int": 2, "signed short": 2, "int16": 2, "int16_t": 2, "ushort": 2,
              "unsigned short": 2, "uint16": 2, "uint16_t": 2, "int": 4, "signed int": 4, "int32": 4, "int32_t": 4,
              "uint": 4, "unsigned int": 4, "uint32": 4, "uint32_t": 4, "longlong": 8, "long long": 8,
              "int64": 8, "int64_t": 8, "ulonglong": 8, "unsigned long long": 8, "uint64": 8, "uint64_t": 8,
              "float": 4, "double": 8}


def nrrd_shortfall(path) -> str | None:
    """Why a raw NRRD (attached, or a ``.nhdr`` with its data file) cannot be read, when its data is shorter than
    its header implies: which file, and how many bytes are missing. None when that is not the reason."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return None
    if not head.startswith(b"NRRD"):
        return None
    text, _, attached = head.partition(b"\n\n")
    fields = {}
    for line in text.decode(errors="replace").splitlines()[1:]:
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[key.strip().lower()] = value.strip().lstrip("=").strip()
    if fields.get("encoding", "raw") != "raw" or fields.get("type", "").lower() not in NRRD_BYTES:
        return None
    try:
        sizes = [int(v) for v in fields["sizes"].split()]
    except (KeyError, ValueError):
        return None
    expected = int(np.prod(sizes, dtype=np.int64)) * NRRD_BYTES[fields["type"].lower()]
    data_file = fields.get("data file") or fields.get("datafile")
    if data_file:
        data = (path.parent / data_file)
        if not data.is_file():
            return f"its data file {data.name} is missing"
        held, where = data.stat().st_size - int(fields.get("byte skip", "0") or 0), data.name
    else:
        held, where = path.stat().st_size - (len(text) + 2), path.name
    if held >= expected:
        return None
    return (f"{where} holds {max(held, 0):,} bytes of image data, the header implies {expected:,} "
            f"({expected - max(held, 0):,} missing: the file was cut short)")
