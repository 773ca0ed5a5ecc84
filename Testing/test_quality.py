"""The quality estimate (LightSegLib/quality.py): its figures, and the registry's thresholds on the bundled CT."""
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO
from LightSegLib import quality
from LightSegLib.inference import segment_image
from LightSegLib.registry import ModelCard, get_model, list_models

CT = REPO / "Resources" / "Samples" / "totalseg_example_ct_sm.nii.gz"


def test_confidence_is_the_mean_top_probability_inside_each_predicted_label():
    logits = np.zeros((1, 3, 2, 2), np.float32)
    logits[0, 1, 0, 0] = np.log(3.0)  # p = (1, 3, 1) / 5 -> label 1 at 0.6
    logits[0, 2, 1, 1] = np.log(8.0)  # p = (1, 1, 8) / 10 -> label 2 at 0.8
    logits[0, 2, 1, 0] = np.log(2.0)  # p = (1, 1, 2) / 4 -> label 2 at 0.5
    c = quality.Confidence(3)
    c.add(logits)
    assert c.mean(1) == pytest.approx(0.6) and c.mean(2) == pytest.approx(0.65)
    assert c.mean(0) is None  # background is not scored


def test_organ_figures_are_fractions_of_the_body_box():
    volume = np.full((2, 100, 100), -1000, np.int16)
    volume[:, 10:90, 20:80] = 40  # body: rows 10-89, columns 20-79
    labels = np.zeros(volume.shape, np.uint8)
    labels[1, 30:40, 50:60] = 1  # 100 pixels, centre (34.5, 54.5)
    f = quality.organ_figures(volume, labels, 1, 0.0)
    assert f["area_fraction"] == pytest.approx(100 / 4800, rel=0.05)
    x, y = f["position"]
    assert x == pytest.approx((54.5 - 20) / 59, abs=0.03) and y == pytest.approx((34.5 - 10) / 79, abs=0.03)


def test_every_shipped_model_has_calibrated_thresholds():
    for card in list_models(folder=REPO / "Resources" / "Models"):
        if card.task == "classification":  # no labelmap: its probability is the confidence
            continue
        limits = card.entry.get("quality", {}).get("labels", {})
        assert set(limits) == set(card.label_names().values()), card.id


@pytest.fixture(scope="module")
def ct():
    return sitk.ReadImage(str(CT))


def test_pancreas_failure_on_the_ct_sample_is_flagged_and_the_liver_is_not(ct, monkeypatch):
    """pancreas-ct on the bundled CT: Dice 0.003 against TotalSegmentator, a sliver on the splenic vein."""
    monkeypatch.delenv("LIGHTSEG_MODELS_DIR", raising=False)
    pancreas = segment_image(ct, get_model("pancreas-ct"), threads=1).quality
    assert pancreas["flag"] and pancreas["calibrated"]
    assert any("confidence" in r for r in pancreas["reasons"])
    assert quality.summary(pancreas).startswith(quality.LOW)
    liver = segment_image(ct, get_model("liver-ct"), threads=1).quality
    assert not liver["flag"] and liver["labels"]["liver"]["confidence"] > 0.95
    assert quality.summary(liver).startswith("quality ok")


def test_the_thresholds_come_from_the_registry_entry(ct, monkeypatch):
    monkeypatch.delenv("LIGHTSEG_MODELS_DIR", raising=False)
    card = get_model("pancreas-ct")
    bare = ModelCard({k: v for k, v in card.entry.items() if k != "quality"}, card.folder)
    q = segment_image(ct, bare, threads=1).quality
    assert not q["flag"] and not q["calibrated"] and q["labels"]["pancreas"]["confidence"] < 0.9
    assert quality.summary(q).startswith("quality not calibrated")


def test_demo_lines_carry_the_quality_and_a_preview_models_caveat(tmp_path, monkeypatch, capsys):
    from LightSegLib.cli import main

    monkeypatch.delenv("LIGHTSEG_MODELS_DIR", raising=False)
    assert main(["demo", "--out", str(tmp_path), "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    pancreas = next(i for i, line in enumerate(lines) if line.startswith("pancreas-ct [preview]"))
    assert quality.LOW in lines[pancreas]
    assert lines[pancreas + 1].startswith("  why: ") and "whole CT" in lines[pancreas + 1]
    liver = next(i for i, line in enumerate(lines) if line.startswith("liver-ct [preview] on"))
    assert "quality ok" in lines[liver] and "why:" not in lines[liver]
    assert lines[liver + 1].startswith("  why: ") and "not cross-validated" in lines[liver + 1]


def test_the_two_class_shortcut_equals_the_softmax():
    logits = np.random.default_rng(0).normal(size=(2, 2, 8, 8)).astype(np.float32)
    fast = quality.Confidence(2)
    fast.add(logits)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    fg = p[:, 1] > p[:, 0]
    assert fast.count[1] == fg.sum() and fast.mean(1) == pytest.approx(p[:, 1][fg].mean(), rel=1e-5)


def test_percentiles_from_counts_equal_numpys_on_the_listed_indices():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 4, (50, 40)) * (rng.random((50, 40)) < 0.6)
    counts[:, 0] += 1  # no empty row
    for q in (1, 50, 99):
        expected = [np.percentile(np.repeat(np.arange(40), row), q) for row in counts]
        np.testing.assert_allclose(quality._percentiles(counts, q), expected, rtol=0, atol=1e-9)
