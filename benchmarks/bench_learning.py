"""Learning benchmark: full BP vs inner-dual vs BBPL (the BBPL paper's synthetic setting), and
BBPL's time per step at a fixed block size as the graph grows (×16).

Each network: 8 states, unary features of dimension 20 and pairwise of dimension 10 from
N(0, 1), random true weights, 20 Gibbs samples; TRW counting numbers, L2 = 1e-2, plain
gradient descent with the library's default step (BBPL: divided by the number of blocks).
The reference optimum is full convex-BP learning run to convergence (L-BFGS); a learner
"reaches" it when its objective is within ``--rtol`` (relative).  Times are learner time
(the objective evaluations are not counted).

    python benchmarks/bench_learning.py --out benchmarks/results/
    python benchmarks/bench_learning.py --grid-sizes 20 --ba-sizes 1000 --seconds 20 --scale-sizes 16,64

Writes ``convergence_grid.{json,csv,png}``, ``convergence_ba.{...}``, ``scale_grid.{json,csv}``,
``scale_ba.{...}`` and ``learning_summary.json`` under ``--out`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/results/")
    ap.add_argument("--grid-sizes", default="30,100")
    ap.add_argument("--ba-sizes", default="1000,20000")
    ap.add_argument("--grid-blocks", type=int, default=16)
    ap.add_argument("--ba-blocks", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=120.0, help="budget per learner")
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--l2", type=float, default=1e-2)
    ap.add_argument(
        "--scale-sizes",
        default="25,100",
        help="grid sides for the scale check (25 -> 100: x16 nodes)",
    )
    ap.add_argument(
        "--scale-ba", default="1250,20000", help="BA node counts for the scale check (x16)"
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--evals", type=int, default=40, help="objective evaluations per learner run")
    ap.add_argument(
        "--ref-iters", type=int, default=300, help="L-BFGS iterations for the reference"
    )
    ap.add_argument(
        "--eval-tol", type=float, default=1e-8, help="convex-BP tolerance of evaluations"
    )
    ap.add_argument("--suffix", default="", help="appended to the output file names")
    ap.add_argument(
        "--bbpl-lr-scales", default="", help="extra BBPL runs at these multiples of the full step"
    )
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    from crfkit.cli.learn import run_convergence, run_scale

    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    summary = {
        "meta": {
            "python": platform.python_version(),
            "threads": a.threads,
            "cpu_count": os.cpu_count(),
            "load_avg": os.getloadavg(),
            "seconds_per_learner": a.seconds,
            "rtol": a.rtol,
        }
    }
    if a.scale_sizes:
        summary["scale_grid"] = run_scale(
            "grid", ints(a.scale_sizes), 256, 60, a.out, a.seed, a.threads
        )
    if a.scale_ba:
        summary["scale_ba"] = run_scale("ba", ints(a.scale_ba), 256, 60, a.out, a.seed, a.threads)
    scales = tuple(float(x) for x in a.bbpl_lr_scales.split(",") if x)
    extra = dict(
        evals=a.evals,
        ref_iters=a.ref_iters,
        eval_tol=a.eval_tol,
        suffix=a.suffix,
        bbpl_lr_scales=scales,
    )
    if a.grid_sizes:
        summary["grid"] = run_convergence(
            "grid",
            ints(a.grid_sizes),
            a.grid_blocks,
            a.seconds,
            a.out,
            a.l2,
            a.seed,
            a.rtol,
            a.threads,
            **extra,
        )
    if a.ba_sizes:
        summary["ba"] = run_convergence(
            "ba",
            ints(a.ba_sizes),
            a.ba_blocks,
            a.seconds,
            a.out,
            a.l2,
            a.seed,
            a.rtol,
            a.threads,
            **extra,
        )
    from crfkit.cli.learn import _atomic_text

    _atomic_text(
        os.path.join(a.out, f"learning_summary{a.suffix}.json"), json.dumps(summary, indent=1)
    )
    print("\nseconds to reach the reference objective (rtol), learner time; - = not within budget")
    for key in ("grid", "ba"):
        for r in summary.get(key, []):
            cells = [
                f"{k[: -len('_time_to_reference')]}=" + ("-" if r[k] is None else f"{r[k]:.2f}")
                for k in sorted(r)
                if k.endswith("_time_to_reference")
            ]
            print(f" {key}{r['size']} ({r['nodes']} nodes): " + "  ".join(cells))


if __name__ == "__main__":
    main()
