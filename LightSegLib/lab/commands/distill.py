"""``lightseg distill --teacher CKPT --student SPEC_OR_CONFIG --methods logit,feature --out DIR``.

The student is a JSON architecture spec (inline or a .json file), a TOML training config (its [model]) or a
checkpoint (weights used as the starting point). Training data, augmentation and batch size come from --config
(or the student's TOML). Examples::

    lightseg distill --teacher runs/cardiac_unet/best.pt --config configs/models/cardiac-acdc.toml \\
        --student '{"name": "tinyunet", "in_channels": 1, "num_classes": 4, "widths": [4, 8, 16, 32, 64]}' \\
        --methods logit,feature,gcn --iters 3000 --out runs/tiny_kd
    # hours on a CPU: stop on a time budget, resume after an interruption with the same command plus --resume
    lightseg distill ... --iters 100000 --time-budget 120 --out runs/long_kd [--resume]
    lightseg distill --teacher best.pt --student configs/experiments/cardiac_dpunet.toml --methods mavkd --out runs/dpu_mavkd
"""
from __future__ import annotations


def register(sub) -> None:
    from ._compress_common import add_device_argument

    p = sub.add_parser("distill", help="train a small student from a teacher checkpoint (KD losses)")
    p.add_argument("--teacher", required=True, help="teacher checkpoint (best.pt)")
    p.add_argument("--student", required=True, help="student: JSON spec, .json file, .toml config or .pt checkpoint")
    p.add_argument("--methods", default="logit",
                   help="comma-separated: logit, feature, gcn, mavkd (default logit); 'none' trains the student "
                        "alone with the same data and schedule (the baseline)")
    p.add_argument("--weights", default="", help="loss weights, e.g. logit=1,feature=0.5,gcn=1")
    p.add_argument("--temperature", type=float, default=2.0, help="logit KD temperature")
    p.add_argument("--student-layers", help="feature/mavkd/gcn: comma-separated student module names")
    p.add_argument("--teacher-layers", help="the matching teacher module names")
    p.add_argument("--keypoints", type=int, default=64, help="gcn: keypoints per image")
    p.add_argument("--neighbours", type=int, default=8, help="gcn: kNN graph degree")
    p.add_argument("--iters", type=int, default=1000, help="training iterations")
    p.add_argument("--time-budget", type=float, metavar="MIN",
                   help="also stop after this many minutes of training (the LR schedule follows whichever ends first)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/state.pt (saved every 100 iterations) after an interruption")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the config's)")
    p.add_argument("--config", help="training config for data/augmentation (default: the student's TOML)")
    p.add_argument("--data", help="dataset folder (overrides data.dataset)")
    p.add_argument("--out", required=True, help="output folder (best.pt, distill.json)")
    p.add_argument("--threads", type=int, default=2)
    add_device_argument(p)
    p.set_defaults(func=run)


def student_spec(text: str):
    """(spec, initial state dict or None) from the --student argument."""
    import json
    from pathlib import Path

    from ...errors import LightSegError

    if text.lstrip().startswith("{"):
        try:
            return json.loads(text), None
        except json.JSONDecodeError as err:
            raise LightSegError(f"--student is not valid JSON: {err}") from None
    path = Path(text)
    if not path.is_file():
        raise LightSegError(f"--student: no such file {path} (or pass a JSON spec)")
    if path.suffix == ".json":
        return json.loads(path.read_text()), None
    if path.suffix == ".toml":
        from ..train.config import load_config

        return dict(load_config(path)["model"]), None
    if path.suffix == ".pt":
        from ..export import load_checkpoint

        net, ckpt = load_checkpoint(path)
        return dict(ckpt["architecture"]), net.state_dict()
    raise LightSegError(f"--student: expected JSON, .json, .toml or .pt, got {path}")


def run(args) -> int:
    import json
    from pathlib import Path

    from ..compress.distill.runner import Distiller
    from ..train.trainer import LogLoss, Recipe, ResumableState, TimeBudget, train_loop
    from ...errors import LightSegError
    from ..export import count_macs, load_checkpoint
    from ..nets import build
    from ..nets.blocks import count_params
    from ..data.reader import prep_spec
    from ._compress_common import (apply_prep, example_input, load_data, resolve_config, resolve_device,
                                   save_checkpoint, set_threads)

    set_threads(args.threads)
    teacher, tckpt = load_checkpoint(args.teacher)
    spec, init_state = student_spec(args.student)
    config = args.config or (args.student if str(args.student).endswith(".toml") else None)
    cfg = apply_prep(resolve_config(config, args.data, args.threads, spec), tckpt.get("prep"), args.teacher)
    if int(spec.get("num_classes", 0)) != int(tckpt["architecture"].get("num_classes", -1)):
        raise LightSegError("student and teacher must have the same num_classes")
    student = build(spec)
    if init_state is not None:
        student.load_state_dict(init_state)
    weights = {}
    for item in filter(None, args.weights.split(",")):
        key, _, value = item.partition("=")
        weights[key.strip()] = float(value)
    methods = {}
    for m in filter(lambda m: m and m != "none", (s.strip() for s in args.methods.split(","))):
        opts = {"weight": weights.get(m, 1.0)}
        if m == "logit":
            opts["temperature"] = args.temperature
        if m in ("feature", "gcn", "mavkd"):
            if args.student_layers:
                opts["student_layers"] = args.student_layers.split(",")
            if args.teacher_layers:
                opts["teacher_layers"] = args.teacher_layers.split(",")
        if m == "gcn":
            opts.update(keypoints=args.keypoints, neighbours=args.neighbours)
        methods[m] = opts
    distiller = Distiller(teacher, student, methods, example_input(spec)) if methods else None
    layers = distiller.layers if distiller is not None else {}
    print(f"student {spec['name']} {spec.get('widths')}: {count_params(student):,} params; teacher "
          f"{count_params(teacher):,}; losses {', '.join(methods) or 'none (baseline)'}; layers {layers}")
    train_cases, val_cases = load_data(cfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = out / "state.pt"
    if state.exists() and not args.resume:
        state.unlink()
    recipe = Recipe(extra_loss=distiller.extra_loss if distiller is not None else None, lr=args.lr)
    hooks = [LogLoss(50, print), ResumableState(state)] + ([TimeBudget(args.time_budget)] if args.time_budget else [])
    result = train_loop(student, cfg, args.iters, recipe=recipe, hooks=hooks, extra_modules=distiller,
                        train_cases=train_cases, val_cases=val_cases, device=resolve_device(args.device))
    if distiller is not None:
        distiller.remove_hooks()
    prep = prep_spec(cfg)  # the teacher's: the student is trained on, and deployed with, the same pixels
    metrics = {}
    if "val_dice" in result:
        metrics = {"val_dice": result["val_dice"], "val_dice_mean": result["val_dice_mean"],
                   "split": cfg["data"]["val_split"]}
    summary = {"teacher": str(args.teacher), "student": spec,
               "student_init": str(args.student) if init_state is not None else None, "methods": methods, "layers": layers,
               "params": count_params(student), "macs": count_macs(student, (1, int(spec.get("in_channels", 1)), 256, 256)),
               **result}
    save_checkpoint(out / "best.pt", student, spec, prep, metrics, distillation=summary)
    (out / "distill.json").write_text(json.dumps(summary, indent=1, default=str))
    print(json.dumps(summary, default=str))
    return 0
