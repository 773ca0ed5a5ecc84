"""The checkpoints committed under Resources/Checkpoints (baselines, compressed student) load, say what they are, and segment the bundled
ACDC sample (a validation-split volume) about as well as their recorded validation Dice says."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO

CHECKPOINTS = REPO / "Resources" / "Checkpoints"
SAMPLE = REPO / "Resources" / "Samples" / "acdc_patient002_ED.nii.gz"
LABEL = REPO / "Resources" / "Samples" / "acdc_patient002_ED_label.nii.gz"


@pytest.mark.parametrize("name, family", [("cardiac_lfunet", "lfunet"), ("cardiac_dpunet", "dpunet"),
                                          ("cardiac_student", "unet"), ("cardiac_folded", "unet")])
def test_committed_baseline_segments_the_sample(name, family):
    import torch

    from LightSegLib.lab.data.msd import load_case
    from LightSegLib.lab.export import load_checkpoint
    from LightSegLib.lab.train.evaluate_core import predict_case

    torch.set_num_threads(1)
    net, ckpt = load_checkpoint(CHECKPOINTS / f"{name}.pt")
    assert ckpt["architecture"]["name"] == family and ckpt["metrics"]["split"] == "validation"
    assert (CHECKPOINTS / "README.md").read_text().count(f"{name}.pt") >= 1  # every file has its card entry
    case = load_case({"image": str(SAMPLE), "label": str(LABEL)}, ckpt["prep"])
    pred = case.orientation.invert(predict_case(net, case, "cpu"))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(LABEL)))
    dice = [2 * np.sum((pred == v) & (truth == v)) / (np.sum(pred == v) + np.sum(truth == v)) for v in (1, 2, 3)]
    # One easy validation volume: each structure well above what an untrained or broken net gives.
    assert min(dice) > 0.75, json.dumps([round(float(d), 3) for d in dice])
