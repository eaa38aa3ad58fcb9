"""crfkit: inference and learning in pairwise Markov and conditional random fields (PyTorch)."""

from . import io, nn  # noqa: F401  (so that crfkit.nn.DualDecompositionCRF and crfkit.io work after `import crfkit`)
from .inference.convex_bp import BPResult, marginals
from .inference.dual_decomposition import MAPResult, solve_map
from .io import read_uai, write_uai
from .learning import FeatureCRF, FitResult, Instance, LearningInstance, fit
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

#: descriptive names of the top-level functions (``marginals``, ``fit`` and ``Instance`` are kept as
#: the same objects under their first names)
belief_propagation = marginals
learn_parameters = fit

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
    "belief_propagation",
    "BPResult",
    "learn_parameters",
    "FitResult",
    "FeatureCRF",
    "LearningInstance",
    "marginals",
    "fit",
    "Instance",
    "read_uai",
    "write_uai",
]
