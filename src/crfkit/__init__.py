"""crfkit: inference and learning in pairwise Markov and conditional random fields (PyTorch)."""

from .models import (
    DEFAULT_OFFSETS,
    GraphMRF,
    GridCRF,
    PerEdgeTables,
    Potts,
    SharedTable,
    TruncatedLinear,
    WeightedTable,
)

from .inference.dual_decomposition import MAPResult, solve_map

from . import nn  # noqa: E402  (crfkit.nn.DualDecompositionCRF)

__version__ = "0.1.0"

__all__ = [
    "GridCRF",
    "GraphMRF",
    "DEFAULT_OFFSETS",
    "PerEdgeTables",
    "SharedTable",
    "WeightedTable",
    "Potts",
    "TruncatedLinear",
    "solve_map",
    "MAPResult",
]
