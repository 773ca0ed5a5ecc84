"""Odd inputs that used to get a confident answer, and commands that could destroy their input, through the real
`lightseg` entry point. A refused case: exit 2, exactly one stderr line, nothing on stdout (or valid JSON), no output,
the input unchanged. An accepted odd case: never "quality ok". Every file is made inside the test from real data.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SHARED_DATA, hu_and_offset_files, shared
from test_bad_input import CT_SMALL, SAMPLES, assert_refused, cli, dicom_copy, segment

ED = SAMPLES / "acdc_patient002_ED.nii.gz"


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def out(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


# ------------------------------------------------------------------ nothing of the user's is destroyed
@pytest.mark.parametrize("how", ["same path", "symbolic link", "hard link"])
def test_an_output_that_is_the_input_is_refused_even_with_overwrite(tmp_path, how):
    ct = tmp_path / "ct.nii.gz"
    shutil.copy(CT_SMALL, ct)
    before = digest(ct)
    target = {"same path": ct, "symbolic link": tmp_path / "link.nii.gz", "hard link": tmp_path / "hard.nii.gz"}[how]
    if how == "symbolic link":
        target.symlink_to(ct)
    elif how == "hard link":
        os.link(ct, target)
    proc = segment("--overwrite", ct, target)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [f"lightseg: error: output {target} is the input {ct}: choose another output "
                                        "name"], proc.stderr
    assert digest(ct) == before


def test_an_output_inside_the_input_dicom_folder_is_refused(tmp_path):
    folder, files = dicom_copy(tmp_path)
    proc = segment("--overwrite", folder, folder / "label.nii.gz")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "inside the input DICOM folder" in proc.stderr
    assert sorted(folder.iterdir()) == files


def test_overwrite_replaces_an_earlier_labelmap_but_never_an_image(tmp_path):
    ct = tmp_path / "ct.nii.gz"
    other = tmp_path / "other_ct.nii.gz"
    shutil.copy(CT_SMALL, ct)
    shutil.copy(CT_SMALL, other)
    label = tmp_path / "label.nii.gz"
    assert segment(ct, label).returncode == 0
    assert segment("--overwrite", ct, label).returncode == 0  # our own earlier output: replaced
    before = digest(other)
    proc = segment("--overwrite", ct, other)  # a CT that happens to be named as the output
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "is not a labelmap" in proc.stderr and digest(other) == before


def test_frame_all_refuses_an_output_that_is_the_input(tmp_path):
    cine = tmp_path / "cine.nii.gz"
    image = sitk.ReadImage(str(ED))
    sitk.WriteImage(sitk.JoinSeries([image, image]), str(cine))
    before = digest(cine)
    proc = cli("segment", "--model", "cardiac-acdc", "--frame", "all", "--overwrite", cine, cine)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert digest(cine) == before


# ------------------------------------------------------------------ a CT without its HU rescale
def test_a_ct_stored_without_its_rescale_is_refused_and_the_stated_offset_recovers_it(tmp_path, out):
    files = hu_and_offset_files(sitk.ReadImage(str(CT_SMALL)), tmp_path)
    proc = segment(files["uint16"], out / "label.nii.gz")
    assert_refused(proc, "stored without its HU rescale", out)
    assert "--hu-offset -1024" in proc.stderr
    fixed = segment("--hu-offset", "-1024", files["uint16"], out / "label.nii.gz")
    assert fixed.returncode == 0, fixed.stderr
    assert segment(files["hu"], out / "reference.nii.gz").returncode == 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "label.nii.gz"))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(out / "reference.nii.gz"))))


# ------------------------------------------------------------------ geometry the header gets wrong
def patched_nifti(source, target, patch) -> None:
    """A copy of a .nii.gz with its header bytes changed by ``patch(bytearray)``."""
    data = bytearray(gzip.decompress(source.read_bytes()))
    patch(data)
    target.write_bytes(gzip.compress(bytes(data)))


def test_a_zero_voxel_size_is_refused_in_plain_words(tmp_path, out):
    bad = tmp_path / "zero_pixdim.nii.gz"
    patched_nifti(ED, bad, lambda h: h.__setitem__(slice(88, 92), struct.pack("<f", 0.0)))  # pixdim[3]
    proc = cli("segment", "--model", "cardiac-acdc", bad, out / "label.nii.gz")
    assert_refused(proc, "its header gives no voxel size along z (pixdim[3] = 0)", out)


def test_a_qform_and_sform_that_disagree_are_refused_naming_both(tmp_path, out):
    bad = tmp_path / "two_transforms.nii.gz"

    def shift_sform(h):
        assert struct.unpack("<2h", h[252:256]) != (0, 0)  # SimpleITK writes both transforms
        h[252:256] = struct.pack("<2h", 1, 1)
        x = struct.unpack("<f", h[292:296])[0]
        h[292:296] = struct.pack("<f", x + 40.0)  # srow_x's offset: 40 mm to the side
    patched_nifti(ED, bad, shift_sform)
    proc = cli("segment", "--model", "cardiac-acdc", bad, out / "label.nii.gz")
    assert_refused(proc, "its two transforms disagree: the qform (code 1) gives spacing", out)
    assert "the sform (code 1)" in proc.stderr and "SimpleITK would use the" in proc.stderr


def test_a_direction_that_is_not_a_rotation_is_refused(tmp_path, out):
    image = sitk.ReadImage(str(CT_SMALL))
    bad = tmp_path / "sheared.nrrd"
    sitk.WriteImage(image, str(bad))
    text = bad.read_bytes()
    head, sep, body = text.partition(b"\n\n")
    lines = [line for line in head.split(b"\n") if not line.startswith(b"space directions")]
    lines.append(b"space directions: (3,0,0) (1.5,3,0) (0,0,3)")
    bad.write_bytes(b"\n".join(lines) + sep + body)
    assert_refused(segment(bad, out / "label.nii.gz"), "direction matrix is not a rotation", out)


# ------------------------------------------------------------------ accepted, but never "quality ok"
def test_a_small_crop_at_the_body_edge_is_never_quality_ok(tmp_path, out):
    image = sitk.ReadImage(str(CT_SMALL))
    crop = tmp_path / "crop.nii.gz"
    sitk.WriteImage(image[10:18, 45:53, 10:18], str(crop))
    proc = segment(crop, out / "label.nii.gz")
    assert proc.returncode == 0, proc.stderr
    summary = proc.stdout.strip().splitlines()[-1]
    assert "quality ok" not in summary and "low confidence: check carefully" in summary, summary
    assert "field of view" in summary and "smaller than the 120 mm the model reads" in summary, summary


def test_json_summary_says_why_an_odd_input_is_outside(tmp_path, out):
    """An MR given to a CT model: flagged in the JSON summary with the reason, each note once."""
    proc = segment("--progress", "jsonl", ED, out / "label.nii.gz")
    assert proc.returncode == 0, proc.stderr
    messages = [json.loads(line) for line in proc.stdout.splitlines()]
    quality = messages[-1]["summary"]["quality"]
    assert quality["flag"] and any("intensities not like CT" in r for r in quality["outside"]), quality
    notes = [m["note"] for m in messages if "note" in m]
    assert len(notes) == len(set(notes)), notes


# ------------------------------------------------------------------ radiographs
def xray(tmp_path):
    folder = shared("chest_xray/train/NORMAL")
    source = sorted(folder.glob("*.jpeg"))[0]
    target = tmp_path / source.name
    shutil.copy(source, target)
    return target


def test_a_jpeg_with_a_corrupt_middle_is_refused_and_json_stays_valid(tmp_path):
    image = xray(tmp_path)
    data = bytearray(image.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 800] = bytes((i * 37) % 256 for i in range(800))
    image.write_bytes(bytes(data))
    good = tmp_path / "good.jpeg"
    shutil.copy(sorted(shared("chest_xray/train/NORMAL").glob("*.jpeg"))[1], good)
    proc = cli("classify", "--model", "pneumonia-cxr", "--json", image, good)
    assert proc.returncode == 2
    results = json.loads(proc.stdout)  # nothing of libjpeg's on stdout
    assert [r["path"] for r in results] == [str(good)]
    assert len(proc.stderr.splitlines()) == 1 and "damaged image file" in proc.stderr, proc.stderr


def test_a_tiny_image_is_refused_with_its_size(tmp_path):
    tiny = tmp_path / "tiny.png"
    source = sitk.ReadImage(str(sorted(shared("chest_xray/train/NORMAL").glob("*.jpeg"))[0]))
    sitk.WriteImage(sitk.Shrink(source, [22, 22]), str(tiny))  # 10 x 10 pixels of a real film
    proc = cli("classify", "--model", "pneumonia-cxr", "--json", tiny)
    assert proc.returncode == 2 and json.loads(proc.stdout) == []
    assert proc.stderr.splitlines() == [f"lightseg: error: {tiny}: 10 x 10 pixels is too small for a chest "
                                        "radiograph (at least 128 x 128)"], proc.stderr


# ------------------------------------------------------------------ messages that name the thing
def test_a_dicom_slice_of_another_size_is_named(tmp_path, out):
    pydicom = pytest.importorskip("pydicom", reason="pydicom writes the test series")
    folder, files = dicom_copy(tmp_path)
    odd = files[6]
    ds = pydicom.dcmread(odd)
    ds.decompress()
    half = np.ascontiguousarray(ds.pixel_array[::2, ::2])
    ds.Rows, ds.Columns = half.shape
    ds.PixelData = half.tobytes()
    ds.save_as(odd)
    proc = segment(folder, out / "label.nii.gz")
    assert_refused(proc, f"slice {odd.name} is {half.shape[1]}x{half.shape[0]} pixels", out)
    assert "a series' slices must share one size" in proc.stderr


def test_a_series_without_its_uid_is_named_by_description_and_number(tmp_path):
    pydicom = pytest.importorskip("pydicom", reason="pydicom writes the test series")
    from LightSegLib.io import series_name

    folder, files = dicom_copy(tmp_path)
    ds = pydicom.dcmread(files[0])
    ds.SeriesInstanceUID = ""
    ds.SeriesDescription = "Abdomen 3mm"
    ds.SeriesNumber = 4
    ds.save_as(files[0])
    assert series_name("", [str(files[0])]) == "'Abdomen 3mm' number 4"


def test_a_detached_nrrd_cut_short_says_how_many_bytes_are_missing(tmp_path, out):
    header = tmp_path / "ct.nhdr"
    sitk.WriteImage(sitk.ReadImage(str(CT_SMALL)), str(header), False)
    raw = next(p for p in tmp_path.iterdir() if p.suffix == ".raw")
    size = raw.stat().st_size
    raw.write_bytes(raw.read_bytes()[: size - 1000])
    assert_refused(segment(header, out / "label.nii.gz"),
                   f"{raw.name} holds {size - 1000:,} bytes of image data, the header implies {size:,} "
                   "(1,000 missing", out)


def test_an_error_on_a_preview_model_is_one_line(tmp_path, out):
    proc = segment(tmp_path / "missing.nii.gz", out / "label.nii.gz")
    assert_refused(proc, "input not found", out)


def test_demo_run_twice_writes_a_fresh_folder_and_says_where(tmp_path):
    first = cli("demo", "--out", tmp_path / "demo", "--threads", "2")
    assert first.returncode == 0, first.stderr
    made = {p.name: digest(p) for p in (tmp_path / "demo").iterdir()}
    second = cli("demo", "--out", tmp_path / "demo", "--threads", "2")
    assert second.returncode == 0, second.stderr
    assert {p.name: digest(p) for p in (tmp_path / "demo").iterdir()} == made  # untouched
    assert f"{tmp_path / 'demo'} exists: writing to {tmp_path / 'demo-2'}" in second.stdout, second.stdout
    assert sorted(p.name for p in (tmp_path / "demo-2").iterdir()) == sorted(made)
