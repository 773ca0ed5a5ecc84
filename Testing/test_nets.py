"""Architectures: output shapes at odd sizes, parameter counts and MACs against hand computation, ONNX parity."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from LightSegLib.errors import LightSegError  # noqa: E402
from LightSegLib.lab.nets import build  # noqa: E402
from LightSegLib.lab.nets.blocks import count_params  # noqa: E402

SMALL = {
    "unet": {"name": "unet", "in_channels": 1, "num_classes": 3, "widths": [4, 8, 16]},
    "unet-ghost": {"name": "unet", "in_channels": 1, "num_classes": 3, "widths": [4, 8, 16], "conv": "ghost"},
    "unet-fold": {"name": "unet", "in_channels": 2, "num_classes": 3, "widths": [4, 8, 16], "fold": 2},
    "lfunet": {"name": "lfunet", "in_channels": 1, "num_classes": 3, "widths": [4, 8, 16]},
    "lfunet-fold": {"name": "lfunet", "in_channels": 1, "num_classes": 3, "widths": [4, 8, 16], "fold": 2},
    "dpunet": {"name": "dpunet", "in_channels": 2, "num_classes": 3, "widths": [6, 9, 12]},
    "tinyunet": {"name": "tinyunet", "in_channels": 1, "num_classes": 3, "widths": [4, 8, 16]},
}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.mark.parametrize("key", SMALL)
@pytest.mark.parametrize("hw", [(37, 53), (16, 16), (5, 9)])
def test_any_slice_size_gives_logits_of_that_size(key, hw):
    spec = SMALL[key]
    net = build(spec).eval()
    x = torch.randn(2, spec["in_channels"], *hw)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, spec["num_classes"], *hw)
    assert torch.isfinite(y).all()


def test_lfunet_deep_supervision_only_in_training():
    net = build({"name": "lfunet", "in_channels": 1, "num_classes": 3, "widths": [4, 8, 16, 32]})
    x = torch.randn(2, 1, 24, 40)
    outs = net.train()(x)
    assert isinstance(outs, list) and len(outs) == 3  # one head per full-resolution sub-network
    assert all(o.shape == (2, 3, 24, 40) for o in outs)
    with torch.no_grad():
        y = net.eval()(x)
        # the eval output is the deepest sub-network's head, the first training output
        assert torch.allclose(y, net.heads[-1](net_features(net, x)), atol=1e-6)


def net_features(net, x):
    """X(0, depth) of the nested grid, recomputed independently of forward()."""
    from LightSegLib.lab.nets.blocks import pad_to_multiple

    x, _, _ = pad_to_multiple(x, net.multiple)
    g = {}
    for i in range(net.depth + 1):
        g[i, 0] = net.nodes[f"{i}_0"](x if i == 0 else net.pool(g[i - 1, 0]))
    for j in range(1, net.depth + 1):
        for i in range(net.depth - j + 1):
            g[i, j] = net.nodes[f"{i}_{j}"](torch.cat([g[i, k] for k in range(j)] + [net.up(g[i + 1, j - 1])], 1))
    return g[0, net.depth]


# ------------------------------------------------------------------ parameter counts by hand
def conv(cin, cout, k=3, bias=False):
    return cin * cout * k * k + (cout if bias else 0)


def bn(c):
    return 2 * c


def double(cin, cout):
    return conv(cin, cout) + bn(cout) + conv(cout, cout) + bn(cout)


def test_unet_params_by_hand():
    # widths [4, 8], 1 -> 2 classes: two encoder stages, one 2x2 transposed conv, one decoder stage, 1x1 head
    expected = double(1, 4) + double(4, 8) + (8 * 4 * 4 + 4) + double(8, 4) + conv(4, 2, 1, bias=True)
    assert expected == 1682
    assert count_params(build({"name": "unet", "in_channels": 1, "num_classes": 2, "widths": [4, 8]})) == 1682


def test_lfunet_params_by_hand():
    # widths [4, 8, 16]: encoder nodes X(i,0); X(0,1) sees X(0,0) + up X(1,0); X(1,1) sees X(1,0) + up X(2,0);
    # X(0,2) sees X(0,0), X(0,1) + up X(1,1); two heads on X(0,1), X(0,2)
    expected = (double(1, 4) + double(4, 8) + double(8, 16)
                + double(4 + 8, 4) + double(8 + 16, 8) + double(2 * 4 + 8, 4)
                + 2 * conv(4, 3, 1, bias=True))
    net = build({"name": "lfunet", "in_channels": 1, "num_classes": 3, "widths": [4, 8, 16]})
    assert count_params(net) == expected == 8306


@pytest.mark.parametrize("cin,cout,expected", [(4, 8, 4 * 4 * 9 + 4 * 9), (4, 7, 4 * 4 * 9 + 4 * 9), (6, 3, 6 * 2 * 9 + 2 * 9)])
def test_ghost_module_params_and_channels(cin, cout, expected):
    from LightSegLib.lab.nets.ghost import GhostModule

    g = GhostModule(cin, cout)  # primary: ceil(cout / 2) channels by a full 3x3; cheap: one depthwise 3x3 each
    assert count_params(g) == expected
    assert g(torch.randn(1, cin, 9, 11)).shape == (1, cout, 9, 11)


def test_ghost_unet_is_cheaper_than_unet():
    plain = count_params(build(SMALL["unet"]))
    ghost = count_params(build(SMALL["unet-ghost"]))
    assert ghost < 0.65 * plain


def test_dpc_block_params_by_hand():
    from LightSegLib.lab.nets.dpunet import DPCBlock, split_channels

    assert split_channels(7, 3) == [3, 2, 2]
    # 3 dilated branches 4 -> 2 each, BN(6), 3x3 6 -> 6, BN(6), 1x1 projection 4 -> 6 + BN(6)
    expected = 3 * conv(4, 2) + bn(6) + conv(6, 6) + bn(6) + conv(4, 6, 1) + bn(6)
    assert count_params(DPCBlock(4, 6)) == expected == 600


def test_cmrf_block_params_by_hand():
    from LightSegLib.lab.nets.tinyunet import CMRFBlock

    # 1x1 4 -> 4 (+BN), 3 depthwise 3x3 on 4 channels (+BN each), 1x1 fuse 16 -> 8 (+BN), 1x1 projection 4 -> 8 (+BN)
    expected = (conv(4, 4, 1) + bn(4)) + 3 * (4 * 9 + bn(4)) + (conv(16, 8, 1) + bn(8)) + (conv(4, 8, 1) + bn(8))
    assert count_params(CMRFBlock(4, 8, cascade=3)) == expected == 348


def test_unet_macs_by_hand():
    from LightSegLib.lab.export import count_macs

    net = build({"name": "unet", "in_channels": 1, "num_classes": 2, "widths": [4, 8]})
    full, half = 16 * 16, 8 * 8
    expected = (full * 4 * 1 * 9 + full * 4 * 4 * 9          # encoder stage 0
                + half * 8 * 4 * 9 + half * 8 * 8 * 9        # encoder stage 1
                + half * 8 * 4 * 4                           # 2x2 transposed conv: each input pixel -> 4 outputs
                + full * 4 * 8 * 9 + full * 4 * 4 * 9        # decoder stage
                + full * 2 * 4)                              # 1x1 head
    assert count_macs(net, (1, 1, 16, 16)) == expected == 222_208


def test_build_rejects_unknown_names_and_arguments():
    with pytest.raises(LightSegError, match="unknown architecture"):
        build({"name": "segformer"})
    with pytest.raises(LightSegError, match="bad architecture spec"):
        build({"name": "unet", "depth": 5})


# ------------------------------------------------------------------ ONNX
@pytest.mark.parametrize("key", ["unet", "lfunet", "dpunet", "tinyunet", "unet-ghost", "unet-fold", "lfunet-fold"])
def test_onnx_export_parity_dynamic_batch_and_size(key, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from LightSegLib.lab.export import OPSET, export_onnx

    spec = SMALL[key]
    net = build(spec).eval()
    path = export_onnx(net, tmp_path / "m.onnx", spec["in_channels"], trace_hw=(32, 32))
    model = onnx.load(str(path))
    assert model.opset_import[0].version >= 17 and OPSET >= 17
    assert [i.name for i in model.graph.input] == ["image"] and [o.name for o in model.graph.output] == ["logits"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]  # N, H, W dynamic; C fixed
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 37, 53), (3, 64, 48), (2, 32, 32)]:
        x = torch.randn(shape[0], spec["in_channels"], *shape[1:])
        with torch.no_grad():
            a = net(x).numpy()
        b = session.run(["logits"], {"image": x.numpy()})[0]
        assert b.shape == a.shape
        np.testing.assert_allclose(b, a, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("factor", [2, 3])
def test_a_widened_unet_answers_as_before_and_its_copies_then_learn_apart(factor):
    """Widening (Net2Net's split) keeps a trained U-Net's answer, in eval and train mode, with every width times
    ``factor``; after one training step the copies of a channel differ (the split's noise breaks their symmetry)."""
    from LightSegLib.lab.nets.widen import widen_unet

    torch.manual_seed(0)
    net = build(dict(SMALL["unet-fold"]))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)  # some training, so the BatchNorms hold real statistics
    for _ in range(3):
        loss = net(torch.randn(4, 2, 32, 32)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    wide = widen_unet(net.eval(), factor).eval()
    assert wide.widths == [w * factor for w in net.widths]
    assert count_params(wide) > factor * count_params(net)
    x = torch.randn(3, 2, 40, 24)
    with torch.no_grad():
        assert torch.allclose(wide(x), net(x), atol=1e-4)
        assert torch.allclose(wide.train()(x), net.train()(x), atol=1e-4)
    opt = torch.optim.SGD(wide.parameters(), lr=0.1)
    loss = wide(x).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    first = wide.encoders[0][0][0].weight.detach()  # channel c and its copy c + 4 (width 4)
    assert not torch.allclose(first[:4], first[4:8])
