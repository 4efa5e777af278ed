"""The ``data.augment`` section of a run config: augmentation hyper-parameters, apart from the albumentations
pipeline that applies them (data/augment.py), so reading a config does not load albumentations."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AugmentConfig(BaseModel):
    """Augmentation hyper-parameters; names and defaults mirror ultralytics' ``hyp`` keys."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        True,
        description="Augment training images at all (no ultralytics key).",
    )
    fliplr: float = Field(
        0.5, ge=0, le=1,
        description="Probability of a left-right flip (ultralytics fliplr).",
    )
    flipud: float = Field(
        0.0, ge=0, le=1,
        description="Probability of an up-down flip (ultralytics flipud).",
    )
    scale: float = Field(
        0.5, ge=0, lt=1,
        description="Isotropic scale gain drawn from 1 ± scale (ultralytics scale).",
    )
    translate: float = Field(
        0.1, ge=0, le=0.5,
        description="Shift drawn from ± translate of the width and of the height (ultralytics "
        "translate).",
    )
    degrees: float = Field(
        0.0, ge=0, le=180,
        description="Rotation drawn from ± degrees (ultralytics degrees).",
    )
    hsv_h: float = Field(
        0.015, ge=0, le=0.5,
        description="Hue shift drawn from ± hsv_h of the hue circle (ultralytics hsv_h); skipped on "
        "grey images.",
    )
    hsv_s: float = Field(
        0.7, ge=0,
        description="Saturation factor drawn from 1 ± hsv_s (ultralytics hsv_s), applied as a blend "
        "with the grey image (torchvision's ColorJitter); skipped on grey images.",
    )
    hsv_v: float = Field(
        0.4, ge=0,
        description="Brightness (HSV value) gain drawn from 1 ± hsv_v (ultralytics hsv_v).",
    )
    mosaic: float = Field(
        0.0, ge=0, le=1,
        description="Probability of a 2x2 mosaic with three other images (ultralytics mosaic); needs "
        "a sampler of dataset items.",
    )
    min_visibility: float = Field(
        0.3, ge=0, le=1,
        description="Boxes are clipped to the image; one keeping less than this share of its area "
        "after a step is dropped (the role of ultralytics' box_candidates area_thr).",
    )
    min_size: float = Field(
        2.0, ge=0,
        description="Boxes narrower or lower than this many pixels after a step are dropped "
        "(ultralytics box_candidates wh_thr).",
    )
