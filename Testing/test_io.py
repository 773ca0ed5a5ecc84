"""Volume I/O keeps geometry exactly: every format, oblique and anisotropic grids, LPS and RAS files, DICOM."""
import shutil

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

import LightSegLib as L
from conftest import REPO, shared
from LightSegLib.errors import LightSegError
from LightSegLib.io import seg_nrrd_segments
from model_fixtures import expected_labels


def rotation(axis, degrees):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


@pytest.fixture(scope="module")
def oblique_ct():
    """A real CT block on an oblique, anisotropic grid (0.7 x 0.7 x 2.5 mm, rotated about a skew axis)."""
    ct = sitk.ReadImage(str(REPO / "Resources/Samples/totalseg_example_ct_sm.nii.gz"))  # bundled
    image = sitk.Cast(ct[10:90, 5:75, 3:23], sitk.sitkInt16)
    image.SetSpacing((0.7, 0.7, 2.5))
    image.SetOrigin((-12.25, 30.5, -101.75))
    image.SetDirection(rotation((1, 2, 3), 37).ravel().tolist())
    return image


def ijk_to_lps(image: sitk.Image) -> np.ndarray:
    """The grid as slicerio states it: voxel index to LPS millimetres."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def assert_same_grid(a: sitk.Image, b: sitk.Image, tol=1e-5):
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=tol * 100)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=tol)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_volume_round_trip_keeps_oblique_geometry(oblique_ct, tmp_path, suffix):
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(oblique_ct, str(path))
    back = L.read_image(path)
    assert_same_grid(back, oblique_ct, tol=1e-6 if suffix != ".nii.gz" else 1e-5)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(oblique_ct))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha", ".seg.nrrd"])
def test_segmentation_written_on_input_grid(oblique_ct, tmp_path, quantiser, suffix):
    source = tmp_path / "ct.nrrd"
    sitk.WriteImage(oblique_ct, str(source))
    image = L.read_image(source)
    card = L.get_model("test-quantiser")
    label = L.segment(image, card)
    expected = expected_labels(sitk.GetArrayViewFromImage(oblique_ct))
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(label), expected)

    out = tmp_path / f"label{suffix}"
    L.write_output(label, out, card.labels)
    if suffix == ".seg.nrrd":
        seg = slicerio.read_segmentation(str(out))
        np.testing.assert_allclose(seg["ijkToLPS"], ijk_to_lps(oblique_ct), atol=1e-6)
        names = [s["name"] for s in seg["segments"]]
        assert names == ["level 1", "level 2", "level 3"]
        first = seg["segments"][0]
        np.testing.assert_allclose(first["color"], np.array([221, 130, 101]) / 255, atol=1e-5)
        assert first["terminology"]["type"] == ["SCT", "10200004", "Liver"]
        voxels = seg["voxels"]  # i, j, k order
        np.testing.assert_array_equal(voxels.transpose(2, 1, 0), expected)
    else:
        back = sitk.ReadImage(str(out))
        assert back.GetPixelID() == sitk.sitkUInt8
        assert_same_grid(back, oblique_ct)
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), expected)


def test_seg_nrrd_reads_back_as_slicerio_own_file(oblique_ct, tmp_path, quantiser):
    """Our ITK-written .seg.nrrd and one written by slicerio itself read back identically: segments (names,
    colours, label values, layers, extents, terminology), voxels and geometry; no input header field leaks in."""
    card = L.get_model("test-quantiser")
    label = L.segment(oblique_ct, card)
    label.SetMetaData("descrip", "from the input's header")
    ours, theirs = tmp_path / "ours.seg.nrrd", tmp_path / "theirs.seg.nrrd"
    L.write_output(label, ours, card.labels)
    array = sitk.GetArrayViewFromImage(label)
    slicerio.write_segmentation(str(theirs), {
        "voxels": np.ascontiguousarray(array.transpose(2, 1, 0)), "ijkToLPS": ijk_to_lps(oblique_ct),
        "segments": seg_nrrd_segments(array, card.labels), "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap"})
    a, b = slicerio.read_segmentation(str(ours)), slicerio.read_segmentation(str(theirs))
    assert a["segments"] == b["segments"] and len(a["segments"]) == 3
    assert a["segments"][1]["extent"][1] >= a["segments"][1]["extent"][0]  # a real, non-empty extent
    np.testing.assert_array_equal(a["voxels"], b["voxels"])
    np.testing.assert_allclose(a["ijkToLPS"], b["ijkToLPS"], atol=1e-9)
    for key in ("containedRepresentationNames", "masterRepresentation", "referenceImageExtentOffset"):
        assert a[key] == b[key]
    assert "descrip" not in a and "descrip" not in ours.read_bytes()[:4096].decode("latin-1")


def test_seg_nrrd_leaves_the_callers_labelmap_as_it_was(oblique_ct, tmp_path, quantiser):
    """The engine's labelmap carries the segment fields only while it is written (no copy of its voxels): after,
    the caller's image has no new header field, and a second file from it is the same."""
    card = L.get_model("test-quantiser")
    label = L.segment(oblique_ct, card)
    before = sitk.GetArrayFromImage(label)
    L.write_output(label, tmp_path / "a.seg.nrrd", card.labels)
    assert label.GetMetaDataKeys() == () and np.array_equal(sitk.GetArrayViewFromImage(label), before)
    L.write_output(label, tmp_path / "b.seg.nrrd", card.labels)
    assert (tmp_path / "a.seg.nrrd").read_bytes() == (tmp_path / "b.seg.nrrd").read_bytes()
    assert "Segment0_Name" in sitk.ReadImage(str(tmp_path / "a.seg.nrrd")).GetMetaDataKeys()


def test_ras_nrrd_file_is_read_in_lps_and_output_matches_physically(tmp_path, quantiser):
    """A NRRD written in RAS space: the labelmap must land on the same physical voxels."""
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(REPO / "Resources/Samples/totalseg_example_ct_sm.nii.gz")))[:12, :40, :50]
    data_ijk = ct.transpose(2, 1, 0).astype(np.int16)
    directions = np.diag([0.8, 0.8, 3.0]) @ rotation((0, 0, 1), 20)
    origin_ras = np.array([15.0, -20.0, 40.0])
    path = tmp_path / "ras.nrrd"
    nrrd.write(str(path), data_ijk, {"space": "right-anterior-superior", "space directions": directions.T,
                                     "space origin": origin_ras, "kinds": ["domain"] * 3})
    image = L.read_image(path)
    np.testing.assert_allclose(image.GetOrigin(), origin_ras * [-1, -1, 1], atol=1e-6)
    label = L.segment(image, "test-quantiser")
    out = tmp_path / "label.nrrd"
    L.write_output(label, out, L.get_model("test-quantiser").labels)
    data, header = nrrd.read(str(out))
    assert header["space"] == "left-posterior-superior"
    to_lps = np.diag([-1, -1, 1])
    np.testing.assert_allclose(np.asarray(header["space directions"], float), (to_lps @ directions.T.T).T, atol=1e-6)
    np.testing.assert_allclose(header["space origin"], to_lps @ origin_ras, atol=1e-6)
    np.testing.assert_array_equal(data, expected_labels(data_ijk))


def test_dicom_series_geometry_matches_reference_labels():
    folder = shared("totalseg_example/example_ct_dicom")
    image = L.read_image(folder)
    assert image.GetSize() == (512, 512, 20)
    # The reference labels were saved on a y-flipped grid: the same voxels in space, stored the other way.
    reference = sitk.ReadImage(str(shared("totalseg_example/example_seg_dicom.nii.gz")))
    assert reference.GetSize() == image.GetSize()
    corners = lambda im: sorted(tuple(np.round(im.TransformIndexToPhysicalPoint(c), 3))
                                for c in [(i, j, k) for i in (0, 511) for j in (0, 511) for k in (0, 19)])
    assert corners(image) == corners(reference)
    on_our_grid = sitk.Resample(reference, image, sitk.Transform(), sitk.sitkNearestNeighbor)
    hu = sitk.GetArrayViewFromImage(image)
    liver = sitk.GetArrayViewFromImage(on_our_grid) == 5
    assert liver.sum() > 10000 and 40 < hu[liver].mean() < 150  # contrast-enhanced liver parenchyma


def test_dcmqi_three_slice_dicom_matches_its_nrrd_masks():
    folder = shared("dcmqi_ct3slice")
    image = L.read_image(folder)
    assert image.GetSize() == (512, 512, 3)
    mask = sitk.ReadImage(str(folder / "liver_seg.nrrd"))
    assert_same_grid(image, mask, tol=1e-4)


def test_folder_with_two_series_uses_largest_and_says_so(tmp_path):
    for source in list(shared("dcmqi_ct3slice").glob("*.dcm")) + list(shared("totalseg_example/example_ct_dicom").iterdir()):
        shutil.copy(source, tmp_path / source.name)
    notes = []
    image = L.read_image(tmp_path, notes=notes)
    assert image.GetSize()[2] == 20
    assert len(notes) == 1 and "2 DICOM series" in notes[0] and "largest" in notes[0]


def test_four_d_needs_a_frame_and_frame_is_extracted(tmp_path):
    frames = np.stack([np.full((4, 5, 6), f, np.int16) + np.arange(6, dtype=np.int16) for f in range(3)])
    image = sitk.GetImageFromArray(frames, isVector=False)  # 4D: t, z, y, x
    path = tmp_path / "cine.nii.gz"
    sitk.WriteImage(image, str(path))
    with pytest.raises(LightSegError, match="frame=N"):
        L.read_image(path)
    one = L.read_image(path, frame=2)
    assert one.GetDimension() == 3
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(one), frames[2])
    with pytest.raises(LightSegError, match="out of range"):
        L.read_image(path, frame=3)


def test_atomic_write_refuses_to_overwrite(tmp_path):
    label = sitk.Image(4, 4, 4, sitk.sitkUInt8)
    out = tmp_path / "label.nii.gz"
    L.write_output(label, out, [])
    with pytest.raises(LightSegError, match="overwrite=True"):
        L.write_output(label, out, [])
    L.write_output(label, out, [], overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["label.nii.gz"]
