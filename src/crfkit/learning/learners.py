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
        bound = "to be a finite number" if low == -math.inf else (f"> {low:g} and finite" if strict else f">= {low:g} and finite")
        raise CRFValueError(f"expected {name} {bound}{' (or None)' if optional else ''}, got {value!r}")
    return v


def _check_optimizer(optimizer, optimizer_kwargs) -> None:
    if optimizer is not None and not callable(optimizer):
        raise CRFTypeError(f"expected optimizer to be a torch.optim.Optimizer class (or None), got {optimizer!r}")
    if optimizer_kwargs is not None and not isinstance(optimizer_kwargs, dict):
        raise CRFTypeError(f"expected optimizer_kwargs to be a dict (or None), got {optimizer_kwargs!r}")


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
    """
    if method not in METHODS:
        raise CRFValueError(f"expected method in {METHODS}, got {method!r}")
    if block_order not in ("cyclic", "random"):
        raise CRFValueError(f"expected block_order 'cyclic' or 'random', got {block_order!r}")
    l2, gtol, inner_tol, eval_tol, target_rtol = (
        _real(l2, "l2", 0.0), _real(gtol, "gtol", 0.0), _real(inner_tol, "inner_tol", 0.0),
        _real(eval_tol, "eval_tol", 0.0), _real(target_rtol, "target_rtol", 0.0),
    )
    lr, max_seconds, eval_seconds = (
        _real(lr, "lr", 0.0, strict=True, optional=True), _real(max_seconds, "max_seconds", 0.0, optional=True),
        _real(eval_seconds, "eval_seconds", 0.0, strict=True, optional=True),
    )
    target = _real(target, "target", -math.inf, optional=True)
    inner_max_iters, seed = check_int(inner_max_iters, "inner_max_iters", 1), check_int(seed, "seed", 0)
    if eval_every is not None:
        eval_every = check_int(eval_every, "eval_every", 1)
    if isinstance(blocks, (bool, float)):
        raise CRFTypeError(f"expected blocks to be an integer >= 1 or a list of node index tensors, got {blocks!r}")
    _check_optimizer(optimizer, optimizer_kwargs)
    for name, flag in (("distributed", distributed), ("progress", progress)):
        if not isinstance(flag, bool):
            raise CRFTypeError(f"expected {name} to be True or False, got {flag!r}")
    budget_by_convergence = max_steps is None
    if not budget_by_convergence:
        max_steps = check_int(max_steps, "max_steps", 0)
    examples, w0, kind = _prepare(
        mrf_or_model, samples, counting, blocks if method == "bbpl" else None, 1.0, damping
    )
    obj = VariationalObjective(examples, l2, tol=eval_tol, dist=distributed)
    w = w0.clone()
    if reference is not None:
        check_tensor(reference, "reference", "P", {"P": w.numel()}, floating=True)
        check_finite(reference, "reference")
        reference = reference.to(w.dtype)
    if optimizer is not None:
        wp = torch.nn.Parameter(w.clone())
        opt = optimizer([wp], **(optimizer_kwargs or {}))
    # BBPL schedule over (example, block)
    schedule = []
    if method == "bbpl":
        for k, ex in enumerate(examples):
            ex.init_blocks(w)
            schedule += [(k, s) for s in range(len(ex.blocks))]
    if optimizer is None:
        if lr is None:
            step_size = _default_lr(examples, l2, distributed)
            if method == "bbpl":
                # stale beliefs of the other blocks: steps above ~lr/S were seen to cycle
                step_size /= max(len(ex.blocks) for ex in examples)
        else:
            step_size = float(lr)
        if not (0 < step_size < math.inf):  # the default from l2 and the features
            raise CRFValueError(f"expected a finite default lr > 0 (from l2={l2!r} and the features), got {step_size!r}")
    round_len = len(schedule) if method == "bbpl" else 1
    if distributed:
        import torch.distributed as tdist

        if eval_seconds is not None:
            raise CRFValueError(
                "expected eval_every (steps) with distributed=True, got eval_seconds (clocks differ by rank)"
            )
        t = torch.tensor([round_len], dtype=torch.long, device=w.device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        round_len = int(t)
    if eval_every is None:
        eval_every = round_len
    if budget_by_convergence:
        max_steps = DEFAULT_MAX_ROUNDS * round_len
    rng = random.Random(seed)
    history: list[dict] = []
    clock = 0.0
    last_grad_norm = float("nan")
    next_eval_t = 0.0

    def evaluate(step):
        value, _ = obj.value_and_grad(w)
        row = {"step": step, "seconds": clock, "objective": value, "grad_norm": last_grad_norm}
        if reference is not None:
            row["distance"] = float((w - reference).norm() / reference.norm().clamp_min(1e-30))
        history.append(row)
        return value

    def reached(value):
        return target is not None and abs(value - target) <= target_rtol * max(abs(target), 1e-12)

    converged = reached(evaluate(0))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_steps, desc=f"fit[{method}]", leave=False)
    step = 0
    pos = 0

    def out_of_time():
        if max_seconds is None:
            return False
        if distributed:  # every rank stops at the same step
            import torch.distributed as tdist

            t = torch.tensor([clock], dtype=torch.float64, device=w.device)
            tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
            return float(t) >= max_seconds
        return clock >= max_seconds

    while not converged and step < max_steps and not out_of_time():
        t0 = time.perf_counter()
        if method == "bbpl":
            if block_order == "random":
                k, s = schedule[rng.randrange(len(schedule))]
            else:
                k, s = schedule[pos % len(schedule)]
            pos += 1
            examples[k].block_step(s, w, inner_tol, inner_max_iters)
        else:
            for ex in examples:
                ex.set_all(ex.bp, w)
                if method == "full":
                    ex.bp.run(tol=inner_tol, max_iters=inner_max_iters)
                else:
                    ex.bp.sweep()
                ex.full_grad(ex.bp)
        gsum = torch.zeros_like(w)
        for ex in examples:
            gsum.add_(ex.g, alpha=float(ex.M))
        obj._allreduce(gsum)
        grad = (gsum - obj.yhat) / obj.M + l2 * w
        last_grad_norm = float(grad.abs().max())
        if optimizer is not None:
            wp.grad = grad.to(wp.dtype)
            opt.step()
            w = wp.detach().clone()
        else:
            w = w - step_size * grad
        step += 1
        clock += time.perf_counter() - t0
        if bar is not None:
            bar.update(1)
        end_of_round = step % round_len == 0
        if end_of_round and last_grad_norm < gtol:
            converged = True
        do_eval = (eval_seconds is not None and clock >= next_eval_t) or (
            eval_seconds is None and step % eval_every == 0
        )
        if do_eval or converged:
            if eval_seconds is not None:
                next_eval_t = clock + eval_seconds
            if reached(evaluate(step)):
                converged = True
    if bar is not None:
        bar.close()
    if not history or history[-1]["step"] != step:
        evaluate(step)
    if budget_by_convergence and not converged and step >= max_steps:
        _warn_not_converged(method, step, gtol, last_grad_norm, history[-1].get("distance"))
    res_mrf = res_model = None
    if kind == "table":
        p = examples[0].params
        res_mrf = GraphMRF(p.unary(w).clone(), mrf_or_model.edges, p.pairwise(w).clone())
    else:
        res_model = mrf_or_model.with_weights(w)
    return FitResult(w, res_mrf, res_model, history, converged, step, clock)
