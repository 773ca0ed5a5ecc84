"""Training pipeline on real ACDC volumes (a few, tiny patches, a few iterations): files, resume, budget,
schedule, DDP with gloo, and export -> registry -> the inference engine."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, shared

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

SAMPLES = REPO / "Resources" / "Samples"


@pytest.fixture
def tiny_acdc(tmp_path):
    """A dataset.json naming the bundled ACDC frames by absolute path: both for training, ED for validation (these
    tests check the mechanics, not generalisation)."""
    cases = [{"image": str(SAMPLES / f"acdc_patient002_{p}.nii.gz"),
              "label": str(SAMPLES / f"acdc_patient002_{p}_label.nii.gz")} for p in ("ED", "ES")]
    split = {"training": cases, "validation": cases[:1]}
    folder = tmp_path / "acdc_tiny"
    folder.mkdir()
    (folder / "dataset.json").write_text(json.dumps(split))
    return folder


def write_config(path: Path, dataset: Path, **train) -> Path:
    t = {"seed": 0, "batch_size": 2, "epochs": 2, "iters_per_epoch": 3, "lr": 1e-3, "threads": 1,
         "warmup_iters": 0, "time_budget_min": 0.0, **train}
    lines = ['[model]', 'name = "lfunet"', 'in_channels = 1', 'num_classes = 4', 'widths = [4, 8, 16]',
             '[data]', f'dataset = "{dataset}"', 'patch = [48, 48]', 'num_workers = 0',
             '[train]'] + [f"{k} = {json.dumps(v)}" for k, v in t.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def lightseg(*args) -> int:
    from LightSegLib.cli import main

    return main([str(a) for a in args])


def rows(run: Path) -> list[dict]:
    with open(run / "log.csv") as f:
        return list(csv.DictReader(f))


def test_train_writes_run_files_and_resumes(tiny_acdc, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.toml", tiny_acdc)
    run = tmp_path / "run"
    assert lightseg("train", "--config", cfg, "--out", run) == 0
    for name in ("config.toml", "config.source.toml", "last.pt", "best.pt", "log.csv", "curves.png", "summary.json"):
        assert (run / name).is_file(), name
    saved = tomllib.loads((run / "config.toml").read_text())
    assert saved["model"]["widths"] == [4, 8, 16] and saved["data"]["patch"] == [48, 48]
    log = rows(run)
    assert [int(r["epoch"]) for r in log] == [1, 2] and int(log[-1]["iteration"]) == 6
    dice = [float(log[-1][f"val_{k}"]) for k in (1, 2, 3)]
    assert all(0.0 <= d <= 1.0 for d in dice)
    best = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    assert best["architecture"]["name"] == "lfunet" and best["prep"]["inplane"]["spacing"] == [1.5, 1.5]

    # A second run into the same folder must not silently overwrite it.
    assert lightseg("train", "--config", cfg, "--out", run) == 2
    assert "already holds a run" in capsys.readouterr().err

    # Resume continues the counters where they stopped; the weights change further.
    before = torch.load(run / "last.pt", map_location="cpu", weights_only=False)["model"]
    assert lightseg("train", "--config", cfg, "--out", run, "--resume", "--epochs", "3") == 0
    log = rows(run)
    assert [int(r["epoch"]) for r in log] == [1, 2, 3] and int(log[-1]["iteration"]) == 9
    after = torch.load(run / "last.pt", map_location="cpu", weights_only=False)["model"]
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())


def test_same_seed_same_weights(tiny_acdc, tmp_path):
    cfg = write_config(tmp_path / "c.toml", tiny_acdc, epochs=1)
    for name in ("a", "b"):
        assert lightseg("train", "--config", cfg, "--out", tmp_path / name) == 0
    a = torch.load(tmp_path / "a" / "last.pt", map_location="cpu", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", map_location="cpu", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_time_budget_stops_the_run(tiny_acdc, tmp_path):
    cfg = write_config(tmp_path / "c.toml", tiny_acdc, epochs=50)
    run = tmp_path / "run"
    assert lightseg("train", "--config", cfg, "--out", run, "--time-budget", "0.0001") == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] < 50 * 3


def test_schedules():
    from LightSegLib.lab.train.trainer import lr_at

    poly = {"lr": 1.0, "schedule": "poly", "poly_power": 0.9, "warmup_iters": 10}
    assert lr_at(poly, 0.0, 4) == pytest.approx(0.5)  # warm-up: linear in iterations
    assert lr_at(poly, 0.5, 100) == pytest.approx(0.5 ** 0.9)
    assert lr_at(poly, 1.0, 100) == 0.0
    cosine = {**poly, "schedule": "cosine", "warmup_iters": 0}
    assert lr_at(cosine, 0.5, 100) == pytest.approx(0.5)
    assert lr_at(cosine, 0.25, 100) == pytest.approx(0.5 * (1 + np.cos(np.pi / 4)))


def test_noise_augmentation_strength_comes_from_the_config():
    """augment.noise_std is the largest standard deviation MONAI draws (0.15 is about 38 HU in the [0, 255] HU
    window); the default keeps the earlier 0.03."""
    from LightSegLib.lab.data.augment import build_transform

    off = {k: 0.0 for k in ("affine_prob", "elastic_prob", "blur_prob", "intensity_prob", "gamma_prob")}

    def sample(cfg):
        blank = {"image": np.zeros((1, 64, 64), np.float32), "label": np.zeros((1, 64, 64), np.uint8)}
        return build_transform([64, 64], {**off, "noise_prob": 1.0, **cfg})(blank)["image"]

    weak = [float(np.std(np.asarray(sample({})))) for _ in range(20)]
    strong = [float(np.std(np.asarray(sample({"noise_std": 0.15})))) for _ in range(20)]
    assert 0 < max(weak) <= 0.031 and 0 < max(strong) <= 0.155 and np.mean(strong) > 3 * np.mean(weak)


def test_intensity_shift_and_histogram_shift_come_from_the_config():
    """augment.intensity_shift is the largest offset MONAI adds (default 0.1, as before); histogram_shift_prob adds a
    random monotone remapping that keeps the window's ends, so an organ can get darker relative to its neighbours
    (a fatty or unenhanced liver)."""
    from LightSegLib.lab.data.augment import build_transform

    off = {k: 0.0 for k in ("affine_prob", "elastic_prob", "blur_prob", "noise_prob", "gamma_prob")}
    ramp = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(1, 64, 64)

    def sample(cfg):
        data = {"image": ramp.copy(), "label": np.zeros((1, 64, 64), np.uint8)}
        return np.asarray(build_transform([64, 64], {**off, **cfg})(data)["image"])

    shift_only = {"intensity_prob": 1.0, "intensity_shift": 0.25}
    offsets = [float(sample(shift_only)[0, 0, 0]) for _ in range(30)]  # the ramp's 0: scaling leaves it, offsets move it
    assert max(abs(o) for o in offsets) <= 0.25 + 1e-6 and max(abs(o) for o in offsets) > 0.1
    assert all(abs(float(sample({"intensity_prob": 1.0})[0, 0, 0])) <= 0.1 + 1e-6 for _ in range(20))
    remapped = [sample({"intensity_prob": 0.0, "histogram_shift_prob": 1.0}) for _ in range(10)]
    assert all(r.min() == pytest.approx(0.0, abs=1e-5) and r.max() == pytest.approx(1.0, abs=1e-5) for r in remapped)
    assert all(np.all(np.diff(r.ravel()) >= -1e-6) for r in remapped)  # monotone
    assert max(float(np.abs(r - ramp).max()) for r in remapped) > 0.02
    assert np.array_equal(sample({"intensity_prob": 0.0}), ramp)  # off by default


def test_coarse_scan_augmentation_softens_edges_and_leaves_the_label():
    """augment.lowres_prob: the crop shrunk and enlarged back, as a 3 mm CT resized up to the model grid; the label
    stays sharp (it is what the network should still find); off by default."""
    from LightSegLib.lab.data.augment import build_transform

    off = {k: 0.0 for k in ("affine_prob", "elastic_prob", "blur_prob", "noise_prob", "intensity_prob", "gamma_prob")}
    square = np.zeros((1, 64, 64), np.float32)
    square[:, 16:48, 16:48] = 1.0
    label = (square > 0).astype(np.uint8)

    def sample(cfg):
        out = build_transform([64, 64], {**off, **cfg})({"image": square.copy(), "label": label.copy()})
        return np.asarray(out["image"]), np.asarray(out["label"])

    edge = lambda img: float(np.abs(np.diff(img, axis=-1)).max())  # noqa: E731 - the sharpest step
    coarse = [sample({"lowres_prob": 1.0, "lowres_zoom": [0.3, 0.3]}) for _ in range(3)]
    assert all(edge(img) < 0.9 and np.array_equal(lab, label) for img, lab in coarse)
    assert np.array_equal(sample({})[0], square) and edge(square) == 1.0


def test_deep_supervision_loss_weights():
    from monai.losses import DiceCELoss

    from LightSegLib.lab.train.trainer import segmentation_loss

    torch.manual_seed(0)
    target = torch.randint(0, 2, (2, 1, 16, 16))
    outs = [torch.randn(2, 2, 16, 16) for _ in range(3)]
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    each = [float(dice_ce(o, target)) for o in outs]
    loss = segmentation_loss([1.0, 0.5, 0.25, 0.125])(outs, target)  # a 4th weight for a head the net lacks
    assert float(loss) == pytest.approx((each[0] + 0.5 * each[1] + 0.25 * each[2]) / 1.75, rel=1e-5)
    assert float(segmentation_loss([1.0])(outs, target)) == pytest.approx(each[0], rel=1e-5)  # main head only
    assert float(segmentation_loss([1.0])(outs[0], target)) == pytest.approx(each[0], rel=1e-5)


def test_ddp_two_processes_gloo(tiny_acdc, tmp_path):
    cfg = write_config(tmp_path / "c.toml", tiny_acdc, epochs=1)
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29517", "-m", "LightSegLib.cli", "train", "--config", str(cfg), "--out", str(run)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = rows(run)
    assert len(log) == 1 and int(log[0]["iteration"]) == 3 and log[0]["val_mean"] != ""


def test_export_registers_a_model_the_engine_runs(tiny_acdc, tmp_path):
    pytest.importorskip("onnxruntime")
    import SimpleITK as sitk

    from LightSegLib.lab.export import export_checkpoint
    from LightSegLib.inference import segment_image
    from LightSegLib.registry import get_model

    cfg = write_config(tmp_path / "c.toml", tiny_acdc, epochs=1)
    run = tmp_path / "run"
    assert lightseg("train", "--config", cfg, "--out", run) == 0
    models = tmp_path / "models"
    models.mkdir()
    card = json.loads((REPO / "configs" / "cards" / "cardiac-acdc.json").read_text())
    (tmp_path / "card.json").write_text(json.dumps(card))
    sample = REPO / "Resources" / "Samples" / "acdc_patient002_ED.nii.gz"
    report = export_checkpoint(run / "best.pt", models / "t.onnx", card_path=tmp_path / "card.json",
                               register_id="tiny-cardiac", parity_image=sample, with_torch=True,
                               models_folder=models, log=lambda *a: None)
    assert report["parity"]["max_abs_diff"] < 1e-4
    entry = get_model("tiny-cardiac", folder=models)
    assert entry.params == report["params"] > 0 and entry.macs > 0
    assert entry.architecture["widths"] == [4, 8, 16]
    assert set(entry.metrics["dice"]) == {"right ventricle", "myocardium", "left ventricle"}
    image = sitk.ReadImage(str(sample))
    result = segment_image(image, entry, threads=1)
    assert result.labelmap.GetSize() == image.GetSize()


def test_evaluate_checkpoint_matches_independent_dice(tiny_acdc, tmp_path):
    import SimpleITK as sitk

    from LightSegLib.lab.data.msd import load_case, read_split
    from LightSegLib.lab.evaluate import evaluate
    from LightSegLib.lab.export import load_checkpoint
    from LightSegLib.lab.train.evaluate_core import predict_case

    cfg = write_config(tmp_path / "c.toml", tiny_acdc, epochs=1)
    run = tmp_path / "run"
    assert lightseg("train", "--config", cfg, "--out", run) == 0
    out = tmp_path / "eval"
    summary = evaluate(str(run / "best.pt"), tiny_acdc, "validation", out, threads=1, log=lambda *a: None)
    for name in ("metrics.csv", "summary.md", "summary.json", "evaluation.png"):
        assert (out / name).is_file()
    with open(out / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert [int(r["label"]) for r in table] == [1, 2, 3]
    # Dice recomputed with plain numpy from the same prediction
    entry = read_split(tiny_acdc, "validation")[0]
    net, ckpt = load_checkpoint(run / "best.pt")
    case = load_case(entry, ckpt["prep"])
    pred = case.orientation.invert(predict_case(net, case, "cpu"))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(entry["label"]))
    for r in table:
        v = int(r["label"])
        p, t = pred == v, truth == v
        expected = 2 * np.sum(p & t) / (np.sum(p) + np.sum(t))
        assert float(r["dice"]) == pytest.approx(expected, abs=1e-5)
    assert summary["mean_dice"] == pytest.approx(np.mean([float(r["dice"]) for r in table]), abs=1e-6)


def test_npz_slice_folders_split_by_file_and_preprocess():
    from LightSegLib.lab.data.reader import load_split, split_names

    root = shared("nih_pancreas_2d")
    dcfg = {"dataset": str(root)}
    train, val = split_names(dcfg, "training"), split_names(dcfg, "validation")
    assert not set(train) & set(val) and len(train) + len(val) == len(list(root.glob("*.npz")))
    prep = {"orientation": "LPS", "inplane": {"mode": "fit", "size": [128, 128]},
            "normalization": {"type": "window", "window": [0, 255]}, "context_slices": 0}
    cases = load_split({"data": dcfg}, "validation", prep, limit=2)
    raw = np.load(root / f"{val[0]}.npz")
    real = raw["crop_margin"] == 0  # validation keeps slices of real geometry only, not the zoomed copies
    assert cases[0].image.shape == (int(real.sum()), 128, 128)
    assert 0.0 <= cases[0].image.min() and cases[0].image.max() <= 1.0
    assert set(np.unique(cases[0].label)) <= {0, 1} and cases[0].label.any()
    # nearest-neighbour labels: the pancreas fraction survives the 512 -> 128 resize within a few percent
    assert cases[0].label.mean() == pytest.approx((raw["label"][real] > 0).mean(), rel=0.1)


def test_evaluate_int8_variant_uses_the_int8_file(tiny_acdc, tmp_path):
    """``ID:int8`` evaluates the registered int8 file through the engine, like ``lightseg bench`` names it."""
    from LightSegLib.errors import LightSegError
    from LightSegLib.lab.evaluate import evaluate

    fp32 = evaluate("cardiac-acdc", tiny_acdc, "validation", tmp_path / "fp32", threads=1, log=lambda *a: None)
    int8 = evaluate("cardiac-acdc:int8", tiny_acdc, "validation", tmp_path / "int8", threads=1, log=lambda *a: None)
    assert int8["model"] == "cardiac-acdc:int8"
    # The shipped int8 file keeps the fp32 accuracy (card: 0.917 vs 0.918 over 20 volumes), but is not the same file.
    assert abs(int8["mean_dice"] - fp32["mean_dice"]) < 0.02
    assert (tmp_path / "int8" / "metrics.csv").read_text() != (tmp_path / "fp32" / "metrics.csv").read_text()
    with pytest.raises(LightSegError, match="only variant"):
        evaluate("cardiac-acdc:fp16", tiny_acdc, "validation", tmp_path / "x", threads=1, log=lambda *a: None)


@pytest.mark.parametrize("name", ["unet", "dpunet"])
def test_cpu_bf16_training_stays_finite(tiny_acdc, tmp_path, name, monkeypatch):
    """cpu_bf16: bfloat16 autocast (+ channels_last, except for dilated convs, whose oneDNN bf16 gradients are NaN
    in channels_last) trains with finite losses and saves fp32 weights that export as usual. Forced on where the
    CPU lacks native bf16 (it would be switched off there), so the path is tested on every machine."""
    import torch

    from LightSegLib.lab.train import trainer

    monkeypatch.setattr(trainer, "cpu_has_bf16", lambda: True)
    cfg = write_config(tmp_path / "c.toml", tiny_acdc, epochs=1, cpu_bf16=True)
    cfg.write_text(cfg.read_text().replace('name = "lfunet"', f'name = "{name}"'))
    run = tmp_path / "run"
    assert lightseg("train", "--config", cfg, "--out", run) == 0
    with open(run / "log.csv") as f:
        row = list(csv.DictReader(f))[-1]
    assert np.isfinite(float(row["train_loss"])) and np.isfinite(float(row["val_mean"]))
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=False)["model"]
    assert all(t.dtype != torch.bfloat16 and torch.isfinite(t.float()).all() for t in state.values())


def test_cpu_bf16_is_switched_off_where_the_cpu_has_no_bf16_instructions(tiny_acdc, tmp_path, monkeypatch, capsys):
    """bfloat16 autocast ran 26x slower than fp32 on an AVX2-only CPU: a config asking for it trains in fp32 there."""
    import torch

    from LightSegLib.lab.train import trainer

    monkeypatch.setattr(trainer, "cpu_has_bf16", lambda: False)
    autocasts = []
    real = torch.autocast
    monkeypatch.setattr(torch, "autocast", lambda *a, **k: autocasts.append(k.get("enabled")) or real(*a, **k))
    cfg = write_config(tmp_path / "c.toml", tiny_acdc, epochs=1, cpu_bf16=True)
    assert lightseg("train", "--config", cfg, "--out", tmp_path / "run") == 0
    assert "cpu_bf16 off" in capsys.readouterr().out
    assert autocasts and not any(autocasts)


def test_train_loop_runs_its_hooks_in_order_on_the_run_state(tiny_acdc, tmp_path):
    """Hooks run after every iteration in the order given, see the run's counters, and ``Every`` fires on its
    interval and on the last iteration; the resumable state a ``ResumableState`` hook writes holds the counters."""
    from LightSegLib.lab.data.reader import load_split
    from LightSegLib.lab.nets import build
    from LightSegLib.lab.train.config import load_config
    from LightSegLib.lab.train.trainer import Every, Hook, ResumableState, train_loop

    cfg = load_config(write_config(tmp_path / "c.toml", tiny_acdc))
    seen = []

    class Note(Hook):
        def after(self, run, last):
            seen.append(("note", run.iteration, last, len(run.losses)))

    state = tmp_path / "state.pt"
    hooks = [Note(), Every(3, lambda it, losses, last, elapsed: seen.append(("every", it, last))),
             ResumableState(state, every=2, log=lambda s: None)]
    result = train_loop(build(dict(cfg["model"])), cfg, 4, hooks=hooks,
                        train_cases=load_split(cfg, cfg["data"]["train_split"]), log=lambda s: None)
    assert result["iterations"] == 4
    assert seen == [("note", 1, False, 1), ("note", 2, False, 2), ("note", 3, False, 3), ("every", 3, False),
                    ("note", 4, True, 4), ("every", 4, True)]
    saved = torch.load(state, map_location="cpu", weights_only=False)
    assert saved["iteration"] == 4 and len(saved["losses"]) == 4 and saved["extra"] is None
    assert set(saved) == {"model", "optimizer", "iteration", "seconds", "losses", "extra"}
