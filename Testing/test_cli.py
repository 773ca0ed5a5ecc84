"""The `lightseg` contract: outputs, batch mode, progress lines, and a one-line error (exit 2) for bad input."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO, shared
from LightSegLib.cli import main
from model_fixtures import expected_labels


@pytest.fixture
def volume(tmp_path):
    array = np.random.default_rng(2).integers(-20, 120, size=(6, 24, 32)).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.7, 2.5))
    path = tmp_path / "vol.nrrd"
    sitk.WriteImage(image, str(path))
    return path


def run_cli(*args):
    """The real entry point in its own process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "LightSegLib.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, env=dict(os.environ), timeout=120)


def assert_user_error(capsys, args, pattern, no_file=None):
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("lightseg: error:") and pattern in lines[-1], err
    assert "Traceback" not in err
    if no_file is not None:
        assert not no_file.exists()


def test_segment_writes_labelmap_and_summary(quantiser, volume, tmp_path):
    out = tmp_path / "out.nii.gz"
    proc = run_cli("segment", "--model", "test-quantiser", "--threads", "1", volume, out)
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip().splitlines()[-1]
    assert "vol.nrrd ->" in line and "infer" in line and "level 1" in line
    assert line.endswith("| preview model: read its card before trusting the result"), line
    assert "preview" not in proc.stderr  # said once, in the summary line: an error stays one line
    expected = expected_labels(sitk.GetArrayFromImage(sitk.ReadImage(str(volume))))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), expected)


def test_threads_option_bounds_simpleitk_too(quantiser, volume, tmp_path):
    """--threads holds for reading, resampling and post-processing (SimpleITK), not only for the network."""
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    try:
        assert main(["segment", "--model", "test-quantiser", "--threads", "1", str(volume),
                     str(tmp_path / "o.nii.gz")]) == 0
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 1
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def test_jsonl_progress_for_programs(quantiser, volume, tmp_path):
    out = tmp_path / "out.seg.nrrd"
    proc = run_cli("segment", "--model", "test-quantiser", "--progress", "jsonl", volume, out)
    assert proc.returncode == 0, proc.stderr
    messages = [json.loads(line) for line in proc.stdout.splitlines()]
    stages = [m["stage"] for m in messages if "stage" in m]
    assert stages[0] == "read" and "infer" in stages and stages[-1] == "write"
    assert messages[-1]["done"] is True and messages[-1]["output"] == str(out)
    q = messages[-1]["summary"]["quality"]  # the analytic test model has no calibrated thresholds, but its test
    assert q["calibrated"] is False and "level 1" in q["labels"]  # volume has no air: not a CT it knows
    assert q["flag"] is True and any(r.startswith("intensities not like CT") for r in q["outside"]), q
    assert out.is_file()


def test_jsonl_carries_notes_and_errors_in_the_one_stream(quantiser, volume, tmp_path):
    """A program reads notes and errors from the JSON lines, nothing from stderr."""
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image")
    out = tmp_path / "out"
    out.mkdir()
    proc = run_cli("segment", "--model", "test-quantiser", "--progress", "jsonl", volume, bad, out)
    assert proc.returncode == 2 and proc.stderr == ""
    messages = [json.loads(line) for line in proc.stdout.splitlines()]
    notes = [m["note"] for m in messages if "note" in m]
    errors = [m["error"] for m in messages if "error" in m]
    assert any(m.get("summary", {}).get("status") == "preview" for m in messages), messages
    assert len(notes) == len(set(notes)), notes  # each note once
    assert any("bad.nii.gz" in e for e in errors) and any("1 of 2 inputs failed" in e for e in errors)
    assert sum(1 for m in messages if m.get("done")) == 1  # the good input still segmented


def test_batch_folder_with_jobs(quantiser, volume, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        shutil.copy(volume, inputs / f"case{i}.nrrd")
    outputs = tmp_path / "out"
    outputs.mkdir()
    assert main(["segment", "--model", "test-quantiser", "--jobs", "2", "--format", "mha", str(inputs), str(outputs)]) == 0
    assert sorted(p.name for p in outputs.iterdir()) == ["case0.mha", "case1.mha", "case2.mha"]
    assert main(["segment", "--model", "test-quantiser", "--format", "mha", str(inputs / "case0.nrrd"),
                 str(inputs / "case1.nrrd"), str(outputs)]) == 2  # exist already
    assert main(["segment", "--model", "test-quantiser", "--format", "mha", "--overwrite", str(inputs / "case0.nrrd"),
                 str(inputs / "case1.nrrd"), str(outputs)]) == 0


def test_models_json_lists_id_and_params(quantiser, capsys):
    assert main(["models", "--json"]) == 0
    models = json.loads(capsys.readouterr().out)
    assert [(m["id"], m["params"]) for m in models] == [("test-quantiser", 8)]


def test_missing_input(quantiser, tmp_path, capsys):
    assert_user_error(capsys, ["segment", "--model", "test-quantiser", tmp_path / "nope.nii.gz", tmp_path / "o.nii.gz"],
                      "input not found", tmp_path / "o.nii.gz")


def test_not_an_image(quantiser, tmp_path, capsys):
    bad = tmp_path / "notes.nii.gz"
    bad.write_text("this is not a volume")
    assert_user_error(capsys, ["segment", "--model", "test-quantiser", bad, tmp_path / "o.nii.gz"],
                      "not a readable image", tmp_path / "o.nii.gz")


def test_two_d_image(quantiser, tmp_path, capsys):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(64, dtype=np.int16).reshape(8, 8)), str(path))
    assert_user_error(capsys, ["segment", "--model", "test-quantiser", path, tmp_path / "o.nii.gz"],
                      "is 2D: a 3D volume is needed", tmp_path / "o.nii.gz")


def test_four_d_image_names_the_frame_option(quantiser, tmp_path, capsys):
    path = tmp_path / "cine.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((2, 3, 8, 8), np.int16), isVector=False), str(path))
    assert_user_error(capsys, ["segment", "--model", "test-quantiser", path, tmp_path / "o.nii.gz"],
                      "--frame N", tmp_path / "o.nii.gz")


@pytest.mark.parametrize("fill,message", [(0.0, "constant"), (np.nan, "NaN or infinite"), (np.inf, "NaN or infinite")])
def test_constant_or_non_finite_volume(quantiser, tmp_path, capsys, fill, message):
    array = np.zeros((4, 8, 8), np.float32)
    if not np.isnan(fill) and not np.isinf(fill):
        array[:] = 7
    else:
        array[1, 2, 3] = fill
        array[0] = 5
    path = tmp_path / "v.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    assert_user_error(capsys, ["segment", "--model", "test-quantiser", path, tmp_path / "o.nii.gz"], message,
                      tmp_path / "o.nii.gz")


def test_empty_volume_file(quantiser, tmp_path, capsys):
    path = tmp_path / "empty.nii.gz"
    path.write_bytes(b"")
    assert_user_error(capsys, ["segment", "--model", "test-quantiser", path, tmp_path / "o.nii.gz"],
                      "not a readable image", tmp_path / "o.nii.gz")


def test_unknown_model(quantiser, volume, tmp_path, capsys):
    assert_user_error(capsys, ["segment", "--model", "no-such-model", volume, tmp_path / "o.nii.gz"],
                      "unknown model id 'no-such-model' (known: test-quantiser)", tmp_path / "o.nii.gz")


def test_corrupt_model_file(quantiser, volume, tmp_path, capsys):
    model = quantiser / "test-quantiser.onnx"
    model.write_bytes(model.read_bytes()[:-7])
    assert_user_error(capsys, ["segment", "--model", "test-quantiser", volume, tmp_path / "o.nii.gz"],
                      "corrupt (sha256 mismatch)", tmp_path / "o.nii.gz")


def test_output_folder_missing(quantiser, volume, tmp_path, capsys):
    assert_user_error(capsys, ["segment", "--model", "test-quantiser", volume, tmp_path / "no" / "o.nii.gz"],
                      "output folder does not exist")


def test_output_exists_without_overwrite(quantiser, volume, tmp_path, capsys):
    out = tmp_path / "o.nii.gz"
    out.write_bytes(b"keep me")
    assert_user_error(capsys, ["segment", "--model", "test-quantiser", volume, out], "use --overwrite")
    assert out.read_bytes() == b"keep me"


def test_unreadable_dicom_folder(quantiser, tmp_path, capsys):
    folder = tmp_path / "dicom"
    folder.mkdir()
    (folder / "IM0001").write_bytes(b"DICM" + bytes(300))
    assert_user_error(capsys, ["segment", "--model", "test-quantiser", folder, tmp_path / "o.nii.gz"],
                      "no readable DICOM series", tmp_path / "o.nii.gz")


def test_several_series_use_largest_and_say_so(quantiser, tmp_path):
    folder = tmp_path / "dicom"
    folder.mkdir()
    for source in list(shared("dcmqi_ct3slice").glob("*.dcm")) + list(shared("totalseg_example/example_ct_dicom").iterdir()):
        shutil.copy(source, folder / source.name)
    out = tmp_path / "o.nrrd"
    proc = run_cli("segment", "--model", "test-quantiser", folder, out)
    assert proc.returncode == 0, proc.stderr
    assert "2 DICOM series; using the largest" in proc.stderr
    assert sitk.ReadImage(str(out)).GetSize() == (512, 512, 20)


def test_real_entry_point_error_has_no_traceback(quantiser, tmp_path):
    proc = run_cli("segment", "--model", "test-quantiser", tmp_path / "missing.nrrd", tmp_path / "o.nrrd")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"lightseg: error: input not found: {tmp_path / 'missing.nrrd'}"]


def test_frame_all_writes_one_output_per_frame(quantiser, tmp_path):
    frames = np.stack([np.full((3, 8, 8), 10 * f, np.int16) + np.arange(8, dtype=np.int16) for f in range(4)])
    path = tmp_path / "cine.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(frames, isVector=False), str(path))
    assert main(["segment", "--model", "test-quantiser", "--frame", "all", str(path), str(tmp_path / "lab.nrrd")]) == 0
    outputs = sorted(tmp_path.glob("lab_frame*.nrrd"))
    assert [p.name for p in outputs] == [f"lab_frame{f:02d}.nrrd" for f in range(4)]
    for f, out in enumerate(outputs):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), expected_labels(frames[f]))
    assert main(["segment", "--model", "test-quantiser", "--frame", "2", str(path), str(tmp_path / "two.nrrd")]) == 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "two.nrrd"))),
                                  expected_labels(frames[2]))


def test_single_slice_volume_and_nothing_found_note(quantiser, tmp_path, capsys):
    path = tmp_path / "one.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.linspace(-500, -100, 64, dtype=np.float32).reshape(1, 8, 8)), str(path))
    assert main(["segment", "--model", "test-quantiser", str(path), str(tmp_path / "o.nrrd")]) == 0
    captured = capsys.readouterr()
    assert "nothing found" in captured.err
    assert sitk.ReadImage(str(tmp_path / "o.nrrd")).GetSize() == (8, 8, 1)


def test_model_file_that_is_not_onnx(quantiser, volume, tmp_path, capsys):
    """A file whose checksum matches the registry but that ONNX Runtime cannot load."""
    import json as _json

    from LightSegLib.registry import sha256_of

    model = quantiser / "test-quantiser.onnx"
    model.write_bytes(b"not an onnx model")
    registry = _json.loads((quantiser / "models.json").read_text())
    registry["models"][0]["sha256"] = sha256_of(model)
    (quantiser / "models.json").write_text(_json.dumps(registry))
    assert_user_error(capsys, ["segment", "--model", "test-quantiser", volume, tmp_path / "o.nii.gz"],
                      "cannot load model file", tmp_path / "o.nii.gz")


def test_ct_given_to_an_mri_model_is_flagged(tmp_path, monkeypatch, capsys):
    from model_fixtures import make_model_folder

    folder = make_model_folder(tmp_path / "mr", modality="MR", orientation="native",
                               normalization={"type": "percentile", "lower": 0.5, "upper": 99.5})
    monkeypatch.setenv("LIGHTSEG_MODELS_DIR", str(folder))
    ct = REPO / "Resources/Samples/totalseg_example_ct_sm.nii.gz"
    assert main(["segment", "--model", "test-quantiser", str(ct), str(tmp_path / "o.nrrd")]) == 0
    assert "look like CT" in capsys.readouterr().err


def test_version(capsys):
    import LightSegLib

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"lightseg {LightSegLib.__version__}"


def test_models_table_shows_version_and_the_whole_licence(capsys, monkeypatch):
    """A licence cut short hides its restrictions ("non-commercial"): the table wraps it in full."""
    from LightSegLib.registry import list_models

    monkeypatch.setenv("COLUMNS", "100")
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines[0].index("licence")
    licences = " ".join(line[start:].strip() for line in lines[1:])
    for card in list_models():
        assert any(line.split()[:2] == [card.id, card.version] for line in lines[1:]), card.id
        assert " ".join(card.licence.split()) in licences, card.id


def test_help_lists_every_command():
    from LightSegLib.cli import COMMANDS

    run = run_cli("--help")
    assert run.returncode == 0, run.stderr
    listed = run.stdout.split("COMMAND", 1)[1]
    assert all(name in listed for name in COMMANDS), run.stdout


def test_click_models_are_listed_apart_and_refused_by_segment(capsys, volume, tmp_path):
    """A click model has no labels: whole-image lists (the demo, Slicer's picker) never meet it, `lightseg models`
    shows it in its own table, and `segment` names the command that runs it."""
    from LightSegLib.registry import INTERACTIVE, get_model, list_models

    clicks = [c.id for c in list_models(include_interactive=True) if c.task == INTERACTIVE]
    assert clicks and not [c for c in list_models() if c.task == INTERACTIVE]
    assert main(["models"]) == 0
    whole, apart = capsys.readouterr().out.split("\nclick models", 1)
    ids = [{line.split()[0] for line in part.splitlines() if line[:1].strip()} for part in (whole, apart)]
    assert not ids[0] & set(clicks) and set(clicks) <= ids[1], (whole, apart)
    card = get_model(clicks[0])
    assert card.verified_path() and card.input["crop"] > 0 and "labels" not in card.entry
    out = tmp_path / "out.nii.gz"
    assert_user_error(capsys, ["segment", "--model", clicks[0], volume, out], "use 'lightseg refine", no_file=out)


def test_a_classifiers_appearance_model_is_checked_against_the_registry(capsys, tmp_path, monkeypatch):
    """The appearance model decides whether an X-ray is "quality ok": the registry writer records its sha256 as it
    does the weights', and the classifier refuses a changed file in one line instead of trusting it."""
    from LightSegLib.classify import Classifier
    from LightSegLib.lab.publish.writer import attach_file, register_model
    from LightSegLib.registry import get_model, sha256_of

    shipped = get_model("pneumonia-cxr")
    assert shipped.entry["appearance_sha256"] == sha256_of(shipped.path("appearance_file"))
    for name in (shipped.file, shipped.appearance_file):
        shutil.copy(shipped.folder / name, tmp_path / name)
    register_model({k: v for k, v in shipped.entry.items() if not k.startswith("appearance_")}, tmp_path)
    assert Classifier(get_model("pneumonia-cxr", tmp_path), threads=1).appearance is None  # none named: none run
    entry = attach_file("pneumonia-cxr", "appearance", tmp_path / shipped.appearance_file, tmp_path)
    assert entry["appearance_sha256"] == shipped.entry["appearance_sha256"]
    assert Classifier(get_model("pneumonia-cxr", tmp_path), threads=1).appearance is not None
    with open(tmp_path / shipped.appearance_file, "ab") as f:
        f.write(b"\0")
    xray = tmp_path / "xray.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((64, 64), 100, np.uint8)), str(xray))
    monkeypatch.setenv("LIGHTSEG_MODELS_DIR", str(tmp_path))
    assert_user_error(capsys, ["classify", "--model", "pneumonia-cxr", xray],
                      f"model file for 'pneumonia-cxr' is corrupt (sha256 mismatch): {tmp_path / shipped.appearance_file}")


def test_models_speed_names_the_instruction_set_it_was_measured_with():
    from LightSegLib.commands.models import speed_text
    from LightSegLib.registry import ModelCard, get_model

    card = get_model("liver-ct")
    speed = {"wall_s": 3.5, "input": "ct.nrrd", "threads": 2}

    def with_isa(machine):
        return speed_text(ModelCard({**card.entry, "speed": {**speed, "machine": machine}}, card.folder))

    assert with_isa("AMD EPYC (2 cores available), has AVX2; no AVX-512, AMX") == "3.50 s (ct.nrrd, 2 threads, AVX2)"
    assert with_isa("X (2 cores available), has AVX2, AVX-512, AVX512-VNNI; no AMX").endswith("2 threads, AVX-512)")
    assert with_isa("X (1 cores available), instruction sets unknown") == "3.50 s (ct.nrrd, 2 threads)"
    assert "AVX2)" in speed_text(card)  # the shipped figure was measured on an AVX2-only CPU
