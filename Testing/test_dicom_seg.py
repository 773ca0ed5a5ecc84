"""DICOM SEG and SR outputs on real DICOM series: valid by dciodvfy, pixels equal to the labelmap of the same result,
every frame at its source slice's position, and cardiac function as a TID 1500 report referencing its SEGs."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

import highdicom as hd
from conftest import REPO, shared
from LightSegLib import io
from LightSegLib.cli import main
from LightSegLib.errors import LightSegError
from LightSegLib.inference import make_runner, segment_image
from LightSegLib.registry import get_segmenter

CT_SERIES = ["totalseg_example/example_ct_dicom", "dcmqi_ct3slice"]


def dciodvfy_errors(path) -> list[str]:
    """dciodvfy's error lines for one file (its warnings are advice, not violations)."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("needs dciodvfy (Debian package dicom3tools; `make env` installs it)")
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def segment_both(folder, model, tmp_path, allow_gaps=False):
    """One segmentation of a DICOM folder written as a labelmap and as a DICOM SEG, as ``lightseg segment`` writes
    each: the labelmap array, the SEG path, the notes."""
    card = get_segmenter(model)
    notes = []
    image = io.read_image(folder, notes=notes, allow_gaps=allow_gaps)
    result = segment_image(image, card, make_runner(card, threads=2))
    io.write_output(result.labelmap, tmp_path / "labels.nii.gz", card.labels)
    io.write_output(result.labelmap, tmp_path / "seg.dcm", card.labels, notes=notes,
                    dicom={"source": folder, "card": card, "quality": result.quality, "voxels": result.voxels})
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels.nii.gz")))
    return labels, tmp_path / "seg.dcm", notes, result


def source_headers(folder) -> dict:
    """The series' DICOM headers in the reader's slice order, by SOP Instance UID (the file meta's, where an
    anonymiser emptied the dataset's)."""
    headers = {}
    for path in io.series_files(folder):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        headers[str(ds.get("SOPInstanceUID") or ds.file_meta.MediaStorageSOPInstanceUID)] = ds
    return headers


def check_frames(seg_path, labels, folder):
    """Every frame sits at its source slice's position, and per source slice the SEG's pixels are the labelmap's
    slice (the labelmap's slices in the reader's order)."""
    seg = hd.seg.segread(str(seg_path))
    sources = source_headers(folder)
    order = list(sources)
    assert seg.NumberOfFrames == len(order) * len(seg.SegmentSequence)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient] == \
            [float(v) for v in sources[uid].ImagePositionPatient]
    pixels = seg.get_pixels_by_source_instance(order, combine_segments=True, ignore_spatial_locations=True)
    np.testing.assert_array_equal(pixels, labels)
    return seg


@pytest.mark.parametrize("series", CT_SERIES)
def test_seg_of_a_ct_series_is_valid_and_equals_the_labelmap(series, tmp_path):
    folder = shared(series)
    labels, seg_path, notes, result = segment_both(folder, "liver-ct", tmp_path)
    assert labels.any()
    assert dciodvfy_errors(seg_path) == []
    seg = check_frames(seg_path, labels, folder)
    segment = seg.SegmentSequence[0]
    assert segment.SegmentLabel == "liver"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "123037004"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("LightSeg liver-ct", get_segmenter("liver-ct").version)
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    assert hd.color.CIELabColor.from_dicom_value(segment.RecommendedDisplayCIELabValue).to_rgb() == (221, 130, 101)
    ml = result.voxels["liver"] * np.prod(io.read_image(folder).GetSpacing()) / 1000
    assert segment.SegmentDescription.startswith(f"volume {ml:.1f} mL; quality ok")
    assert seg.SeriesDescription.endswith("quality ok") and seg.ContentCreatorName == "LightSeg^"
    assert seg.ContentDate and seg.StudyInstanceUID == next(iter(source_headers(folder).values())).StudyInstanceUID \
        or "stand-in UIDs" in " ".join(notes)


def test_a_series_with_a_gap_keeps_each_frame_on_its_own_slice(tmp_path):
    source = shared("totalseg_example/example_ct_dicom")
    folder = tmp_path / "gap"
    shutil.copytree(source, folder)
    dropped = sorted(folder.iterdir())[10]
    dropped.unlink()
    labels, seg_path, notes, _ = segment_both(folder, "liver-ct", tmp_path, allow_gaps=True)
    assert any("gap" in n or "missing" in n or "spacing" in n for n in notes), notes
    assert dciodvfy_errors(seg_path) == []
    seg = check_frames(seg_path, labels, folder)
    assert seg.NumberOfFrames == 19
    positions = sorted(float(f.PlanePositionSequence[0].ImagePositionPatient[2])
                       for f in seg.PerFrameFunctionalGroupsSequence)
    steps = np.diff(positions)
    assert sorted(set(np.round(steps, 3))) == [2.0, 4.0]  # the gap stays where it is


def test_a_low_confidence_verdict_is_in_the_series_description(tmp_path):
    """The pancreas model on the example series marks the stomach (its card says so): flagged, and a PACS series
    list and the segment's description say so."""
    _, seg_path, _, result = segment_both(shared(CT_SERIES[0]), "pancreas-ct", tmp_path)
    assert result.quality["flag"]
    seg = pydicom.dcmread(seg_path)
    assert "LOW CONFIDENCE" in seg.SeriesDescription
    assert "low confidence: check carefully (pancreas: mean confidence" in seg.SegmentSequence[0].SegmentDescription
    assert dciodvfy_errors(seg_path) == []


def test_dcm_output_is_refused_for_a_non_dicom_input(tmp_path, capsys):
    volume = REPO / "Resources" / "Samples" / "acdc_patient002_ED.nii.gz"
    assert main(["segment", "--model", "cardiac-acdc-fast", str(volume), str(tmp_path / "out.dcm")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a DICOM series" in err
    assert not (tmp_path / "out.dcm").exists()


def test_missing_highdicom_is_one_line_naming_the_extra(tmp_path):
    folder = shared("dcmqi_ct3slice")
    code = ("import sys; sys.modules['highdicom'] = None; from LightSegLib.cli import main; "
            f"sys.exit(main(['segment', '--model', 'liver-ct', {str(folder)!r}, {str(tmp_path / 'o.dcm')!r}]))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "pip install 'lightseglib[dicom]'" in run.stderr


def test_overwrite_replaces_an_earlier_seg_but_never_a_source_image(tmp_path):
    folder = shared("dcmqi_ct3slice")
    _, seg_path, _, _ = segment_both(folder, "liver-ct", tmp_path)
    assert io.check_output(seg_path, overwrite=True) == seg_path
    image = tmp_path / "image.dcm"
    shutil.copy(folder / "01.dcm", image)
    with pytest.raises(LightSegError, match="not a labelmap"):
        io.check_output(image, overwrite=True)


# ---------------------------------------------------------------- cardiac function as a DICOM SR
def make_mr_series(volume_path, folder, study_uid, frame_uid):
    """The bundled ACDC volume as an MR DICOM series (one file per slice, its geometry exactly), as a scanner
    would send it."""
    folder.mkdir(parents=True)
    image = sitk.ReadImage(str(volume_path))
    array = sitk.GetArrayFromImage(image)
    pixels = np.round(array / array.max() * 4095).astype(np.uint16)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    series_uid = generate_uid()
    spacing = image.GetSpacing()
    for k in range(array.shape[0]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "ACDC^patient002", "acdc002", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "20260101", "120000", "1", "", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = "MR", 1, k + 1, ""
        ds.ImagePositionPatient = [f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*direction[:, 0], *direction[:, 1])]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]
        ds.SliceThickness = f"{spacing[2]:.6f}"
        ds.Rows, ds.Columns = pixels.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = pixels[k].tobytes()
        ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)
    return folder


def sr_numbers(item, found=None) -> dict:
    """Every numeric measurement in an SR's content tree, by its concept name."""
    found = {} if found is None else found
    for child in item.get("ContentSequence", []):
        if child.ValueType == "NUM":
            name = child.ConceptNameCodeSequence[0].CodeMeaning
            found.setdefault(name, []).append(float(child.MeasuredValueSequence[0].NumericValue))
        sr_numbers(child, found)
    return found


def test_cardiac_function_as_an_sr_referencing_both_segs(tmp_path, capsys):
    study, frame = generate_uid(), generate_uid()
    segs = {}
    for phase in ("ED", "ES"):
        folder = make_mr_series(REPO / "Resources" / "Samples" / f"acdc_patient002_{phase}.nii.gz",
                                tmp_path / phase, study, frame)
        (tmp_path / phase.lower()).mkdir()
        labels, segs[phase], _, _ = segment_both(folder, "cardiac-acdc-fast", tmp_path / phase.lower())
        assert dciodvfy_errors(segs[phase]) == []
        check_frames(segs[phase], labels, folder)
    # the labelmaps of the same results give the same figures as the SEGs
    assert main(["cardiac-function", "--ed", str(tmp_path / "ed" / "labels.nii.gz"),
                 "--es", str(tmp_path / "es" / "labels.nii.gz"), "--json"]) == 0
    from_labelmaps = json.loads(capsys.readouterr().out)
    sr_path = tmp_path / "function.dcm"
    assert main(["cardiac-function", "--ed", str(segs["ED"]), "--es", str(segs["ES"]), "--sr", str(sr_path),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("lv_edv_ml", "lv_esv_ml", "lv_ef_percent", "rv_edv_ml", "lv_myocardial_mass_g"):
        assert result[key] == pytest.approx(from_labelmaps[key], rel=1e-6), key
    assert dciodvfy_errors(sr_path) == []
    sr = pydicom.dcmread(sr_path)
    numbers = sr_numbers(sr)
    assert numbers["Left Ventricular End Diastolic Volume"] == [pytest.approx(result["lv_edv_ml"], abs=0.01)]
    assert numbers["Left Ventricular End Systolic Volume"] == [pytest.approx(result["lv_esv_ml"], abs=0.01)]
    assert numbers["Left Ventricle Mass"] == [pytest.approx(result["lv_myocardial_mass_g"], abs=0.01)]
    assert numbers["Cardiac ejection fraction"] == [  # the LV group, then the RV group
        pytest.approx(result[k], abs=0.01) for k in ("lv_ef_percent", "rv_ef_percent")]
    referenced = {item.ReferencedSOPInstanceUID for study_item in sr.CurrentRequestedProcedureEvidenceSequence
                  for series in study_item.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert {str(pydicom.dcmread(segs[p]).SOPInstanceUID) for p in ("ED", "ES")} <= referenced


def test_sr_needs_dicom_segs(tmp_path, capsys):
    sample = REPO / "Resources" / "Samples" / "acdc_patient002_ED_label.nii.gz"
    assert main(["cardiac-function", "--ed", str(sample), "--es", str(sample), "--sr", str(tmp_path / "f.dcm")]) == 2
    assert "give --ed and --es as DICOM SEGs" in capsys.readouterr().err
    assert not (tmp_path / "f.dcm").exists()


def test_lightseg_segment_writes_a_seg_from_the_command_line(tmp_path):
    """What a user types: `lightseg segment <DICOM folder> out.dcm`, through the entry point, equals the labelmap."""
    folder = shared("dcmqi_ct3slice")
    dicom = tmp_path / "dicom"
    dicom.mkdir()
    for f in sorted(folder.glob("*.dcm")):
        shutil.copy(f, dicom / f.name)
    seg_path, label_path = tmp_path / "liver.dcm", tmp_path / "liver.nii.gz"
    for target in (seg_path, label_path):
        run = subprocess.run([sys.executable, "-m", "LightSegLib.cli", "segment", "--model", "liver-ct", "--threads",
                              "2", str(dicom), str(target)], capture_output=True, text=True, cwd=tmp_path)
        assert run.returncode == 0, run.stderr
    assert dciodvfy_errors(seg_path) == []
    check_frames(seg_path, sitk.GetArrayFromImage(sitk.ReadImage(str(label_path))), dicom)
