"""Is an input inside the model's world? The checks that decide, before and after the network runs, whether a
result may be called "quality ok" at all.

A network answers every input, and on an input unlike its training data it answers confidently: a CT stored
without its HU rescale was marked half liver with confidence 0.96, an 8 mm crop at the body's edge got 45 liver
voxels with 0.97. The confidence checks in ``quality`` cannot see that; these can, from the input's intensities
and geometry and from the size of what was found. Each returns plain-words reasons; any reason flags the result.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .errors import LightSegError

# The 1st-percentile intensity an input of each modality has (CT: the air around the body, in HU; MR: about 0,
# never far below), as (lowest, highest). Keyed by the card's modality.
LOW_PERCENTILE = {"CT": (-float("inf"), -300.0), "MR": (-300.0, float("inf"))}

# Voxel sizes (mm) a scan of each modality has: in-plane (lo, hi) and between slices (lo, hi).
SPACING = {"CT": ((0.2, 5.0), (0.2, 12.0)), "MR": ((0.2, 5.0), (0.2, 25.0))}

# The smallest in-plane field (mm, both axes) an organ model can read: an abdomen's cross-section for CT, a
# heart with its surroundings for cine MR. A crop smaller than this is not a scan the models were made for.
MIN_FIELD_MM = {"CT": 120.0, "MR": 80.0}

# More than any body holds (mL), by label name: a larger prediction is a wrong one whatever its confidence.
MAX_ORGAN_ML = {"liver": 5000.0, "pancreas": 400.0, "left ventricle": 800.0, "right ventricle": 800.0,
                "myocardium": 800.0}

# A CT stored as unsigned integers with the +1024 offset and no rescale: air sits near 0 and soft tissue at about
# 1024 (-200..200 HU -> 824..1224).
OFFSET_TISSUE = (824.0, 1224.0)


def sample_of(volume: np.ndarray) -> np.ndarray:
    """Every 2nd slice, every 4th row and column: enough for percentiles at a fraction of the cost."""
    return volume[::2, ::4, ::4]


def offset_coding(sample: np.ndarray) -> str | None:
    """How a volume reads as a CT stored without its HU rescale (values from about 0, soft tissue near 1024), or
    None. No ACDC cine frame (320) reads so."""
    if sample.size == 0:
        return None
    low, high = (float(v) for v in np.percentile(sample, [1, 99]))
    tissue = float(np.mean((sample >= OFFSET_TISSUE[0]) & (sample <= OFFSET_TISSUE[1])))
    if low >= -50.0 and high >= 1000.0 and tissue >= 0.05:
        return (f"intensities look like a CT stored without its HU rescale (1st percentile {low:g}, {tissue:.0%} of "
                f"voxels at {OFFSET_TISSUE[0]:g}-{OFFSET_TISSUE[1]:g}, where soft tissue sits after a +1024 offset)")
    return None


def check_coding(card, sample: np.ndarray) -> None:
    """Refuse a CT that reads as stored without its HU rescale: the CT models window HU, and on those values mark
    half the body. ``hu_offset`` applies a known offset."""
    reason = offset_coding(sample) if card.modality == "CT" else None
    if reason:
        raise LightSegError(f"{reason}: if the scanner stored HU + 1024, give hu_offset=-1024")


def apply_hu_offset(image, offset: float):
    """The image with ``offset`` added (a CT stored as HU + offset without its rescale: the offset the user states);
    integer images stay integers where the offset is whole."""
    whole = float(offset).is_integer() and "int" in image.GetPixelIDTypeAsString()
    return sitk.ShiftScale(sitk.Cast(image, sitk.sitkInt32 if whole else sitk.sitkFloat32), shift=float(offset))


def modality_note(card, low: float, high: float) -> str:
    """The note for intensities not of the model's modality, saying what they look like instead."""
    lo, hi = LOW_PERCENTILE[card.modality]
    if card.modality == "CT":
        looks = "are within [0, 1]" if high <= 1.0 else "look like MRI, or a CT without its HU rescale"
        return (f"intensities do not look like CT in Hounsfield units (1st percentile {low:g}, not below {hi:g} "
                f"as the air around a body is; they {looks}): '{card.id}' is a CT model, check the modality")
    return (f"intensities look like CT (1st percentile {low:g}, below {lo:g}), not {card.modality}: "
            f"'{card.id}' is an {card.modality} model, check the modality")


def input_reasons(card, spacing_xyz, size_xyz, sample: np.ndarray) -> tuple[list[str], list[str]]:
    """Why an input lies outside the model's world, from its intensities and geometry (empty when it does not),
    and the notes that say it at length for the user."""
    reasons, notes = [], []
    expected = LOW_PERCENTILE.get(card.modality)
    if expected is not None and sample.size:
        low, high = (float(v) for v in np.percentile(sample, [1, 99]))
        lo, hi = expected
        if not lo <= low <= hi:
            reasons.append(f"intensities not like {card.modality} (1st percentile {low:g})")
            notes.append(modality_note(card, low, high))
    bounds = SPACING.get(card.modality)
    if bounds is not None:
        (in_lo, in_hi), (z_lo, z_hi) = bounds
        inplane, between = spacing_xyz[:2], spacing_xyz[2]
        if not all(in_lo <= s <= in_hi for s in inplane) or not (z_lo <= between <= z_hi or size_xyz[2] == 1):
            reasons.append(f"voxel size ({', '.join(f'{s:g}' for s in spacing_xyz)}) mm is not a "
                           f"{card.modality} scan's")
    field = MIN_FIELD_MM.get(card.modality)
    if field is not None:
        extent = [n * s for n, s in zip(size_xyz[:2], spacing_xyz[:2])]
        if min(extent) < field:
            reasons.append(f"field of view {extent[0]:.0f} x {extent[1]:.0f} mm is smaller than the "
                           f"{field:.0f} mm the model reads")
    return reasons, notes


def organ_reasons(voxels: dict[str, int], voxel_ml: float) -> list[str]:
    """Predictions larger than a body holds."""
    return [f"{name}: {n * voxel_ml:,.0f} mL, more than a body holds ({MAX_ORGAN_ML[name]:,.0f} mL)"
            for name, n in voxels.items() if name in MAX_ORGAN_ML and n * voxel_ml > MAX_ORGAN_ML[name]]
