"""Distillation losses: (near) zero when the student's features equal the teacher's, gradients reach the student
(and the loss's own adapters) but never the teacher; plus the hook-based wiring between two real nets."""
import pytest

torch = pytest.importorskip("torch")

from LightSegLib.lab.compress.distill import FeatureCapture, FeatureKD, GraphKD, LogitKD, MAVKD  # noqa: E402
from LightSegLib.lab.compress.distill.gcn_spatial import edge_strength, keypoints, knn_adjacency  # noqa: E402
from LightSegLib.lab.compress.distill.runner import Distiller, default_layers  # noqa: E402
from LightSegLib.lab.nets import build  # noqa: E402

torch.set_num_threads(1)


class Teacher(torch.nn.Module):
    """A conv whose parameters require grad: any leak of gradient into the teacher would show up here."""

    def __init__(self, cout):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, cout, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def feats(channels, hw=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, channels, hw, hw, generator=g)


def make_losses(cs, ct):
    return {
        "logit": (LogitKD(temperature=3.0), lambda s, t: (s, t)),
        "feature": (FeatureKD([cs, cs], [ct, ct]), lambda s, t: ([s, s], [t, t])),
        "gcn": (GraphKD(cs, ct, keypoints=24, neighbours=4), lambda s, t: (s, t)),
        "mavkd": (MAVKD([cs, cs], [ct, ct]), lambda s, t: ([s, s], [t, t])),
    }


@pytest.mark.parametrize("name", ["logit", "feature", "gcn", "mavkd"])
def test_loss_is_zero_when_student_equals_teacher(name):
    loss, args = make_losses(8, 8)[name]
    t = feats(8)
    s = t.clone().requires_grad_(True)
    value = loss(*args(s, t))
    assert abs(value.item()) < 1e-5
    # ...and clearly positive when they differ.
    assert loss(*args(feats(8, seed=5), t)).item() > 1e-3


@pytest.mark.parametrize("name", ["logit", "feature", "gcn", "mavkd"])
def test_gradients_reach_the_student_and_never_the_teacher(name):
    ct = 4 if name == "logit" else 12
    cs = 4 if name == "logit" else 6
    teacher = Teacher(ct)
    x = feats(1, seed=3)
    t = teacher(x)  # built with grad enabled on purpose: the loss must detach it
    student = torch.nn.Conv2d(1, cs, 3, padding=1)
    s = student(x)
    if name == "logit":
        s = torch.nn.functional.interpolate(s, size=(8, 8))  # smaller student logits are resized
    loss, args = make_losses(cs, ct)[name]
    loss(*args(s, t)).backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    trainable = [p for p in loss.parameters() if p.requires_grad]
    if name != "logit":
        assert trainable and all(p.grad is not None for p in trainable)


def test_gcn_keypoints_lie_on_the_teacher_edges_and_the_graph_is_normalised():
    t = torch.zeros(1, 4, 16, 16)
    t[:, :, 4:12, 4:12] = 1.0  # a square: edges on its border
    edge = edge_strength(t)
    idx = keypoints(edge, 20)[0]
    ys, xs = idx // 16, idx % 16
    on_border = ((ys >= 3) & (ys <= 12) & (xs >= 3) & (xs <= 12)) & ~((ys >= 5) & (ys <= 10) & (xs >= 5) & (xs <= 10))
    assert bool(on_border.all())
    adj = knn_adjacency(idx[None], 16, 4)[0]
    assert torch.allclose(adj, adj.T)
    assert bool((adj.diagonal() > 0).all())


def test_gcn_weights_are_fixed_so_the_loss_cannot_collapse():
    loss = GraphKD(8, 8)
    assert all(not p.requires_grad for n, p in loss.named_buffers())
    assert [n for n, _ in loss.named_parameters()] == ["adapter.weight"]


def test_mavkd_adaptation_vectors_learn_a_channel_gain():
    """A student that carries the teacher's features at half the scale: the vectors learn the gain 2."""
    torch.manual_seed(0)
    t = torch.relu(feats(6, seed=2))
    loss = MAVKD([6], [6], cos_weight=0.0)
    opt = torch.optim.SGD([loss.vectors[0]], lr=2.0)
    for _ in range(200):
        opt.zero_grad()
        value = loss([t / 2], [t])
        value.backward()
        opt.step()
    assert value.item() < 1e-4
    assert torch.allclose(loss.vectors[0].flatten(), torch.full((6,), 2.0), atol=0.05)


def test_feature_capture_records_named_modules_and_removes_hooks():
    net = build({"name": "unet", "in_channels": 1, "num_classes": 3, "widths": [4, 8, 16]}).eval()
    with FeatureCapture(net, ["encoders.2", "decoders.1"]) as cap:
        net(torch.zeros(1, 1, 16, 16))
        shapes = [tuple(f.shape) for f in cap.features]
    assert shapes == [(1, 16, 4, 4), (1, 4, 16, 16)]
    assert not net.encoders[2]._forward_hooks


def test_distiller_wires_tinyunet_student_to_unet_teacher():
    torch.manual_seed(0)
    teacher = build({"name": "unet", "in_channels": 1, "num_classes": 3, "widths": [8, 16, 32]})
    student = build({"name": "tinyunet", "in_channels": 1, "num_classes": 3, "widths": [4, 8, 16]})
    x = torch.randn(2, 1, 32, 32)
    assert default_layers(student, teacher, "gcn") == (["encoders.2"], ["encoders.2"])
    methods = {"logit": {"temperature": 2.0}, "feature": {}, "gcn": {"keypoints": 16}, "mavkd": {"weight": 0.5}}
    d = Distiller(teacher, student, methods, x)
    student.train()
    out = student(x)
    loss = d.extra_loss(x, None, out)
    loss.backward()
    assert loss.item() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert student.stem[0].weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in d.losses["feature"].parameters())
    assert not any(p is q for p in d.parameters() for q in teacher.parameters())
    d.remove_hooks()


@pytest.mark.parametrize("student_name", ["dpunet", "lfunet"])
def test_mavkd_pairs_every_decoder_scale_across_families(student_name):
    """DPU-Net / LFU-Net students against a U-Net teacher: decoder outputs paired by resolution + bottleneck."""
    torch.manual_seed(0)
    teacher = build({"name": "unet", "in_channels": 1, "num_classes": 3, "widths": [8, 16, 32, 64]})
    student = build({"name": student_name, "in_channels": 1, "num_classes": 3, "widths": [4, 6, 8, 12]})
    x = torch.randn(2, 1, 32, 32)
    d = Distiller(teacher, student, {"mavkd": {}}, x)
    s_names, t_names = d.layers["mavkd"]
    assert len(s_names) == len(t_names) == 4  # three decoder scales + the bottleneck
    student.train()
    out = student(x)
    with FeatureCapture(student, s_names) as sc, FeatureCapture(teacher, t_names) as tc, torch.no_grad():
        student.eval()(x)
        teacher(x)
        for s, t in zip(sc.features, tc.features):
            assert s.shape[-2:] == t.shape[-2:]
    loss = d.extra_loss(x, None, out)
    loss.backward()
    assert loss.item() > 0 and all(v.grad is not None for v in d.losses["mavkd"].vectors)
    d.remove_hooks()


def test_distiller_moves_its_teacher_with_it():
    """train_loop moves the distiller to the training device (``.to``) and back (``.cpu``); the teacher sits outside
    the distiller's parameters, so it must follow through ``_apply``. A dtype change takes the same path as a
    device change and runs on a machine without a GPU."""
    teacher = build({"name": "unet", "in_channels": 1, "num_classes": 3, "widths": [8, 16, 32]})
    student = build({"name": "tinyunet", "in_channels": 1, "num_classes": 3, "widths": [4, 8, 16]})
    d = Distiller(teacher, student, {"logit": {}, "feature": {}}, torch.randn(1, 1, 32, 32))
    d.to(torch.float64)
    assert {p.dtype for p in teacher.parameters()} == {p.dtype for p in d.parameters()} == {torch.float64}
    d.float()
    assert {p.dtype for p in teacher.parameters()} == {torch.float32}
    assert not any(p is q for p in d.parameters() for q in teacher.parameters())
