"""Bootstrap draws that resample whole groups (the patients of slices, the children of X-rays), not items: items of
one group are alike, so an interval over items would claim more certainty than other groups would give."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def group_draws(groups, rounds: int, seed: int = 0) -> Iterator[np.ndarray]:
    """``rounds`` index arrays, each the items of as many groups as there are, drawn with replacement (fixed seed)."""
    ids, inverse = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(len(ids))]
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        yield np.concatenate([members[k] for k in rng.integers(0, len(ids), len(ids))])
