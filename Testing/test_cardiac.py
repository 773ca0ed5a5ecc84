"""Cardiac function against values computed by hand from manual ACDC validation labels."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO, shared
from LightSegLib.cardiac import cardiac_function
from LightSegLib.cli import main
from LightSegLib.errors import LightSegError
from LightSegLib.io import write_output

SAMPLES = REPO / "Resources" / "Samples"
CARDIAC_LABELS = [{"value": v, "name": n, "color": [200, 50 * v, 40], "terminology": {
    "category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", c, n]}}
    for v, n, c in ((1, "right ventricle", "53085002"), (2, "myocardium", "74281007"), (3, "left ventricle", "87878005"))]


def by_hand(ed_path, es_path):
    ed = sitk.GetArrayFromImage(sitk.ReadImage(str(ed_path)))
    es = sitk.GetArrayFromImage(sitk.ReadImage(str(es_path)))
    ml = 1.5 * 1.5 * 10.0 / 1000.0  # the files' spacing
    lv_edv, lv_esv = (ed == 3).sum() * ml, (es == 3).sum() * ml
    rv_edv, rv_esv = (ed == 1).sum() * ml, (es == 1).sum() * ml
    return {"lv_edv_ml": lv_edv, "lv_esv_ml": lv_esv, "lv_sv_ml": lv_edv - lv_esv,
            "lv_ef_percent": 100 * (lv_edv - lv_esv) / lv_edv, "rv_edv_ml": rv_edv, "rv_esv_ml": rv_esv,
            "rv_ef_percent": 100 * (rv_edv - rv_esv) / rv_edv, "lv_myocardial_mass_g": (ed == 2).sum() * ml * 1.05}


@pytest.mark.parametrize("patient", ["patient002", "patient028", "patient085", "patient019"])
def test_function_matches_hand_computation_on_validation_labels(patient):
    if patient == "patient002":  # bundled
        ed, es = SAMPLES / "acdc_patient002_ED_label.nii.gz", SAMPLES / "acdc_patient002_ES_label.nii.gz"
    else:
        ed, es = (shared(f"acdc/labelsTr/{patient}_frame0{i}.nii.gz") for i in (1, 2))
    result = cardiac_function(sitk.ReadImage(str(ed)), sitk.ReadImage(str(es))).as_dict()
    for key, value in by_hand(ed, es).items():
        assert result[key] == pytest.approx(value, rel=1e-9), key
    assert 0 < result["lv_ef_percent"] < 100 and result["lv_myocardial_mass_g"] > 30
    assert any("nominal" in note for note in result["notes"])


def test_cli_json_and_seg_nrrd_inputs_agree(tmp_path, capsys):
    ed, es = SAMPLES / "acdc_patient002_ED_label.nii.gz", SAMPLES / "acdc_patient002_ES_label.nii.gz"
    assert main(["cardiac-function", "--ed", str(ed), "--es", str(es), "--json"]) == 0
    from_labelmaps = json.loads(capsys.readouterr().out)
    for phase, path in (("ed", ed), ("es", es)):
        write_output(sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkUInt8), tmp_path / f"{phase}.seg.nrrd",
                     CARDIAC_LABELS)
    assert main(["cardiac-function", "--ed", str(tmp_path / "ed.seg.nrrd"), "--es", str(tmp_path / "es.seg.nrrd"),
                 "--json"]) == 0
    from_segmentations = json.loads(capsys.readouterr().out)
    assert from_segmentations == from_labelmaps
    expected = by_hand(ed, es)
    assert from_labelmaps["lv_ef_percent"] == pytest.approx(expected["lv_ef_percent"])


def test_seg_nrrd_with_layers_as_slicer_saves_overlapping_segments(tmp_path):
    """Slicer stores overlapping segments in layers (a 4D NRRD); slicerio writes one here and our reader, without
    slicerio, gives each segment its cardiac value, matched by name, on the file's geometry."""
    slicerio = pytest.importorskip("slicerio")
    from LightSegLib.commands.cardiac_function import read_seg_nrrd_labels

    voxels = np.zeros((2, 10, 12, 14), np.uint8)  # layer, i, j, k
    voxels[0, 2:5, 3:6, 4:7] = 1
    voxels[1, 3:8, 3:6, 4:7] = 5
    ijk = np.array([[0.5, 0, 0, 10], [0, 0.7, 0, 20], [0, 0, 2, 30], [0, 0, 0, 1]])
    path = tmp_path / "two.seg.nrrd"
    slicerio.write_segmentation(str(path), {"voxels": voxels, "ijkToLPS": ijk, "encoding": "gzip", "segments": [
        {"id": "a", "name": "Left ventricle", "labelValue": 1, "layer": 0},
        {"id": "b", "name": "myocardium", "labelValue": 5, "layer": 1},
        {"id": "c", "name": "tumour", "labelValue": 2, "layer": 0}]})
    labels = read_seg_nrrd_labels(path)
    array = sitk.GetArrayFromImage(labels).transpose(2, 1, 0)  # back to i, j, k
    assert labels.GetSpacing() == (0.5, 0.7, 2.0) and labels.GetOrigin() == (10.0, 20.0, 30.0)
    assert set(np.unique(array)) == {0, 2, 3}
    assert np.array_equal(array == 2, voxels[1] == 5)  # myocardium written last wins where they overlap
    assert np.array_equal(array == 3, (voxels[0] == 1) & (voxels[1] != 5))


def test_absent_structure_and_mismatched_grids():
    ed = np.zeros((4, 10, 10), np.uint8)
    ed[1:3, 2:6, 2:6] = 3
    es = ed.copy()
    es[2] = 0                      # LV absent from one ES slice
    img = lambda a: sitk.GetImageFromArray(a)
    result = cardiac_function(img(ed), img(es))
    assert result.lv_ef_percent == pytest.approx(50.0)
    assert result.rv_ef_percent is None and any("no RV" in n for n in result.notes)
    assert result.slices_with["ES LV"] == 1 and result.slices_with["ED LV"] == 2
    with pytest.raises(LightSegError, match="different grids"):
        cardiac_function(img(ed), img(es[:3]))
    moved = img(es)
    moved.SetOrigin((0.0, 0.0, 5.0))  # the same size and spacing, five slices away: not the same series
    with pytest.raises(LightSegError, match="different grids"):
        cardiac_function(img(ed), moved)


@pytest.mark.parametrize("frame", ["frame01", "frame02"])
def test_fast_student_segments_a_validation_patient_as_its_card_says(frame):
    """cardiac-acdc-fast through the engine on a validation patient (not trained on): per-structure Dice close to
    the card's validation means, and the card lists it beside cardiac-acdc with size and speed."""
    import LightSegLib as L
    from LightSegLib.registry import get_model

    image = sitk.ReadImage(str(shared(f"acdc/imagesTr/patient085_{frame}.nii.gz")))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(shared(f"acdc/labelsTr/patient085_{frame}.nii.gz"))))
    pred = sitk.GetArrayFromImage(L.segment(image, "cardiac-acdc-fast", threads=1))
    dice = [2 * ((pred == v) & (truth == v)).sum() / ((pred == v).sum() + (truth == v).sum()) for v in (1, 2, 3)]
    assert min(dice) > 0.8 and np.mean(dice) > 0.88, dice
    card = get_model("cardiac-acdc-fast")
    assert card.status == "stable" and card.params < 0.01 * get_model("cardiac-acdc-teacher").params
    assert card.entry["metrics"]["dice_mean"] >= 0.90 and card.entry["speed"]["threads"] == 2
