"""The retrained classifier's way to its card: the v2 recipe trained, published into a registry copy, scored by the
validation protocol on the split it was trained with, and its card re-rendered from the records."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, shared



def _tiny_folder(root: Path, out: Path) -> Path:
    """40 NORMAL and 40 PNEUMONIA images of the real folder, spread over its sorted names, as symlinks."""
    for cls in ("NORMAL", "PNEUMONIA"):
        (out / cls).mkdir(parents=True)
        files = sorted((root / cls).glob("*.jp*g"))
        for path in files[::len(files) // 40][:40]:
            os.symlink(path, out / cls / path.name)
    return out


@pytest.mark.slow
def test_v2_recipe_publishes_a_card_the_protocol_then_fills_from_its_own_record(tmp_path, monkeypatch):
    """Publish writes the card before any protocol record of the new weights exists (its section says so, and the
    shipped model's record is not taken for them); the protocol draws its validation part and new patients from the
    recipe's split (the held-out children), and ``evaluate --card`` fills the section from that record."""
    pytest.importorskip("monai")
    from LightSegLib.lab import cxr_protocol
    from LightSegLib.lab.data.cxr import list_images, split_with_held_out
    from LightSegLib.lab.train.config import load_config, to_toml
    from LightSegLib.registry import get_model

    data = _tiny_folder(shared("chest_xray/train"), tmp_path / "data")
    cfg = load_config(REPO / "configs" / "experiments" / "pneumonia-cxr-v2.toml")
    cfg["data"].update(dataset=str(data), size=32)
    cfg["train"].update(epochs=1, batch_size=8, threads=1)
    cfg["compress"].update(epochs=1)
    cfg["publish"].update(plots=str(tmp_path / "plots"))
    config = tmp_path / "v2.toml"
    config.write_text('task = "classification"\n' + to_toml({k: v for k, v in cfg.items() if k != "task"}))
    models = tmp_path / "models"
    models.mkdir()
    shipped = REPO / "Resources" / "Models"
    for name in ("models.json", "pneumonia-cxr.eval.json"):  # the shipped record: of other weights
        shutil.copyfile(shipped / name, models / name)
    monkeypatch.setenv("LIGHTSEG_MODELS_DIR", str(models))
    run = tmp_path / "run"
    for stage in ([], ["--stage", "publish"]):
        proc = subprocess.run([sys.executable, "-m", "LightSegLib.cli", "train", "--config", str(config), "--out",
                               str(run), *stage], capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-3000:]
    card = get_model("pneumonia-cxr")
    text = (models / card.entry["card"]).read_text()
    assert "{{" not in text and f"has not scored these weights (sha256 {card.sha256[:12]})" in text
    assert "New patients and shifted images" in text and "| validation |" not in text
    assert "baseline: 1 epochs in" in text and "compress: 1 epochs in" in text  # from the checkpoints

    split = cxr_protocol.recipe(card.entry)
    assert (split["held_out"], split["val_fraction"], split["seed"]) == (0.5, 0.15, 0)
    parts = split_with_held_out(list_images(data), 0.5, 0.15, 0)
    fixed = cxr_protocol.fix(data, tmp_path / "fixed.json", threads=1, log=lambda *_: None)
    assert fixed["validation"]["paths"] == [p.name for p, _ in parts["val"]]
    scored = cxr_protocol.score_new_patients(data, tmp_path / "new.json", threads=1, log=lambda *_: None)
    assert scored["paths"] == [p.name for p, _ in parts["held_out"]]  # children neither model saw

    proc = subprocess.run([sys.executable, "benchmarks/cxr_protocol.py", "evaluate", str(tmp_path / "fixed.json"),
                           str(tmp_path / "new.json"), "--out", str(models / "pneumonia-cxr.eval.json"), "--card"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((models / "pneumonia-cxr.eval.json").read_text())
    assert record["sha256"] == card.sha256 and record["split"] == split
    text = (models / card.entry["card"]).read_text()
    assert "{{" not in text and "has not scored" not in text
    fields = cxr_protocol.card_fields(record)
    rows = fields["protocol_table"].splitlines()[2:]
    assert len(rows) == 4 and all(row in text for row in rows)
    assert f"{len(parts['held_out'])} images" in fields["protocol_new_patients"]
    assert fields["protocol_at_rule"] in text and fields["protocol_calibration"] in text
