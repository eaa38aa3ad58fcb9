"""Neural-network modules: pairwise heads, segmentation networks, the CRF layer."""

from .crf_layer import DualDecompositionCRF, dual_decomposition_marginals
from .pairwise_head import PairwiseHead, shift_to_partner
from .segmentation import SegmentationNet, build_segmentation_model, count_parameters

__all__ = [
    "DualDecompositionCRF",
    "dual_decomposition_marginals",
    "PairwiseHead",
    "shift_to_partner",
    "SegmentationNet",
    "build_segmentation_model",
    "count_parameters",
]
