"""DICOM outputs a PACS stores beside the images they came from: a segmentation as DICOM SEG, cardiac function as a
DICOM Structured Report (TID 1500 measurements) that references the segmentations.

highdicom and pydicom are an extra (``pip install 'lightseglib[dicom]'``), imported only here and only when a DICOM
output is asked for, so the plain install does without them.
"""
from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import __version__
from .cardiac import MYOCARDIUM_DENSITY_G_PER_ML
from .errors import LightSegError
from .quality import summary
from .segments import named_segments

INSTALL = "pip install 'lightseglib[dicom]'"
# the position of a SEG frame and its source slice agree to far better than this (mm)
POSITION_TOLERANCE_MM = 1e-3


def require() -> None:
    """Fail before any work when the DICOM extra is missing, in one line that says how to add it."""
    try:
        import highdicom  # noqa: F401
    except ImportError:
        raise LightSegError(f"DICOM SEG and SR outputs need highdicom: {INSTALL}") from None


class SourceSeries:
    """The headers of a DICOM series in the reader's slice order, loaded with highdicom's own tables in a background
    thread from construction on: started before the read (``prefetch``), that work overlaps the inference instead
    of adding to the write. ``series_files(folder)`` lists the series' files as ``io.read_dicom_folder`` reads
    them (``io.dicom_series``)."""

    def __init__(self, folder: Path, series_files):
        self.folder = Path(folder)
        self._datasets, self._notes, self._error = [], [], None
        self._thread = threading.Thread(target=self._load, args=(series_files,), daemon=True)
        self._thread.start()

    def _load(self, series_files) -> None:
        try:
            import pydicom
            from highdicom._standard_utils import get_module_attribute_map

            get_module_attribute_map()  # the standard's module tables: about a second of JSON, read once
            self._datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in series_files(self.folder)]
            self._notes = _fill_uids(self._datasets)
        except Exception as err:  # handed to the writer, which says it in one line
            self._error = err

    def datasets(self, notes: list[str] | None = None) -> list:
        self._thread.join()
        if self._error is not None:
            raise LightSegError(f"cannot read the DICOM headers of {self.folder}: {self._error}")
        if notes is not None:
            notes.extend(n for n in self._notes if n not in notes)
        return self._datasets


_PREFETCHED: dict[Path, SourceSeries] = {}


def prefetch(folder: Path, series_files) -> None:
    """Start loading a series' headers for the SEG that will be written from it (see SourceSeries)."""
    require()
    _PREFETCHED[Path(folder).resolve()] = SourceSeries(folder, series_files)


def _fill_uids(datasets: list) -> list[str]:
    """Anonymisers sometimes empty the UIDs a SEG must reference. The SOP UIDs are also in each file's meta header
    and are taken from there; an empty study or series UID gets a stand-in derived from the files (the same for
    every output of this series), and a note says that a PACS will not file the result with these images."""
    from pydicom.uid import generate_uid

    missing = set()
    for ds in datasets:
        for key in ("SOPClassUID", "SOPInstanceUID"):
            if not ds.get(key):
                setattr(ds, key, getattr(ds.file_meta, f"MediaStorage{key}"))
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet
    instances = sorted(str(ds.SOPInstanceUID) for ds in datasets)
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        if not all(ds.get(key) for ds in datasets):
            missing.add(key)
            stand_in = generate_uid(entropy_srcs=[key, *instances])
            for ds in datasets:
                setattr(ds, key, stand_in)
    if not missing:
        return []
    return [f"the source series has no {', '.join(sorted(missing))} (anonymised?): the DICOM output refers to "
            "stand-in UIDs derived from its files, so a PACS will not file it with these images"]


def _code(triple):
    """A card's ``[scheme, value, meaning]`` terminology code as a coded concept."""
    from highdicom.sr import CodedConcept

    scheme, value, meaning = triple
    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def _check_grid(label: sitk.Image, datasets: list, folder: Path) -> None:
    """The labelmap's slices are the series' files in order: same count, first slice at the first file's position."""
    if label.GetSize()[2] != len(datasets):
        raise LightSegError(f"the labelmap has {label.GetSize()[2]} slices, the DICOM series in {folder} "
                            f"{len(datasets)}: they do not belong together")
    first = np.array([float(v) for v in datasets[0].ImagePositionPatient])
    if np.abs(first - np.array(label.GetOrigin())).max() > POSITION_TOLERANCE_MM:
        raise LightSegError(f"the labelmap's first slice is not where the first image of {folder} lies")


def segment_descriptions(card, quality: dict, voxels: dict, voxel_ml: float) -> list:
    """One description per card label: name, SNOMED CT category and type, colour, the algorithm, and in the
    description text the structure's volume and the quality verdict, so a PACS reader sees them without
    LightSeg."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"LightSeg {card.id}", family=codes.cid7162.ArtificialIntelligence, version=card.version,
        source=f"LightSeg {__version__}",
        parameters={"model": card.id, "model_version": card.version, "weights_sha256": card.sha256})
    verdict = summary(quality)
    descriptions = []
    for number, segment in enumerate(named_segments(card.labels), start=1):
        terms = segment["terminology"]
        desc = hd.seg.SegmentDescription(
            segment_number=number, segment_label=segment["name"][:64],
            segmented_property_category=_code(terms["category"]), segmented_property_type=_code(terms["type"]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            anatomic_regions=[_code(terms["anatomicRegion"])] if terms.get("anatomicRegion") else None,
            display_color=hd.color.CIELabColor.from_rgb(*(round(c * 255) for c in segment["color"])))
        ml = voxels.get(segment["name"], 0) * voxel_ml
        desc.SegmentDescription = f"volume {ml:.1f} mL; {verdict}"[:1024]
        descriptions.append(desc)
    return descriptions


def verdict_word(quality: dict) -> str:
    """The verdict in a few words, for the series description a PACS lists."""
    if quality.get("flag"):
        return "LOW CONFIDENCE: check carefully"
    return "quality ok" if quality.get("calibrated") else "quality not calibrated"


def build_seg(label: sitk.Image, source: Path, series_files, card, quality: dict, voxels: dict,
              notes: list[str] | None = None):
    """A binary DICOM SEG of ``label`` (on the grid ``io.read_dicom_folder`` gave for the DICOM folder ``source``;
    ``series_files`` as for SourceSeries): one frame per source slice and segment, each at its source slice's
    position and referencing it, so a series with gaps keeps its true positions."""
    require()
    import highdicom as hd

    series = _PREFETCHED.pop(Path(source).resolve(), None) or SourceSeries(source, series_files)
    datasets = series.datasets(notes)
    _check_grid(label, datasets, series.folder)
    array = sitk.GetArrayViewFromImage(label)
    values = [int(item["value"]) for item in sorted(card.labels, key=lambda it: it["value"])]
    if values != list(range(1, len(values) + 1)):  # segment numbers run 1..N; the card's values may not
        lookup = np.zeros(256, np.uint8)
        lookup[values] = np.arange(1, len(values) + 1)
        array = lookup[array]
    voxel_ml = float(np.prod(label.GetSpacing())) / 1000.0
    series_number = int(datasets[0].get("SeriesNumber") or 0) + 1000
    with warnings.catch_warnings():  # highdicom's remarks on the source's own names (single-component PN)
        warnings.simplefilter("ignore", UserWarning)
        seg = hd.seg.Segmentation(
            source_images=datasets, pixel_array=array, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segment_descriptions(card, quality, voxels, voxel_ml),
            series_instance_uid=hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(),
            instance_number=1, manufacturer="LightSeg", manufacturer_model_name=card.id[:64],
            software_versions=f"LightSeg {__version__}", device_serial_number=card.sha256[:16],
            content_label="LIGHTSEG", content_description=verdict_word(quality)[:64],
            content_creator_name="LightSeg^", omit_empty_frames=False)
    seg.SeriesDescription = f"LightSeg {card.id} {card.version}: {verdict_word(quality)}"[:64]
    return seg


# ---------------------------------------------------------------- reading a SEG back
def read_seg(path) -> tuple[sitk.Image, dict[int, str], object]:
    """A DICOM SEG as a labelmap of segment numbers on its frames' grid, the segments' names by number, and the
    dataset itself (for references)."""
    require()
    import highdicom as hd

    try:
        seg = hd.seg.segread(str(path))
    except Exception as err:
        raise LightSegError(f"{path} is not a readable DICOM SEG: {str(err).splitlines()[0][:200]}") from None
    try:
        volume = seg.get_volume(combine_segments=True, dtype=np.uint8)
    except (ValueError, RuntimeError) as err:
        raise LightSegError(f"{path}: its frames do not form one regular volume ({str(err)[:160]})") from None
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))
    # highdicom's axes are (slice, row, column), ITK's (column, row, slice)
    image.SetSpacing([float(s) for s in volume.spacing[::-1]])
    image.SetDirection([float(v) for v in np.asarray(volume.direction)[:, ::-1].flatten()])
    image.SetOrigin([float(v) for v in volume.position])
    names = {int(item.SegmentNumber): str(item.SegmentLabel) for item in seg.SegmentSequence}
    return image, names, seg


# ---------------------------------------------------------------- cardiac function as a TID 1500 report
def _cardiac_codes():
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    ml = CodedConcept("ml", "UCUM", "milliliter")
    return {
        "ml": ml, "g": CodedConcept("g", "UCUM", "gram"), "%": codes.UCUM.Percent,
        "LV": codes.SCT.LeftVentricle, "RV": codes.SCT.RightVentricle,
        "myocardium": CodedConcept("74281007", "SCT", "Myocardium"),
        "LV EDV": codes.LN.LeftVentricularEndDiastolicVolume, "LV ESV": codes.LN.LeftVentricularEndSystolicVolume,
        "RV EDV": codes.LN.RightVentricularEDVolume, "RV ESV": codes.LN.RightVentricularESVolume,
        "SV": codes.SCT.StrokeVolume, "EF": codes.SCT.CardiacEjectionFraction, "volume": codes.SCT.Volume,
        "mass": codes.LN.LeftVentricleMass,
    }


def _segment_number(seg, names: dict[int, str], wanted: str, path) -> int:
    for number, name in names.items():
        if name.lower() == wanted:
            return number
    raise LightSegError(f"{path} has no segment named '{wanted}': it is not a cardiac segmentation")


def build_cardiac_sr(result, ed: tuple, es: tuple):
    """A Comprehensive 3D SR (TID 1500) of ``result`` (``cardiac.CardiacFunction``): per phase and ventricle the
    cavity volume measured on its segment of the ED or ES SEG (``(seg, names, path)`` each), the myocardium's
    volume and mass on the ED SEG, and per ventricle stroke volume and ejection fraction."""
    import highdicom as hd
    from highdicom.sr import (Comprehensive3DSR, DeviceObserverIdentifyingAttributes, Measurement,
                              MeasurementReport, MeasurementsAndQualitativeEvaluations, ObservationContext,
                              ObserverContext, ReferencedSegment, SourceSeriesForSegmentation,
                              TrackingIdentifier,
                              VolumetricROIMeasurementsAndQualitativeEvaluations)
    from pydicom.sr.codedict import codes

    c = _cardiac_codes()

    def measured(name, value, unit):
        return [Measurement(name=c[name], value=round(float(value), 2), unit=c[unit])] if value is not None else []

    def roi(phase, where, structure, measurements):
        seg, names, path = where
        number = _segment_number(seg, names, structure, path)
        return VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier=f"{structure} at {phase}"),
            referenced_segment=ReferencedSegment(  # the source series, not each image: the SR's evidence is the SEGs
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=number,
                source_series=SourceSeriesForSegmentation(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)),
            finding_type=c["myocardium"] if structure == "myocardium" else c["LV" if "left" in structure else "RV"],
            measurements=measurements)

    r = result
    groups = [
        roi("end-diastole", ed, "left ventricle", measured("LV EDV", r.lv_edv_ml, "ml")),
        roi("end-systole", es, "left ventricle", measured("LV ESV", r.lv_esv_ml, "ml")),
        roi("end-diastole", ed, "right ventricle", measured("RV EDV", r.rv_edv_ml, "ml")),
        roi("end-systole", es, "right ventricle", measured("RV ESV", r.rv_esv_ml, "ml")),
        roi("end-diastole", ed, "myocardium", measured("volume", r.lv_myocardial_mass_g / MYOCARDIUM_DENSITY_G_PER_ML, "ml")
            + measured("mass", r.lv_myocardial_mass_g, "g")),
    ]
    for side, sv, ef in (("LV", r.lv_sv_ml, r.lv_ef_percent), ("RV", r.rv_sv_ml, r.rv_ef_percent)):
        groups.append(MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier=f"{side} function"),
            finding_type=c[side], measurements=measured("SV", sv, "ml") + measured("EF", ef, "%")))
    device = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="LightSeg", model_name="cardiac-function", manufacturer_name="LightSeg"))
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=device),
        procedure_reported=hd.sr.CodedConcept("363679005", "SCT", "Imaging"), imaging_measurements=groups)
    source = ed[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sr = Comprehensive3DSR(
            evidence=[ed[0], es[0]], content=report, series_instance_uid=hd.UID(),
            series_number=int(source.get("SeriesNumber") or 0) + 1, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer="LightSeg", is_complete=True)
    sr.SeriesDescription = "LightSeg cardiac function"
    return sr
