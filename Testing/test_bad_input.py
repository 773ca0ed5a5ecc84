"""Damaged, odd and unwritable inputs through the real `lightseg` entry point: each bad case must end with exit code
2, exactly one line on stderr, nothing on stdout and no output or temporary file; never exit 0 with a labelmap.

Every damaged file is made inside the test from the real data (../shared/data, or the bundled samples).
"""
from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO, shared

SAMPLES = REPO / "Resources" / "Samples"
CT_SMALL = SAMPLES / "totalseg_example_ct_sm.nii.gz"
SEG_SMALL = SAMPLES / "totalseg_example_seg_sm.nii.gz"
ED_LABEL, ES_LABEL = SAMPLES / "acdc_patient002_ED_label.nii.gz", SAMPLES / "acdc_patient002_ES_label.nii.gz"


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "LightSegLib.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=timeout)


def segment(*args):
    return cli("segment", "--model", "liver-ct", "--threads", "1", *args)


def assert_refused(proc, pattern, out_dir):
    """Exit 2, one stderr line naming the problem (a preview model's note is in the summary line, not here), no
    summary, and an output folder left empty."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("lightseg: error:") and pattern in lines[0], lines[0]
    assert proc.stdout.strip() == ""
    assert sorted(p.name for p in out_dir.iterdir()) == [], "an output or temporary file was left"


@pytest.fixture
def out(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


# ------------------------------------------------------------------ damaged NIfTI, NaN/Inf in any format
def ct_bytes() -> bytes:
    return gzip.decompress(CT_SMALL.read_bytes())


def cut(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


def float_ct(fill) -> np.ndarray:
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(CT_SMALL))).astype(np.float32)
    fill(array)
    return array


def write_float(path, array):
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(sitk.ReadImage(str(CT_SMALL)))
    sitk.WriteImage(image, str(path), True)


def one_nan(a):
    a[a.shape[0] // 2, 40, 40] = np.nan


DAMAGED = {
    "nii.gz cut to 50%": ("ct.nii.gz", lambda p: p.write_bytes(cut(CT_SMALL.read_bytes(), 0.5)), "truncated"),
    "nii.gz cut to 90%": ("ct.nii.gz", lambda p: p.write_bytes(cut(CT_SMALL.read_bytes(), 0.9)), "truncated"),
    "nii.gz cut to 99.9%": ("ct.nii.gz", lambda p: p.write_bytes(cut(CT_SMALL.read_bytes(), 0.999)), "truncated"),
    "nii cut to 90%": ("ct.nii", lambda p: p.write_bytes(cut(ct_bytes(), 0.9)), "truncated"),
    "nii with its header only": ("ct.nii", lambda p: p.write_bytes(ct_bytes()[:352]), "truncated"),
    "nii.gz, gzip of a cut nii": ("ct.nii.gz", lambda p: p.write_bytes(gzip.compress(cut(ct_bytes(), 0.7))),
                                  "truncated"),
    "nii.gz with corrupt bytes": ("ct.nii.gz", lambda p: p.write_bytes(
        (lambda b: bytes(b[: len(b) // 2]) + b"\0" * 500 + bytes(b[len(b) // 2 + 500:]))(CT_SMALL.read_bytes())),
        "gzip data is corrupt"),
    "nii.gz, one NaN voxel": ("f.nii.gz", lambda p: write_float(p, float_ct(one_nan)), "NaN or infinite"),
    "nii.gz, all NaN": ("f.nii.gz", lambda p: write_float(p, float_ct(lambda a: a.fill(np.nan))), "NaN or infinite"),
    "nii, +Inf voxels": ("f.nii", lambda p: write_float(p, float_ct(lambda a: a.__setitem__((0, 0), np.inf))),
                         "NaN or infinite"),
    "nrrd, one NaN voxel": ("f.nrrd", lambda p: write_float(p, float_ct(one_nan)), "NaN or infinite"),
    "mha, -Inf voxels": ("f.mha", lambda p: write_float(p, float_ct(lambda a: a.__setitem__(3, -np.inf))),
                         "NaN or infinite"),
    "empty .nii.gz file": ("e.nii.gz", lambda p: p.write_bytes(b""), "not a readable image"),
    "text renamed .nii.gz": ("t.nii.gz", lambda p: p.write_text("not an image\n"), "not a readable image"),
    "labelmap given as image": ("seg.nii.gz", lambda p: shutil.copy(SEG_SMALL, p), "looks like a labelmap"),
}


@pytest.mark.parametrize("case", DAMAGED, ids=list(DAMAGED))
def test_damaged_volume_is_refused(case, tmp_path, out):
    name, make, pattern = DAMAGED[case]
    source = tmp_path / name
    make(source)
    assert_refused(segment(source, out / "label.nii.gz"), pattern, out)


# ------------------------------------------------------------------ DICOM series
def dicom_copy(tmp_path):
    folder = tmp_path / "dicom"
    shutil.copytree(shared("totalseg_example/example_ct_dicom"), folder)
    for f in folder.iterdir():
        f.chmod(0o644)
    return folder, sorted(folder.iterdir())


def edit(path, old: bytes, new: bytes):
    data = path.read_bytes()
    assert data.count(old) == 1 and len(old) == len(new)
    path.write_bytes(data.replace(old, new))


def slice_z(path) -> bytes:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader.GetMetaData("0020|0032").strip().encode()


DICOM = {
    "a missing slice": (lambda files: files[7].unlink(), "missing slice"),
    "a slice with its start overwritten": (lambda files: files[7].write_bytes(
        b"\xff" * 4000 + files[7].read_bytes()[4000:]), "missing slice"),
    "a slice unreadable past its DICM marker": (lambda files: files[7].write_bytes(
        files[7].read_bytes()[:132] + os.urandom(3000)), "cannot be read"),
    "a duplicated slice": (lambda files: shutil.copy(files[5], files[5].parent / "copy.dcm"), "duplicated"),
    "uneven spacing": (lambda files: edit(files[9], slice_z(files[9]), slice_z(files[9])[:-1] + b"1"),
                       "uneven slice spacing"),
    "a slice of another orientation": (lambda files: edit(files[4], b"1\\0\\0\\0\\1\\0", b"1\\0\\0\\0\\0\\1"),
                                       "different sizes or orientations"),
}


@pytest.mark.parametrize("case", DICOM, ids=list(DICOM))
def test_damaged_dicom_series_is_refused(case, tmp_path, out):
    folder, files = dicom_copy(tmp_path)
    damage, pattern = DICOM[case]
    damage(files)
    assert_refused(segment(folder, out / "label.nii.gz"), pattern, out)


def test_allow_gaps_reads_a_gappy_series_with_a_note_and_no_raw_itk_warning(tmp_path, out):
    folder, files = dicom_copy(tmp_path)
    files[7].unlink()
    proc = segment("--allow-gaps", folder, out / "label.nii.gz")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if "is a preview model" not in line]
    assert all(line.startswith("lightseg: note: dicom: ") for line in lines), proc.stderr  # nothing raw from ITK
    assert any("missing slice" in line and "accepted" in line for line in lines)
    assert sitk.ReadImage(str(out / "label.nii.gz")).GetSize() == (512, 512, 19)


def test_dicom_folder_with_other_files_is_read_as_its_series(tmp_path, out):
    """dcmqi's folder holds three DICOM slices and NRRD masks: one series, not a batch of volumes."""
    proc = segment(shared("dcmqi_ct3slice"), out / "label.nii.gz")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["label.nii.gz"]
    assert sitk.ReadImage(str(out / "label.nii.gz")).GetSize() == (512, 512, 3)


# ------------------------------------------------------------------ failing writes
@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs, filled up: a real full disk."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip() or 'not root'})")
    try:
        out = mount / "out"
        out.mkdir()
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        yield out
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".seg.nrrd", ".nrrd"])
def test_full_disk_is_one_line_and_leaves_no_partial_file(small_disk, suffix):
    assert_refused(segment(CT_SMALL, small_disk / f"label{suffix}"), "No space left on device", small_disk)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_a_written_nifti_cut_short_is_caught(tmp_path, suffix):
    """The check after writing reads only the header and the end: a file cut by a full disk at any point fails."""
    from LightSegLib.validate import nifti_complete

    label = sitk.GetImageFromArray((np.arange(40 * 64 * 64).reshape(40, 64, 64) % 7 == 0).astype(np.uint8))
    path = tmp_path / f"label{suffix}"
    sitk.WriteImage(label, str(path), True)
    whole = path.read_bytes()
    assert nifti_complete(path)
    for keep in (len(whole) // 2, len(whole) - 1, 600):
        path.write_bytes(whole[:keep])
        assert not nifti_complete(path), keep
    path.write_bytes(b"")
    assert not nifti_complete(path)


def test_read_only_file_system(tmp_path):
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        assert_refused(segment(CT_SMALL, mount / "label.nii.gz"), "Read-only file system", mount)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_name_too_long(out):
    assert_refused(segment(CT_SMALL, out / ("x" * 300 + ".nii.gz")), "File name too long", out)


def test_output_folder_is_a_file(tmp_path, out):
    (out / "file").write_text("")
    proc = segment(CT_SMALL, out / "file" / "label.nii.gz")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["file"]


def test_batch_goes_on_after_a_failure_and_names_it(tmp_path, out):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(cut(CT_SMALL.read_bytes(), 0.5))
    good = tmp_path / "good.nii.gz"
    shutil.copy(CT_SMALL, good)
    proc = segment(bad, good, out)
    assert proc.returncode == 2
    err = [line for line in proc.stderr.strip().splitlines() if "is a preview model" not in line]
    assert len(err) == 2 and "bad.nii.gz is truncated" in err[0], proc.stderr
    assert err[1] == "lightseg: 1 of 2 inputs failed: bad.nii.gz"
    assert proc.stdout.startswith("good.nii.gz ->")
    assert sorted(p.name for p in out.iterdir()) == ["good.nii.gz"]


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_sigkill_during_the_write_leaves_no_output_and_no_temporary_file(tmp_path, out):
    """Killed at the write stage (a big noisy labelmap takes a while to compress): afterwards the output is either
    absent or complete, and no temporary file is left (the cleanup process removes it)."""
    ct = sitk.ReadImage(str(shared("totalseg_example/example_ct.nii.gz")))
    big = sitk.Expand(ct, [4, 4, 2])
    noise = np.random.default_rng(0).integers(-60, 60, size=big.GetSize()[::-1]).astype(np.int32)
    noisy = sitk.GetImageFromArray(sitk.GetArrayViewFromImage(big) + noise)
    noisy.CopyInformation(big)
    source = tmp_path / "big.nrrd"
    sitk.WriteImage(noisy, str(source))
    from model_fixtures import make_model_folder

    models = make_model_folder(tmp_path / "models")
    env = {**os.environ, "PYTHONPATH": str(REPO), "LIGHTSEG_MODELS_DIR": str(models)}
    killed_mid_write = 0
    for delay in (0.0, 0.05, 0.15):
        target = out / f"label{delay}.nii.gz"
        proc = subprocess.Popen([sys.executable, "-m", "LightSegLib.cli", "segment", "--model", "test-quantiser",
                                 "--threads", "1", "--progress", "jsonl", str(source), str(target)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO, env=env)
        for line in proc.stdout:
            if '"write"' in line:
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=60)
        deadline = time.monotonic() + 5
        while any(p.name.startswith(".") for p in out.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
        if target.exists():
            assert sitk.ReadImage(str(target)).GetSize() == noisy.GetSize()  # complete, or not there at all
        else:
            killed_mid_write += proc.returncode == -signal.SIGKILL
    assert killed_mid_write >= 1


# ------------------------------------------------------------------ odd requests
def test_int8_on_a_model_without_int8(out):
    assert_refused(cli("segment", "--model", "pancreas-ct", "--threads", "1", "--int8", CT_SMALL, out / "label.nii.gz"),
                   "has no int8 version", out)


def cardiac(*args):
    proc = cli("cardiac-function", *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and proc.stdout == "", proc.stderr
    return lines[0]


def test_cardiac_function_refuses_a_liver_labelmap(tmp_path):
    liver = tmp_path / "liver.nii.gz"
    seg = sitk.ReadImage(str(shared("totalseg_example/example_seg.nii.gz")))
    sitk.WriteImage(sitk.Cast(seg == 5, sitk.sitkUInt8), str(liver))  # 5: liver in TotalSegmentator's map
    assert "not a cardiac segmentation" in cardiac("--ed", liver, "--es", liver)


def test_cardiac_function_refuses_swapped_ed_and_es():
    assert "look swapped" in cardiac("--ed", ES_LABEL, "--es", ED_LABEL)


def test_cardiac_function_refuses_an_image_given_as_labelmap():
    assert "looks like an image" in cardiac("--ed", SAMPLES / "acdc_patient002_ED.nii.gz", "--es", ES_LABEL)


def test_cardiac_function_warns_outside_physiology(tmp_path):
    paths = []
    for source in (ED_LABEL, ES_LABEL):
        image = sitk.ReadImage(str(source))
        image.SetSpacing([s * 3 for s in image.GetSpacing()])
        paths.append(tmp_path / source.name)
        sitk.WriteImage(image, str(paths[-1]))
    proc = cli("cardiac-function", "--ed", paths[0], "--es", paths[1])
    assert proc.returncode == 0 and "outside what a heart has" in proc.stderr, proc.stderr


# ------------------------------------------------------------------ batch a user can trust
def test_skip_existing_resumes_a_batch_and_folder_is_created(tmp_path):
    inputs = []
    for name in ("a.nii.gz", "b.nii.gz"):
        inputs.append(tmp_path / name)
        shutil.copy(CT_SMALL, inputs[-1])
    target = tmp_path / "new" / "folder"
    (target).mkdir(parents=True)
    (target / "a.nii.gz").write_bytes(b"from an earlier run")
    proc = segment("--skip-existing", *inputs, str(target) + "/")
    assert proc.returncode == 0, proc.stderr
    assert "a.nii.gz: skipped" in proc.stderr and proc.stdout.startswith("b.nii.gz ->")
    assert (target / "a.nii.gz").read_bytes() == b"from an earlier run"
    created = tmp_path / "created"
    proc = segment(*inputs, str(created) + "/")
    assert proc.returncode == 0 and sorted(p.name for p in created.iterdir()) == ["a.nii.gz", "b.nii.gz"]


def test_notes_name_their_file(tmp_path, out):
    proc = segment(shared("totalseg_example/example_mr_sm.nii.gz"), out)
    assert proc.returncode == 0, proc.stderr
    assert "lightseg: note: example_mr_sm.nii.gz: intensities do not look like CT" in proc.stderr


# ------------------------------------------------------------------ Python API
def test_api_warns_about_reversed_spacing_and_assumed_orientation():
    import LightSegLib as L

    image = sitk.ReadImage(str(SAMPLES / "acdc_patient002_ED.nii.gz"))
    array = sitk.GetArrayFromImage(image)  # [z, y, x], few thick slices
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        L.segment(array, "cardiac-acdc", spacing=image.GetSpacing()[::-1], threads=1)
    said = [str(w.message) for w in caught if issubclass(w.category, L.LightSegWarning)]
    assert any("did you mean" in s for s in said) and any("taken as the patient's LPS" in s for s in said), said
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        L.segment(array, "cardiac-acdc", spacing=image.GetSpacing(), direction=image.GetDirection(), threads=1)
    assert not [w for w in caught if issubclass(w.category, L.LightSegWarning)]


def test_api_segment_image_takes_an_id_and_its_errors_name_no_cli_flag(tmp_path):
    import LightSegLib as L

    image = sitk.ReadImage(str(CT_SMALL))
    result = L.segment_image(image, "liver-ct", threads=1)
    assert result.voxels["liver"] > 0
    out = tmp_path / "l.nii.gz"
    L.write_output(result.labelmap, out, [])
    for call in (lambda: L.write_output(result.labelmap, out, []),
                 lambda: L.read_image(tmp_path / "missing"),
                 lambda: L.segment_image(image, "pancreas-ct", int8=True)):
        with pytest.raises(L.LightSegError) as err:
            call()
        assert "--" not in str(err.value), err.value
