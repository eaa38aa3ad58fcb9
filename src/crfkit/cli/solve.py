"""``crfkit solve MODEL.uai --task MAP|MAR``: solve a UAI model file.

MAP: dual decomposition into chains (:func:`crfkit.solve_map`); writes the labelling in the
competition's ``MAP`` result format, and beside it a JSON with the score of the labelling,
the dual bound (a certificate: no labelling scores more) and the gap.  MAR: convex belief
propagation (TRW by default, :func:`crfkit.inference.convex_bp.marginals`); writes the
``MAR`` result and a JSON with the log-partition estimate (an upper bound for TRW).

Scores are natural logs of products of factor values (``log10`` values are given as well,
the unit of the competitions).
"""


import json
import math
import os
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


def solve_file(
    model_path,
    task: str = "MAP",
    *,
    evidence_path=None,
    iters: int = 1000,
    out=None,
    method: str = "trbp",
    dtype: str = "float64",
    progress: bool = True,
) -> dict:
    """Solve a UAI file; write the result file and its JSON summary; return the summary.

    Args:
        model_path: the ``.uai`` model. task: ``"MAP"`` or ``"MAR"``.
        evidence_path: an optional ``.evid`` file (observed variables are fixed).
        iters: MAP: dual-decomposition iterations; MAR: the cap on BP sweeps.
        out: the result file (default: ``MODEL.uai.MAP`` / ``MODEL.uai.MAR`` beside the model);
            the summary goes to ``out + ".json"``.
        method: MAR only: ``"trbp"`` (default), ``"bethe"`` or ``"exact"``.
        dtype: ``"float64"`` (default) or ``"float32"``.
        progress: show a progress bar on stderr.
    """
    import torch

    from ..io.uai import (
        apply_evidence,
        atomic_write_text,
        read_evidence,
        read_uai,
        write_map_result,
        write_mar_result,
    )

    task = str(task).upper()
    if task not in ("MAP", "MAR"):
        raise ValueError(f"expected task MAP or MAR, got {task!r}")
    if dtype not in ("float64", "float32"):
        raise ValueError(f"expected dtype float64 or float32, got {dtype!r}")
    torch_dtype = torch.float64 if dtype == "float64" else torch.float32
    model_path = Path(model_path)
    out = Path(out) if out is not None else model_path.with_name(model_path.name + "." + task)
    t0 = time.perf_counter()
    model = read_uai(model_path, dtype=torch_dtype)
    evidence = {}
    if evidence_path is not None:
        evidence = read_evidence(evidence_path, cardinalities=model.cardinalities)
        model = apply_evidence(model, evidence)
    mrf = model.mrf
    t_read = time.perf_counter() - t0
    summary: dict = {
        "task": task,
        "model": os.fspath(model_path),
        "evidence": None if evidence_path is None else os.fspath(evidence_path),
        "observed": len(evidence),
        "variables": mrf.num_nodes,
        "edges": mrf.num_edges,
        "max_cardinality": mrf.num_labels,
        "result_file": os.fspath(out),
        "read_seconds": t_read,
    }
    bar = None
    if progress:
        from tqdm.auto import tqdm

    if task == "MAP":
        from ..inference.dual_decomposition import solve_map

        callback = None
        if progress:
            bar = tqdm(total=iters, desc="MAP (dual decomposition)", unit="it", leave=False)

            def callback(info: dict) -> None:
                bar.update(1)
                if info["iteration"] % 10 == 0 or info["iteration"] == info["iters"]:
                    bar.set_postfix(
                        bound=_fmt(float(info["certificate"].max())),
                        score=_fmt(float(info["primal"].max())),
                        refresh=False,
                    )

        t1 = time.perf_counter()
        try:
            res = solve_map(mrf, iters=iters, callback=callback)
        finally:
            if bar is not None:
                bar.close()
        labels = res.labels.reshape(-1)
        score = float(res.primal.reshape(-1)[0]) + model.constant
        bound = float(res.dual.reshape(-1)[0]) + model.constant
        summary.update(
            {
                "score": score,
                "dual_bound": bound,
                "gap": max(0.0, bound - score),
                "relative_gap": max(0.0, bound - score) / max(abs(score), 1.0),
                "log10_score": score / math.log(10.0),
                "log10_dual_bound": bound / math.log(10.0),
                "feasible": bool(model.is_feasible(labels)),
                "iterations": int(res.iterations),
                "solve_seconds": time.perf_counter() - t1,
            }
        )
        write_map_result(out, labels)
    else:
        from ..inference.convex_bp import marginals

        t1 = time.perf_counter()
        if progress:
            bar = tqdm(total=1, desc=f"MAR (convex BP, {method})", unit="run", leave=False)
        try:
            m = marginals(mrf, method=method, max_iters=iters)
        finally:
            if bar is not None:
                bar.update(1)
                bar.close()
        logz = float(m.log_partition) + model.constant
        summary.update(
            {
                "method": method,
                "log_partition": logz,
                "log10_partition": logz / math.log(10.0),
                "upper_bound": method == "trbp",
                "converged": bool(m.converged),
                "iterations": int(m.iterations),
                "max_residual": float(m.max_residual),
                "solve_seconds": time.perf_counter() - t1,
            }
        )
        write_mar_result(out, m.unary, model.cardinalities)
    summary["seconds"] = time.perf_counter() - t0
    json_path = Path(os.fspath(out) + ".json")
    summary["summary_file"] = os.fspath(json_path)
    atomic_write_text(json_path, json.dumps(summary, indent=2) + "\n")
    return summary


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
                "--iters", min=1, help="MAP: dual-decomposition iterations; MAR: cap on BP sweeps."
            ),
        ] = 1000,
        out: Annotated[
            Optional[Path],  # noqa: UP045
            typer.Option(
                "--out",
                help="Result file (default: MODEL.TASK beside the model); summary in OUT.json.",
            ),
        ] = None,
        method: Annotated[
            str,
            typer.Option("--method", help="MAR only: trbp (upper bound on log Z), bethe or exact."),
        ] = "trbp",
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
            )
        except (CRFValueError, CRFTypeError, ValueError, ImportError) as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(code=2) from None
        typer.echo(f"{s['task']} of {s['model']}: {s['variables']} variables, {s['edges']} edges")
        if s["task"] == "MAP":
            typer.echo(f"score       {_fmt(s['score'])}  (log10 {_fmt(s['log10_score'])})")
            typer.echo(f"dual bound  {_fmt(s['dual_bound'])}  (no labelling scores more)")
            typer.echo(f"gap         {_fmt(s['gap'])}  (relative {s['relative_gap']:.3g})")
            if not s["feasible"]:
                typer.echo(
                    "warning: the labelling uses a zero factor value (no feasible labelling found)",
                    err=True,
                )
        else:
            kind = "upper bound on log Z" if s["upper_bound"] else "estimate of log Z"
            typer.echo(
                f"log Z       {_fmt(s['log_partition'])}  "
                f"({kind}; log10 {_fmt(s['log10_partition'])})"
            )
            if not s["converged"]:
                typer.echo(f"warning: BP did not converge in {s['iterations']} sweeps", err=True)
        typer.echo(f"wrote {s['result_file']} and {s['summary_file']} in {s['seconds']:.3g} s")
