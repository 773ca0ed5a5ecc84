"""Voxel grids: whether two images lie on one, before one's voxels are read as the other's."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """Whether two images lie on one voxel grid (size, spacing, origin within a thousandth of a voxel, direction):
    the test before reading one's voxels as the other's (a labelmap of a scan, the ED and ES frames of one series)."""
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-4, atol=1e-6)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=1e-3 * min(a.GetSpacing()))
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4))
