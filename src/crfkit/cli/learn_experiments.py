"""The BBPL paper's learning experiments as functions, run by ``crfkit learn`` and
``benchmarks/bench_learning.py`` (experiment code, kept out of the library's ``learning`` package).

* :func:`reference_optimum` — full convex-BP learning run to convergence (L-BFGS on the exact
  variational objective; every evaluation runs convex BP to a tight tolerance).
* :func:`compare_learners` — full / inner-dual / BBPL from the same start, objective against
  learner time, time to reach the reference objective within ``rtol``.
* :func:`block_size_sensitivity` — BBPL's time to the reference for several numbers of blocks.
* :func:`bbpl_step_time` — seconds per BBPL step at a fixed block size on graphs of growing size.

The synthetic problems themselves are :func:`crfkit.data.synthetic.synthetic_problem`.
"""

from __future__ import annotations

import math

import torch

from ..data.synthetic import synthetic_problem
from ..learning.blocks import make_blocks
from ..learning.learners import VariationalObjective, _default_lr, _prepare, fit
from ..learning.models import FeatureCRF

__all__ = [
    "synthetic_problem",
    "reference_optimum",
    "compare_learners",
    "block_size_sensitivity",
    "bbpl_step_time",
    "time_to_target",
]


def reference_optimum(
    model: FeatureCRF,
    instances,
    *,
    counting="trbp",
    l2: float = 1e-2,
    max_iter: int = 300,
    tol: float = 1e-8,
    gtol: float = 1e-7,
):
    """``(w*, J*)``: the variational-likelihood optimum by L-BFGS with full convex BP."""
    obj = VariationalObjective.from_data(model, instances, counting=counting, l2=l2, tol=tol)
    w = torch.nn.Parameter(obj.w0.clone())
    opt = torch.optim.LBFGS(
        [w],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=gtol,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        v, g = obj.value_and_grad(w.detach())
        w.grad = g
        return torch.tensor(v)

    opt.step(closure)
    v, g = obj.value_and_grad(w.detach())
    return w.detach().clone(), v


def time_to_target(history, target: float, rtol: float = 1e-4):
    """First learner time at which the evaluated objective is within ``rtol`` of ``target`` (or None)."""
    for row in history:
        if abs(row["objective"] - target) <= rtol * max(abs(target), 1e-12):
            return row["seconds"]
    return None


def compare_learners(
    instance,
    model: FeatureCRF,
    *,
    num_blocks: int = 16,
    counting="trbp",
    l2: float = 1e-2,
    max_seconds: float = 60.0,
    rtol: float = 1e-4,
    reference=None,
    methods=("bbpl", "inner_dual", "full"),
    evals: int = 60,
    lr: float | None = None,
    damping: float = 0.0,
    eval_tol: float = 1e-8,
    bbpl_lr_scales=(),
    progress: bool = False,
):
    """Run the learners from ``model``'s weights; returns a dict with the reference and, per
    method, the history and the time to reach the reference objective within ``rtol``.

    ``bbpl_lr_scales``: extra BBPL runs with step ``scale × `` the full-learning default step
    (recorded as ``"bbpl_lr<scale>"``; the default BBPL step is that divided by the blocks)."""
    if reference is None:
        reference = reference_optimum(model, [instance], counting=counting, l2=l2)
    w_star, j_star = reference
    out = {"reference_objective": j_star, "rtol": rtol, "methods": {}}
    runs = [(m, m, lr) for m in methods]
    if bbpl_lr_scales:
        ex, _, _ = _prepare(model, [instance], counting, None, 1.0, 0.0)
        lr0 = _default_lr(ex, l2, False) if lr is None else lr
        runs += [(f"bbpl_lr{sc:g}", "bbpl", lr0 * sc) for sc in bbpl_lr_scales]
    for name, method, run_lr in runs:
        res = fit(
            model,
            [instance],
            method=method,
            counting=counting,
            l2=l2,
            lr=run_lr,
            blocks=num_blocks,
            max_steps=10**9,
            max_seconds=max_seconds,
            gtol=0.0,
            eval_seconds=max_seconds / evals,
            reference=w_star,
            target=j_star,
            target_rtol=rtol,
            damping=damping,
            eval_tol=eval_tol,
            progress=progress,
        )
        out["methods"][name] = {
            "history": res.history,
            "steps": res.steps,
            "seconds": res.seconds,
            "time_to_reference": time_to_target(res.history, j_star, rtol),
            "final_objective": res.history[-1]["objective"],
            "final_distance": res.history[-1].get("distance"),
        }
    return out


def block_size_sensitivity(
    instance,
    model: FeatureCRF,
    block_counts,
    *,
    counting="trbp",
    l2: float = 1e-2,
    max_seconds: float = 60.0,
    rtol: float = 1e-4,
    reference=None,
    evals: int = 60,
    damping: float = 0.0,
    lr_scale: float | None = None,
):
    """BBPL's time to the reference objective for each number of blocks in ``block_counts``."""
    if reference is None:
        reference = reference_optimum(model, [instance], counting=counting, l2=l2)
    w_star, j_star = reference
    lr = None
    if (
        lr_scale is not None
    ):  # one step size for every block count: lr_scale x the full-learning default
        ex, _, _ = _prepare(model, [instance], counting, None, 1.0, 0.0)
        lr = _default_lr(ex, l2, False) * lr_scale
    rows = []
    for s in block_counts:
        res = fit(
            model,
            [instance],
            method="bbpl",
            counting=counting,
            l2=l2,
            blocks=int(s),
            max_steps=10**9,
            max_seconds=max_seconds,
            gtol=0.0,
            eval_seconds=max_seconds / evals,
            reference=w_star,
            target=j_star,
            target_rtol=rtol,
            damping=damping,
            lr=lr,
        )
        rows.append(
            {
                "blocks": int(s),
                "block_nodes": math.ceil(instance.num_nodes / int(s)),
                "steps": res.steps,
                "seconds": res.seconds,
                "time_to_reference": time_to_target(res.history, j_star, rtol),
                "final_objective": res.history[-1]["objective"],
                "history": res.history,
            }
        )
    return {"reference_objective": j_star, "rows": rows}


def bbpl_step_time(
    sizes, *, graph: str = "grid", block_nodes: int = 256, steps: int = 50, seed: int = 0
):
    """Seconds per BBPL step with blocks of about ``block_nodes`` nodes on each graph size."""
    rows = []
    for size in sizes:
        inst, _ = synthetic_problem(graph, size, seed=seed, burn_in=5, thin=1)
        n = inst.num_nodes
        model = FeatureCRF(8, 20, 10)
        nblocks = max(1, round(n / block_nodes))
        res = fit(
            model,
            [inst],
            method="bbpl",
            blocks=nblocks,
            block_order="random",
            max_steps=steps,
            gtol=0.0,
            eval_every=10**9,
            seed=seed,
        )
        # block size actually used
        bl = make_blocks(n, nblocks, inst.grid_shape)
        rows.append(
            {
                "graph": graph,
                "size": size,
                "nodes": n,
                "blocks": len(bl),
                "mean_block_nodes": sum(len(b) for b in bl) / len(bl),
                "seconds_per_step": res.seconds / max(1, res.steps),
            }
        )
    return rows
