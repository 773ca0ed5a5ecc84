"""MONAI augmentation for 2D training samples (dict of channel-first ``image``/``label`` arrays).

Spatial transforms resample the label with nearest neighbour; intensity transforms touch the image only.
The crop arriving here is larger than the patch (``crop_margin``) so rotation/scaling draws real pixels into
the corners; the final centre crop gives the patch size.
"""
from __future__ import annotations

import math


def build_transform(patch, cfg: dict):
    from monai.transforms import (CenterSpatialCropd, Compose, Rand2DElasticd, RandAdjustContrastd, RandAffined,
                                  RandFlipd, RandGaussianNoised, RandGaussianSmoothd, RandHistogramShiftd,
                                  RandScaleIntensityd, RandShiftIntensityd, RandSimulateLowResolutiond,
                                  SpatialPadd)

    keys = ["image", "label"]
    patch = [int(p) for p in patch]
    rot = math.radians(float(cfg.get("rotate_deg", 30.0)))
    scale = float(cfg.get("scale", 0.15))
    t = [
        RandAffined(keys, prob=float(cfg.get("affine_prob", 0.5)), rotate_range=(rot,), scale_range=(scale, scale),
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
    ]
    if cfg.get("elastic_prob", 0.0) > 0:
        t.append(Rand2DElasticd(keys, spacing=(24, 24), magnitude_range=(1.0, 3.0), prob=float(cfg["elastic_prob"]),
                                mode=("bilinear", "nearest"), padding_mode="zeros"))
    t += [CenterSpatialCropd(keys, roi_size=patch), SpatialPadd(keys, spatial_size=patch)]
    if cfg.get("lowres_prob", 0.0) > 0:  # a coarse scan (3 mm pixels) resized up to the model grid: soft edges
        t.append(RandSimulateLowResolutiond("image", prob=float(cfg["lowres_prob"]),
                                            zoom_range=tuple(cfg.get("lowres_zoom", (0.4, 0.9))),
                                            downsample_mode="nearest", upsample_mode="bilinear"))
    t += [
        RandGaussianNoised("image", prob=float(cfg.get("noise_prob", 0.15)), std=float(cfg.get("noise_std", 0.03))),
        RandGaussianSmoothd("image", prob=float(cfg.get("blur_prob", 0.1)), sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0)),
        RandScaleIntensityd("image", factors=0.2, prob=float(cfg.get("intensity_prob", 0.3))),
        RandShiftIntensityd("image", offsets=float(cfg.get("intensity_shift", 0.1)),
                            prob=float(cfg.get("intensity_prob", 0.3))),
        RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=float(cfg.get("gamma_prob", 0.3))),
    ]
    if cfg.get("histogram_shift_prob", 0.0) > 0:  # a random monotone remapping: tissues' relative brightness changes
        t.append(RandHistogramShiftd("image", num_control_points=(5, 10), prob=float(cfg["histogram_shift_prob"])))
    flip = float(cfg.get("flip_prob", 0.0))
    if flip > 0:
        t += [RandFlipd(keys, prob=flip, spatial_axis=0), RandFlipd(keys, prob=flip, spatial_axis=1)]
    return Compose(t)
