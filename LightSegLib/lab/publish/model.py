"""A CT model's way from checkpoint to card (``lightseg publish``): export, register, evaluate through the engine,
card; ``--card-only`` re-renders a card from ``ID.eval.json``; ``lightseg bench --record`` stores a speed
measurement in the entry and its card."""
from __future__ import annotations

import json
from pathlib import Path

from ...errors import LightSegError
from ...machine import machine_line
from ...registry import SAMPLES_DIR, get_model, models_dir
from ..bench import parse_model
from ..evaluate import evaluate_model, slice_checks, volume_checks
from ..export import export_checkpoint
from ..train.config import load_config
from .cards import crossval_markdown, refresh_card, render_card, training_markdown
from .writer import update_model


def publish(checkpoint, model_id: str, card_path, config_path, status: str = "preview", reproduce: str | None = None,
            threads: int = 1, crossval: dict | None = None, log=print) -> dict:
    """Checkpoint -> ONNX in the models folder -> registry entry -> evaluation through the engine -> metrics
    in the entry, ``ID.eval.json`` and the card's measured section (``configs/cards/ID.md.in`` -> ``ID.md``)."""
    folder = models_dir()
    cfg = load_config(config_path)
    size = cfg["data"]["inplane"].get("size", [256, 256])
    parity = SAMPLES_DIR / "totalseg_example_ct_sm.nii.gz"
    export_checkpoint(checkpoint, folder / f"{model_id}.onnx", card_path=card_path, register_id=model_id,
                      parity_image=parity, macs_hw=tuple(size), status=status, reproduce=reproduce, log=log)
    card_text = {"training": training_markdown(checkpoint), "crossval": crossval_markdown(crossval)}
    report = evaluate_and_card(model_id, card_path, cfg, threads, card_text, crossval)
    log(json.dumps(report, indent=1))
    return report


def evaluate_and_card(model_id: str, card_path, cfg: dict, threads: int, card_text: dict,
                      crossval: dict | None = None) -> dict:
    """Evaluate the registered model through the engine; its figures go into the registry entry, ``ID.eval.json``
    (with the card's generated prose, so the card can be re-rendered without the run folders, and the recipe's
    cross-validation per case) and the card."""
    folder = models_dir()
    card = get_model(model_id)
    report = evaluate_model(card, cfg, card.task, threads, splits=("val", "test"))
    report["card_text"] = card_text
    if crossval is not None:
        report["crossval"] = crossval
    (folder / f"{model_id}.eval.json").write_text(json.dumps(report, indent=1) + "\n")
    metrics = dict(card.entry["metrics"])
    for key in ("val_8bit", "test_8bit", *(c["name"] for c in slice_checks())):
        if key in report:
            metrics[key] = {k: v for k, v in report[key].items() if k != "per_case"}
    for check in volume_checks(cards=True):
        if check["name"] in report:
            metrics[check["name"]] = report[check["name"]]["dice"]
    entry = update_model(model_id, folder, metrics=metrics)
    render_card(model_id, card_path, report, entry, folder)
    return report


def recard(model_id: str, card_path, config_path=None, threads: int = 1, crossval: dict | None = None,
           status: str | None = None) -> None:
    """Re-render a published model's card from its ``ID.eval.json`` and registry entry (no checkpoint needed),
    with a new cross-validation result or registry status when given (a cross-validation can settle whether a
    model meets its target); with the training config, re-evaluate the registered model first (new checks)."""
    folder = models_dir()
    path = folder / f"{model_id}.eval.json"
    report = json.loads(path.read_text())
    if "card_text" not in report:
        raise LightSegError(f"{path.name} predates --card-only: publish {model_id} again from its checkpoint")
    text = report["card_text"]
    if status is not None:
        update_model(model_id, folder, status=status)
    if crossval is not None:
        text["crossval"] = crossval_markdown(crossval)
        report["crossval"] = crossval
    if config_path:
        evaluate_and_card(model_id, card_path, load_config(config_path), threads, text, report.get("crossval"))
        return
    path.write_text(json.dumps(report, indent=1) + "\n")
    render_card(model_id, card_path, report, get_model(model_id).entry, folder)


def record_speed(result: dict, folder=None, log=print) -> list[str]:
    """Store each fp32 model's figures of this run as its registry entry's ``speed`` (shown by ``lightseg models``,
    Slicer's model list and the model card), with the input, machine and threads, and the models it was timed
    beside; a published card is re-rendered from it, so the card and the registry never hold two measurements."""
    names = [r["model"] for r in result["models"]]
    done = []
    for row in result["models"]:
        model, int8 = parse_model(row["model"])
        if int8:
            continue
        speed = {"input": Path(result["input"]).name, "wall_s": row["latency_median_s"],
                 "wall_min_s": row["latency_min_s"], "wall_max_s": row["latency_max_s"],
                 "repeat": int(result["repeat"]), "threads": int(result["threads"]),
                 "machine": machine_line(result["machine"]), "peak_rss_mb": row["peak_rss_mb"],
                 "compared_with": [n for n in names if n != row["model"]]}
        for key, name in (("engine_s", "engine_median_s"), ("network_s", "network_median_s")):
            if name in row:
                speed[key] = row[name]
        update_model(model, folder, speed=speed)
        if not refresh_card(model, folder or models_dir()):
            log(f"{model}: no published card to re-render (lightseg publish --card-only re-renders it later)")
        done.append(model)
    return done
