"""Layer 4, inference: dual decomposition (MAP with certificates), convex BP, exact references.

Convex BP is split by concern: :mod:`.bp_graph` (graph compilation), :mod:`.counting` (counting
numbers and the convexity check), :mod:`.bp_engine` (the message-passing engine) and
:mod:`.convex_bp` (the entry point :func:`marginals` and :class:`BPResult`).
"""

from .bp_engine import ConvexBP
from .bp_graph import Block, CompiledGraph
from .convex_bp import BPResult, marginals
from .counting import check_convex_counting, counting_numbers, edge_appearance_probabilities
from .exact import enumerate_mrf, tree_max_product, tree_sum_product

bp_marginals = marginals
belief_propagation = marginals

__all__ = [
    "marginals",
    "bp_marginals",
    "belief_propagation",
    "ConvexBP",
    "BPResult",
    "CompiledGraph",
    "Block",
    "counting_numbers",
    "check_convex_counting",
    "edge_appearance_probabilities",
    "enumerate_mrf",
    "tree_sum_product",
    "tree_max_product",
]
