"""Image-level classification (pneumonia on a chest X-ray): read a radiograph, run the ONNX model, explain.

Inference needs numpy, SimpleITK and ONNX Runtime only. A classification model's ONNX graph has two outputs,
``logits`` (N, classes) and ``cam`` (N, classes, h, w), the class activation map; the card's ``threshold`` is the
probability of its ``positive`` label above which that label is given.

Every answer carries a quality estimate where the registry names an appearance model for it (``appearance_file``,
checked against its ``appearance_sha256``; ``<id>.appearance.onnx``, built by ``benchmarks/cxr_appearance.py``):
whether the input looks like the images the classifier was trained on at all. Its probability cannot say so (a CT
slice got PNEUMONIA with p = 0.89).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import LightSegError

RADIOGRAPH_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
#: DICOM modalities of projection radiographs; any other stated modality (CT, MR, US, ...) is refused.
RADIOGRAPH_MODALITIES = ("CR", "DX", "DR", "RG", "OT")


def _truncated_jpeg(path: Path) -> bool:
    """libjpeg fills a cut-short JPEG with grey and only prints a warning, so the pixels look plausible: a JPEG
    (FF D8 at the start) must end with its end-of-image marker FF D9 (trailing padding allowed)."""
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return False
        f.seek(max(0, path.stat().st_size - 64))
        return not f.read().rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")


def _dicom_tag(reader, tag: str) -> str | None:
    return reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else None


def _first_number(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return float(text.split("\\")[0])
    except ValueError:
        return None


def read_radiograph(path) -> np.ndarray:
    """A 2D grey radiograph as float32 (H, W), dark = air: DICOM rescale and window applied, MONOCHROME1
    shown as MONOCHROME2, colour images reduced to grey. Refuses volumes and unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise LightSegError(f"{path}: no such file")
    if _truncated_jpeg(path):
        raise LightSegError(f"{path}: damaged image file (a JPEG without its end marker: cut short)")
    from .io import itk_notes

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    said: list[str] = []
    try:
        with itk_notes(said, path):
            reader.ReadImageInformation()
            size = reader.GetSize()
            if len(size) > 2 and any(s > 1 for s in size[2:]):  # refused before its voxels are read
                raise LightSegError(f"{path}: a {len(size)}D volume of size {'x'.join(map(str, size))}; "
                                    "a classifier takes one 2D radiograph")
            check_size(size[:2], path)
            image = reader.Execute()
    except RuntimeError:
        raise LightSegError(f"{path}: not a readable image (PNG, JPEG or DICOM)") from None
    damage = [m for m in said if DAMAGE.search(m)]
    if damage:  # the codec filled what it could not decode: the pixels look plausible and are not the film
        raise LightSegError(f"{path}: damaged image file ({damage[0].removeprefix('reader/writer said: ')})")
    modality = (_dicom_tag(reader, "0008|0060") or "").upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        raise LightSegError(f"{path}: a DICOM {modality} image, not a projection radiograph")
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = array[..., :3].mean(axis=-1)
    array = array.reshape(array.shape[-2:])
    if reader.HasMetaDataKey("0028|0004"):  # a DICOM file, whatever its name
        array = _dicom_display(reader, array)
    return check_radiograph(array, path)


# What a codec says about a file it could only partly decode (libjpeg, libpng, GDCM).
DAMAGE = re.compile(r"corrupt|premature|truncat|damaged|invalid|bad huffman|crc error|extraneous|error", re.I)
# A chest radiograph has hundreds of pixels a side; the model reads 160. Smaller is a thumbnail or an icon; larger
# than 100 megapixels is no radiograph and would take gigabytes to read.
MIN_SIDE, MAX_PIXELS = 128, 100_000_000


def check_size(size, name) -> None:
    width, height = (int(s) for s in size)
    if min(width, height) < MIN_SIDE:
        raise LightSegError(f"{name}: {width} x {height} pixels is too small for a chest radiograph "
                            f"(at least {MIN_SIDE} x {MIN_SIDE})")
    if width * height > MAX_PIXELS:
        raise LightSegError(f"{name}: {width} x {height} pixels is too large for a radiograph "
                            f"(at most {MAX_PIXELS // 1_000_000} megapixels)")


def check_radiograph(array: np.ndarray, name) -> np.ndarray:
    """Refuse what would give a plausible-looking answer from nothing: non-finite or constant pixels."""
    if not np.isfinite(array).all():
        raise LightSegError(f"{name}: the image holds NaN or infinite values")
    if array.max() <= array.min():
        raise LightSegError(f"{name}: the image is constant")
    return array


def _dicom_display(reader, array: np.ndarray) -> np.ndarray:
    """GDCM has applied the rescale slope and intercept and turned MONOCHROME1 into MONOCHROME2 (v -> max - v,
    max = 2^BitsStored - 1); the window is given in stored values, so it is mirrored the same way."""
    centre, width = _first_number(_dicom_tag(reader, "0028|1050")), _first_number(_dicom_tag(reader, "0028|1051"))
    if centre is None or width is None or width <= 1:
        return array
    if (_dicom_tag(reader, "0028|0004") or "").upper() == "MONOCHROME1":
        bits = int(_first_number(_dicom_tag(reader, "0028|0101")) or 16)
        centre = (2 ** bits - 1) - centre
    return np.clip(array, centre - width / 2.0, centre + width / 2.0)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Appearance:
    """How far an input lies from the training images: a principal-component model of the classifier's own input
    (ONNX outputs ``inside`` and ``outside``, each 1.0 on average over the training images) and the limits chosen
    on validation images, stored in the file's metadata. ``distance`` is the larger ratio to its limit: above 1,
    the image does not look like what the model knows."""

    def __init__(self, path: Path, threads: int):
        from .inference import OnnxRunner

        self.runner = OnnxRunner(path, threads)
        meta = self.runner.session.get_modelmeta().custom_metadata_map
        self.limits = json.loads(meta["limits"])

    def __call__(self, x: np.ndarray) -> dict:
        from .quality import mark_outside

        inside, outside = (float(v[0]) for v in self.runner.session.run(["inside", "outside"],
                                                                         {self.runner.input_name: x}))
        distance = max(inside / self.limits["inside"], outside / self.limits["outside"])
        figures = {"distance": round(distance, 3), "inside": round(inside, 3), "outside": round(outside, 3)}
        reasons = ([f"does not look like a paediatric AP chest X-ray (appearance distance {distance:.2f}, "
                    "limit 1)"] if distance > 1.0 else [])
        return mark_outside({"flag": False, "calibrated": True, "reasons": [], "appearance": figures}, reasons)


@dataclass
class Classification:
    label: str
    probability: float          # of the card's positive class
    threshold: float
    cam: np.ndarray             # (h, w) activation map of the positive class, 0 (none) .. 1 (strongest)
    path: str | None = None
    quality: dict | None = None  # Appearance's verdict; None where the model has no appearance model

    def as_dict(self) -> dict:
        out = {"path": self.path, "label": self.label, "probability": round(self.probability, 4)}
        if self.quality is not None:
            out["quality"] = self.quality
        return out

    def quality_text(self) -> str:
        """One phrase: "quality ok (...)" or "low confidence: check carefully (...)"; empty without an estimate."""
        from .quality import LOW

        if self.quality is None:
            return ""
        if self.quality["flag"]:
            return f"{LOW} ({'; '.join(self.quality['reasons'])})"
        distance = self.quality["appearance"]["distance"]
        return f"quality ok (looks like its training X-rays: appearance distance {distance:.2f}, limit 1)"


class Classifier:
    """One ONNX Runtime session for a classification card, reused for every image."""

    def __init__(self, card, threads: int | None = None):
        from .inference import OnnxRunner, default_threads

        if card.task != "classification":
            raise LightSegError(f"model '{card.id}' is a {card.task} model, not a classifier: see 'lightseg models'")
        self.card = card
        self.runner = OnnxRunner(card.verified_path(), threads or default_threads())
        self.positive = card.classes.index(card.positive)
        self.appearance = (Appearance(card.verified_path("appearance_file"), threads or default_threads())
                           if "appearance_file" in card.entry else None)

    def __call__(self, array: np.ndarray, threshold: float | None = None, path=None) -> Classification:
        from .cxr_prep import prepare

        threshold = float(self.card.threshold if threshold is None else threshold)
        if not 0.0 <= threshold <= 1.0:
            raise LightSegError(f"threshold {threshold} outside [0, 1]")
        x = prepare(array, int(self.card.input["size"]))
        logits, cam = self.runner.session.run(["logits", "cam"], {self.runner.input_name: x})
        # in float64, so a confident probability keeps its logit (temperature scaling, calibration) instead of
        # rounding to 1.0
        p = float(softmax(logits.astype(np.float64))[0, self.positive])
        # The positive class's evidence against the others: where the map is positive, that region argues for it.
        evidence = cam[0, self.positive] - np.delete(cam[0], self.positive, axis=0).mean(axis=0)
        evidence = np.maximum(evidence, 0.0)
        peak = float(evidence.max())
        label = self.card.positive if p >= threshold else self.card.classes[1 - self.positive]
        return Classification(label, p, threshold, evidence / peak if peak > 0 else evidence,
                              None if path is None else str(path),
                              None if self.appearance is None else self.appearance(x))


def heatmap_png(array: np.ndarray, cam: np.ndarray, path, alpha: float = 0.45) -> Path:
    """The radiograph in grey with the activation map in red-yellow over it, at the radiograph's size."""
    from .cxr_prep import normalise

    h, w = array.shape
    grey = normalise(array) * 255.0
    heat = resize_map(cam.astype(np.float32), h, w)
    heat = np.clip(heat, 0.0, 1.0)
    colour = np.stack([np.full_like(heat, 255.0), 255.0 * heat, np.zeros_like(heat)], axis=-1)
    weight = (alpha * heat)[..., None]
    rgb = (1 - weight) * grey[..., None] + weight * colour
    png = sitk.GetImageFromArray(np.clip(rgb, 0, 255).astype(np.uint8), isVector=True)
    path = Path(path)
    sitk.WriteImage(png, str(path))
    return path


def resize_map(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """A low-resolution map stretched over an (h, w) image, pixel centres aligned."""
    image = sitk.GetImageFromArray(a)
    ah, aw = a.shape
    image.SetSpacing((w / aw, h / ah))
    image.SetOrigin((0.5 * (w / aw - 1.0), 0.5 * (h / ah - 1.0)))
    return sitk.GetArrayFromImage(sitk.Resample(image, (w, h), sitk.Transform(), sitk.sitkLinear, (0.0, 0.0),
                                                (1.0, 1.0), (1.0, 0.0, 0.0, 1.0), 0.0, sitk.sitkFloat32))


def _has_dicom_preamble(path: Path) -> bool:
    """DICOM files are often named by UID (dots, no image suffix): the 'DICM' tag at byte 128 tells."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def radiograph_inputs(paths) -> list[Path]:
    """Files as given, and the radiographs inside folders (sorted), so a folder of X-rays is one argument."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and (f.suffix.lower() in RADIOGRAPH_SUFFIXES
                                                                      or _has_dicom_preamble(f)))
            if not found:
                raise LightSegError(f"{p}: no PNG, JPEG or DICOM file in this folder")
            out.extend(found)
        else:
            out.append(p)
    return out
