"""End-to-end compression commands on tiny data: int8 quantization (ONNX Runtime QDQ) against fp32, the
benchmark's JSON on the test quantiser registry, and prune / Ghost / distill producing exportable checkpoints.

Data: an MSD-layout folder made from the bundled real ACDC sample volumes, at a coarse 6 mm in-plane spacing so
each step takes seconds on one thread.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime.quantization")

from conftest import REPO  # noqa: E402
from LightSegLib.cli import main  # noqa: E402

torch.set_num_threads(1)
SAMPLES = REPO / "Resources" / "Samples"
PREP = {"orientation": "native", "inplane": {"mode": "spacing", "spacing": [6.0, 6.0]},
        "normalization": {"type": "percentile", "lower": 0.5, "upper": 99.5}, "context_slices": 0}


@pytest.fixture
def acdc(tmp_path):
    """dataset.json over the bundled ACDC ED/ES volumes (training: both, validation: ES)."""
    root = tmp_path / "acdc"
    root.mkdir()
    entries = [{"image": str(SAMPLES / f"acdc_patient002_{p}.nii.gz"),
                "label": str(SAMPLES / f"acdc_patient002_{p}_label.nii.gz")} for p in ("ED", "ES")]
    (root / "dataset.json").write_text(json.dumps({"training": entries, "validation": entries[1:]}))
    return root


@pytest.fixture
def config(tmp_path, acdc):
    path = tmp_path / "tiny.toml"
    path.write_text(f"""
[model]
name = "unet"
in_channels = 1
num_classes = 4
widths = [4, 8, 16]

[data]
dataset = "{acdc}"
patch = [32, 32]
inplane = {{ mode = "spacing", spacing = [6.0, 6.0] }}
num_workers = 0

[train]
batch_size = 2
threads = 1
""")
    return path


def teacher_checkpoint(path, widths=(4, 8, 16), seed=0):
    from LightSegLib.lab.commands._compress_common import save_checkpoint
    from LightSegLib.lab.nets import build

    torch.manual_seed(seed)
    spec = {"name": "unet", "in_channels": 1, "num_classes": 4, "widths": list(widths)}
    save_checkpoint(path, build(spec), spec, PREP)
    return path


def stdout_json(capsys):
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_int8_model_runs_and_agrees_with_fp32(tmp_path, acdc):
    from LightSegLib.lab.compress.quantize import agreement, preprocessed_slices, quantize_model
    from LightSegLib.lab.export import export_onnx
    from LightSegLib.lab.nets import build

    torch.manual_seed(0)
    net = build({"name": "unet", "in_channels": 1, "num_classes": 4, "widths": [4, 8, 16]})
    real = torch.from_numpy(preprocessed_slices(SAMPLES / "acdc_patient002_ED.nii.gz", PREP, 8))
    for m in net.modules():  # BN statistics from real slices, so the logits carry image structure
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        net.train()(real)
    net.eval()
    fp32 = export_onnx(net, tmp_path / "tiny.onnx", 1)
    int8 = quantize_model(fp32, tmp_path / "tiny.int8.onnx", PREP, acdc, max_volumes=2, slices_per_volume=4,
                          log=lambda s: None)
    import onnx
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    x = preprocessed_slices(SAMPLES / "acdc_patient002_ES.nii.gz", PREP, 6)
    import onnxruntime as ort
    labels = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0].argmax(1)
    shares = np.bincount(labels.ravel(), minlength=4) / labels.size
    assert (shares > 0.01).sum() >= 2  # a non-trivial prediction to agree on
    report = agreement(fp32, int8, x)
    assert report["argmax_agreement"] > 0.9
    assert int8.stat().st_size < fp32.stat().st_size


def make_ct_dataset(root: Path, n: int = 2) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    entries = []
    for i in range(n):
        arr = rng.integers(-50, 150, size=(4, 24, 24)).astype(np.int16)
        img = sitk.GetImageFromArray(arr)
        sitk.WriteImage(img, str(root / f"ct{i}.nii.gz"))
        entries.append({"image": f"ct{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"training": entries}))
    return root


def test_quantize_registers_int8_and_bench_reports_the_documented_keys(tmp_path, quantiser, capsys):
    calib = make_ct_dataset(tmp_path / "calib")
    model = quantiser / "test-quantiser.onnx"
    assert main(["quantize", str(model), "--calib", str(calib), "--out", str(quantiser / "test-quantiser.int8.onnx"),
                 "--register", "test-quantiser", "--volumes", "2", "--slices", "2"]) == 0
    report = stdout_json(capsys)
    assert report["registered"] == "test-quantiser" and report["argmax_agreement"] > 0.9
    volume = tmp_path / "ct.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(6 * 20 * 20, dtype=np.int16).reshape(6, 20, 20) % 97),
                    str(volume))
    dice = tmp_path / "dice.json"
    dice.write_text(json.dumps({"test-quantiser": 0.9, "test-quantiser:int8": 0.89}))
    assert main(["bench", "--models", "test-quantiser,test-quantiser:int8", "--input", str(volume), "--repeat", "2",
                 "--threads", "1", "--no-warmup", "--json", "--plot", str(tmp_path / "plots"),
                 "--dice", str(dice)]) == 0
    out = capsys.readouterr().out
    document = json.loads(out)  # exactly one JSON document on stdout
    rows = document["models"]
    assert [r["model"] for r in rows] == ["test-quantiser", "test-quantiser:int8"]
    keys = {"model", "params", "macs", "latency_median_s", "latency_min_s", "latency_max_s", "peak_rss_mb",
            "file_bytes", "speedup_vs_first"}
    for r in rows:
        assert keys <= set(r)
        assert isinstance(r["params"], int) and isinstance(r["macs"], int)
        assert 0 < r["latency_min_s"] <= r["latency_median_s"] <= r["latency_max_s"]
        assert r["peak_rss_mb"] > 10
        assert 0 < r["network_median_s"] <= r["engine_median_s"] < r["latency_median_s"]
    assert document["threads"] == 1
    machine = document["machine"]  # where the figures came from, as lscpu would say
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    if cpuinfo:
        flags = set(next(ln for ln in cpuinfo.splitlines() if ln.startswith("flags")).split(":")[1].split())
        assert machine["isa"]["AVX2"] == ("avx2" in flags) and machine["isa"]["AVX-512"] == ("avx512f" in flags)
        assert set(machine["isa"]) >= {"AVX2", "AVX-512", "AVX512-VNNI", "AVX512-BF16", "AMX"}
        assert machine["cpu"] in cpuinfo
        if "cpu family" in cpuinfo:  # x86 Linux: the generation behind a generic name such as "AMD EPYC"
            family = next(ln for ln in cpuinfo.splitlines() if ln.startswith("cpu family")).split(":")[1].strip()
            assert machine["cpuid"].startswith(f"family {family} model ")
    assert rows[1]["engine_speedup_vs_first"] > 0
    assert rows[0]["file_bytes"] == model.stat().st_size
    assert rows[1]["file_bytes"] == (quantiser / "test-quantiser.int8.onnx").stat().st_size
    assert rows[0]["speedup_vs_first"] == 1.0
    assert all((tmp_path / "plots" / name).stat().st_size > 1000 for name in ("dice_vs_macs.png", "dice_vs_latency.png"))
    assert rows[1]["speedup_vs_first"] == pytest.approx(rows[0]["latency_median_s"] / rows[1]["latency_median_s"],
                                                        rel=1e-2)


def test_bench_table_names_the_machine_and_its_instruction_sets():
    from LightSegLib.lab.bench import format_table

    row = {"model": "m", "params": 10, "macs": 10**9, "file_bytes": 10**6, "latency_median_s": 1.0,
           "latency_min_s": 0.9, "latency_max_s": 1.1, "peak_rss_mb": 100.0, "speedup_vs_first": 1.0,
           "params_ratio_vs_first": 1.0}
    machine = {"cpu": "Some CPU", "cpu_count": 4,
               "isa": {"AVX2": True, "AVX-512": False, "AVX512-VNNI": False, "AVX-VNNI": True,
                       "AVX512-BF16": False, "AMX": False}}
    first = format_table({"threads": 2, "machine": machine, "models": [row]}).splitlines()[0]
    assert first == ("machine: Some CPU (4 cores available), has AVX2, AVX-VNNI; no AVX-512, AVX512-VNNI, "
                     "AVX512-BF16, AMX; 2 threads")
    named = format_table({"threads": 2, "machine": {**machine, "cpuid": "family 25 model 1"}, "models": [row]})
    assert named.startswith("machine: Some CPU (family 25 model 1, 4 cores available), has AVX2")


def test_bench_rejects_an_unknown_model(tmp_path, quantiser, capsys):
    volume = tmp_path / "ct.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 8, 8), np.int16)), str(volume))
    assert main(["bench", "--models", "nope", "--input", str(volume), "--json"]) == 2
    assert "unknown model id" in capsys.readouterr().err


def test_prune_command_writes_an_exportable_narrow_checkpoint(tmp_path, config, capsys):
    from LightSegLib.lab.export import load_checkpoint
    from LightSegLib.lab.nets.blocks import count_params

    src = teacher_checkpoint(tmp_path / "teacher.pt")
    out = tmp_path / "pruned" / "best.pt"
    assert main(["prune", str(src), "--out", str(out), "--importance", "taylor", "--stage-ratios", "0.5,0.5,0.5",
                 "--steps", "2", "--finetune-iters", "2", "--reconstruct-iters", "2", "--config", str(config),
                 "--threads", "1", "--taylor-batches", "1"]) == 0
    report = stdout_json(capsys)
    net, ckpt = load_checkpoint(out)
    assert ckpt["architecture"]["widths"] == [2, 4, 8]
    assert report["params_after"] == count_params(net) < report["params_before"]
    assert report["macs_after"] < report["macs_before"]
    assert len(report["finetune"]) == 2 and "val_dice_mean" in report["finetune"][-1]
    assert net(torch.zeros(1, 1, 40, 36)).shape == (1, 4, 40, 36)


def test_prune_fine_tuning_resumes_from_its_state_file(tmp_path, config, capsys):
    """A pruning run killed during fine-tuning (a time limit, a closed session) continues with --resume: pruning is
    redone (deterministic) and the fine-tuning picks up its saved iteration; without --resume it starts afresh."""
    src = teacher_checkpoint(tmp_path / "teacher.pt")
    out = tmp_path / "pruned" / "best.pt"
    state = out.parent / "best.fine-tune-reconstructed-net.state.pt"

    def prune(iters, *extra):
        assert main(["prune", str(src), "--out", str(out), "--ratio", "0.5", "--reconstruct-iters", str(iters),
                     "--config", str(config), "--threads", "1", *extra]) == 0
        text = capsys.readouterr().out
        return text, json.loads(text.strip().splitlines()[-1])

    prune(2)
    assert torch.load(state, weights_only=False)["iteration"] == 2
    text, report = prune(3, "--resume")
    assert f"resumed from {state} at iteration 2" in text and report["reconstruct"]["finetune"]["iterations"] == 3
    text, report = prune(1)
    assert "resumed" not in text and torch.load(state, weights_only=False)["iteration"] == 1


def test_ghost_command_converts_and_saves(tmp_path, capsys):
    from LightSegLib.lab.export import load_checkpoint

    src = teacher_checkpoint(tmp_path / "teacher.pt")
    out = tmp_path / "ghost.pt"
    assert main(["prune", str(src), "--ghost", "--out", str(out), "--threads", "1"]) == 0
    report = stdout_json(capsys)
    net, ckpt = load_checkpoint(out)
    assert ckpt["architecture"]["conv"] == "ghost" and report["converted"] == 2 * (2 * 3 - 1)  # two convs per encoder and decoder stage
    assert report["params_after"] < report["params_before"]


def test_fold_command_writes_a_half_resolution_checkpoint(tmp_path, capsys):
    from LightSegLib.lab.export import load_checkpoint
    from LightSegLib.lab.nets.blocks import count_params

    src = teacher_checkpoint(tmp_path / "teacher.pt")
    out = tmp_path / "folded.pt"
    assert main(["fold", str(src), "--out", str(out)]) == 0
    report = stdout_json(capsys)
    net, ckpt = load_checkpoint(out)
    assert ckpt["architecture"] == {"name": "unet", "in_channels": 1, "num_classes": 4, "widths": [8, 16], "fold": 2}
    assert ckpt["prep"] == PREP and report["params_after"] == count_params(net)
    assert report["macs_after"] < report["macs_before"]
    assert net(torch.zeros(1, 1, 40, 36)).shape == (1, 4, 40, 36)


def test_a_registered_model_without_a_checkpoint_loads_from_its_onnx_and_folds(tmp_path, config, capsys):
    import onnxruntime as ort

    from LightSegLib.lab.export import load_checkpoint

    net, ckpt = load_checkpoint("cardiac-acdc")  # a teacher: eval mode, BatchNorm as identity + folded bias
    x = torch.rand(2, 1, 48, 40)
    session = ort.InferenceSession(str(REPO / "Resources" / "Models" / "cardiac-acdc.onnx"),
                                   providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(net(x).numpy(), session.run(None, {"image": x.numpy()})[0], atol=1e-4)
    assert ckpt["prep"]["inplane"] == {"mode": "spacing", "spacing": [1.5, 1.5]}
    assert main(["fold", "cardiac-acdc", "--out", str(tmp_path / "f.pt")]) != 0
    assert "give --config" in capsys.readouterr().err
    out = tmp_path / "folded.pt"
    assert main(["fold", "cardiac-acdc", "--config", str(config), "--out", str(out)]) == 0
    folded, fckpt = load_checkpoint(out)
    assert fckpt["architecture"]["widths"] == [16, 32, 64, 128] and fckpt["prep"] == ckpt["prep"]
    assert stdout_json(capsys)["copied"]["partial"] == 1  # stage 2 saw 8 channels; the fold gives 4


def test_distill_command_trains_a_student(tmp_path, config, capsys):
    from LightSegLib.lab.export import load_checkpoint

    teacher = teacher_checkpoint(tmp_path / "teacher.pt", widths=(8, 16, 32))
    student = '{"name": "tinyunet", "in_channels": 1, "num_classes": 4, "widths": [4, 8, 16]}'
    out = tmp_path / "student"
    assert main(["distill", "--teacher", str(teacher), "--student", student, "--config", str(config),
                 "--methods", "logit,feature,gcn,mavkd", "--iters", "2", "--out", str(out), "--threads", "1"]) == 0
    summary = json.loads((out / "distill.json").read_text())
    assert summary["iterations"] == 2 and "val_dice_mean" in summary
    assert set(summary["layers"]) == {"feature", "gcn", "mavkd"}
    net, ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["architecture"]["name"] == "tinyunet"
    assert ckpt["prep"]["inplane"]["spacing"] == [6.0, 6.0]


def test_fine_tuning_data_follow_the_checkpoint_preprocessing(config, capsys):
    """A pruned net or a teacher must see the pixels it was trained on, whatever the --config says."""
    from LightSegLib.lab.commands._compress_common import apply_prep, resolve_config

    cfg = resolve_config(config, None, 1)
    prep = dict(PREP, inplane={"mode": "spacing", "spacing": [3.0, 3.0]}, context_slices=1)
    apply_prep(cfg, prep, "best.pt")
    assert cfg["data"]["inplane"]["spacing"] == [3.0, 3.0] and cfg["data"]["context_slices"] == 1
    assert "inplane, context_slices differ" in capsys.readouterr().err


def test_distill_baseline_trains_the_student_alone(tmp_path, config, capsys):
    teacher = teacher_checkpoint(tmp_path / "teacher.pt")
    out = tmp_path / "baseline"
    student = '{"name": "unet", "in_channels": 1, "num_classes": 4, "widths": [2, 4, 8]}'
    assert main(["distill", "--teacher", str(teacher), "--student", student, "--config", str(config),
                 "--methods", "none", "--iters", "1", "--out", str(out), "--threads", "1"]) == 0
    summary = json.loads((out / "distill.json").read_text())
    assert summary["methods"] == {} and summary["iterations"] == 1


def test_network_slimming_phase_then_bn_pruning_saving_the_pruned_module(tmp_path, config, capsys):
    src = teacher_checkpoint(tmp_path / "teacher.pt")
    out = tmp_path / "pruned_module.pt"
    assert main(["prune", str(src), "--out", str(out), "--importance", "bn", "--sparsity-iters", "2",
                 "--sparsity", "1e-3", "--ratio", "0.5", "--no-reconstruct", "--config", str(config),
                 "--threads", "1"]) == 0
    report = stdout_json(capsys)
    assert report["sparsity"]["iterations"] == 2
    saved = torch.load(out, weights_only=False)
    net = saved["module"].eval()
    assert report["params_after"] == sum(p.numel() for p in net.parameters()) < report["params_before"]
    assert saved["pruning"]["widths"]["stages"] == [2, 4, 8]
    assert net(torch.zeros(1, 1, 24, 24)).shape == (1, 4, 24, 24)


@pytest.mark.parametrize("extra, message", [(["--stage-ratios", "0.5,x"], "--stage-ratios"),
                                            (["--stage-ratios", "0.5,0.5"], "2 stage ratios for a net with 3"),
                                            (["--ratio", "1.2"], "outside [0, 1)")])
def test_prune_reports_bad_ratios_as_user_errors(tmp_path, capsys, extra, message):
    src = teacher_checkpoint(tmp_path / "teacher.pt")
    assert main(["prune", str(src), "--out", str(tmp_path / "o.pt"), "--threads", "1", *extra]) == 2
    assert message in capsys.readouterr().err


def test_an_interrupted_distillation_resumes_exactly_where_it_stopped(tmp_path, config):
    """Hours-long CPU distillations get killed: a run resumed from its state file ends with the weights of an
    uninterrupted run (same batches, optimiser moments and schedule)."""
    from LightSegLib.lab.commands._compress_common import resolve_config
    from LightSegLib.lab.commands._compress_common import load_data
    from LightSegLib.lab.train.trainer import Recipe, ResumableState, TimeBudget, train_loop
    from LightSegLib.lab.nets import build

    cfg = resolve_config(config, None, 1)
    train_cases, _ = load_data(cfg, val=False)
    spec = {"name": "unet", "in_channels": 1, "num_classes": 4, "widths": [2, 4, 8]}

    def net(seed):
        torch.manual_seed(seed)
        return build(spec)

    calls = []

    def kill_at_third_iteration(image, label, outputs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return torch.zeros(())

    straight = net(0)
    zero = Recipe(extra_loss=lambda *a: torch.zeros(()))
    train_loop(straight, cfg, 4, recipe=zero, train_cases=train_cases, log=lambda s: None)
    state = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        train_loop(net(0), cfg, 4, recipe=Recipe(extra_loss=kill_at_third_iteration), train_cases=train_cases,
                   hooks=[ResumableState(state, 2, log=lambda s: None)], log=lambda s: None)
    resumed = net(1)  # other initial weights: everything must come from the state file
    result = train_loop(resumed, cfg, 4, recipe=zero, train_cases=train_cases,
                        hooks=[ResumableState(state, log=lambda s: None)], log=lambda s: None)
    assert result["iterations"] == 4
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_a_time_budget_stops_a_long_distillation(tmp_path, config):
    from LightSegLib.lab.commands._compress_common import resolve_config
    from LightSegLib.lab.commands._compress_common import load_data
    from LightSegLib.lab.train.trainer import Recipe, ResumableState, TimeBudget, train_loop
    from LightSegLib.lab.nets import build

    cfg = resolve_config(config, None, 1)
    train_cases, _ = load_data(cfg, val=False)
    net = build({"name": "unet", "in_channels": 1, "num_classes": 4, "widths": [2, 4, 8]})
    result = train_loop(net, cfg, 100_000, hooks=[TimeBudget(0.02)], train_cases=train_cases, log=lambda s: None)
    assert 0 < result["iterations"] < 100_000 and result["minutes"] < 0.5
