"""2D (or 2.5D) training samples drawn from preprocessed volumes, with foreground oversampling.

Each sample is a random slice cropped/padded to a fixed patch; with probability ``foreground_prob`` the crop is
centred on a random foreground pixel of a random class present in the volume (small structures get seen).
Randomness comes from a per-(seed, epoch, index) generator, so runs are reproducible whatever the workers.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ... import preprocess
from .msd import Case


class SliceDataset(Dataset):
    def __init__(self, cases: list[Case], patch, samples_per_epoch: int, foreground_prob: float = 0.33,
                 context_slices: int = 0, crop_margin: float = 1.0, transform=None, seed: int = 0):
        self.cases = cases
        self.patch = (int(patch[0]), int(patch[1]))
        # Crop larger than the patch when the augmentation rotates/scales, so corners are real image.
        self.crop = tuple(int(np.ceil(p * crop_margin)) for p in self.patch)
        self.samples_per_epoch = int(samples_per_epoch)
        self.foreground_prob = float(foreground_prob)
        self.context = int(context_slices)
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        # Foreground pixel lists per case and class: [(z, y, x) arrays].
        self.fg = []
        for c in cases:
            per_class = {}
            for k in np.unique(c.label):
                if k == 0:
                    continue
                per_class[int(k)] = np.argwhere(c.label == k)
            self.fg.append(per_class)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        ci = int(rng.integers(len(self.cases)))
        case, fg = self.cases[ci], self.fg[ci]
        n, h, w = case.image.shape
        ch, cw = self.crop
        if fg and rng.random() < self.foreground_prob:
            cls = list(fg)[int(rng.integers(len(fg)))]
            z, cy, cx = fg[cls][int(rng.integers(len(fg[cls])))]
            y0, x0 = int(cy) - ch // 2, int(cx) - cw // 2
        else:
            z = int(rng.integers(n))
            y0 = int(rng.integers(min(0, h - ch), max(0, h - ch) + 1))
            x0 = int(rng.integers(min(0, w - cw), max(0, w - cw) + 1))
        idx = preprocess.context_indices(int(z), int(z) + 1, self.context, n)
        img = _crop(case.image[idx], y0, x0, ch, cw)  # [2c+1, ch, cw]
        lab = _crop(case.label[int(z)][None], y0, x0, ch, cw)
        sample = {"image": img.astype(np.float32), "label": lab.astype(np.float32)}
        if self.transform is not None:
            self.transform.set_random_state(seed=int(rng.integers(2 ** 31)))
            sample = self.transform(sample)
        image = torch.as_tensor(np.asarray(sample["image"]), dtype=torch.float32)
        label = torch.as_tensor(np.asarray(sample["label"])).round().long()
        return image, label


def _crop(arr: np.ndarray, y0: int, x0: int, ch: int, cw: int) -> np.ndarray:
    """Crop ``[c, h, w]`` at (y0, x0) with zero padding wherever the window leaves the slice."""
    c, h, w = arr.shape
    out = np.zeros((c, ch, cw), dtype=arr.dtype)
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(h, y0 + ch), min(w, x0 + cw)
    if ye > ys and xe > xs:
        out[:, ys - y0:ye - y0, xs - x0:xe - x0] = arr[:, ys:ye, xs:xe]
    return out
