"""Layer 6, data: data sets and generators (stereo pair, synthetic graphs, segmentation sets)."""

from .stereo import (
    StereoPair,
    StereoParams,
    bad_pixel_rate,
    build_stereo_crf,
    load_motorcycle,
    matching_cost,
    upsample_disparity,
    winner_take_all,
)

__all__ = [
    "StereoPair",
    "StereoParams",
    "bad_pixel_rate",
    "build_stereo_crf",
    "load_motorcycle",
    "matching_cost",
    "upsample_disparity",
    "winner_take_all",
]
