"""Layer 1, models: validated containers of potentials and structure, and scoring. No algorithms."""

from .graph import GraphMRF
from .grid import DEFAULT_OFFSETS, GridCRF, check_offsets
from .pairwise import PairwiseForm, PerEdgeTables, Potts, SharedTable, TruncatedLinear, WeightedTable

__all__ = [
    "GridCRF",
    "GraphMRF",
    "DEFAULT_OFFSETS",
    "check_offsets",
    "PairwiseForm",
    "PerEdgeTables",
    "SharedTable",
    "WeightedTable",
    "Potts",
    "TruncatedLinear",
]
