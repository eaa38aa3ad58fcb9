"""Layer 5, learning: variational-likelihood learning (full BP, inner-dual, BBPL)."""

from .blocks import grid_tiles, index_ranges, make_blocks
from .learners import FitResult, VariationalObjective, fit
from .models import FeatureCRF, FeatureParams, Instance, TableParams

__all__ = [
    "fit",
    "FitResult",
    "VariationalObjective",
    "FeatureCRF",
    "Instance",
    "FeatureParams",
    "TableParams",
    "grid_tiles",
    "index_ranges",
    "make_blocks",
]
