"""The torch backend and the ONNX backend agree on a real volume (same card, same preprocessing)."""
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO

torch = pytest.importorskip("torch", reason="the torch backend needs the training extras")


@pytest.fixture
def unet_registry(tmp_path, monkeypatch):
    from LightSegLib.lab.export import export_onnx
    from LightSegLib.lab.nets import build
    from LightSegLib.lab.publish.writer import register_model
    from LightSegLib.registry import sha256_of
    from model_fixtures import TERMINOLOGY

    torch.manual_seed(0)
    spec = {"name": "unet", "in_channels": 1, "num_classes": 4, "widths": [4, 8, 16]}
    net = build(spec).eval()
    with torch.no_grad():  # let the features, not the bias, decide: a spread of classes, not one everywhere
        net.head.weight.mul_(50.0)
        net.head.bias.zero_()
    torch.save({"model": net.state_dict()}, tmp_path / "tiny.pt")
    export_onnx(net, tmp_path / "tiny.onnx", in_channels=1)
    register_model({
        "id": "tiny-unet", "title": "untrained tiny U-Net (test)", "task": "test", "modality": "MR",
        "status": "preview", "architecture": spec,
        "labels": [{"value": v, "name": f"class {v}", "color": [40 * v, 80, 120], "terminology": TERMINOLOGY}
                   for v in (1, 2, 3)],
        "input": {"orientation": "native", "inplane": {"mode": "spacing", "spacing": [1.5, 1.5]}, "context_slices": 0},
        "normalization": {"type": "percentile", "lower": 0.5, "upper": 99.5}, "postprocessing": {},
        "file": "tiny.onnx", "sha256": sha256_of(tmp_path / "tiny.onnx"), "torch_file": "tiny.pt",
        "params": sum(p.numel() for p in net.parameters()), "macs": 0,
        "training_data": "none (random weights)", "licence": "Apache-2.0", "metrics": {},
    }, tmp_path)
    monkeypatch.setenv("LIGHTSEG_MODELS_DIR", str(tmp_path))
    return tmp_path


def test_torch_and_onnx_backends_agree(unet_registry):
    import LightSegLib as L
    from LightSegLib.inference import make_runner

    card = L.get_model("tiny-unet")
    batch = np.random.default_rng(0).random((3, 1, 37, 53), dtype=np.float32)
    np.testing.assert_allclose(make_runner(card, "onnx", 1)(batch), make_runner(card, "torch", 1)(batch),
                               atol=1e-4, rtol=1e-4)
    image = L.read_image(REPO / "Resources/Samples/acdc_patient002_ED.nii.gz")
    by_onnx = sitk.GetArrayFromImage(L.segment(image, card, backend="onnx", threads=1))
    by_torch = sitk.GetArrayFromImage(L.segment(image, card, backend="torch", threads=1))
    assert len(np.unique(by_onnx)) > 1
    assert (by_onnx == by_torch).mean() > 0.999
