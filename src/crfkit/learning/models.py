"""Parametrisations for learning: potentials as features × weights.

Two parametrisations share one small interface (potential rows from a flat weight vector,
and ``Fᵀ b`` for belief rows), so that every learner works with either:

* :class:`TableParams` — one free parameter per potential entry of a fixed graph (an MRF):
  ``θ_i = w_u[i]``, ``θ_ij = w_p[ij]``.
* :class:`FeatureParams` — templated or conditional: unary features ``f_i ∈ R^{F_u}`` with one
  weight vector per state, pairwise features ``f_ij ∈ R^{F_p}`` with one per pair of states:
  ``θ_i(a) = f_i · W_u[:, a]``, ``θ_ij(a, c) = f_ij · W_p[:, a, c]``.
  ``Fᵀ b`` is ``(f_uᵀ b_u, f_pᵀ b_p)``: the feature matrix is never formed densely.

A data set is a list of :class:`LearningInstance` (a graph, its features, and its observed
labellings); :class:`FeatureCRF` is the model (the weights) shared by all instances.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .._validation import (
    CRFShapeError,
    CRFTypeError,
    CRFValueError,
    check_finite,
    check_labels,
    check_tensor,
    fmt_shape,
)

__all__ = ["FeatureCRF", "LearningInstance", "Instance", "TableParams", "FeatureParams"]


class FeatureCRF:
    """A templated / conditional pairwise CRF: weights shared by every instance.

    Args:
        num_labels: ``L``.
        unary_dim: ``F_u``; pairwise_dim: ``F_p``.
        unary_weights: ``[F_u, L]`` (default zeros); pairwise_weights: ``[F_p, L, L]`` (default zeros).
        dtype: of the default weights.

    ``potentials(instance)`` gives ``(unary [N, L], pairwise [E, L, L])``;
    ``to_graph_mrf(instance)`` the :class:`crfkit.GraphMRF` of one instance.
    """

    def __init__(
        self,
        num_labels: int,
        unary_dim: int,
        pairwise_dim: int,
        unary_weights=None,
        pairwise_weights=None,
        dtype: torch.dtype = torch.float64,
    ):
        for name, v in (
            ("num_labels", num_labels),
            ("unary_dim", unary_dim),
            ("pairwise_dim", pairwise_dim),
        ):
            if (
                not isinstance(v, int)
                or isinstance(v, bool)
                or v < (1 if name == "num_labels" else 0)
            ):
                raise CRFValueError(
                    f"expected {name} a non-negative int (num_labels >= 1), got {v!r}"
                )
        self.num_labels, self.unary_dim, self.pairwise_dim = num_labels, unary_dim, pairwise_dim
        L = num_labels
        if unary_weights is None:
            unary_weights = torch.zeros(unary_dim, L, dtype=dtype)
        if pairwise_weights is None:
            pairwise_weights = torch.zeros(pairwise_dim, L, L, dtype=dtype)
        check_tensor(unary_weights, "unary_weights", "F L", {"F": unary_dim, "L": L}, floating=True)
        check_tensor(
            pairwise_weights,
            "pairwise_weights",
            "F L L",
            {"F": pairwise_dim, "L": L},
            floating=True,
        )
        check_finite(unary_weights, "unary_weights")
        check_finite(pairwise_weights, "pairwise_weights")
        self.unary_weights = unary_weights
        self.pairwise_weights = pairwise_weights

    @property
    def num_params(self) -> int:
        L = self.num_labels
        return self.unary_dim * L + self.pairwise_dim * L * L

    def weights(self) -> torch.Tensor:
        """Flat weight vector ``[P]`` (unary weights first, then pairwise)."""
        return torch.cat([self.unary_weights.flatten(), self.pairwise_weights.flatten()])

    def with_weights(self, w: torch.Tensor) -> FeatureCRF:
        """A copy holding the flat weights ``w [P]``."""
        L, Fu, Fp = self.num_labels, self.unary_dim, self.pairwise_dim
        check_tensor(w, "weights", "P", {"P": self.num_params}, floating=True)
        return FeatureCRF(
            L, Fu, Fp, w[: Fu * L].reshape(Fu, L).clone(), w[Fu * L :].reshape(Fp, L, L).clone()
        )

    def potentials(self, instance: LearningInstance) -> tuple[torch.Tensor, torch.Tensor]:
        """``(unary [N, L], pairwise [E, L, L])`` of ``instance`` under these weights."""
        p = FeatureParams(instance, self)
        w = self.weights()
        return p.unary(w), p.pairwise(w)

    def to_graph_mrf(self, instance: LearningInstance):
        from ..models.graph import GraphMRF

        u, p = self.potentials(instance)
        return GraphMRF(u, instance.edges, p)

    def __repr__(self):
        return f"FeatureCRF(L={self.num_labels}, F_u={self.unary_dim}, F_p={self.pairwise_dim})"


@dataclass
class LearningInstance:
    """One fully observed learning example: a graph, its features, and observed labellings
    (``crfkit.LearningInstance``; ``crfkit.learning.Instance`` is the same class).

    Args:
        edges: ``[E, 2]`` long.
        unary_features: ``[N, F_u]``.
        pairwise_features: ``[E, F_p]``.
        labels: ``[M, N]`` long (``M`` labellings sharing these features; ``[N]`` is one).
        grid_shape: ``(H, W)`` when the nodes are a grid's pixels ``y * W + x`` (for tile blocks).
    """

    edges: torch.Tensor
    unary_features: torch.Tensor
    pairwise_features: torch.Tensor
    labels: torch.Tensor
    grid_shape: tuple[int, int] | None = None
    name: str = field(default="")

    @property
    def num_nodes(self) -> int:
        return int(self.unary_features.shape[0])

    def validate(self, num_labels: int, unary_dim: int, pairwise_dim: int) -> None:
        s = check_tensor(
            self.unary_features, "unary_features", "N F", {"F": unary_dim}, floating=True
        )
        check_finite(self.unary_features, "unary_features")
        s2 = check_tensor(self.edges, "edges", "E 2", integer=True)
        check_tensor(
            self.pairwise_features,
            "pairwise_features",
            "E F",
            {"E": s2["E"], "F": pairwise_dim},
            floating=True,
        )
        check_finite(self.pairwise_features, "pairwise_features")
        if s2["E"]:
            lo, hi = int(self.edges.min()), int(self.edges.max())
            if lo < 0 or hi >= s["N"]:
                raise CRFValueError(
                    f"expected edges with node indices in [0, {s['N'] - 1}], got values in [{lo}, {hi}]"
                )
        lab = self.labels
        if not isinstance(lab, torch.Tensor):
            raise CRFTypeError(
                f"expected labels to be a torch.Tensor of shape [M, N], got {type(lab).__name__}"
            )
        if lab.dim() == 1:
            lab = lab[None]
        check_tensor(lab, "labels", "M N", {"N": s["N"]}, integer=True)
        if lab.shape[0] == 0:
            raise CRFValueError(
                f"expected at least one labelling per instance, got labels of shape {fmt_shape(lab.shape)}"
            )
        check_labels(lab, "labels", num_labels)
        if self.grid_shape is not None and self.grid_shape[0] * self.grid_shape[1] != s["N"]:
            raise CRFShapeError(
                f"expected grid_shape with H * W = N = {s['N']}, got {self.grid_shape}"
            )
        self.labels = lab.long()


class TableParams:
    """One parameter per potential entry of one graph (``P = N L + E L²``)."""

    def __init__(self, num_nodes: int, edges: torch.Tensor, num_labels: int):
        self.N, self.E, self.L = int(num_nodes), int(edges.shape[0]), int(num_labels)
        self.edges = edges
        self.num_params = self.N * self.L + self.E * self.L * self.L

    def unary(self, w, nodes=None):
        u = w[: self.N * self.L].view(self.N, self.L)
        return u if nodes is None else u[nodes]

    def pairwise(self, w, edges=None):
        p = w[self.N * self.L :].view(self.E, self.L, self.L)
        return p if edges is None else p[edges]

    def grad(self, bu, bp, nodes=None, edges=None, out=None, alpha: float = 1.0):
        """Add ``alpha · Fᵀ b`` to ``out [P]`` for unary rows ``bu [n, L]`` of ``nodes`` and pairwise
        rows ``bp [e, L, L]`` of ``edges`` (all rows when None)."""
        if out is None:
            out = torch.zeros(self.num_params, dtype=bu.dtype, device=bu.device)
        NL = self.N * self.L
        ou = out[:NL].view(self.N, self.L)
        op = out[NL:].view(self.E, self.L, self.L)
        if nodes is None:
            ou.add_(bu, alpha=alpha)
        else:
            ou.index_add_(0, nodes, bu, alpha=alpha)
        if edges is None:
            op.add_(bp, alpha=alpha)
        else:
            op.index_add_(0, edges, bp, alpha=alpha)
        return out

    def feature_norm_sq(self) -> float:
        # F is the identity; nodes of high degree collect many pairwise entries
        return 8.0


class FeatureParams:
    """Features × weights for one :class:`LearningInstance` (see module docstring)."""

    def __init__(self, instance: LearningInstance, model: FeatureCRF):
        self.fu = instance.unary_features
        self.fp = instance.pairwise_features
        self.N, self.E = self.fu.shape[0], self.fp.shape[0]
        self.L, self.Fu, self.Fp = model.num_labels, model.unary_dim, model.pairwise_dim
        self.num_params = model.num_params

    def _split(self, w):
        k = self.Fu * self.L
        return w[:k].view(self.Fu, self.L), w[k:].view(self.Fp, self.L * self.L)

    def unary(self, w, nodes=None):
        wu, _ = self._split(w)
        f = self.fu if nodes is None else self.fu[nodes]
        return f.to(w.dtype) @ wu

    def pairwise(self, w, edges=None):
        _, wp = self._split(w)
        f = self.fp if edges is None else self.fp[edges]
        return (f.to(w.dtype) @ wp).view(-1, self.L, self.L)

    def grad(self, bu, bp, nodes=None, edges=None, out=None, alpha: float = 1.0):
        if out is None:
            out = torch.zeros(self.num_params, dtype=bu.dtype, device=bu.device)
        k = self.Fu * self.L
        fu = self.fu if nodes is None else self.fu[nodes]
        fp = self.fp if edges is None else self.fp[edges]
        out[:k].view(self.Fu, self.L).addmm_(fu.to(bu.dtype).T, bu, alpha=alpha)
        out[k:].view(self.Fp, self.L * self.L).addmm_(
            fp.to(bp.dtype).T, bp.reshape(-1, self.L * self.L), alpha=alpha
        )
        return out

    def feature_norm_sq(self) -> float:
        """Largest squared singular value of the unary plus the pairwise feature matrix."""
        su = (
            torch.linalg.matrix_norm(self.fu.double(), ord=2) ** 2 if self.Fu else torch.tensor(0.0)
        )
        sp = (
            torch.linalg.matrix_norm(self.fp.double(), ord=2) ** 2
            if self.Fp and self.E
            else torch.tensor(0.0)
        )
        return float(su + sp)


Instance = LearningInstance  # the earlier name, kept inside crfkit.learning
