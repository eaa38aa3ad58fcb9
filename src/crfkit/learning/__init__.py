"""Layer 5, learning: variational-likelihood learning (full BP, inner-dual, BBPL)."""

from .blocks import grid_tiles, index_ranges, make_blocks
from .learners import FitNotConvergedWarning, FitResult, VariationalObjective, fit
from .models import FeatureCRF, FeatureParams, Instance, LearningInstance, TableParams

__all__ = [
    "fit",
    "FitResult",
    "FitNotConvergedWarning",
    "VariationalObjective",
    "FeatureCRF",
    "LearningInstance",
    "Instance",
    "FeatureParams",
    "TableParams",
    "grid_tiles",
    "index_ranges",
    "make_blocks",
]
