"""``crfkit solve MODEL.uai --task MAP|MAR``: solve a UAI model file.

MAP (``method="auto"``, the default): exact variable elimination
(:func:`crfkit.inference.exact.eliminate`, min-fill / min-degree order) when every table it
builds fits in :data:`~crfkit.inference.exact.MAX_TABLE_ENTRIES` and all of them together in
:data:`~crfkit.inference.exact.MAX_TOTAL_ENTRIES` (a few seconds); the labelling is then
optimal (``optimal: true``, gap 0, ``certificate_source: "exact"``).  Otherwise dual
decomposition into chains (:func:`crfkit.solve_map`), then a local search on its labelling
and max-marginals (:func:`crfkit.inference.rounding.improve_labels`) in what is left of
``time_limit`` seconds, stopping at gap 0 (``certificate_source: "dual decomposition"``).
``method="exact"`` insists on elimination (an error when the model is too large);
``method="dd"`` skips it.
Writes the labelling in the competition's ``MAP`` result format, and beside it a JSON with the
score of the labelling, the dual bound (a certificate: no labelling scores more) and the gap.
A labelling that uses a zero factor value is reported (``feasible: false``); a certificate
below the lowest score any feasible labelling can have proves the model infeasible, which is
an error.  The output path is checked for writability before solving.  MAR: convex belief
propagation (TRW by default, :func:`crfkit.inference.convex_bp.marginals`); writes the
``MAR`` result and a JSON with the log-partition estimate (an upper bound for TRW).

Scores are natural logs of products of factor values (``log10`` values are given as well,
the unit of the competitions).
"""


import json
import math
import os
import tempfile
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

__all__ = ["register", "solve_file"]


class Task(str, Enum):
    MAP = "MAP"
    MAR = "MAR"


def _fmt(x: float) -> str:
    return f"{x:.10g}"


MAP_METHODS = ("auto", "exact", "dd")
MAR_METHODS = ("trbp", "bethe", "exact")


def check_writable(out: Path) -> None:
    """Raise a ``ValueError`` now if the result file ``out`` (and ``out.json``) cannot be written."""
    if out.is_dir():
        raise ValueError(f"expected --out to be a file path, got a directory: {out}")
    parent = out.parent if os.fspath(out.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"expected --out in an existing folder, got {out} (no folder {parent})")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"expected --out in a writable folder, got {out} ({parent} is not writable)")
    for p in (out, Path(os.fspath(out) + ".json")):
        if p.exists() and (p.is_dir() or not os.access(p, os.W_OK)):
            raise ValueError(f"expected a writable result file, got {p} (a directory or read-only)")
    try:  # a real write: os.access says yes to root on folders such as /proc
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".write-probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise ValueError(f"expected --out in a writable folder, got {out} ({exc.strerror or exc})") from None


def _feasible_floor(model) -> float | None:
    """The lowest score any feasible labelling can have (sum of each term's smallest allowed entry)."""
    if model.hard_score is None:
        return None
    hard = model.hard_score
    un = model.mrf.unary.detach().double()
    tab = model.mrf.edge_tables().detach().double()
    inf = float("inf")
    lo = un.masked_fill(un <= hard, inf).min(-1).values.sum()
    if tab.shape[0]:
        t = tab.reshape(tab.shape[0], -1)
        lo = lo + t.masked_fill(t <= hard, inf).min(-1).values.sum()
    return float(lo)


def _check_args(task: str, method, dtype: str, time_limit) -> tuple[str, str]:
    """Validate the options before any work; returns ``(task, method)``."""
    task = str(task).upper()
    if task not in ("MAP", "MAR"):
        raise ValueError(f"expected task MAP or MAR, got {task!r}")
    if dtype not in ("float64", "float32"):
        raise ValueError(f"expected dtype float64 or float32, got {dtype!r}")
    allowed = MAP_METHODS if task == "MAP" else MAR_METHODS
    method = allowed[0] if method is None else str(method).lower()
    if method not in allowed:
        raise ValueError(f"expected --method one of {', '.join(allowed)} for task {task}, got {method!r}")
    ok = isinstance(time_limit, (int, float)) and not isinstance(time_limit, bool)
    if not (ok and math.isfinite(time_limit) and time_limit >= 0):
        raise ValueError(f"expected --time-limit a finite number of seconds >= 0, got {time_limit!r}")
    return task, method


def _read_model(model_path: Path, evidence_path, dtype: str):
    """The model with its evidence applied, and the evidence ``{variable: value}``."""
    import torch

    from ..io.uai import apply_evidence, read_evidence, read_uai

    model = read_uai(model_path, dtype=torch.float64 if dtype == "float64" else torch.float32)
    evidence = {}
    if evidence_path is not None:
        evidence = read_evidence(evidence_path, cardinalities=model.cardinalities)
        model = apply_evidence(model, evidence)
    return model, evidence


def solve_file(
    model_path,
    task: str = "MAP",
    *,
    evidence_path=None,
    iters: int = 1000,
    out=None,
    method: str | None = None,
    dtype: str = "float64",
    progress: bool = True,
    time_limit: float = 10.0,
    seed: int = 0,
) -> dict:
    """Solve a UAI file; write the result file and its JSON summary; return the summary.

    Args:
        model_path: the ``.uai`` model. task: ``"MAP"`` or ``"MAR"``.
        evidence_path: an optional ``.evid`` file (observed variables are fixed).
        iters: MAP: the cap on dual-decomposition iterations; MAR: the cap on BP sweeps.
        out: the result file (default: ``MODEL.uai.MAP`` / ``MODEL.uai.MAR`` beside the model);
            the summary goes to ``out + ".json"``.
        method: MAP: ``"auto"`` (default: exact variable elimination when its tables fit in
            :data:`crfkit.inference.exact.MAX_TABLE_ENTRIES`, all of them in ``MAX_TOTAL_ENTRIES``,
            else dual decomposition), ``"exact"``
            (variable elimination; an error when the model is too large) or ``"dd"``; MAR:
            ``"trbp"`` (default), ``"bethe"`` or ``"exact"``.
        time_limit: MAP with dual decomposition: seconds for the whole solve: the solver takes
            at most :data:`DD_SHARE` of it (fewer than ``iters`` iterations if need be), the
            local search the rest (``0``: no limit: ``iters`` iterations, then only the
            deterministic polish).
        seed: seed of the local search.
        dtype: ``"float64"`` (default) or ``"float32"``.
        progress: show a progress bar on stderr.
    """
    task, method = _check_args(task, method, dtype, time_limit)
    model_path = Path(model_path)
    if out is not None and not os.fspath(out).strip():
        raise ValueError(f"expected --out a file path, got {os.fspath(out)!r}")
    out = Path(out) if out is not None else model_path.with_name(model_path.name + "." + task)
    check_writable(out)
    t0 = time.perf_counter()
    model, evidence = _read_model(model_path, evidence_path, dtype)
    mrf = model.mrf
    summary: dict = {
        "task": task,
        "model": os.fspath(model_path),
        "evidence": None if evidence_path is None else os.fspath(evidence_path),
        "observed": len(evidence),
        "variables": mrf.num_nodes,
        "edges": mrf.num_edges,
        "max_cardinality": mrf.num_labels,
        "result_file": os.fspath(out),
        "read_seconds": time.perf_counter() - t0,
    }
    if task == "MAP":
        budget = max(0.0, float(time_limit) - summary["read_seconds"])
        summary.update(_solve_map(model, model_path, out, method, iters, progress, budget, seed))
    else:
        summary.update(_solve_mar(model, out, method, iters, progress))
    from ..io.uai import atomic_write_text

    summary["seconds"] = time.perf_counter() - t0
    json_path = Path(os.fspath(out) + ".json")
    summary["summary_file"] = os.fspath(json_path)
    atomic_write_text(json_path, json.dumps(summary, indent=2) + "\n")
    return summary


def _solve_map(model, model_path, out: Path, method: str, iters: int, progress: bool, budget: float, seed: int):
    """The MAP part of :func:`solve_file`: solve, check feasibility, write the labelling; the summary fields."""
    from ..inference.exact import elimination_order
    from ..io.uai import write_map_result

    mrf = model.mrf
    t1 = time.perf_counter()
    plan = None
    if method == "auto":
        plan = elimination_order(mrf, model.cardinalities)
        method = "dd" if plan is None else "exact"
    if method == "exact":
        labels, rinfo, bound, iterations = _exact_map(model, plan), None, None, 0
    else:
        labels, bound, iterations, rinfo = _dd_map(model, iters, progress, budget, seed)
    score = float(mrf.score(labels)) + model.constant
    bound = score if bound is None else bound + model.constant
    floor = _feasible_floor(model)
    if floor is not None and bound < floor + model.constant - 1e-9 * max(1.0, abs(floor)):
        raise ValueError(
            f"{model_path}: the model is infeasible: the certificate {bound:.10g} is below the lowest score "
            f"{floor + model.constant:.10g} of any labelling that avoids zero factor values"
        )
    gap = max(0.0, bound - score)
    write_map_result(out, labels)
    return {
        "method": method,
        "score": score,
        "dual_bound": bound,
        "certificate_source": "exact" if method == "exact" else "dual decomposition",
        "gap": gap,
        "relative_gap": gap / max(abs(score), 1.0),
        "optimal": method == "exact" or gap <= 1e-9 * max(1.0, abs(bound)),
        "log10_score": score / math.log(10.0),
        "log10_dual_bound": bound / math.log(10.0),
        "feasible": bool(model.is_feasible(labels)),
        "iterations": int(iterations),
        "rounding": rinfo,
        "solve_seconds": time.perf_counter() - t1,
    }


def _solve_mar(model, out: Path, method: str, iters: int, progress: bool) -> dict:
    """The MAR part of :func:`solve_file`: convex BP, write the marginals; the summary fields."""
    from ..inference.convex_bp import marginals
    from ..io.uai import write_mar_result

    t1 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=1, desc=f"MAR (convex BP, {method})", unit="run", leave=False)
    try:
        m = marginals(model.mrf, method=method, max_iters=iters)
    finally:
        if bar is not None:
            bar.update(1)
            bar.close()
    logz = float(m.log_partition) + model.constant
    write_mar_result(out, m.unary, model.cardinalities)
    return {
        "method": method,
        "log_partition": logz,
        "log10_partition": logz / math.log(10.0),
        "upper_bound": method == "trbp",
        "converged": bool(m.converged),
        "iterations": int(m.iterations),
        "max_residual": float(m.max_residual),
        "solve_seconds": time.perf_counter() - t1,
    }


def _exact_map(model, plan=None):
    """A MAP labelling by variable elimination over the labels within each variable's cardinality
    (``plan``: an elimination order already found)."""
    from ..inference.exact import eliminate

    return eliminate(model.mrf, model.cardinalities, order=plan).labels


#: Share of the MAP time limit the dual decomposition may take (the local search gets the rest).
DD_SHARE = 0.4
#: Iterations of the first, timed dual-decomposition run that sizes the second.
PROBE_ITERS = 10


def _run_dd(mrf, iters: int, progress: bool):
    """``solve_map`` for ``iters`` iterations, with a progress bar."""
    from ..inference.dual_decomposition import solve_map

    bar, callback = None, None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=iters, desc="MAP (dual decomposition)", unit="it", leave=False)

        def callback(info: dict) -> None:
            bar.update(1)
            if info["iteration"] % 10 == 0 or info["iteration"] == info["iters"]:
                bar.set_postfix(
                    bound=_fmt(float(info["certificate"].max())), score=_fmt(float(info["primal"].max())), refresh=False
                )

    try:
        return solve_map(mrf, iters=iters, callback=callback)
    finally:
        if bar is not None:
            bar.close()


def _dd_map(model, iters: int, progress: bool, budget: float, seed: int):
    """Dual decomposition, then local search, in ``budget`` seconds (``0``: ``iters`` iterations and
    the deterministic polish only); returns (labels [N], bound, iterations, rounding info).

    With a budget, a first run of :data:`PROBE_ITERS` iterations times one iteration; the second
    run gets as many (at most ``iters``) as fit in :data:`DD_SHARE` of the budget.
    """
    from ..inference.rounding import improve_labels

    t0 = time.perf_counter()
    mrf = model.mrf
    if budget > 0 and iters > PROBE_ITERS:
        res = _run_dd(mrf, PROBE_ITERS, progress)
        spent = time.perf_counter() - t0
        n = min(iters, int((DD_SHARE * budget - spent) / (spent / PROBE_ITERS)))
        if n > PROBE_ITERS:
            res = _run_dd(mrf, n, progress)
    else:
        res = _run_dd(mrf, iters, progress)
    bound = float(res.dual.reshape(-1)[0])
    # leave a little for scoring and writing the result, and for the last move past the deadline
    left = max(0.0, 0.92 * budget - 0.15 - (time.perf_counter() - t0)) if budget > 0 else 0.0
    r = improve_labels(
        mrf, res.labels.reshape(-1), res.marginals.reshape(mrf.num_nodes, -1), time_limit=left,
        upper_bound=bound, hard_score=model.hard_score, seed=seed,
    )
    info = dict(r.info, solver_score=r.initial_score + model.constant)
    return r.labels, bound, res.iterations, info


def register(app) -> None:
    """Add the ``solve`` command to the ``crfkit`` typer app."""
    import typer

    @app.command("solve")
    def solve(
        model: Annotated[
            Path,
            typer.Argument(exists=True, dir_okay=False, help="UAI model file (MARKOV network)."),
        ],
        task: Annotated[
            Task,
            typer.Option(
                "--task", case_sensitive=False, help="MAP (best labelling) or MAR (marginals)."
            ),
        ],
        evidence: Annotated[
            Optional[Path],  # noqa: UP045 - typer reads the annotation at run time
            typer.Option("--evidence", exists=True, dir_okay=False, help="Evidence file (.evid)."),
        ] = None,
        iters: Annotated[
            int,
            typer.Option(
                "--iters", min=1, help="MAP: cap on dual-decomposition iterations (fewer if the time limit needs it); "
                "MAR: cap on BP sweeps."
            ),
        ] = 1000,
        out: Annotated[
            Optional[str],  # noqa: UP045  (a string: typer would turn "" into the folder ".")
            typer.Option(
                "--out",
                help="Result file (default: MODEL.TASK beside the model); summary in OUT.json.",
            ),
        ] = None,
        method: Annotated[
            Optional[str],  # noqa: UP045
            typer.Option(
                "--method",
                help="MAP: auto (default: exact variable elimination when small enough, else dd), exact "
                "or dd (dual decomposition); MAR: trbp (upper bound on log Z, default), bethe or exact.",
            ),
        ] = None,
        time_limit: Annotated[
            float,
            typer.Option(
                "--time-limit",
                min=0.0,
                help="MAP with dual decomposition: seconds for the solve; the local search gets what the "
                "solver leaves (0: polish only).",
            ),
        ] = 10.0,
        dtype: Annotated[str, typer.Option("--dtype", help="float64 or float32.")] = "float64",
        quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    ) -> None:
        """Solve a UAI model file: MAP labelling with a dual bound, or marginals (MAR)."""
        from .._validation import CRFTypeError, CRFValueError

        try:
            s = solve_file(
                model,
                task.value,
                evidence_path=evidence,
                iters=iters,
                out=out,
                method=method,
                dtype=dtype,
                progress=not quiet,
                time_limit=time_limit,
            )
        except (CRFValueError, CRFTypeError, ValueError, ImportError, OSError) as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(code=2) from None
        _echo_summary(s, typer.echo)


def _echo_summary(s: dict, echo) -> None:
    """The lines ``crfkit solve`` prints after solving (warnings to stderr)."""
    echo(f"{s['task']} of {s['model']}: {s['variables']} variables, {s['edges']} edges")
    if s["task"] == "MAP":
        echo(f"score       {_fmt(s['score'])}  (log10 {_fmt(s['log10_score'])})")
        echo(f"dual bound  {_fmt(s['dual_bound'])}  (no labelling scores more; {s['certificate_source']})")
        optimal = "  optimal" if s["optimal"] else ""
        echo(f"gap         {_fmt(s['gap'])}  (relative {s['relative_gap']:.3g}){optimal}")
        if not s["feasible"]:
            echo("warning: no feasible labelling found: the labelling uses a zero factor value", err=True)
    else:
        kind = "upper bound on log Z" if s["upper_bound"] else "estimate of log Z"
        echo(f"log Z       {_fmt(s['log_partition'])}  ({kind}; log10 {_fmt(s['log10_partition'])})")
        if not s["converged"]:
            echo(f"warning: BP did not converge in {s['iterations']} sweeps", err=True)
    echo(f"wrote {s['result_file']} and {s['summary_file']} in {s['seconds']:.3g} s")
