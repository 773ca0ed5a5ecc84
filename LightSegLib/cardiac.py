"""Cardiac function from end-diastolic (ED) and end-systolic (ES) labelmaps (1 RV, 2 myocardium, 3 LV).

Volumes are voxel counts times voxel volume, which is the disc-summation (Simpson) method on a short-axis
stack; slices where a structure is absent simply add nothing.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import SimpleITK as sitk

from .errors import LightSegError
from .grid import same_grid

MYOCARDIUM_DENSITY_G_PER_ML = 1.05
RV, MYO, LV = 1, 2, 3
VALUES_BY_NAME = {"right ventricle": RV, "myocardium": MYO, "left ventricle": LV}  # the cardiac models' segment names
NOMINAL_SPACINGS = {(1.0, 1.0, 1.0), (1.5, 1.5, 10.0)}
# Beyond these an end-diastolic volume (mL) or LV mass (g) is no adult or child heart's: a warning says so.
PLAUSIBLE = {"LV EDV": (10.0, 500.0), "RV EDV": (10.0, 550.0), "LV mass": (10.0, 400.0)}


@dataclass
class CardiacFunction:
    lv_edv_ml: float
    lv_esv_ml: float
    lv_sv_ml: float
    lv_ef_percent: float | None
    rv_edv_ml: float
    rv_esv_ml: float
    rv_sv_ml: float
    rv_ef_percent: float | None
    lv_myocardial_mass_g: float
    voxel_ml: float
    slices_with: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _ef(edv: float, esv: float) -> float | None:
    return 100.0 * (edv - esv) / edv if edv > 0 else None


def cardiac_function(ed: sitk.Image, es: sitk.Image) -> CardiacFunction:
    if not same_grid(ed, es):
        raise LightSegError("ED and ES labelmaps are on different grids (size, spacing, origin or direction differ): "
                            "they must come from the same cine series")
    voxel_ml = float(np.prod(ed.GetSpacing())) / 1000.0
    a_ed, a_es = sitk.GetArrayViewFromImage(ed), sitk.GetArrayViewFromImage(es)
    for phase, array in (("ED", a_ed), ("ES", a_es)):
        values = np.unique(array)
        unexpected = sorted(set(values.tolist()) - {0, RV, MYO, LV})
        if len(unexpected) > 8 or array.dtype.kind == "f" and unexpected:
            raise LightSegError(f"the {phase} input looks like an image ({len(values):,} distinct values), not a "
                                "labelmap: give the segmentation (1 RV, 2 myocardium, 3 LV)")
        if unexpected:
            raise LightSegError(f"unexpected label values {unexpected} in the {phase} labelmap: expected 1 RV, "
                                "2 myocardium, 3 LV")
    if not np.isin(a_ed, (MYO, LV)).any():
        raise LightSegError("the ED labelmap has no myocardium and no left ventricle: it is not a cardiac "
                            "segmentation (1 RV, 2 myocardium, 3 LV)")
    volume = lambda array, value: float(np.count_nonzero(array == value)) * voxel_ml
    lv_edv, lv_esv, rv_edv, rv_esv = volume(a_ed, LV), volume(a_es, LV), volume(a_ed, RV), volume(a_es, RV)
    slices = {f"{phase} {name}": int(np.count_nonzero((arr == value).any(axis=(1, 2))))
              for phase, arr in (("ED", a_ed), ("ES", a_es)) for name, value in (("RV", RV), ("MYO", MYO), ("LV", LV))}
    notes = []
    if tuple(round(s, 4) for s in ed.GetSpacing()) in NOMINAL_SPACINGS:
        notes.append(f"voxel spacing {tuple(ed.GetSpacing())} mm looks nominal, not measured: volumes and mass "
                     "scale with it, so check the scanner's pixel spacing and slice gap")
    for name, value in (("LV", LV), ("RV", RV)):
        if slices[f"ED {name}"] == 0:
            notes.append(f"no {name} cavity at end-diastole: its volumes and EF are not meaningful")
    result = CardiacFunction(
        lv_edv_ml=lv_edv, lv_esv_ml=lv_esv, lv_sv_ml=lv_edv - lv_esv, lv_ef_percent=_ef(lv_edv, lv_esv),
        rv_edv_ml=rv_edv, rv_esv_ml=rv_esv, rv_sv_ml=rv_edv - rv_esv, rv_ef_percent=_ef(rv_edv, rv_esv),
        lv_myocardial_mass_g=volume(a_ed, MYO) * MYOCARDIUM_DENSITY_G_PER_ML, voxel_ml=voxel_ml,
        slices_with=slices, notes=notes)
    if result.lv_esv_ml > result.lv_edv_ml:
        raise LightSegError(f"LV end-systolic volume ({lv_esv:.1f} mL) exceeds the end-diastolic one "
                            f"({lv_edv:.1f} mL): ED and ES look swapped, which would give a negative EF")
    if rv_esv > rv_edv:
        notes.append(f"RV end-systolic volume ({rv_esv:.1f} mL) exceeds the end-diastolic one ({rv_edv:.1f} mL): "
                     "check the RV segmentation")
    for name, value in (("LV EDV", lv_edv), ("RV EDV", rv_edv), ("LV mass", result.lv_myocardial_mass_g)):
        low, high = PLAUSIBLE[name]
        if slices[f"ED {name[:2]}"] and not low <= value <= high:
            notes.append(f"{name} {value:.0f} {'g' if 'mass' in name else 'mL'} is outside what a heart has "
                         f"({low:g}-{high:g}): check the voxel spacing and that the labelmaps are cardiac")
    return result


def format_table(result: CardiacFunction) -> str:
    fmt = lambda v, unit: "n/a" if v is None else f"{v:.1f} {unit}"
    rows = [("", "LV", "RV"),
            ("end-diastolic volume", fmt(result.lv_edv_ml, "mL"), fmt(result.rv_edv_ml, "mL")),
            ("end-systolic volume", fmt(result.lv_esv_ml, "mL"), fmt(result.rv_esv_ml, "mL")),
            ("stroke volume", fmt(result.lv_sv_ml, "mL"), fmt(result.rv_sv_ml, "mL")),
            ("ejection fraction", fmt(result.lv_ef_percent, "%"), fmt(result.rv_ef_percent, "%")),
            ("myocardial mass (ED)", fmt(result.lv_myocardial_mass_g, "g"), "")]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
