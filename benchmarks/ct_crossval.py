"""K-fold cross-validation by volume / patient of a CT recipe (issue 6: "report cross-validated figures").

The test split of ``data.holdout`` stays out; the rest (the pool) is cut into N folds. For each fold the recipe's
training stage runs on the other folds for a fixed budget (minutes, or epochs to match a shipped run's iterations
on a busy machine), optionally followed by the recipe's pruning stage (``--prune``: ``prune-ct`` options, run on
the *last* checkpoint) and a distillation stage (``--distill``: the pruned net as student, the fold's trained net as
teacher). The result (no selection on the fold) is exported and scored through the inference engine
on the fold's cases, as ``lightseg publish`` scores a model. Every pool case is thus scored once, by a model that
never saw it. Resumable: finished stages and folds are skipped. ``--fold K`` runs one fold, so folds can run as
parallel processes; the summary is written once every fold is done.

    .venv/bin/python benchmarks/ct_crossval.py --config configs/experiments/liver_lits2d.toml --folds 5 --minutes 10 \\
        --card configs/cards/liver-ct.json --out runs/liver_cv

Writes OUT/crossval.json and prints a markdown table. Without ``--prune`` and at a short budget the figures
describe the recipe's training stage, not a shipped model (which trains longer and may be pruned afterwards).

Two recipes cross-validated on the same folds are compared case by case (paired), since their difference is far
smaller than the spread between cases:

    .venv/bin/python benchmarks/ct_crossval.py --compare runs/liver_noise_cv/crossval.json runs/liver_cv/crossval.json
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_fold(args, k: int) -> dict:
    out = Path(args.out) / f"fold{k}"
    result_path = out / "fold.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    if not (out / "summary.json").is_file():
        budget = ((["--epochs", str(args.epochs)] if args.epochs else [])
                  + ["--time-budget", str(args.minutes or 0)])
        cmd = [sys.executable, "-m", "LightSegLib.cli", "train", "--config", args.config, "--folds", str(args.folds),
               "--fold", str(k), *budget, "--threads", str(args.threads), "--out", str(out)]
        if (out / "last.pt").is_file():
            cmd.append("--resume")
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    checkpoint = out / "last.pt"
    if args.prune:
        checkpoint = out / "pruned.pt"
        if not checkpoint.is_file():
            cmd = [sys.executable, "-m", "LightSegLib.cli", "prune-ct", "--config", str(out / "config.toml"),
                   str(out / "last.pt"), *shlex.split(args.prune), "--threads", str(args.threads),
                   "--out", str(checkpoint), "--resume"]  # an interrupted fine-tuning continues
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
    if args.distill:  # the CPRUN way: the pruned, rebuilt net learns from the fold's own trained net
        student, kd = checkpoint, out / "kd"
        checkpoint = kd / "best.pt"
        if not checkpoint.is_file():
            cmd = [sys.executable, "-m", "LightSegLib.cli", "distill", "--teacher", str(out / "last.pt"),
                   "--student", str(student), "--config", str(out / "config.toml"), *shlex.split(args.distill),
                   "--threads", str(args.threads), "--out", str(kd)]
            if (kd / "state.pt").is_file():
                cmd.append("--resume")
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)

    from LightSegLib.lab.export import export_checkpoint
    from LightSegLib.registry import get_model
    from LightSegLib.lab.train.config import load_config
    from LightSegLib.lab.evaluate import eval_npz_split

    models = Path(args.out) / "models"
    models.mkdir(parents=True, exist_ok=True)
    os.environ["LIGHTSEG_MODELS_DIR"] = str(models)
    cfg = load_config(out / "config.toml")  # the fold's config as trained (holdout.fold set)
    size = cfg["data"]["inplane"].get("size", [256, 256])
    model_id = f"cv-fold{k}"
    export_checkpoint(checkpoint, models / f"{model_id}.onnx", card_path=args.card, register_id=model_id,
                      macs_hw=tuple(size), status="reference", log=lambda s: None)
    report = eval_npz_split(get_model(model_id), cfg, "val", args.threads)
    summary = json.loads((out / "summary.json").read_text())
    result = {"fold": k, "iterations": summary["iterations"], "minutes": summary["minutes"], **report}
    result_path.write_text(json.dumps(result, indent=1))
    return result


def cases_of(folds: list[dict]) -> dict[str, float]:
    """Dice per case over all folds (each pool case lies in exactly one)."""
    return {c: d for f in folds for c, d in f["per_case"].items()}


def compare(a: dict, b: dict) -> dict:
    """Paired per-case difference a - b over the cases both cross-validations scored, with a Wilcoxon signed-rank
    p-value (two-sided; cases are not normally distributed: a few near 0 dominate the spread)."""
    from scipy.stats import wilcoxon

    case_a, case_b = cases_of(a["per_fold"]), cases_of(b["per_fold"])
    cases = sorted(case_a.keys() & case_b.keys())
    diff = [case_a[c] - case_b[c] for c in cases]
    return {"cases": len(cases), "mean_a": round(statistics.mean(case_a[c] for c in cases), 4),
            "mean_b": round(statistics.mean(case_b[c] for c in cases), 4),
            "mean_difference": round(statistics.mean(diff), 4), "sd_difference": round(statistics.stdev(diff), 4),
            "a_better": sum(d > 0 for d in diff), "b_better": sum(d < 0 for d in diff),
            "wilcoxon_p": round(float(wilcoxon(diff).pvalue), 4) if any(diff) else 1.0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"),
                    help="compare two crossval.json case by case (A - B) and exit")
    ap.add_argument("--config", help="a CT training config with data.holdout")
    ap.add_argument("--card", help="the model's card template (labels for the scratch registry)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--minutes", type=float,
                    help="training budget per fold (default 10; with --epochs a cap: whichever ends first)")
    ap.add_argument("--epochs", type=int, help="training budget per fold in epochs (holds on a loaded machine)")
    ap.add_argument("--prune", help="prune-ct options for the pruning stage, given with '=', e.g. "
                                    "--prune='--importance l1 --ratio 0.3 --reconstruct-iters 1000'")
    ap.add_argument("--distill", help="lightseg distill options for a distillation stage after --prune (teacher: the "
                                      "fold's trained net), e.g. --distill='--methods logit,feature --iters 3684'")
    ap.add_argument("--fold", type=int, help="run this fold only (folds can run as parallel processes)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.compare:
        a, b = (json.loads(Path(p).read_text()) for p in args.compare)
        print(json.dumps(compare(a, b), indent=1))
        return 0
    if not (args.config and args.card and args.out):
        ap.error("--config, --card and --out are required (unless --compare)")
    if args.distill and not args.prune:
        ap.error("--distill needs --prune (the student is the pruned, rebuilt net)")
    if args.minutes is None and not args.epochs:
        args.minutes = 10.0
    if args.fold is not None:
        run_fold(args, args.fold)
        if any(not (Path(args.out) / f"fold{k}" / "fold.json").is_file() for k in range(args.folds)):
            return 0  # other processes run the remaining folds; the last to finish (or a rerun) writes the summary
    folds = [run_fold(args, k) for k in range(args.folds)]
    per_case = cases_of(folds)
    fold_means = [f["dice_mean_per_case"] for f in folds]
    result = {"config": args.config, "folds": args.folds, "minutes_per_fold": args.minutes,
              "epochs_per_fold": args.epochs, "prune": args.prune, "distill": args.distill,
              "cases": len(per_case), "dice_mean_per_case": round(statistics.mean(per_case.values()), 4),
              "dice_sd_per_case": round(statistics.stdev(per_case.values()), 4),
              "fold_means": fold_means, "fold_sd": round(statistics.stdev(fold_means), 4), "per_fold": folds}
    (Path(args.out) / "crossval.json").write_text(json.dumps(result, indent=1))
    print("| fold | cases | iterations | Dice mean per case |\n|---|---|---|---|")
    for f in folds:
        print(f"| {f['fold']} | {f['cases']} | {f['iterations']} | {f['dice_mean_per_case']:.3f} |")
    print(f"| all | {result['cases']} | | **{result['dice_mean_per_case']:.3f}** (sd over cases "
          f"{result['dice_sd_per_case']:.3f}, over folds {result['fold_sd']:.3f}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
