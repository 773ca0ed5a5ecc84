"""The one Dice and its rule for empty structures (LightSegLib.metrics), checked against MONAI's DiceMetric."""
import math

import numpy as np
import pytest

from LightSegLib.metrics import dice, dice_per_class, hd95_per_class


def test_empty_structure_rule():
    empty, some = np.zeros((4, 5), bool), np.eye(4, 5, dtype=bool)
    assert math.isnan(dice(empty, empty))  # nothing to find, nothing found: no score
    assert dice(some, empty) == 0.0 and dice(empty, some) == 0.0  # a false detection or a miss counts
    assert dice(some, some) == 1.0


def test_dice_per_class_equals_monai_where_the_reference_has_the_label():
    torch = pytest.importorskip("torch")
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, (6, 20, 20))
    truth[truth == 2] = 0  # label 2 absent from the reference
    pred = np.where(rng.random(truth.shape) < 0.2, rng.integers(0, 4, truth.shape), truth)
    ours = dice_per_class(pred, truth, 4)
    onehot = [one_hot(torch.from_numpy(a.astype(np.int64))[None, None], 4) for a in (pred, truth)]
    monai = DiceMetric(include_background=False, reduction="none", ignore_empty=False)(*onehot)[0].numpy()
    np.testing.assert_allclose(ours, monai, rtol=1e-6)
    assert ours[1] == 0.0  # predicted where the reference has none
    none_at_all = dice_per_class(np.where(pred == 2, 0, pred), truth, 4)
    assert math.isnan(none_at_all[1]) and not np.isnan(none_at_all[[0, 2]]).any()


def test_hd95_only_where_both_have_the_label():
    pytest.importorskip("monai")
    truth = np.zeros((3, 10, 10), np.uint8)
    truth[1, 2:5, 2:5] = 1
    pred = np.zeros_like(truth)
    pred[1, 2:5, 3:6] = 1
    pred[1, 8, 8] = 2
    hd = hd95_per_class(pred, truth, 3, (2.0, 1.0, 1.0))
    assert hd[0] == pytest.approx(1.0) and math.isnan(hd[1])
