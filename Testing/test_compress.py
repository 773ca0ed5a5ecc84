"""Structured pruning, CPRUN reconstruction and Ghost conversion on small nets (1 thread, 32x32 inputs)."""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")

from LightSegLib.lab.compress import prune as P  # noqa: E402
from LightSegLib.lab.compress.fold import fold_unet  # noqa: E402
from LightSegLib.lab.compress.ghost_convert import convert_checkpoint_net, ghostify  # noqa: E402
from LightSegLib.lab.compress.reconstruct import reconstruct  # noqa: E402
from LightSegLib.lab.nets import build  # noqa: E402
from LightSegLib.lab.nets.ghost import GhostModule  # noqa: E402

torch.set_num_threads(1)
WIDTHS = [8, 16, 32, 64]


def spec(name, **kw):
    return {"name": name, "in_channels": 1, "num_classes": 3, "widths": WIDTHS, **kw}


@pytest.fixture
def x():
    torch.manual_seed(0)
    return torch.randn(2, 1, 32, 32)


def labelled(x):
    g = torch.Generator().manual_seed(1)
    return lambda: [(x, torch.randint(0, 3, (2, 1, 32, 32), generator=g))]


@pytest.mark.parametrize("name", ["unet", "lfunet", "dpunet", "tinyunet"])
@pytest.mark.parametrize("importance", ["l1", "bn", "taylor"])
def test_pruning_removes_channels_and_keeps_shapes(name, importance, x):
    torch.manual_seed(0)
    net = build(spec(name))
    before_params = P.count_params(net)
    before_shapes = P.output_shapes(net, x)
    P.prune(net, x, importance=importance, ratio=0.5, batches=labelled(x))
    assert P.count_params(net) < 0.6 * before_params
    assert P.output_shapes(net, x) == before_shapes
    # Every stage really got narrower (channels removed, not masked).
    assert all(w < w0 for w, w0 in zip(P.stage_widths(net, x), WIDTHS))


def test_lfunet_deep_supervision_heads_follow_the_pruned_channels(x):
    net = build(spec("lfunet"))
    P.prune(net, x, ratio=0.5)
    net.train()
    outs = net(x)
    assert len(outs) == len(WIDTHS) - 1
    assert all(o.shape == (2, 3, 32, 32) for o in outs)
    kept = P.stage_widths(net, x)[0]
    assert all(h.in_channels == kept and h.out_channels == 3 for h in net.heads)


def test_per_stage_ratios_give_the_requested_widths(x):
    net = build(spec("unet"))
    ratios = [0.25, 0.5, 0.5, 0.75]
    P.prune(net, x, stage_ratios=ratios)
    assert P.stage_widths(net, x) == [round(w * (1 - r)) for w, r in zip(WIDTHS, ratios)]
    layers = P.widths(net, x)["layers"]
    assert layers["head"] == 3
    assert layers["encoders.3.1.0"] == 16


def test_global_pruning_ranks_across_layers(x):
    torch.manual_seed(0)
    net = build(spec("unet"))
    before = P.count_params(net)
    P.prune(net, x, ratio=0.5, global_pruning=True)
    layers = P.layer_widths(net)
    convs = {k: v for k, v in layers.items() if k != "head"}
    original = P.layer_widths(build(spec("unet")))
    fractions = {round(v / original[k], 2) for k, v in convs.items()}
    assert len(fractions) > 1  # not one uniform ratio: layers compete
    assert P.count_params(net) < before


def test_iterative_pruning_calls_fine_tune_after_each_step(x):
    net = build(spec("unet"))
    seen = []

    def fine_tune(model, step):
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        model.train()
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen.append((step, P.count_params(model)))

    P.prune(net, x, ratio=0.5, steps=3, fine_tune=fine_tune)
    assert [s for s, _ in seen] == [0, 1, 2]
    assert seen[0][1] > seen[1][1] > seen[2][1]


def test_iterative_steps_keep_the_same_fraction_of_what_is_left(x):
    net = build(spec("unet"))
    widths = []
    P.prune(net, x, ratio=0.75, steps=2, fine_tune=lambda model, step: widths.append(P.stage_widths(model, x)))
    original = spec("unet")["widths"]
    first = [w / o for w, o in zip(widths[0], original)]
    second = [w2 / w1 for w1, w2 in zip(widths[0], widths[1])]
    # keep 0.5 then 0.5 of that (a linear schedule would keep 0.625 then 0.4), up to channel rounding
    assert all(abs(f - 0.5) < 0.13 for f in first) and all(abs(f - 0.5) < 0.13 for f in second), (widths, original)


def test_bn_l1_penalty_is_the_scaled_sum_of_gammas():
    net = build(spec("unet"))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(-0.5)
    n = sum(m.num_features for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    penalty = P.bn_l1_penalty(net, 1e-3)
    assert penalty.item() == pytest.approx(1e-3 * 0.5 * n, rel=1e-5)
    penalty.backward()
    bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert torch.allclose(bn.weight.grad, torch.full_like(bn.weight, -1e-3))


def test_taylor_needs_batches(x):
    from LightSegLib.errors import LightSegError

    with pytest.raises(LightSegError):
        P.prune(build(spec("unet")), x, importance="taylor")


@pytest.mark.parametrize("name,importance", [("unet", "l1"), ("lfunet", "l1"), ("unet", "bn")])
def test_reconstruction_matches_the_pruned_model(name, importance, x):
    """With BN importance too: the upsamplers (no BN after them) must be pruned with their stage."""
    torch.manual_seed(0)
    s = spec(name)
    net = build(s)
    P.prune(net, x, importance=importance, stage_ratios=[0.25, 0.5, 0.5, 0.5])
    net.eval()
    fresh, new_spec, counts = reconstruct(net, s, x)
    assert new_spec["widths"] == [6, 8, 16, 32]
    assert counts["partial"] == 0 and counts["missing"] == 0
    assert P.count_params(fresh) == P.count_params(net)
    fresh.eval()
    with torch.no_grad():
        assert torch.allclose(fresh(x), net(x), atol=1e-5)
    # An ordinary net again: rebuilt from the spec alone, the weights load strictly.
    build(new_spec).load_state_dict(fresh.state_dict(), strict=True)


def test_reconstruction_after_global_pruning_builds_the_mean_widths(x):
    s = spec("unet")
    net = build(s)
    P.prune(net, x, ratio=0.5, global_pruning=True)
    fresh, new_spec, counts = reconstruct(net.eval(), s, x)
    assert new_spec["widths"] == P.stage_widths(net, x)
    assert counts["exact"] > 0
    assert fresh.eval()(x).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("name", ["unet", "lfunet", "dpunet"])
def test_ghost_conversion_keeps_shapes_and_primary_filters(name, x):
    torch.manual_seed(0)
    s = spec(name)
    net = build(s).eval()
    ghost, new_spec, n = convert_checkpoint_net(net, s)
    assert n > 0 and new_spec["conv"] == "ghost"
    ghost.eval()
    with torch.no_grad():
        assert ghost(x).shape == net(x).shape
    assert P.count_params(ghost) < P.count_params(net)
    # The first conv's primary filters are the trained ones.
    first_name = next(k for k, m in ghost.named_modules() if isinstance(m, GhostModule))
    original = net.get_submodule(first_name).weight
    primary = ghost.get_submodule(first_name).primary.weight
    assert torch.equal(primary, original[:primary.shape[0]])


def test_ghost_module_reproduces_primary_channels_of_the_original_conv():
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, bias=False)
    net, n = ghostify(torch.nn.Sequential(conv))
    assert n == 1 and isinstance(net[0], GhostModule)
    x = torch.randn(1, 4, 10, 10)
    with torch.no_grad():
        y, y0 = net(x), conv(x)
    assert y.shape == y0.shape
    assert torch.allclose(y[:, :3], y0[:, :3], atol=1e-6)
    assert torch.allclose(y[:, 3:], y0[:, :3], atol=1e-6)  # cheap branch starts as identity (Dirac)


def test_macs_and_params_drop_after_pruning(x):
    from LightSegLib.lab.export import count_macs

    net = build(spec("unet"))
    macs0, params0 = count_macs(net, x[:1].shape), P.count_params(net)
    P.prune(net, x, ratio=0.5)
    assert P.count_params(net) < params0
    assert count_macs(net, x[:1].shape) < 0.4 * macs0


def test_a_step_that_prunes_nothing_is_an_error_not_a_silent_no_op(x):
    from LightSegLib.errors import LightSegError

    net = build(spec("tinyunet"))
    with pytest.raises(LightSegError, match="no channel"):
        P.prune(net, x, ratio=0.5, global_pruning=True)


def test_pruning_leaves_bn_running_statistics_of_kept_channels_alone(x):
    net = build(spec("unet"))
    with torch.no_grad():
        net.train()(torch.randn(4, 1, 32, 32) * 3 + 1)  # non-trivial running stats
    bn = net.encoders[3][1][1]
    before = dict(zip(range(bn.num_features), bn.running_var.clone()))
    P.prune(net, x, importance="taylor", ratio=0.5, batches=labelled(x))
    after = bn.running_var
    assert all(any(torch.isclose(a, b) for b in before.values()) for a in after)


def test_fold_drops_the_full_resolution_stage_and_keeps_the_deeper_weights(x):
    from LightSegLib.errors import LightSegError
    from LightSegLib.lab.export import count_macs

    s = spec("unet", widths=[4, 8, 16, 32])
    net = build(s).eval()
    folded, new_spec, counts = fold_unet(net, s)
    assert new_spec["widths"] == [8, 16, 32] and new_spec["fold"] == 2
    assert counts == {"exact": len(folded.state_dict()) - 2, "partial": 0, "missing": 2}  # only the new head
    old, new = net.state_dict(), folded.state_dict()
    for i in range(3):  # encoders shift down one stage
        for key, value in new.items():
            if key.startswith(f"encoders.{i}."):
                assert torch.equal(value, old[key.replace(f"encoders.{i}.", f"encoders.{i + 1}.", 1)])
    for key in new:
        if key.startswith(("decoders.", "ups.")):
            assert torch.equal(new[key], old[key])
    assert folded.head.out_channels == 3 * 4
    with torch.no_grad():
        assert folded(torch.randn(2, 1, 37, 30)).shape == (2, 3, 37, 30)
    assert count_macs(folded, (1, 1, 64, 64)) < count_macs(net, (1, 1, 64, 64))
    with pytest.raises(LightSegError):
        fold_unet(folded, new_spec)  # already folded
    with pytest.raises(LightSegError):
        fold_unet(build(spec("dpunet")), spec("dpunet"))


def test_folding_an_lfunet_shifts_every_node_up_one_scale():
    s = spec("lfunet", widths=[4, 8, 16, 32])
    net = build(s).eval()
    folded, new_spec, counts = fold_unet(net, s)
    assert new_spec["widths"] == [8, 16, 32] and new_spec["fold"] == 2
    heads = [k for k in folded.state_dict() if k.startswith("heads.")]
    assert counts == {"exact": len(folded.state_dict()) - len(heads), "partial": 0, "missing": len(heads)}
    old, new = net.state_dict(), folded.state_dict()
    for key, value in new.items():
        if key.startswith("nodes."):
            node, rest = key.split(".", 2)[1:]
            scale, column = node.split("_")
            assert torch.equal(value, old[f"nodes.{int(scale) + 1}_{column}.{rest}"])
    assert folded.heads[0].out_channels == 3 * 4
    with torch.no_grad():
        assert folded(torch.randn(2, 1, 37, 30)).shape == (2, 3, 37, 30)
    assert [o.shape for o in folded.train()(torch.randn(2, 1, 32, 32))] == [(2, 3, 32, 32)] * 2  # deep supervision
