"""Layer 2, decomposition: models cut into batched, padded chains (:class:`ChainProblem`)."""

from .chains import ChainGroup, ChainPairwise, ChainProblem
from .graph import graph_chain_problem, graph_chains, path_cover
from .grid import grid_chain_problem, grid_chains

__all__ = ["ChainPairwise", "ChainGroup", "ChainProblem", "grid_chains", "grid_chain_problem", "graph_chain_problem", "graph_chains", "path_cover"]
