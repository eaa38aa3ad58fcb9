"""Learning by the variational likelihood: full BP, inner-dual and block BP learning (BBPL).

Objective (``docs/maths.md``, "Learning"), over instances ``k`` with ``M_k`` observed labellings each and
``M = Σ_k M_k``:

    J(w) = (1/M) Σ_k [ M_k A_k(F_k w) − ⟨F_k w, Σ_m y_{k,m}⟩ ] + (κ/2) ‖w‖²
    ∇J(w) = (1/M) Σ_k [ M_k F_kᵀ b_k − F_kᵀ Σ_m y_{k,m} ] + κ w

with ``A_k`` the convex-BP approximation of the log-partition and ``b_k`` its beliefs (the
envelope theorem: no backpropagation through message passing).  ``Fᵀ Σ_m y`` is computed once.

* ``"full"``: every step runs convex BP to convergence (warm-started from the last step's
  messages) on every instance.
* ``"inner_dual"``: every step runs one parallel sweep of messages, kept between steps.
* ``"bbpl"``: every step takes one block (in turn or at random): refreshes the potentials the
  block reads, runs the block's messages to convergence with the rest held, writes the block's
  beliefs into the stored belief vector, updates ``Fᵀ b`` in place by the difference, and takes a
  gradient step with the mixed vector.  Work per step depends on the block, not on the graph
  (except the weight update itself for per-entry MRF parameters).

The history (time, objective, distance to a reference) is measured the same way for all three:
the learner's clock stops while the objective is evaluated (full convex BP to a tight tolerance
on separate, warm-started states).
"""

from __future__ import annotations

import math
import random
import time
import warnings
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

from .._validation import (
    CRFTypeError,
    CRFValueError,
    check_finite,
    check_int,
    check_labels,
    check_number,
    check_tensor,
    fmt_shape,
)
from ..inference.bp_engine import ConvexBP
from ..inference.bp_graph import CompiledGraph
from ..inference.counting import counting_numbers
from ..inference.threads import with_solver_threads
from ..models.graph import GraphMRF
from .blocks import make_blocks
from .models import FeatureCRF, FeatureParams, LearningInstance, TableParams

__all__ = ["fit", "FitResult", "VariationalObjective", "FitNotConvergedWarning", "DEFAULT_MAX_ROUNDS"]

METHODS = ("full", "inner_dual", "bbpl")

#: The default budget (``max_steps=None``): stop at ``gtol``, else after this many rounds (a
#: round: one step for ``full`` / ``inner_dual``, one step per block for ``bbpl``) with a
#: :class:`FitNotConvergedWarning`. Measured: BBPL on a 3×3 grid (3 labels, TRW counting
#: numbers, 8 blocks, 30 samples) meets ``gtol=1e-6`` after 930 rounds (7440 steps), 1.2e-4
#: (relative) from full BP's optimum; the former default of 1000 steps stopped 0.34 away.
DEFAULT_MAX_ROUNDS = 20000


class FitNotConvergedWarning(UserWarning):
    """:func:`fit` used its whole default budget without meeting ``gtol`` / ``target``."""


@dataclass
class FitResult:
    """Result of :func:`fit`.

    Attributes:
        weights: ``[P]`` the learned flat weights.
        mrf: the learned :class:`crfkit.GraphMRF` (per-entry learning), else ``None``.
        model: the learned :class:`FeatureCRF` (templated / conditional learning), else ``None``.
        history: one dict per evaluation: ``step``, ``seconds`` (learner time, evaluation
            excluded), ``objective``, ``grad_norm`` (of the step's (approximate) gradient),
            ``distance`` (‖w − reference‖ / ‖reference‖, when a reference is given).
        converged: whether a stopping tolerance (``gtol`` or ``target``) was met.
        steps: gradient steps taken.
        seconds: learner time.
    """

    weights: torch.Tensor
    mrf: GraphMRF | None
    model: FeatureCRF | None
    history: list = field(default_factory=list)
    converged: bool = False
    steps: int = 0
    seconds: float = 0.0

    def history_columns(self) -> dict:
        keys = ["step", "seconds", "objective", "grad_norm", "distance"]
        return {k: [row.get(k) for row in self.history] for k in keys}


class _Example:
    """One instance's learning state: parametrisation, BP engines, statistics."""

    def __init__(
        self,
        params,
        edges,
        labels,
        c_node,
        c_edge,
        L,
        dtype,
        blocks,
        grid_shape,
        temperature,
        damping,
    ):
        self.params = params
        self.graph = CompiledGraph(edges, params.N)
        self.M = int(labels.shape[0])
        self.L = L
        self.c = (c_node, c_edge)
        self.dtype = dtype
        self.damping = damping
        # empirical statistics Σ_m F^T y_m
        oh = torch.nn.functional.one_hot(labels, L).to(dtype)  # [M, N, L]
        yu = oh.sum(0)
        e = edges
        yp = torch.einsum("mea,mec->eac", oh[:, e[:, 0]], oh[:, e[:, 1]])
        self.yhat = params.grad(yu, yp)
        self.bp = ConvexBP(self.graph, c_node, c_edge, num_labels=L, damping=damping, dtype=dtype)
        self.eval_bp = ConvexBP(
            self.graph, c_node, c_edge, num_labels=L, damping=damping, dtype=dtype
        )
        self.block_nodes = make_blocks(params.N, blocks, grid_shape) if blocks is not None else None
        self.blocks = None
        self.g = None  # F^T b_stored
        self.bu = self.bpw = None

    def set_all(self, bp, w):
        bp.set_potentials(self.params.unary(w)[None], self.params.pairwise(w)[None])

    def full_grad(self, bp) -> torch.Tensor:
        bu, bpw = bp.beliefs()
        self.bu, self.bpw = bu[0], bpw[0]
        self.g = self.params.grad(self.bu, self.bpw)
        return self.g

    def init_blocks(self, w):
        self.blocks = [self.graph.block(b) for b in self.block_nodes]
        self.set_all(self.bp, w)
        self.full_grad(self.bp)
        self.bu, self.bpw = self.bu.clone(), self.bpw.clone()

    def block_step(self, s: int, w, tol: float, max_iters: int):
        blk = self.blocks[s]
        p = self.params
        self.bp.update_potentials(
            blk.region, p.unary(w, blk.region)[None], blk.edges, p.pairwise(w, blk.edges)[None]
        )
        conv, it, res = self.bp.run_block(blk, tol=tol, max_iters=max_iters)
        nu, npw = self.bp.block_beliefs(blk)
        nu, npw = nu[0], npw[0]
        p.grad(nu - self.bu[blk.nodes], npw - self.bpw[blk.edges], blk.nodes, blk.edges, out=self.g)
        self.bu[blk.nodes] = nu
        self.bpw[blk.edges] = npw
        return conv, it


def _prepare(mrf_or_model, data, counting, blocks, temperature, damping):
    """Build the parametrisation and the list of examples; returns (examples, w0, kind, template)."""
    if isinstance(mrf_or_model, GraphMRF):
        mrf = mrf_or_model
        if mrf.batched:
            raise CRFValueError(
                f"expected an unbatched GraphMRF (unary [N, L]) to learn, got a batch of {mrf.batch_size}"
            )
        samples = data
        if not isinstance(samples, torch.Tensor):
            raise CRFTypeError(
                f"expected samples to be a torch.Tensor of shape [M, N], got {type(samples).__name__}"
            )
        check_tensor(samples, "samples", "M N", {"N": mrf.num_nodes}, integer=True)
        if samples.shape[0] == 0:
            raise CRFValueError(
                f"expected at least one sample, got samples of shape {fmt_shape(samples.shape)}"
            )
        check_labels(samples, "samples", mrf.num_labels)
        dtype = mrf.unary.dtype
        params = TableParams(mrf.num_nodes, mrf.edges, mrf.num_labels)
        w0 = torch.cat(
            [mrf.unary.detach().flatten(), mrf.edge_tables().detach().to(dtype).flatten()]
        ).clone()
        items = [(params, mrf.edges, samples.long(), None)]
        kind, L = "table", mrf.num_labels
    elif isinstance(mrf_or_model, FeatureCRF):
        model = mrf_or_model
        if isinstance(data, LearningInstance):
            data = [data]
        if not isinstance(data, (list, tuple)):
            raise CRFTypeError(
                f"expected a list of crfkit.LearningInstance with a FeatureCRF, got {type(data).__name__}"
            )
        if len(data) == 0:
            raise CRFValueError("expected a non-empty data set, got no instances")
        items = []
        for k, inst in enumerate(data):
            if not isinstance(inst, LearningInstance):
                raise CRFTypeError(
                    f"expected data[{k}] to be a crfkit.LearningInstance, got {type(inst).__name__}"
                )
            inst.validate(model.num_labels, model.unary_dim, model.pairwise_dim)
            items.append(
                (FeatureParams(inst, model), inst.edges.long(), inst.labels, inst.grid_shape)
            )
        dtype = model.unary_weights.dtype
        w0 = model.weights().detach().clone()
        kind, L = "feature", model.num_labels
    else:
        raise CRFTypeError(
            f"expected a crfkit.GraphMRF or crfkit.learning.FeatureCRF, got {type(mrf_or_model).__name__}"
        )
    examples = []
    for params, edges, labels, grid_shape in items:
        g = CompiledGraph(edges, params.N)
        if isinstance(counting, str):
            if counting not in ("bethe", "trbp"):
                raise CRFValueError(
                    f"expected counting 'bethe', 'trbp' or (c_node, c_edge), got {counting!r}"
                )
            cn, ce = counting_numbers(g, counting)
        else:
            cn, ce = counting_numbers(g, "convex", counting)
        examples.append(
            _Example(
                params, edges, labels, cn, ce, L, dtype, blocks, grid_shape, temperature, damping
            )
        )
    return examples, w0, kind


class VariationalObjective:
    """``J(w)`` and ``∇J(w)`` over a data set, with convex BP run to ``tol`` (warm-started).

    Build with :meth:`from_data` (same arguments as :func:`fit`).  ``value_and_grad(w [P])``
    returns ``(float, [P])``.  Distributed runs sum over ranks (``torch.distributed``).
    """

    def __init__(
        self, examples, l2: float, tol: float = 1e-8, max_iters: int = 5000, dist: bool = False
    ):
        self.examples = examples
        self.l2 = float(l2)
        self.tol, self.max_iters = tol, max_iters
        self.dist = dist
        ytot = sum(ex.yhat for ex in examples)
        mtot = torch.tensor(
            float(sum(ex.M for ex in examples)), dtype=ytot.dtype, device=ytot.device
        )
        if dist:
            import torch.distributed as tdist

            tdist.all_reduce(ytot)
            tdist.all_reduce(mtot)
        self.yhat = ytot
        self.M = float(mtot)

    @classmethod
    def from_data(
        cls,
        mrf_or_model,
        data,
        *,
        counting="trbp",
        l2: float = 1e-2,
        tol: float = 1e-8,
        max_iters: int = 5000,
        damping: float = 0.0,
    ):
        examples, w0, _ = _prepare(mrf_or_model, data, counting, None, 1.0, damping)
        obj = cls(examples, l2, tol, max_iters)
        obj.w0 = w0
        return obj

    def _allreduce(self, x):
        if self.dist:
            import torch.distributed as tdist

            tdist.all_reduce(x)
        return x

    def value_and_grad(self, w: torch.Tensor, bps=None) -> tuple[float, torch.Tensor]:
        a = torch.zeros((), dtype=w.dtype, device=w.device)
        g = torch.zeros_like(w)
        for ex in self.examples:
            bp = ex.eval_bp
            ex.set_all(bp, w)
            bp.run(tol=self.tol, max_iters=self.max_iters)
            a = a + ex.M * bp.free_energy()[0]
            bu, bpw = bp.beliefs()
            ex.params.grad(bu[0], bpw[0], out=g, alpha=float(ex.M))
        packed = self._allreduce(torch.cat([a[None], g]))
        a, g = packed[0], packed[1:]
        value = (float(a) - float(w @ self.yhat)) / self.M + 0.5 * self.l2 * float(w @ w)
        grad = (g - self.yhat) / self.M + self.l2 * w
        return value, grad

    def value(self, w: torch.Tensor) -> float:
        return self.value_and_grad(w)[0]


def _real(value, name: str, low: float, *, strict: bool = False, optional: bool = False):
    """``value`` as a finite float ``>= low`` (``> low`` when ``strict``); ``None`` passes when
    ``optional``."""
    if value is None and optional:
        return None
    v = check_number(value, name)
    ok = math.isfinite(v) and (v > low if strict else v >= low)
    if not ok:
        if low == -math.inf:
            bound = "to be a finite number"
        else:
            bound = f"> {low:g} and finite" if strict else f">= {low:g} and finite"
        raise CRFValueError(f"expected {name} {bound}{' (or None)' if optional else ''}, got {value!r}")
    return v


def _warn_not_converged(method: str, steps: int, gtol: float, grad_norm: float, distance) -> None:
    far = f", relative distance to the reference {distance:.3g}" if distance is not None else ""
    warnings.warn(
        f"fit(method={method!r}) stopped at its default budget ({steps} steps) without convergence: "
        f"gradient max-norm {grad_norm:.3g} > gtol={gtol:g}{far}; pass max_steps, or a larger lr / gtol",
        FitNotConvergedWarning,
        stacklevel=3,
    )


def _default_lr(examples, l2, dist) -> float:
    tot = sum(ex.M for ex in examples)
    lip = sum(ex.M * ex.params.feature_norm_sq() for ex in examples)
    dev = examples[0].yhat.device
    t = torch.tensor([lip, float(tot)], dtype=torch.float64, device=dev)
    if dist:
        import torch.distributed as tdist

        tdist.all_reduce(t)
    # measured on the paper's synthetic grids: steps up to ~16x this are stable; 8x leaves margin
    return 8.0 / (float(t[0] / t[1]) + l2)


@with_solver_threads
def fit(
    mrf_or_model,
    samples,
    method: str = "bbpl",
    counting="trbp",
    l2: float = 1e-2,
    *,
    lr: float | None = None,
    optimizer=None,
    optimizer_kwargs: dict | None = None,
    max_steps: int | None = None,
    max_seconds: float | None = None,
    gtol: float = 1e-6,
    blocks=8,
    block_order: str = "cyclic",
    inner_tol: float = 1e-6,
    inner_max_iters: int = 1000,
    damping: float = 0.0,
    eval_every: int | None = None,
    eval_seconds: float | None = None,
    eval_tol: float = 1e-8,
    reference: torch.Tensor | None = None,
    target: float | None = None,
    target_rtol: float = 1e-4,
    seed: int = 0,
    distributed: bool = False,
    progress: bool = False,
) -> FitResult:
    """Learn potentials by the variational likelihood (``docs/maths.md``, "Learning").

    Args:
        mrf_or_model: a :class:`crfkit.GraphMRF` (one parameter per potential entry; its potentials
            are the starting point) or a :class:`crfkit.learning.FeatureCRF` (templated /
            conditional: features × weights; its weights are the starting point).
        samples: with a GraphMRF, observed labellings ``[M, N]`` long; with a FeatureCRF, a list
            of :class:`crfkit.LearningInstance` (each its own graph, features and labellings).
        method: ``"full"`` | ``"inner_dual"`` | ``"bbpl"``.
        counting: ``"trbp"`` | ``"bethe"`` | ``(c_node [N], c_edge [E])`` (one graph only).
        l2: ``κ``, the L2 weight.
        lr: step size of plain gradient descent (default ``8 / (‖F‖₂² + κ)``, from the spectral
            norm of the feature matrices: the curvature of ``A`` in ``θ`` is a covariance of
            indicators, well below 1 per node), divided by the number of blocks ``S`` for BBPL
            (larger steps were seen to cycle: the other blocks' beliefs are stale); ignored when
            ``optimizer`` is given.
        optimizer: a ``torch.optim.Optimizer`` class (e.g. ``torch.optim.Adam``), built with
            ``optimizer_kwargs`` over the flat weights.
        max_steps, max_seconds: budget (learner time, evaluation excluded). ``max_steps=None``
            (default): run until ``gtol`` (or ``target``) is met, at most ``DEFAULT_MAX_ROUNDS``
            rounds over the blocks (steps for ``full`` / ``inner_dual``); stopping there without
            convergence warns (:class:`FitNotConvergedWarning`) with the gradient norm (and the
            distance to ``reference``) reached. An explicit ``max_steps`` stops silently
            (``FitResult.converged`` says whether it converged).
        gtol: stop when the (approximate) gradient's max-norm is below ``gtol``
            (for BBPL checked after each round over the blocks).
        blocks: BBPL blocks: an int (square tiles when an instance has ``grid_shape``, else ranges
            of node indices) or a list of node index tensors (one graph).
        block_order: ``"cyclic"`` or ``"random"``.
        inner_tol, inner_max_iters: convergence of full / block inference per step.
        eval_every: evaluate the objective every this many steps (default: every step for
            ``full`` and ``inner_dual``, every round over the blocks for ``bbpl``).
        eval_seconds: instead, evaluate after each this many seconds of learner time.
        eval_tol: tolerance of the evaluation's convex BP.
        reference: ``[P]`` reference optimum: ``distance`` in the history.
        target: stop when an evaluated objective is within ``target_rtol`` (relative) of it.
        seed: for ``block_order="random"``.
        distributed: sum over ``torch.distributed`` ranks (each rank passes its own instances).
        progress: show a tqdm bar.

    Returns:
        :class:`FitResult`.

    Long because it documents its 24 arguments; the work is in ``_check_fit_args`` and ``_FitRun``.
    """
    a = _check_fit_args(
        method=method, l2=l2, lr=lr, optimizer=optimizer, optimizer_kwargs=optimizer_kwargs,
        max_steps=max_steps, max_seconds=max_seconds, gtol=gtol, blocks=blocks, block_order=block_order,
        inner_tol=inner_tol, inner_max_iters=inner_max_iters, eval_every=eval_every,
        eval_seconds=eval_seconds, eval_tol=eval_tol, target=target, target_rtol=target_rtol, seed=seed,
        distributed=distributed, progress=progress,
    )
    examples, w0, kind = _prepare(
        mrf_or_model, samples, counting, blocks if method == "bbpl" else None, 1.0, damping
    )
    run = _FitRun(examples, w0, a, reference)
    run.loop()
    res_mrf = res_model = None
    if kind == "table":
        p = examples[0].params
        res_mrf = GraphMRF(p.unary(run.w).clone(), mrf_or_model.edges, p.pairwise(run.w).clone())
    else:
        res_model = mrf_or_model.with_weights(run.w)
    return FitResult(run.w, res_mrf, res_model, run.history, run.converged, run.step, run.clock)


def _check_fit_args(**kw) -> SimpleNamespace:
    """:func:`fit`'s arguments (other than the model, data, counting and damping) checked and
    normalised, as attributes."""
    a = SimpleNamespace(**kw)
    if a.method not in METHODS:
        raise CRFValueError(f"expected method in {METHODS}, got {a.method!r}")
    if a.block_order not in ("cyclic", "random"):
        raise CRFValueError(f"expected block_order 'cyclic' or 'random', got {a.block_order!r}")
    for name in ("l2", "gtol", "inner_tol", "eval_tol", "target_rtol"):
        setattr(a, name, _real(getattr(a, name), name, 0.0))
    a.lr = _real(a.lr, "lr", 0.0, strict=True, optional=True)
    a.max_seconds = _real(a.max_seconds, "max_seconds", 0.0, optional=True)
    a.eval_seconds = _real(a.eval_seconds, "eval_seconds", 0.0, strict=True, optional=True)
    a.target = _real(a.target, "target", -math.inf, optional=True)
    a.inner_max_iters, a.seed = check_int(a.inner_max_iters, "inner_max_iters", 1), check_int(a.seed, "seed", 0)
    if a.eval_every is not None:
        a.eval_every = check_int(a.eval_every, "eval_every", 1)
    if a.max_steps is not None:
        a.max_steps = check_int(a.max_steps, "max_steps", 0)
    if isinstance(a.blocks, (bool, float)):
        raise CRFTypeError(f"expected blocks to be an integer >= 1 or a list of node index tensors, got {a.blocks!r}")
    if a.optimizer is not None and not callable(a.optimizer):
        raise CRFTypeError(f"expected optimizer to be a torch.optim.Optimizer class (or None), got {a.optimizer!r}")
    if a.optimizer_kwargs is not None and not isinstance(a.optimizer_kwargs, dict):
        raise CRFTypeError(f"expected optimizer_kwargs to be a dict (or None), got {a.optimizer_kwargs!r}")
    for name in ("distributed", "progress"):
        if not isinstance(getattr(a, name), bool):
            raise CRFTypeError(f"expected {name} to be True or False, got {getattr(a, name)!r}")
    if a.distributed and a.eval_seconds is not None:
        raise CRFValueError(
            "expected eval_every (steps) with distributed=True, got eval_seconds (clocks differ by rank)"
        )
    return a


class _FitRun:
    """The state of one :func:`fit` run: weights, BBPL schedule, step size, clock and history."""

    def __init__(self, examples, w0: torch.Tensor, a: SimpleNamespace, reference):
        self.examples, self.a = examples, a
        self.obj = VariationalObjective(examples, a.l2, tol=a.eval_tol, dist=a.distributed)
        self.w = w0.clone()
        if reference is not None:
            check_tensor(reference, "reference", "P", {"P": self.w.numel()}, floating=True)
            check_finite(reference, "reference")
            reference = reference.to(self.w.dtype)
        self.reference = reference
        if a.optimizer is not None:
            self.wp = torch.nn.Parameter(self.w.clone())
            self.opt = a.optimizer([self.wp], **(a.optimizer_kwargs or {}))
        self.schedule = []  # BBPL: (example, block) pairs
        if a.method == "bbpl":
            for k, ex in enumerate(examples):
                ex.init_blocks(self.w)
                self.schedule += [(k, s) for s in range(len(ex.blocks))]
        self.step_size = self._step_size() if a.optimizer is None else None
        self.round_len = self._round_len()
        self.eval_every = a.eval_every if a.eval_every is not None else self.round_len
        self.max_steps = a.max_steps if a.max_steps is not None else DEFAULT_MAX_ROUNDS * self.round_len
        self.rng = random.Random(a.seed)
        self.history: list[dict] = []
        self.clock, self.next_eval_t, self.last_grad_norm = 0.0, 0.0, float("nan")
        self.step = self.pos = 0
        self.converged = False

    def _step_size(self) -> float:
        a = self.a
        if a.lr is not None:
            return a.lr
        size = _default_lr(self.examples, a.l2, a.distributed)
        if a.method == "bbpl":
            # stale beliefs of the other blocks: steps above ~lr/S were seen to cycle
            size /= max(len(ex.blocks) for ex in self.examples)
        if not (0 < size < math.inf):
            raise CRFValueError(f"expected a finite default lr > 0 (from l2={a.l2!r} and the features), got {size!r}")
        return size

    def _round_len(self) -> int:
        n = len(self.schedule) if self.a.method == "bbpl" else 1
        if self.a.distributed:
            import torch.distributed as tdist

            t = torch.tensor([n], dtype=torch.long, device=self.w.device)
            tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
            n = int(t)
        return n

    def evaluate(self) -> float:
        value, _ = self.obj.value_and_grad(self.w)
        row = {"step": self.step, "seconds": self.clock, "objective": value, "grad_norm": self.last_grad_norm}
        if self.reference is not None:
            row["distance"] = float((self.w - self.reference).norm() / self.reference.norm().clamp_min(1e-30))
        self.history.append(row)
        return value

    def reached(self, value: float) -> bool:
        t = self.a.target
        return t is not None and abs(value - t) <= self.a.target_rtol * max(abs(t), 1e-12)

    def out_of_time(self) -> bool:
        if self.a.max_seconds is None:
            return False
        clock = self.clock
        if self.a.distributed:  # every rank stops at the same step
            import torch.distributed as tdist

            t = torch.tensor([clock], dtype=torch.float64, device=self.w.device)
            tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
            clock = float(t)
        return clock >= self.a.max_seconds

    def gradient_step(self) -> None:
        """One step: refresh the beliefs (one block, or every instance), then move the weights."""
        a, w = self.a, self.w
        if a.method == "bbpl":
            n = len(self.schedule)
            k, s = self.schedule[self.rng.randrange(n) if a.block_order == "random" else self.pos % n]
            self.pos += 1
            self.examples[k].block_step(s, w, a.inner_tol, a.inner_max_iters)
        else:
            for ex in self.examples:
                ex.set_all(ex.bp, w)
                if a.method == "full":
                    ex.bp.run(tol=a.inner_tol, max_iters=a.inner_max_iters)
                else:
                    ex.bp.sweep()
                ex.full_grad(ex.bp)
        gsum = torch.zeros_like(w)
        for ex in self.examples:
            gsum.add_(ex.g, alpha=float(ex.M))
        self.obj._allreduce(gsum)
        grad = (gsum - self.obj.yhat) / self.obj.M + a.l2 * w
        self.last_grad_norm = float(grad.abs().max())
        if a.optimizer is not None:
            self.wp.grad = grad.to(self.wp.dtype)
            self.opt.step()
            self.w = self.wp.detach().clone()
        else:
            self.w = w - self.step_size * grad
        self.step += 1

    def loop(self) -> None:
        """Steps until converged (``gtol`` after a round, or ``target``) or out of budget."""
        a = self.a
        self.converged = self.reached(self.evaluate())
        bar = None
        if a.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.max_steps, desc=f"fit[{a.method}]", leave=False)
        while not self.converged and self.step < self.max_steps and not self.out_of_time():
            t0 = time.perf_counter()
            self.gradient_step()
            self.clock += time.perf_counter() - t0
            if bar is not None:
                bar.update(1)
            if self.step % self.round_len == 0 and self.last_grad_norm < a.gtol:
                self.converged = True
            if a.eval_seconds is not None:
                due = self.clock >= self.next_eval_t
            else:
                due = self.step % self.eval_every == 0
            if due or self.converged:
                if a.eval_seconds is not None:
                    self.next_eval_t = self.clock + a.eval_seconds
                if self.reached(self.evaluate()):
                    self.converged = True
        if bar is not None:
            bar.close()
        if not self.history or self.history[-1]["step"] != self.step:
            self.evaluate()
        if a.max_steps is None and not self.converged and self.step >= self.max_steps:
            _warn_not_converged(a.method, self.step, a.gtol, self.last_grad_norm, self.history[-1].get("distance"))
