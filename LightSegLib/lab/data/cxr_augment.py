"""What another scanner, processing chain or export does to a grey chest radiograph (0-255, dark = air), each
transformation with its parameters.

Two users, one implementation: the validation protocol applies them at values fixed before scoring
(``cxr_protocol.SHIFTS``), and training draws them at random from wider ranges (``appearance``), so the model
meets in training the families the shifted check tests, and a change to a transformation changes both.
"""
from __future__ import annotations

import hashlib
import io

import numpy as np
import SimpleITK as sitk


def gamma(a: np.ndarray, g: float) -> np.ndarray:
    return 255.0 * (np.clip(a, 0, 255) / 255.0) ** g


def tone_curve(a: np.ndarray, width: float = 32.0, centre: float = 128.0) -> np.ndarray:
    """A vendor's S-shaped look-up table: contrast raised around ``centre``, bones and air pressed together (the
    narrower ``width``, the stronger); 0 and 255 stay where they are."""
    def s(v):
        return 1.0 / (1.0 + np.exp(-(v - centre) / width))

    lo, hi = s(0.0), s(255.0)
    return 255.0 * (s(a) - lo) / (hi - lo)


def window(a: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """A narrower display window: everything outside the percentiles saturates."""
    lo, hi = np.percentile(a, (lower, upper))
    return 255.0 * np.clip((a - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def _resize(a: np.ndarray, h: int, w: int) -> np.ndarray:
    image = sitk.GetImageFromArray(a.astype(np.float32))
    ah, aw = a.shape
    spacing = (aw / w, ah / h)
    origin = (0.5 * (spacing[0] - 1.0), 0.5 * (spacing[1] - 1.0))
    return sitk.GetArrayFromImage(sitk.Resample(image, (w, h), sitk.Transform(), sitk.sitkLinear, origin, spacing,
                                                (1.0, 0.0, 0.0, 1.0), 0.0, sitk.sitkFloat32))


def down_up(a: np.ndarray, factor: float) -> np.ndarray:
    """A lower-resolution detector or a downsized export, brought back to the original size."""
    h, w = a.shape
    small = _resize(blur(a, 0.5 / factor - 0.5), max(8, round(h * factor)), max(8, round(w * factor)))
    return _resize(small, h, w)


def blur(a: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return a
    return sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(a.astype(np.float32)),
                                                                  sigma))


def noise(a: np.ndarray, sd: float, rng: np.random.Generator) -> np.ndarray:
    """Quantum noise, drawn from ``rng`` (``by_name`` gives an image the same noise every run)."""
    return a + rng.normal(0.0, sd, a.shape)


def by_name(key: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))


def jpeg(a: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"), dtype=np.float32)


#: Training's ranges, wider than the protocol's fixed values on every side (gamma 0.6 and 1.6, tone width 32,
#: window 5-95%, down-up 0.4, blur 1.5 px, noise sd 8, JPEG 20 and 40), so the shifted check tests points
#: inside what training saw rather than its edge. Display steps first, then resolution, noise, export: the order
#: of a real chain.
RANGES = {
    "gamma": (0.5, 2.0),            # log-uniform: as many images darkened as brightened
    "tone curve": (16.0, 96.0),     # width, log-uniform; centre 96-160 grey levels
    "window": (0.0, 10.0),          # lower percentile; the upper is 90-100
    "down-up": (0.3, 1.0),
    "blur": (0.3, 2.0),             # sigma in pixels of the 224-px source
    "noise": (1.0, 12.0),           # sd in grey levels
    "jpeg": (15, 95),               # quality
}
#: Each family is applied to an image with this probability, independently: 18% of images pass unchanged
#: (0.75 ** 6, the tone curve and gamma being one display step), most get one or two changes.
P_EACH = 0.25


def appearance(a: np.ndarray, rng: np.random.Generator, p: float = P_EACH) -> tuple[np.ndarray, dict]:
    """``a`` through a random chain of the families (each with probability ``p``) and the parameters drawn,
    every draw from ``rng`` so that a seed gives the same images."""
    r = RANGES
    drawn = {}
    if rng.random() < p:  # one display curve: a tone curve or a gamma, as a chain has one look-up table
        if rng.random() < 0.5:
            drawn["tone curve"] = (float(np.exp(rng.uniform(*np.log(r["tone curve"])))), float(rng.uniform(96, 160)))
            a = tone_curve(a, *drawn["tone curve"])
        else:
            drawn["gamma"] = float(np.exp(rng.uniform(*np.log(r["gamma"]))))
            a = gamma(a, drawn["gamma"])
    if rng.random() < p:
        drawn["window"] = (float(rng.uniform(*r["window"])), float(rng.uniform(90.0, 100.0)))
        a = window(a, *drawn["window"])
    if rng.random() < p:
        drawn["down-up"] = float(rng.uniform(*r["down-up"]))
        a = down_up(a, drawn["down-up"])
    if rng.random() < p:
        drawn["blur"] = float(rng.uniform(*r["blur"]))
        a = blur(a, drawn["blur"])
    if rng.random() < p:
        drawn["noise"] = float(rng.uniform(*r["noise"]))
        a = noise(a, drawn["noise"], rng)
    if rng.random() < p:
        drawn["jpeg"] = int(rng.integers(r["jpeg"][0], r["jpeg"][1] + 1))
        a = jpeg(a, drawn["jpeg"])
    return np.clip(a, 0.0, 255.0).astype(np.float32), drawn
