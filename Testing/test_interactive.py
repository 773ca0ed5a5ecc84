"""InteractiveSession on real ACDC slices: clicks, undo, reset, connectivity of corrections, box, propagation.

The mechanics run with small nets of known behaviour written to ONNX through the workshop's export path (a net
that grows every region of the previous mask by a pixel and follows the clicks, a net that finds nothing), so
each rule is checked on its own; the trained click model is checked where a run has exported one.
"""
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage
from conftest import REPO, shared
from slicer_scene import real_scene
from torch import nn

from LightSegLib import interactive as ia
from LightSegLib.lab.export import export_onnx

class Grow(nn.Module):
    """Follows the clicks and grows every region of the previous mask by one crop pixel."""

    def forward(self, x):
        grown = nn.functional.max_pool2d(x[:, 1:2], 3, stride=1, padding=1)
        return 40.0 * (grown + x[:, 2:3] - 2.0 * x[:, 3:4] - 0.5)


class ShiftRight(nn.Module):
    """The previous mask moved 6 crop pixels to the right: an answer that is not mirror-symmetric."""

    def forward(self, x):
        return 40.0 * (torch.roll(x[:, 1:2], 6, dims=3) - 0.5)


class Coarse(nn.Module):
    """The previous mask read at half the crop's resolution (2 x 2 cells), as a net that runs folded answers."""

    def forward(self, x):
        cells = nn.functional.avg_pool2d(x[:, 1:2], 2)
        return 40.0 * (nn.functional.interpolate(cells, scale_factor=2.0, mode="nearest") - 0.5)


class Nothing(nn.Module):
    def forward(self, x):
        return x[:, :1] * 0.0 - 20.0


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("click_models")
    return {name: export_onnx(net, folder / f"{name}.onnx", ia.CHANNELS, trace_hw=(ia.CROP, ia.CROP))
            for name, net in (("grow", Grow()), ("nothing", Nothing()), ("shift", ShiftRight()),
                              ("coarse", Coarse()))}


@pytest.fixture(scope="module")
def acdc():
    """A held-out ACDC volume (patient 028, end-diastole) and its labels [z, y, x]."""
    image = sitk.ReadImage(str(shared("acdc/imagesTr/patient028_frame01.nii.gz")))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(shared("acdc/labelsTr/patient028_frame01.nii.gz"))))
    return image, label


def middle(label, value=3):
    zs = np.flatnonzero((label == value).reshape(len(label), -1).any(1))
    return int(zs[len(zs) // 2])


def test_crop_and_paste_agree(acdc):
    """The crop the net reads and the paste back share one geometry: a mask survives the round trip."""
    _, label = acdc
    z = middle(label)
    lv = (label[z] == 3).astype(np.float32)
    window = ia.window_around(np.argwhere(lv > 0), lv.shape)
    ys, xs = window.grid()
    back, box = ia.paste(ia.bilinear(lv, ys, xs), window, lv.shape)
    assert ((back > 0.5) == (lv[box] > 0.5)).mean() > 0.99
    assert (lv[box] > 0).sum() == (lv > 0).sum()  # the window holds the whole object
    cy, cx = np.argwhere(lv > 0).mean(0)
    crop_yx = window.to_crop((cy, cx))
    assert np.allclose(crop_yx, [ia.CROP / 2 - 0.5] * 2, atol=ia.CROP * 0.1)


def test_a_ct_stored_without_its_rescale_is_noted_and_nothing_else_is(acdc, models):
    """The session cannot tell a CT stored as HU + 1024 from MR (it clicks it as MR): it says so in ``note``, which
    the CLI, the web app and the Slicer effect show. A HU CT, an MR and a stated modality get no note."""
    image, _ = acdc
    hu = sitk.ReadImage(str(shared("ircadb/imagesTr/ircadb1_17.nii.gz")))[:, :, 50:53]
    offset = sitk.Cast(hu, sitk.sitkInt32) + 1024
    noted = ia.InteractiveSession(offset, model=models["grow"], threads=1)
    assert not noted.ct and "stored without its HU rescale" in noted.note
    for plain in (hu, image):
        assert ia.InteractiveSession(plain, model=models["grow"], threads=1).note is None
    assert ia.InteractiveSession(offset, model=models["grow"], threads=1, modality="MR").note is None


def test_click_undo_reset(acdc, models):
    image, label = acdc
    z = middle(label)
    y, x = ia.deepest_point(label[z] == 3)
    session = ia.InteractiveSession(image, model=models["grow"], threads=1)
    first = session.click((x, y, z))
    assert first.dtype == np.uint8 and first.shape == label.shape
    assert first[z, y, x] == 1 and first.sum() > 1
    assert not np.delete(first, z, axis=0).any()  # other slices untouched
    second = session.click((x + 6, y, z))
    assert second.sum() > first.sum()
    assert np.array_equal(session.undo(), first)
    assert not session.undo().any()
    assert not session.undo().any()  # nothing left to undo
    session.click((x, y, z))
    assert not session.reset().any()
    assert np.array_equal(session.undo(), first)


def test_correction_changes_only_the_connected_region(acdc, models):
    """RV and LV as one mask (two regions): a click at the LV changes the LV only, although the net (which grows
    every region) would also grow the RV."""
    image, label = acdc
    z = middle(label)
    start = np.isin(label, (1, 3)).astype(np.uint8)
    session = ia.InteractiveSession(image, model=models["grow"], threads=1)
    session.start_from(start)
    lv = label[z] == 3
    y, x = np.argwhere(lv)[np.argmax(np.argwhere(lv)[:, 1])]  # the LV's rightmost pixel: a click on its border
    grown = session.click((int(x) + 1, int(y), z))
    assert (grown[z] & (label[z] == 3)).sum() == lv.sum() and grown[z].sum() > start[z].sum()
    added = (grown[z] > 0) & (start[z] == 0)
    assert not (added & ~ndimage.binary_dilation(lv, iterations=4)).any()  # the RV did not grow
    assert np.array_equal(np.delete(grown, z, 0), np.delete(start, z, 0))

    session.start_from(start)
    cy, cx = ia.deepest_point(lv)
    holed = session.click((cx, cy, z), positive=False)
    removed = (start[z] > 0) & (holed[z] == 0)
    assert removed[cy, cx] and removed.sum() > 1
    assert not (removed & (label[z] == 1)).any()  # the RV keeps every pixel
    assert np.array_equal(holed[z][~removed], start[z][~removed])  # and nothing grew anywhere


def test_locked_voxels_never_change(acdc, models):
    """Another structure's voxels locked (the RV): a click beside it grows the LV mask up to it and not into it, a
    click on it changes nothing, and propagation leaves it out on every slice."""
    image, label = acdc
    z = middle(label)
    rv = label == 1
    session = ia.InteractiveSession(image, model=models["grow"], threads=1)
    session.lock(rv)
    ring = ndimage.binary_dilation(rv[z], iterations=2) & ~rv[z] & (label[z] == 0)
    y, x = np.argwhere(ring)[0]
    mask = session.click((int(x), int(y), z))
    assert mask[z, y, x] and not (mask.astype(bool) & rv).any()
    assert (ndimage.binary_dilation(mask[z] > 0, iterations=4) & rv[z]).any()  # it reached the RV's border
    ry, rx = np.argwhere(rv[z])[0]
    assert np.array_equal(session.click((int(rx), int(ry), z)), mask)
    assert not (session.propagate(1, max_slices=2).astype(bool) & rv).any()
    session.start_from(rv)  # a locked voxel the object holds keeps it, even under a removing click or a box
    assert session.click((int(rx), int(ry), z), positive=False)[z, ry, rx]
    lv = np.argwhere(label[z] == 3)
    (y0, x0), (y1, x1) = lv.min(0), lv.max(0)
    boxed = session.box((int(x0), int(y0), z), (int(x1), int(y1), z)).astype(bool)
    assert np.array_equal(boxed[z] & rv[z], rv[z]) and boxed[z][label[z] == 3].any()


def test_box_keeps_the_result_inside(acdc, models):
    """A box given by any two opposite corners (i, j, k): a positive click at its centre, the answer kept inside."""
    image, label = acdc
    z = middle(label)
    ys, xs = np.nonzero(label[z] == 3)
    inside = np.zeros(label[z].shape, bool)
    inside[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
    centre = ((ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2)
    for a, b in (((xs.min(), ys.min(), z), (xs.max(), ys.max(), z)), ((xs.max(), ys.min(), z), (xs.min(), ys.max(), z))):
        session = ia.InteractiveSession(image, model=models["grow"], threads=1)
        mask = session.box(a, b)
        assert mask[z][centre] and not mask[z][~inside].any()
        assert session.clicks[z].positives == [centre]


def test_propagate_stops_where_the_net_finds_nothing(acdc, models):
    image, label = acdc
    z = middle(label)
    start = (label == 3).astype(np.uint8) * (np.arange(len(label)) == z)[:, None, None]
    session = ia.InteractiveSession(image, model=models["nothing"], threads=1)
    session.start_from(start)
    assert np.array_equal(session.propagate(1), start)
    assert session.propagated == {"slices": 0, "stopped": "where the net found no object"}
    session = ia.InteractiveSession(image, model=models["grow"], threads=1)
    session.start_from(start)
    out = session.propagate(-1, max_slices=2)
    filled = np.flatnonzero(out.reshape(len(out), -1).any(1))
    assert list(filled) == [z - 2, z - 1, z]
    assert session.propagated == {"slices": 2, "stopped": "at the slice limit"}
    assert np.array_equal(session.undo(), start)
    session.propagate(1)
    assert session.propagated["stopped"] == "at the volume's edge"  # a growing disk on MR: no intensity rule
    bright = sitk.Cast(image, sitk.sitkFloat32) + 1000.0  # an MR whose values all lie above CT's window: no CT rule
    assert np.mean(sitk.GetArrayFromImage(bright)[label == 3] >= ia.CT_WINDOW[1]) > 0.99
    session = ia.InteractiveSession(bright, model=models["grow"], threads=1)
    session.start_from(start)
    session.propagate(1)
    assert session.propagated["stopped"] == "at the volume's edge"


def test_mirror_averaging_is_the_mean_of_the_answers_on_the_crop_and_its_mirror(models, tmp_path):
    """A net that moves the mask rightwards: alone it moves the propagated disk; averaged with its answer on the
    mirrored crop (flipped back), the pixels only one answer keeps fall to 0.5, below the threshold, so what is left
    is where both agree: a symmetric outline about the disk's centre, on no side of it."""
    yy, xx = np.mgrid[:96, :96]
    disk = ((yy - 48) ** 2 + (xx - 40) ** 2 <= 15 ** 2).astype(np.uint8)
    image = sitk.GetImageFromArray(np.random.default_rng(0).random((2, 96, 96)).astype(np.float32))
    centres = {}
    for flip in (False, True):
        session = ia.InteractiveSession(image, model=models["shift"], threads=1, flip=flip)
        session.start_from(np.stack([disk, np.zeros_like(disk)]))
        moved = session.propagate(1)[1].astype(bool)
        assert moved.any() and moved.sum() <= disk.sum()
        centres[flip] = np.argwhere(moved).mean(0)
    assert centres[False][1] > 40 + 1.5  # the net's own answer: the disk moved right
    assert np.allclose(centres[True], [48, 40], atol=0.5)  # the mean of both: centred where the disk was

    fixed = tmp_path / "shift_batch1.onnx"  # a model exported with a batch of one: the two answers read apart
    torch.onnx.export(ShiftRight(), (torch.zeros(1, ia.CHANNELS, ia.CROP, ia.CROP),), str(fixed),
                      input_names=["image"], output_names=["logits"], dynamo=False)
    session = ia.InteractiveSession(image, model=fixed, threads=1)
    session.start_from(np.stack([disk, np.zeros_like(disk)]))
    assert np.allclose(np.argwhere(session.propagate(1)[1]).mean(0), centres[True])


def test_phase_averaging_gives_a_coarse_net_a_finer_outline(models):
    """A net that answers in 2 x 2 crop-pixel cells outlines a large disk in steps of about 7 image pixels; the mean
    of its answers on the window moved by one crop pixel (half a cell) down, right and both follows the disk more
    closely, and moves nothing (the four answers are registered back to the same image pixels)."""
    yy, xx = np.mgrid[:512, :512]
    disk = (yy - 250) ** 2 + (xx - 262) ** 2 <= 150 ** 2
    image = sitk.GetImageFromArray(np.random.default_rng(0).random((2, 512, 512)).astype(np.float32))
    found = {}
    for shift in (False, True):
        session = ia.InteractiveSession(image, model=models["coarse"], threads=1, flip=False, shift=shift)
        session.start_from(np.stack([disk, np.zeros_like(disk)]).astype(np.uint8))
        found[shift] = session.propagate(1, max_slices=1)[1].astype(bool)
    errors = {k: int((v ^ disk).sum()) for k, v in found.items()}
    assert errors[True] < 0.8 * errors[False], errors
    assert np.allclose(np.argwhere(found[True]).mean(0), [250, 262], atol=0.5)


def test_export_of_a_click_checkpoint(tmp_path):
    """The workshop's export: a click checkpoint becomes an ONNX file that answers as torch does."""
    from LightSegLib.lab.interactive.export import export
    from LightSegLib.lab.nets import build

    arch = {"name": "unet", "widths": [4, 8], "fold": 2, "in_channels": ia.CHANNELS, "num_classes": 1}
    torch.save({"model": build(arch).state_dict(), "architecture": arch, "task": "click-refine", "step": 0},
               tmp_path / "last.pt")
    facts = export(tmp_path / "last.pt", tmp_path / "click.onnx")
    assert facts["max_abs_diff"] < 1e-4 and facts["bytes"] > 0 and facts["macs"] > 0


def test_a_refined_net_seeded_from_a_shipped_onnx_answers_as_it_did_and_then_learns(tmp_path):
    """A run whose checkpoint is gone continues from the ONNX file: the folded net's weights with a full-resolution
    refiner added (zero at first) answer as the file does, the refiner takes gradient, and a run is never overwritten."""
    import onnxruntime as ort

    from LightSegLib.errors import LightSegError
    from LightSegLib.lab.export import load_checkpoint
    from LightSegLib.lab.interactive.seed import seed
    from LightSegLib.lab.nets import build

    arch = {"name": "unet", "widths": [4, 8], "fold": 2}
    torch.manual_seed(0)
    source = build(dict(arch, in_channels=ia.CHANNELS, num_classes=1))
    for m in source.modules():  # BN with real statistics, so folding them is not trivial
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    onnx_path = export_onnx(source.eval(), tmp_path / "shipped.onnx", ia.CHANNELS, trace_hw=(ia.CROP, ia.CROP))
    cfg = {"model": dict(arch, refine=6), "train": {"lr": 1e-3}}
    batches = [np.random.default_rng(k).random((3, ia.CHANNELS, ia.CROP, ia.CROP), dtype=np.float32) for k in range(3)]
    assert seed(cfg, onnx_path, tmp_path / "run", 500, batches) < 1e-4
    net, ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["step"] == 500 and ckpt["architecture"]["refine"] == 6 and net.refiner is not None
    x = np.random.default_rng(9).random((2, ia.CHANNELS, ia.CROP, ia.CROP), dtype=np.float32)
    expected = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    with torch.no_grad():
        assert np.abs(net(torch.from_numpy(x)).numpy() - expected).max() < 1e-4
    net.train()
    net(torch.from_numpy(x)).mean().backward()
    assert net.refiner[-1].weight.grad.abs().sum() > 0  # the zero layer learns
    with pytest.raises(LightSegError, match="overwrite"):
        seed(cfg, onnx_path, tmp_path / "run", 500, batches)


def test_training_the_refiner_alone_leaves_the_folded_net_as_it_was(tmp_path):
    """``train_only = "refiner"`` on real training crops: a few steps change the refiner and nothing of the folded
    net, its BatchNorm statistics included, and the run resumes from the seeded step."""
    from LightSegLib.lab.interactive.seed import seed
    from LightSegLib.lab.interactive.train import train
    from LightSegLib.lab.nets import build

    data = {"acdc": str(shared("acdc")), "lits": str(shared("lits_liver_2d")), "nih": str(shared("nih_pancreas_2d")),
            "seed": 0, "lits_test": 20, "nih_test": 10}
    arch = {"name": "unet", "widths": [4, 8], "fold": 2, "refine": 4}
    torch.manual_seed(0)
    source = build(dict(arch, refine=0, in_channels=ia.CHANNELS, num_classes=1)).eval()
    onnx_path = export_onnx(source, tmp_path / "shipped.onnx", ia.CHANNELS, trace_hw=(ia.CROP, ia.CROP))
    cfg = {"data": data, "model": arch,
           "train": {"seed": 0, "threads": 1, "batch": 2, "lr": 1e-2, "steps": 104, "max_rounds": 1,
                     "drop_prev": 0.15, "checkpoint_minutes": 60, "train_only": "refiner"}}
    batches = [np.random.default_rng(k).random((2, ia.CHANNELS, ia.CROP, ia.CROP), dtype=np.float32) for k in range(2)]
    seed(cfg, onnx_path, tmp_path / "run", 100, batches)
    before = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"]
    train(cfg, tmp_path / "run", resume=True)
    after = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    changed = {k for k in before if not torch.equal(before[k], after["model"][k])}
    assert after["step"] == 104 and after["seeded_step"] == 100  # the card tells the seeded steps from the trained
    assert any(k.endswith("weight") for k in changed) and all(k.startswith("refiner.") for k in changed), changed


def test_a_run_seeded_widened_answers_as_its_checkpoint_and_trains_on(tmp_path):
    """``seed --widen 2``: a run's checkpoint twice as wide, answering as before on real training crops, which the
    trainer resumes at the checkpoint's step; a config whose widths are not the widened ones is refused."""
    from LightSegLib.errors import LightSegError
    from LightSegLib.lab.interactive.seed import seed_widened
    from LightSegLib.lab.interactive.train import train
    from LightSegLib.lab.nets import build

    data = {"acdc": str(shared("acdc")), "lits": str(shared("lits_liver_2d")), "nih": str(shared("nih_pancreas_2d")),
            "seed": 0, "lits_test": 20, "nih_test": 10}
    arch = {"name": "unet", "widths": [4, 8], "fold": 2, "in_channels": ia.CHANNELS, "num_classes": 1}
    torch.manual_seed(0)
    torch.save({"model": build(arch).state_dict(), "architecture": arch, "step": 300}, tmp_path / "narrow.pt")
    cfg = {"data": data, "model": {"name": "unet", "widths": [8, 16], "fold": 2},
           "train": {"seed": 0, "threads": 1, "batch": 2, "lr": 1e-3, "steps": 302, "max_rounds": 1,
                     "drop_prev": 0.15, "checkpoint_minutes": 60}}
    assert seed_widened(cfg, tmp_path / "narrow.pt", tmp_path / "run", 2) < 1e-4
    train(cfg, tmp_path / "run", resume=True)
    after = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert after["step"] == 302 and after["seeded_step"] == 300 and after["architecture"]["widths"] == [8, 16]
    with pytest.raises(LightSegError, match="are not 3 x"):
        seed_widened(cfg, tmp_path / "narrow.pt", tmp_path / "other", 3)


def test_session_rounds_keep_what_a_session_keeps():
    """Training's simulated rounds with ``session_rounds``: of an answer that grows both regions of the previous
    mask, the kept mask takes only the growth touching the click, the clicked pixel follows the click, and with
    no single last click (the sample's initial clicks) the whole answer is kept."""
    from LightSegLib.lab.interactive.train import accepted

    prev = np.zeros((40, 40), np.float32)
    prev[5:10, 5:10] = prev[25:30, 25:30] = 1
    answer = ndimage.binary_dilation(prev > 0).astype(np.float32) * 0.9
    kept = accepted(answer, prev, ((10, 7), True))
    assert kept[10, 5:10].all() and kept[24:31, 24:31].sum() == prev[25:30, 25:30].sum()
    assert kept.dtype == np.float32 and set(np.unique(kept)) == {0.0, 1.0}
    removed = accepted(answer, prev, ((7, 7), False))
    assert removed[7, 7] == 0 and removed.sum() == prev.sum() - 1
    assert np.array_equal(accepted(answer, prev, None), (answer > 0.5).astype(np.float32))


def test_a_run_with_session_rounds_trains_and_checkpoints(tmp_path):
    """A few steps of the trainer with ``session_rounds`` on real training crops reach their checkpoint."""
    from LightSegLib.lab.interactive.train import train

    data = {"acdc": str(shared("acdc")), "lits": str(shared("lits_liver_2d")), "nih": str(shared("nih_pancreas_2d")),
            "seed": 0, "lits_test": 20, "nih_test": 10}
    cfg = {"data": data, "model": {"name": "unet", "widths": [4, 8], "fold": 2},
           "train": {"seed": 0, "threads": 1, "batch": 2, "lr": 1e-3, "steps": 6, "max_rounds": 3,
                     "drop_prev": 0.15, "checkpoint_minutes": 60, "session_rounds": True}}
    torch.manual_seed(0)
    train(cfg, tmp_path / "run", resume=False)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=False)["step"] == 6


def test_an_averaging_run_keeps_the_mean_of_its_weights_across_resumes(tmp_path):
    """``average = [from, every]``: averaged.pt holds the uniform mean of the weights (BatchNorm's running statistics
    too) at steps 2, 4 and 6, though the run stopped and resumed between them; its integer buffers are the latest."""
    from LightSegLib.lab.interactive.train import train

    data = {"acdc": str(shared("acdc")), "lits": str(shared("lits_liver_2d")), "nih": str(shared("nih_pancreas_2d")),
            "seed": 0, "lits_test": 20, "nih_test": 10}
    cfg = {"data": data, "model": {"name": "unet", "widths": [4, 8], "fold": 2},
           "train": {"seed": 0, "threads": 1, "batch": 2, "lr": 1e-2, "max_rounds": 1, "drop_prev": 0.15,
                     "checkpoint_minutes": 60, "average": [2, 2]}}
    torch.manual_seed(0)
    states = []
    for steps in (2, 4, 6):
        train({**cfg, "train": {**cfg["train"], "steps": steps}}, tmp_path / "run", resume=True)
        states.append(torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"])
    averaged = torch.load(tmp_path / "run" / "averaged.pt", weights_only=False)
    assert averaged["step"] == 6 and averaged["averaged"] == {"from": 2, "every": 2, "count": 3}
    assert "optimizer" not in averaged and "average" not in averaged
    assert not torch.equal(states[0]["head.weight"], states[2]["head.weight"])  # the mean is of different weights
    for k, v in averaged["model"].items():
        if v.is_floating_point():
            torch.testing.assert_close(v, sum(s[k] for s in states) / 3)
        else:
            assert torch.equal(v, states[2][k])


def test_the_outline_weight_counts_the_band_along_the_true_outline():
    """``outline_weight``: the BCE of pixels within two of the true outline counts 1 + the weight; elsewhere once."""
    import torch.nn.functional as F

    from LightSegLib.lab.interactive.train import loss_fn, outline_band

    target = torch.zeros(1, 1, 16, 16)
    target[..., 4:12, 4:12] = 1
    band = outline_band(target)[0, 0]
    ring = torch.zeros(16, 16)
    ring[2:14, 2:14] = 1
    ring[6:10, 6:10] = 0
    assert torch.equal(band, ring)
    logits = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    plain = F.binary_cross_entropy_with_logits(logits, target, reduction="none")[0, 0]
    extra = loss_fn(logits, target, 4.0) - loss_fn(logits, target)
    torch.testing.assert_close(extra, 4.0 * (plain * ring).mean())


def test_the_tuning_set_holds_training_patients_only():
    """Candidates are compared on the tuning set before the held-out benchmark runs: it must share no patient with it."""
    from LightSegLib.lab.interactive.data import TUNING, load_slices, tuning_slices
    from LightSegLib.lab.train.config import read_toml

    cfg = read_toml(REPO / "configs" / "models" / "click-refine.toml")
    cfg["data"] = {k: str(shared(Path(v).name)) if isinstance(v, str) and "shared/data" in v else v
                   for k, v in cfg["data"].items()}
    tuning = {(s.source, s.patient) for s in tuning_slices(cfg)}
    held_out = {(s.source, s.patient) for s in load_slices(cfg, "test")}
    assert {src: sum(1 for s, _ in tuning if s == src) for src in TUNING} == TUNING
    assert held_out and not tuning & held_out


def trained_model():
    """The shipped click model (LIGHTSEG_CLICK_MODEL names another ONNX file to check a run's export)."""
    path = os.environ.get("LIGHTSEG_CLICK_MODEL")
    if path:
        return path
    return ia.default_model()


def test_trained_model_lv_in_clicks_and_propagation(acdc):
    """The trained net on a held-out patient: the LV from a few clicks, then propagated through the volume,
    stopping near the LV's ends."""
    from LightSegLib.lab.interactive.clicker import dice, next_click

    image, label = acdc
    lv = label == 3
    z = middle(label)
    session = ia.InteractiveSession(image, model=trained_model(), threads=1)
    mask = session.mask
    for _ in range(5):
        (y, x), positive = next_click(mask[z] > 0, lv[z])
        mask = session.click((x, y, z), positive)
    assert dice(mask[z] > 0, lv[z]) > 0.85
    session.propagate(1)
    mask = session.propagate(-1, start=z)
    zs = np.flatnonzero(lv.reshape(len(lv), -1).any(1))
    got = np.flatnonzero(mask.reshape(len(mask), -1).any(1))
    assert got.min() >= zs.min() - 1 and got.max() <= zs.max() + 1
    assert dice(mask > 0, lv) > 0.7


@pytest.mark.parametrize("label, stopped, floor", [
    (5, "where the tissue no longer looked like the start slice's", 0.7),  # liver
    (10, "where the CT window showed only fat, air or bone", 0.3)])        # pancreas
def test_propagation_on_ct_stops_where_the_object_ends(label, stopped, floor):
    """The trained net on a CT volume (the TotalSegmentator example, 3 mm; its labels a model's): an object from
    clicks on its middle slice, propagated both ways, stops within two slices of the object's ends, and says why
    going down. The liver, without the intensity rule, ran on through the fat below it to the volume's first slice
    (Dice 0.73 against 0.75 with it). The pancreas is fatty (79% of its middle slice at or below 0 HU, where the CT
    coding is flat): without the clipping rule, a 9-pixel blob of pure fat ran on from slice 79 to 52 (Dice 0.33
    against 0.37 with it)."""
    from LightSegLib.lab.interactive.clicker import dice, iou, next_click

    root = shared("totalseg_example")
    image = sitk.DICOMOrient(sitk.ReadImage(str(root / "example_ct.nii.gz")), "LPS")
    obj = sitk.GetArrayFromImage(sitk.DICOMOrient(
        sitk.ReadImage(str(root / "example_seg_v1_full_5de6e4d.nii.gz")), "LPS")) == label
    zs = np.flatnonzero(obj.reshape(len(obj), -1).any(1))
    z = int(zs[len(zs) // 2])
    session = ia.InteractiveSession(image, model=trained_model(), threads=1)
    mask = session.mask
    for _ in range(5):
        if mask[z].any() and iou(mask[z] > 0, obj[z]) >= 0.85:
            break
        (y, x), positive = next_click(mask[z] > 0, obj[z])
        mask = session.click((x, y, z), positive)
    session.propagate(1, start=z)
    mask = session.propagate(-1, start=z)
    got = np.flatnonzero(mask.reshape(len(mask), -1).any(1))
    assert zs.min() - 2 <= got.min() and got.max() <= zs.max() + 2, (got.min(), got.max(), zs.min(), zs.max())
    assert session.propagated["stopped"] == stopped
    assert dice(mask > 0, obj) > floor


@pytest.fixture
def mrml(monkeypatch):
    yield from real_scene(monkeypatch)


@pytest.mark.slicer
def test_other_segments_are_read_in_place_and_follow_changes_made_outside(acdc, models, mrml):
    """What the controller locks, read from the layers in place: the other labels of a shared layer (a labelmap
    imported whole) and of separate layers, the same as Slicer's export, and again after another segment changed."""
    import sys

    import slicer

    sys.path.insert(0, str(REPO / "LightSeg"))
    from LightSegLogic import SegmentClicks
    from LightSegLogic.measures import exportedSegments
    from vtk.util import numpy_support

    volume = mrml.volumes.AddArchetypeVolume(str(shared("acdc/imagesTr/patient028_frame01.nii.gz")), "cine")
    _, label = acdc
    labelmap = slicer.util.addVolumeFromArray(label.astype(np.uint8), nodeClassName="vtkMRMLLabelMapVolumeNode")
    labelmap.CopyOrientation(volume)
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    ids = list(segmentation.GetSegmentation().GetSegmentIDs())
    assert len(ids) == 3 and segmentation.GetSegmentation().GetNumberOfLayers() == 1  # one shared layer
    values = {i: segmentation.GetSegmentation().GetSegment(i).GetLabelValue() for i in ids}
    lv = next(i for i in ids if values[i] == 3)
    clicks = SegmentClicks(volume, segmentation, lv, model=models["grow"], threads=1)
    assert np.array_equal(clicks.segment_array() > 0, label == 3)
    assert np.array_equal(clicks.other_segments(), np.isin(label, (1, 2)))

    segmentation.GetSegmentation().AddEmptySegment("empty")  # holds nothing, read as nothing
    extra = segmentation.GetSegmentation().AddEmptySegment("extra")  # a separate layer
    block = np.zeros_like(label, np.uint8)
    block[:, :20, :20] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(block, segmentation, extra, volume)
    assert np.array_equal(clicks.other_segments(), np.isin(label, (1, 2)) | (block > 0))
    block[:, 30:40, :20] = 1  # changed outside: read again, not from what was kept
    slicer.util.updateSegmentBinaryLabelmapFromArray(block, segmentation, extra, volume)
    expected = np.isin(label, (1, 2)) | (block > 0)
    assert np.array_equal(clicks.other_segments(), expected)
    exported = exportedSegments(slicer.mrmlScene, segmentation, [i for i in ids + [extra] if i != lv], volume)
    assert np.array_equal(exported.reshape(label.shape) > 0, expected)  # Slicer's own export agrees

    layer = segmentation.GetSegmentation().GetSegment(extra).GetRepresentation("Binary labelmap")
    scalars = numpy_support.vtk_to_numpy(layer.GetPointData().GetScalars())
    scalars[:] = 0  # an effect painting in place: the same layer object, modified
    layer.Modified()
    assert np.array_equal(clicks.other_segments(), np.isin(label, (1, 2)))


@pytest.mark.slicer
def test_the_controller_notes_a_ct_volume_node_stored_without_its_rescale(models, mrml):
    """What the web app and the Slicer effect show: the controller's session reads the volume node's voxels, and a
    CT node holding HU + 1024 gets the note."""
    import sys

    import slicer

    sys.path.insert(0, str(REPO / "LightSeg"))
    from LightSegLogic import SegmentClicks

    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(shared("ircadb/imagesTr/ircadb1_17.nii.gz"))))[50:53]
    notes = []
    for array in (hu, hu.astype(np.int32) + 1024):
        volume = slicer.util.addVolumeFromArray(array)
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segment = segmentation.GetSegmentation().AddEmptySegment("liver")
        notes.append(SegmentClicks(volume, segmentation, segment, model=models["grow"], threads=1).session.note)
    assert notes[0] is None and "stored without its HU rescale" in notes[1]


def test_segment_editor_clicks_on_real_mrml(acdc, models, mrml):
    """The effect's MRML side (LightSegLogic.clicks.SegmentClicks) on a real scene: a click writes the selected
    segment through an oriented labelmap on the volume's grid, other segments keep every voxel, and a change made
    outside the session (the editor's undo) is where the next click starts from."""
    import sys

    import slicer

    sys.path.insert(0, str(REPO / "LightSeg"))
    from LightSegLogic import SegmentClicks

    path = shared("acdc/imagesTr/patient028_frame01.nii.gz")
    volume = mrml.volumes.AddArchetypeVolume(str(path), "cine")
    _, label = acdc
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    rv = segmentation.GetSegmentation().AddEmptySegment("rv")
    lv = segmentation.GetSegmentation().AddEmptySegment("lv")
    slicer.util.updateSegmentBinaryLabelmapFromArray((label == 1).astype(np.uint8), segmentation, rv, volume)

    clicks = SegmentClicks(volume, segmentation, lv, model=models["grow"], threads=1)
    z = middle(label)
    y, x = ia.deepest_point(label[z] == 3)
    labelmap = clicks.click((x, y, z))
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(labelmap, segmentation, lv)
    written = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, lv, volume)
    assert written[z, y, x] and np.array_equal(written > 0, clicks.session.mask > 0)
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, rv, volume) > 0, label == 1)

    slicer.util.updateSegmentBinaryLabelmapFromArray(np.zeros_like(label, np.uint8), segmentation, lv, volume)
    labelmap = clicks.click((x + 5, y, z))  # the segment was emptied outside: this click starts from nothing
    assert clicks.session.mask[z, y, x + 5] and not clicks.session.mask[z, y, x]

    ry, rx = np.argwhere(label[z] == 1)[0]  # a click on the RV for the LV: the RV's voxels are never taken
    clicks.write(clicks.click((int(rx), int(ry), z)))
    written = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, lv, volume) > 0
    assert written.any() and not (written & (label == 1)).any()
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, rv, volume) > 0, label == 1)
