"""Layer 4, inference: dual decomposition (MAP with certificates), convex BP, exact references."""

from .convex_bp import (
    BPResult,
    ConvexBP,
    counting_numbers,
    edge_appearance_probabilities,
    marginals,
)
from .exact import enumerate_mrf, tree_max_product, tree_sum_product

__all__ = [
    "marginals",
    "ConvexBP",
    "BPResult",
    "counting_numbers",
    "edge_appearance_probabilities",
    "enumerate_mrf",
    "tree_sum_product",
    "tree_max_product",
]
