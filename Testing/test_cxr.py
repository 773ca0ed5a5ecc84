"""The pneumonia chest X-ray classifier: ResNet50, its CPGResNet50 compression, reading radiographs, the engine and
`lightseg classify`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LightSegLib.errors import LightSegError

REPO = Path(__file__).resolve().parents[1]
CXR = REPO.parent / "shared" / "data" / "chest_xray" / "train"
needs_cxr = pytest.mark.skipif(not CXR.is_dir(), reason=f"chest X-ray data not found at {CXR}")


def lightseg(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "LightSegLib.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd)


# ------------------------------------------------------------------ nets and compression
def test_resnet50_params_by_hand_and_cam_is_exact():
    torch = pytest.importorskip("torch")
    from LightSegLib.lab.nets import build
    from LightSegLib.lab.nets.blocks import count_params

    # torchvision's ResNet50 has 25,557,032 parameters (3 channels in, 1000 classes); here 1 channel in
    # (conv1 7x7x64: -2*3136) and 2 classes (fc 2048*2+2 instead of 2048*1000+1000).
    net = build({"name": "resnet50", "in_channels": 1, "num_classes": 2}).eval()
    assert count_params(net) == 25_557_032 - 2 * 3136 - (2048 * 1000 + 1000) + (2048 * 2 + 2) == 23_505_858
    for block in net.blocks:  # zero-initialised residual BNs would make every map trivial
        torch.nn.init.uniform_(block.bn3.weight)
    x = torch.randn(2, 1, 96, 96)
    with torch.no_grad():
        logits, cam = net.forward_cam(x)
        torch.testing.assert_close(logits, net(x), atol=1e-4, rtol=1e-4)
    assert cam.shape == (2, 2, 3, 3)


def _trained_like_resnet(seed=0):
    torch = pytest.importorskip("torch")
    from LightSegLib.lab.nets import build

    torch.manual_seed(seed)
    net = build({"name": "resnet50", "in_channels": 1, "num_classes": 2})
    for m in net.modules():  # distinct BN scales and statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.05, 1.0)
            torch.nn.init.normal_(m.bias, 0, 0.1)
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def test_bottleneck_pruning_keeps_the_largest_bn_scales_and_removes_channels_for_real():
    torch = pytest.importorskip("torch")
    from LightSegLib.lab.compress.bottleneck_prune import prune_bottlenecks
    from LightSegLib.lab.nets.blocks import count_params

    net = _trained_like_resnet()
    same, spec0 = prune_bottlenecks(net, [0, 0, 0, 0])
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():  # nothing removed: only a reordering of inner channels, so the function is unchanged
        torch.testing.assert_close(same.eval()(x), net(x), atol=1e-4, rtol=1e-4)
    pruned, spec = prune_bottlenecks(net, [0.25, 0.5, 0.5, 0.75])
    assert spec["mids"][0] == [48, 48] and spec["mids"][3] == [64, 64] and spec["mids"][-1] == [128, 128]
    assert count_params(pruned) < count_params(net) / 2
    block, new = net.blocks[0], pruned.blocks[0]
    top = torch.argsort(block.bn1.weight.abs(), descending=True)[:48]
    torch.testing.assert_close(new.conv1.weight, block.conv1.weight[top])
    torch.testing.assert_close(new.bn1.running_var, block.bn1.running_var[top])
    with pytest.raises(LightSegError, match="stage ratios"):
        prune_bottlenecks(net, [0.5, 0.5])


def test_ghost_split_of_the_pruned_resnet_loads_as_the_ghost_spec():
    torch = pytest.importorskip("torch")
    from LightSegLib.lab.compress.bottleneck_prune import prune_bottlenecks
    from LightSegLib.lab.compress.ghost_convert import convert_checkpoint_net
    from LightSegLib.lab.nets import build
    from LightSegLib.lab.nets.blocks import count_params
    from LightSegLib.lab.nets.ghost import GhostModule

    pruned, spec = prune_bottlenecks(_trained_like_resnet(), [0.4, 0.5, 0.65, 0.8])
    ghost, ghost_spec, converted = convert_checkpoint_net(pruned, spec)
    assert ghost_spec == dict(spec, conv="ghost")
    assert converted == 16 * 3 + 4  # three convs per bottleneck and the four projection shortcuts
    assert isinstance(ghost.blocks[3].conv2, GhostModule) and ghost.blocks[3].conv2.primary.stride == (2, 2)
    assert count_params(ghost) <= 3_500_000 < count_params(pruned)
    fresh = build(ghost_spec)
    fresh.load_state_dict(ghost.state_dict(), strict=True)
    with torch.no_grad():  # the primary half of every split is the pruned conv's strongest filters, copied
        c = pruned.blocks[0].conv1.weight
        torch.testing.assert_close(ghost.blocks[0].conv1.primary.weight, c[:ghost.blocks[0].conv1.primary.out_channels])


# ------------------------------------------------------------------ metrics
@pytest.mark.parametrize("added", [{}, {"appearance": True, "balanced": True, "label_smoothing": 0.1}],
                         ids=["shipped", "v2"])
def test_classifier_training_runs_on_the_trainer_loop_and_a_killed_run_resumes_to_the_same_weights(tmp_path, added):
    """The classifier's fit (SGD, epoch cosine, logit distillation, BN L1) on the shared loop: killed in its second
    epoch and rerun, it ends with the weights and history rows of a run never stopped; also with the v2 recipe's
    additions (the appearance chain on radiographs as read, balanced draws, label smoothing)."""
    import torch

    from LightSegLib.lab.train.config import load_config
    from LightSegLib.lab.train.cxr import fit, stage_settings

    rng = np.random.default_rng(0)
    data = {"x_train": rng.normal(size=(24, 1, 32, 32)).astype(np.float32), "y_train": np.arange(24) % 2,
            "x_val": rng.normal(size=(8, 1, 32, 32)).astype(np.float32), "y_val": np.arange(8) % 2}
    data["x_train"][data["y_train"] == 1] += 0.5
    if added.get("appearance"):  # 224-px 8-bit radiographs, one class twice the other
        data["grey_train"] = np.clip(128 + 40 * data.pop("x_train")[:, 0], 0, 255).repeat(7, 1).repeat(7, 2) \
            .astype(np.uint8)
        data["y_train"] = (np.arange(24) % 3 > 0).astype(np.int64)
    shipped = stage_settings(load_config(REPO / "configs" / "models" / "pneumonia-cxr.toml"), "compress")
    cfg = dict(shipped, size=32, epochs=3, batch_size=8, warmup_epochs=1, kd_weight=0.5, bn_l1=1e-4, **added)

    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))

    teacher = net().eval()
    straight = net()
    rows = fit(straight, cfg, data, tmp_path / "straight", {}, teacher=teacher, log=lambda s: None)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)

    def kill_in_epoch_2(line):
        if json.loads(line)["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(net(), cfg, data, tmp_path / "killed", {}, teacher=teacher, log=kill_in_epoch_2)
    resumed = net()
    again = fit(resumed, cfg, data, tmp_path / "killed", {}, teacher=teacher, log=lambda s: None)
    drop = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert [drop(r) for r in again] == [drop(r) for r in rows]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_lightseg_train_runs_the_classifier_stages_of_its_config(tmp_path):
    """The shipped recipe's file, on a tiny data set for one epoch, through ``lightseg train``: the baseline, then
    its compression (prune, Ghost, fine-tune with the baseline as teacher), each in its folder of --out."""
    pytest.importorskip("monai")
    import torch

    from LightSegLib.lab.train.config import load_config, to_toml

    rng = np.random.default_rng(0)
    for cls in ("NORMAL", "PNEUMONIA"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(16):
            image = rng.integers(0, 255, (128, 128), dtype=np.uint8)
            sitk.WriteImage(sitk.GetImageFromArray(image), str(tmp_path / "data" / cls / f"person{i}_x.png"))
    cfg = load_config(REPO / "configs" / "models" / "pneumonia-cxr.toml")
    cfg["data"].update(dataset=str(tmp_path / "data"), size=32, val_fraction=0.3)
    cfg["train"].update(epochs=1, batch_size=8, threads=1)
    cfg["compress"].update(epochs=1)
    config = tmp_path / "cxr.toml"
    config.write_text('task = "classification"\n' + to_toml({k: v for k, v in cfg.items() if k != "task"}))
    run = tmp_path / "run"
    proc = lightseg("train", "--config", config, "--out", run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    points = json.loads((run / "compress" / "points.json").read_text())
    assert [p["point"] for p in points] == ["baseline", "pruned", "pruned + Ghost", "fine-tuned"]
    assert points[-1]["params"] < points[1]["params"] < points[0]["params"]
    tuned = torch.load(run / "compress" / "final.pt", map_location="cpu", weights_only=False)
    assert tuned["ratios"] == cfg["compress"]["ratios"] and tuned["baseline"] == str(run / "baseline" / "final.pt")
    assert tuned["config"]["kd_weight"] == cfg["compress"]["kd_weight"] and len(tuned["history"]) == 1

    refused = lightseg("train", "--config", config, "--out", run, "--fold", "1")
    assert refused.returncode == 2 and "--fold: not for a classifier's config" in refused.stderr
    alone = lightseg("train", "--config", config, "--out", tmp_path / "empty", "--stage", "compress")
    assert alone.returncode == 2 and "--stage baseline` first" in alone.stderr
    config.write_text(config.read_text().replace("batch_size = 8", "batch = 8"))
    typo = lightseg("train", "--config", config, "--out", run)
    assert typo.returncode == 2 and "[train] has the keys" in typo.stderr


def test_threshold_and_calibration_metrics_by_hand():
    from LightSegLib.lab.binary_metrics import confusion, ece, roc_curve, youden_threshold

    prob = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.9])
    y = np.array([0, 0, 1, 1, 0, 1])
    c = confusion(prob, y, 0.5)
    assert (c["tp"], c["tn"], c["fp"], c["fn"]) == (2, 2, 1, 1)
    assert c["sensitivity"] == pytest.approx(2 / 3) and c["specificity"] == pytest.approx(2 / 3)
    fpr, tpr, _ = roc_curve(prob, y)
    assert np.trapezoid(tpr, fpr) == pytest.approx(7 / 9)  # 7 of the 9 (positive, negative) pairs ranked right
    assert youden_threshold(prob, y) == pytest.approx(0.8)  # TPR 2/3 at FPR 0: J = 0.667, the best
    e, rows = ece(np.array([0.05, 0.05, 0.95, 0.95]), np.array([0, 1, 1, 1]))
    assert e == pytest.approx(0.5 * 0.45 + 0.5 * 0.05)
    assert [r["n"] for r in rows] == [2, 2]


# ------------------------------------------------------------------ reading radiographs
def _write_dicom(path, array, photometric="MONOCHROME2", window=None):
    image = sitk.GetImageFromArray(array)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    tags = {"0008|0060": "CR"}
    if window:
        tags |= {"0028|1050": str(window[0]), "0028|1051": str(window[1])}
    for k, v in tags.items():
        image.SetMetaData(k, v)
    written = Path(path).with_suffix(".dcm")  # ITK picks the writer by suffix; the file may be renamed after
    writer.SetFileName(str(written))
    writer.Execute(image)
    written.rename(path)
    if photometric != "MONOCHROME2":  # GDCM always writes MONOCHROME2: patch the value (same length) in place
        data = Path(path).read_bytes()
        assert data.count(b"MONOCHROME2") == 1
        Path(path).write_bytes(data.replace(b"MONOCHROME2", photometric.encode()))
    return path


def test_read_radiograph_png_dicom_and_refusals(tmp_path):
    from LightSegLib.classify import read_radiograph

    def up(a):  # radiograph-sized (192 x 256): smaller images are refused
        return np.repeat(np.repeat(a, 4, axis=0), 4, axis=1)

    ramp = up(np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1)))
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([ramp] * 3, axis=-1), isVector=True), str(tmp_path / "a.png"))
    png = read_radiograph(tmp_path / "a.png")
    assert png.shape == (192, 256) and png[0, 0] == 0 and png[0, -1] == 252

    ramp16 = up(np.tile(np.arange(64, dtype=np.uint16) * 60, (48, 1)))
    mono2 = read_radiograph(_write_dicom(tmp_path / "m2.dcm", ramp16))
    np.testing.assert_allclose(mono2, ramp16)
    mono1 = read_radiograph(_write_dicom(tmp_path / "m1", ramp16, "MONOCHROME1"))  # no suffix, as DICOM often is
    assert mono1[0, 0] > mono1[0, -1]  # MONOCHROME1 shows low stored values white: inverted to our convention
    mono1w = read_radiograph(_write_dicom(tmp_path / "m1w", ramp16, "MONOCHROME1", window=(1000, 1000)))
    assert mono1w.min() == 65535 - 1500 and mono1w.max() == 65535 - 500
    windowed = read_radiograph(_write_dicom(tmp_path / "w.dcm", ramp16, window=(1000, 1000)))
    assert windowed.min() == 500 and windowed.max() == 1500
    ramp8 = up(np.tile(np.arange(64, dtype=np.uint8), (48, 1)))
    assert read_radiograph(_write_dicom(tmp_path / "u8.dcm", ramp8)).max() == 63

    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(LightSegError, match="not a readable image"):
        read_radiograph(tmp_path / "notes.txt")
    with pytest.raises(LightSegError, match="3D volume"):
        read_radiograph(REPO / "Resources" / "Samples" / "acdc_patient002_ED.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.full((160, 160), 7, np.uint8)), str(tmp_path / "flat.png"))
    with pytest.raises(LightSegError, match="constant"):
        read_radiograph(tmp_path / "flat.png")
    with pytest.raises(LightSegError, match="no such file"):
        read_radiograph(tmp_path / "missing.png")


def test_patient_split_keeps_each_child_on_one_side():
    from LightSegLib.lab.data.cxr import patient_of, split

    names = [Path("PNEUMONIA/person1000_bacteria_2931.jpeg"), Path("PNEUMONIA/person1000_bacteria_2932.jpeg"),
             Path("NORMAL/IM-0115-0001.jpeg"), Path("NORMAL/NORMAL2-IM-0587-0001-0002.jpeg"),
             Path("NORMAL/NORMAL2-IM-0587-0001-0001.jpeg")]
    assert patient_of(names[0]) == patient_of(names[1]) == "PNEUMONIA:person1000"
    assert patient_of(names[3]) == patient_of(names[4]) == "NORMAL:NORMAL2-IM-0587"
    for seed in range(20):
        parts = split([(p, 0) for p in names], 0.5, seed)
        for side in parts.values():
            keys = {patient_of(p) for p, _ in side}
            other = {patient_of(p) for s, v in parts.items() if v is not side for p, _ in v}
            assert not keys & other


# ------------------------------------------------------------------ the shipped model, end to end
def _two_radiographs():
    """A real pneumonia JPEG and a real normal one: the first of each folder."""
    pneumonia = sorted((CXR / "PNEUMONIA").glob("*.jpeg"))[0]
    normal = sorted((CXR / "NORMAL").glob("*.jpeg"))[0]
    return pneumonia, normal


def test_pneumonia_cxr_is_registered_with_its_size_and_threshold():
    from LightSegLib.lab.train.config import load_config
    from LightSegLib.registry import get_model

    card = get_model("pneumonia-cxr")
    assert card.task == "classification" and card.classes == ["NORMAL", "PNEUMONIA"]
    assert card.params <= 3_500_000 and 0.0 < card.threshold < 1.0
    assert card.verified_path().is_file() and (card.folder / card.card).is_file()
    recipe = "configs/models/pneumonia-cxr.toml"  # the reproduce line trains from the config in the catalogue
    assert f"lightseg train --config {recipe}" in card.entry["reproduce"]
    assert load_config(REPO / recipe)["task"] == "classification"
    proc = lightseg("models", "--json")
    entry = next(m for m in json.loads(proc.stdout) if m["id"] == "pneumonia-cxr")
    assert entry["params"] == card.params


@needs_cxr
def test_classify_cli_json_heatmap_and_bad_inputs(tmp_path):
    pneumonia, normal = _two_radiographs()
    (tmp_path / "notes.png").write_text("not an image")
    heat = tmp_path / "maps"
    proc = lightseg("classify", "--model", "pneumonia-cxr", "--json", "--heatmap", heat, pneumonia,
                    tmp_path / "notes.png", normal, REPO / "Resources" / "Samples" / "acdc_patient002_ED.nii.gz")
    assert proc.returncode == 2
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 2 and "notes.png: not a readable image" in errors[0] and "3D volume" in errors[1], errors
    results = json.loads(proc.stdout)
    assert [r["path"] for r in results] == [str(pneumonia), str(normal)]
    assert all(set(r) == {"path", "label", "probability", "quality"} and 0.0 <= r["probability"] <= 1.0
               for r in results)
    assert not any(r["quality"]["flag"] for r in results)  # real chest X-rays look like the training images
    assert results[0]["label"] == "PNEUMONIA" and results[1]["label"] == "NORMAL"
    for path in (pneumonia, normal):
        overlay = sitk.ReadImage(str(heat / f"{path.stem}.png"))
        assert overlay.GetSize() == (224, 224) and overlay.GetNumberOfComponentsPerPixel() == 3
    again = lightseg("classify", "--model", "pneumonia-cxr", "--heatmap", heat, pneumonia)
    assert again.returncode == 2 and "exists (use --overwrite" in again.stderr  # a map is never silently replaced
    # --threshold moves the decision, not the probability
    high = json.loads(lightseg("classify", "--model", "pneumonia-cxr", "--json", "--threshold", "1.0",
                               pneumonia).stdout)[0]
    assert high["label"] == "NORMAL" and high["probability"] == results[0]["probability"]


@needs_cxr
def test_dicom_of_the_same_radiograph_gets_the_same_answer(tmp_path):
    """A 16-bit DICOM of a JPEG's pixels (values x 16) and its MONOCHROME1 twin (stored inverted) classify like it."""
    from LightSegLib.classify import Classifier, read_radiograph
    from LightSegLib.registry import get_model

    pneumonia, _ = _two_radiographs()
    grey = read_radiograph(pneumonia)
    classifier = Classifier(get_model("pneumonia-cxr"), threads=1)
    ref = classifier(grey).probability
    scaled = (grey * 16).astype(np.uint16)
    assert classifier(read_radiograph(_write_dicom(tmp_path / "a.dcm", scaled))).probability == \
        pytest.approx(ref, abs=0.02)
    inverted = (65535 - scaled.astype(np.int64)).astype(np.uint16)
    assert classifier(read_radiograph(_write_dicom(tmp_path / "b", inverted, "MONOCHROME1"))).probability == \
        pytest.approx(ref, abs=0.02)


@needs_cxr
def test_truncated_jpeg_ct_dicom_and_empty_folder_are_refused_and_the_rest_still_run(tmp_path):
    """A normal child's JPEG cut short was classified PNEUMONIA (p 0.97) with only libjpeg's warning on stderr, and
    a CT slice gave PNEUMONIA 0.89: both are refused now, each with one line, and the good input still runs."""
    _, normal = _two_radiographs()
    (tmp_path / "cut.jpeg").write_bytes(normal.read_bytes()[:3000])
    ct_series = REPO.parent / "shared" / "data" / "totalseg_example" / "example_ct_dicom"
    ct_slice = sorted(ct_series.iterdir())[0]  # named by UID, no image suffix: found by its DICM preamble
    (tmp_path / "empty").mkdir()
    proc = lightseg("classify", "--model", "pneumonia-cxr", "--json", tmp_path / "cut.jpeg", ct_slice.parent,
                    tmp_path / "empty", normal)
    assert proc.returncode == 2
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 2 + len(list(ct_series.iterdir())), errors
    assert "cut.jpeg: damaged image file" in errors[0]
    assert all("a DICOM CT image, not a projection radiograph" in e for e in errors[1:-1])
    assert "empty: no PNG, JPEG or DICOM file" in errors[-1]
    assert [r["path"] for r in json.loads(proc.stdout)] == [str(normal)]


@needs_cxr
def test_quality_flags_what_is_not_a_paediatric_chest_xray_in_the_line_and_json(tmp_path):
    """A CT slice saved as an 8-bit PNG and an X-ray upside down or inverted are classified but flagged; the real
    X-ray is not."""
    _, normal = _two_radiographs()
    grey = sitk.GetArrayFromImage(sitk.ReadImage(str(normal), sitk.sitkUInt8))
    ct = REPO.parent / "shared" / "data" / "lits_liver_2d" / "vol10001.npz"
    images = {"upside_down.png": grey[::-1], "inverted.png": 255 - grey}
    if ct.is_file():
        images["ct.png"] = np.load(ct)["image"][0]
    for name, a in images.items():
        sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(a)), str(tmp_path / name))
    proc = lightseg("classify", "--model", "pneumonia-cxr", "--json", normal, *(tmp_path / n for n in images))
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert [r["quality"]["flag"] for r in results] == [False] + [True] * len(images)
    for r in results[1:]:
        assert r["quality"]["appearance"]["distance"] > 1.0
        assert "does not look like a paediatric AP chest X-ray" in r["quality"]["reasons"][0]
    lines = lightseg("classify", "--model", "pneumonia-cxr", normal, tmp_path / "inverted.png").stdout.splitlines()
    assert "quality ok" in lines[0] and "low confidence: check carefully" in lines[1]


def test_appearance_onnx_computes_what_the_numpy_model_does():
    pytest.importorskip("onnx")
    import onnxruntime as ort

    from LightSegLib.lab.cxr_appearance import GRID, fit, scores, to_onnx

    rng = np.random.default_rng(0)
    size = 5 * GRID
    images = rng.random((60, 1, size, size)).astype(np.float32)
    pooled = images.reshape(60, GRID, 5, GRID, 5).mean(axis=(2, 4)).reshape(60, -1)
    model = fit(pooled[:50], k=8)
    inside, outside = scores(model, pooled[:50])
    # both about 1 on the fitted images (the components' variance is the sample variance, over n - 1)
    assert inside.mean() == pytest.approx(49 / 50, rel=1e-4) and outside.mean() == pytest.approx(1.0, rel=1e-4)
    session = ort.InferenceSession(to_onnx(model, size, {"inside": 2.0, "outside": 3.0}, "test"))
    got = session.run(["inside", "outside"], {"image": images[50:]})
    want = scores(model, pooled[50:])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-3)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-3)
    assert json.loads(session.get_modelmeta().custom_metadata_map["limits"]) == {"inside": 2.0, "outside": 3.0}


# ------------------------------------------------------------------ the validation protocol
@needs_cxr
def test_old_subset_is_the_shipped_models_data_and_new_patients_are_unseen():
    from LightSegLib.lab.data.cxr import list_images, old_subset, patient_of, split, unseen_patients

    items = list_images(CXR)
    old = old_subset(items)
    assert sum(1 for _, label in old if label == 0) == sum(1 for _, label in old if label == 1) == 1000
    val = split(old, 0.2, 0)["val"]
    assert (len(val), sum(label for _, label in val)) == (393, 198)  # the card's validation part
    new = unseen_patients(items, old)
    assert len(new) == 1717 and not {patient_of(p) for p, _ in new} & {patient_of(p) for p, _ in old}


def test_protocol_figures_threshold_rule_and_temperature_by_hand():
    from LightSegLib.lab.binary_metrics import rank_auc, roc_curve
    from LightSegLib.lab.cxr_protocol import fit_temperature, figures, logit, threshold_for_specificity

    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-z / 2))).astype(int)  # labels as if the logit were twice too sharp
    prob = 1 / (1 + np.exp(-z))
    assert fit_temperature(prob, y) == pytest.approx(2.0, rel=0.1)
    np.testing.assert_allclose(logit(prob), z, atol=1e-6)
    fpr, tpr, _ = roc_curve(prob[:300], y[:300])
    assert rank_auc(prob[:300], y[:300]) == pytest.approx(np.trapezoid(tpr, fpr))
    t = threshold_for_specificity(prob, y, 0.85)
    normal = prob[y == 0]
    assert (normal < t).sum() == int(np.ceil(0.85 * len(normal)))  # the lowest threshold that reaches 0.85
    children = np.arange(4000) // 2  # two images per child: resampled together
    f = figures(prob, y, children, t, rounds=200)
    assert f["children"] == 2000 and f["specificity"]["value"] >= 0.85
    for key in ("accuracy", "sensitivity", "specificity", "auc"):
        lo, hi = f[key]["ci95"]
        assert lo <= f[key]["value"] <= hi and hi - lo < 0.1


#: Mean and standard deviation of each shift of the first NORMAL image, as the shipped model's protocol record was
#: scored (pneumonia-cxr.eval.json): the transformations may move, their figures may not.
SHIFTED_FIRST_NORMAL = {
    "gamma 0.6": (162.538104, 56.490463), "gamma 1.6": (95.750438, 60.467298), "tone curve": (134.675307, 84.40193),
    "window 5-95%": (146.786093, 79.280857), "down-up 0.4": (128.904942, 61.184886),
    "blur 1.5 px": (128.90862, 61.033539), "noise sd 8": (128.905587, 62.485556), "jpeg q20": (128.852479, 62.018383),
    "other scanner": (110.468391, 60.880792)}


@needs_cxr
def test_shifts_keep_the_image_size_change_it_and_are_the_same_every_run():
    from LightSegLib.classify import read_radiograph
    from LightSegLib.lab.cxr_protocol import SHIFTS

    _, normal = _two_radiographs()
    grey = read_radiograph(normal)
    assert list(SHIFTS) == list(SHIFTED_FIRST_NORMAL)
    for name, shift in SHIFTS.items():
        once, again = shift(grey, normal.name), shift(grey, normal.name)
        assert once.shape == grey.shape and np.isfinite(once).all(), name
        np.testing.assert_array_equal(once, again)
        assert np.abs(once - grey).mean() > 1.0, name
        mean, sd = SHIFTED_FIRST_NORMAL[name]
        assert (once.astype(np.float64).mean(), once.astype(np.float64).std()) == pytest.approx((mean, sd), abs=2e-6), name


def _radiograph_like():
    """224-px, 8-bit grey: a bright body over a darker ramp, with texture (the transformations see real structure)."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:224, 0:224]
    a = 60 + 120 * np.exp(-((xx - 112) ** 2 + (yy - 120) ** 2) / 4000) + 40 * yy / 224 + rng.normal(0, 10, (224, 224))
    return np.clip(a, 0, 255).astype(np.float32)


def test_appearance_draws_every_family_within_its_range_and_repeats_per_seed():
    from LightSegLib.lab.data import cxr_augment as aug

    a, r = _radiograph_like(), aug.RANGES
    seen = set()
    for seed in range(40):
        out, drawn = aug.appearance(a, np.random.default_rng(seed))
        again, drawn_again = aug.appearance(a, np.random.default_rng(seed))
        np.testing.assert_array_equal(out, again)
        assert drawn == drawn_again and out.shape == a.shape and 0.0 <= out.min() and out.max() <= 255.0
        for name, value in drawn.items():
            lo, hi = r[name]
            assert lo <= (value[0] if isinstance(value, tuple) else value) <= hi, (name, value)
        if not drawn:
            np.testing.assert_array_equal(out, a)
        seen |= set(drawn)
    assert seen == set(r)
    rng = np.random.default_rng(0)
    ends = {"gamma": [aug.gamma(a, g) for g in r["gamma"]],
            "tone curve": [aug.tone_curve(a, w) for w in r["tone curve"]],
            "window": [aug.window(a, lower, 90.0) for lower in r["window"]],
            "down-up": [aug.down_up(a, r["down-up"][0])],  # 1.0, the top of its range, keeps the image
            "blur": [aug.blur(a, s) for s in r["blur"]],
            "noise": [aug.noise(a, sd, rng) for sd in r["noise"]],
            "jpeg": [aug.jpeg(a, q) for q in r["jpeg"]]}
    assert set(ends) == set(r)
    for name, outs in ends.items():
        assert all(np.abs(o - a).mean() > 0.1 for o in outs), name


def test_balanced_epochs_draw_each_class_equally():
    import torch

    from LightSegLib.lab.train.cxr import epoch_order

    y = (np.arange(3900) % 4 > 0).astype(np.int64)  # 1:3, as NORMAL:PNEUMONIA nearly is
    order = epoch_order(y, True, torch.Generator().manual_seed(0)).numpy()
    assert len(order) == len(y) and abs(y[order].mean() - 0.5) < 0.03
    plain = epoch_order(y, False, torch.Generator().manual_seed(0)).numpy()
    np.testing.assert_array_equal(np.sort(plain), np.arange(len(y)))


@needs_cxr
def test_held_out_part_is_half_the_unseen_children_and_meets_nothing_else():
    from itertools import combinations

    from LightSegLib.lab.data.cxr import list_images, old_subset, patient_of, split, split_with_held_out, unseen_patients

    items = list_images(CXR)
    parts = split_with_held_out(items, 0.5, 0.15, 0)
    assert parts == split_with_held_out(items, 0.5, 0.15, 0)
    assert {k: len(v) for k, v in parts.items()} == {"train": 3695, "val": 658, "held_out": 863}  # the config's
    children = {side: {patient_of(p) for p, _ in v} for side, v in parts.items()}
    for a, b in combinations(children, 2):
        assert not children[a] & children[b], (a, b)
    old = {patient_of(p) for p, _ in old_subset(items)}
    unseen = {patient_of(p) for p, _ in unseen_patients(items, old_subset(items))}
    assert children["held_out"] <= unseen and not children["held_out"] & old
    assert len(children["held_out"]) / len(unseen) == pytest.approx(0.5, abs=0.03)
    assert len(children["val"]) / (len(children["val"]) + len(children["train"])) == pytest.approx(0.15, abs=0.02)
    assert split_with_held_out(items, 0.0, 0.2, 0) == split(items, 0.2, 0) | {"held_out": []}  # the shipped rule


def test_card_template_protocol_fields_come_from_the_eval_record_as_the_card_gives_them():
    """Every ``{{protocol_*}}`` field of the card template is computed from the protocol's record, and the published
    card's protocol table is what the record gives."""
    import re

    from LightSegLib.lab.cxr_protocol import card_fields

    models = REPO / "Resources" / "Models"
    fields = card_fields(json.loads((models / "pneumonia-cxr.eval.json").read_text()))
    template = (REPO / "configs" / "cards" / "pneumonia-cxr.md.in").read_text()
    assert set(re.findall(r"{{(protocol_[^}]+)}}", template)) == set(fields)
    card = (models / "pneumonia-cxr.md").read_text()
    rows = fields["protocol_table"].splitlines()[2:]
    assert len(rows) == 4 and all(row in card for row in rows)
    assert fields["protocol_rule_threshold"] == "0.047" and fields["protocol_decision"].startswith("keep")


def test_segment_refuses_a_classifier_with_the_command_that_runs_it(tmp_path):
    proc = lightseg("segment", "--model", "pneumonia-cxr", REPO / "Resources" / "Samples" / "acdc_patient002_ED.nii.gz",
                    tmp_path / "out.nii.gz")
    assert proc.returncode == 2 and "lightseg classify --model pneumonia-cxr" in proc.stderr
    assert not (tmp_path / "out.nii.gz").exists()
