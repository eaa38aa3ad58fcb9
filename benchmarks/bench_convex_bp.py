"""Convex BP benchmark: crfkit's parallel-schedule sweeps against PGMax's loopy BP (and pgmpy).

Models: 4-connected grids (32×32 .. 256×256) and Barabási–Albert graphs (networkx, m = 2;
1,000 .. 20,000 nodes), 8 states, unary ~ N(0, 1), pairwise tables ~ N(0, 0.5²), float32.
For each model: crfkit Bethe and TRW, sum-product (T = 1) and max-product (T = 0): time per
sweep (median of repeated single sweeps), sweeps and seconds to convergence (largest message
change < tol, damping 0.5, capped); PGMax loopy BP (Bethe; sum and max) on the same model: time
per iteration after its JIT compile (compile time reported apart), iterations run with the same
damping.  pgmpy has no loopy BP: its ``BeliefPropagation`` is an exact junction tree, which cannot
finish on these models (treewidth ≥ 32 on the grids); it is run on a 3×3 grid for reference
with ``--pgmpy-small`` (on 5×5 its triangulation asks for a 512 GiB clique table).

    python benchmarks/bench_convex_bp.py --out benchmarks/results/
    python benchmarks/bench_convex_bp.py --grid-sizes 32,64 --ba-sizes 1000 --quick

Writes ``convex_bp.json`` and ``convex_bp.csv`` (atomically) under ``--out`` and prints a table.
Threads: torch and XLA are limited to ``--threads`` (default 1) so both run on the same footing.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import statistics
import sys
import time

from crfkit.io.atomic import atomic_write_text as atomic_write  # noqa: E402


def make_models(grid_sizes, ba_sizes, L, seed):
    import torch

    from crfkit.data.synthetic import ba_edges, grid_edges

    out = []
    g = torch.Generator().manual_seed(seed)
    for s in grid_sizes:
        e = grid_edges(s, s)
        out.append((f"grid{s}x{s}", s * s, e))
    for n in ba_sizes:
        out.append((f"ba{n}", n, ba_edges(n, 2, seed=seed)))
    models = []
    for name, n, e in out:
        un = torch.randn(n, L, generator=g)
        pw = torch.randn(e.shape[0], L, L, generator=g) * 0.5
        models.append((name, n, e, un, pw))
    return models


def bench_crfkit(n, e, un, pw, method, T, tol, max_iters, reps):
    import crfkit
    from crfkit.inference.convex_bp import CompiledGraph, ConvexBP, counting_numbers

    mrf = crfkit.GraphMRF(un, e, pw)
    t0 = time.perf_counter()
    g = CompiledGraph(e, n)
    cn, ce = counting_numbers(g, method)
    setup = time.perf_counter() - t0
    bp = ConvexBP(mrf, cn, ce, temperature=T, damping=0.5)
    bp.sweep()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        bp.sweep()
        times.append(time.perf_counter() - t)
    bp = ConvexBP(mrf, cn, ce, temperature=T, damping=0.5)
    t = time.perf_counter()
    conv, iters, res = bp.run(tol=tol, max_iters=max_iters)
    total = time.perf_counter() - t
    return {
        "sweep_ms": 1e3 * statistics.median(times),
        "converged": conv,
        "sweeps": iters,
        "to_convergence_s": total,
        "residual": res,
        "setup_s": setup,
    }


def bench_pgmax(n, e, un, pw, T, iters, reps):
    import jax
    import numpy as np
    from pgmax import fgraph, fgroup, infer, vgroup

    L = un.shape[1]
    variables = vgroup.NDVarArray(num_states=L, shape=(n,))
    fg = fgraph.FactorGraph(variable_groups=variables)
    en = e.numpy()
    fac = fgroup.PairwiseFactorGroup(
        variables_for_factors=[[variables[int(a)], variables[int(b)]] for a, b in en],
        log_potential_matrix=pw.numpy().astype(np.float32),
    )
    fg.add_factors(fac)
    bp = infer.BP(fg.bp_state, temperature=T)
    arrays = bp.init(evidence_updates={variables: un.numpy().astype(np.float32)})
    run = jax.jit(bp.run, static_argnames=("num_iters", "temperature"))  # PGMax's intended use
    t = time.perf_counter()
    out = run(arrays, num_iters=iters, damping=0.5, temperature=T)
    jax.block_until_ready(out.ftov_msgs)
    compile_s = time.perf_counter() - t
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = run(arrays, num_iters=iters, damping=0.5, temperature=T)
        jax.block_until_ready(out.ftov_msgs)
        times.append(time.perf_counter() - t)
    return {
        "iter_ms": 1e3 * statistics.median(times) / iters,
        "first_call_s": compile_s,
        "iters": iters,
    }


def bench_pgmpy_small(L, seed):
    import numpy as np
    import torch

    try:
        from pgmpy.factors.discrete import DiscreteFactor
        from pgmpy.inference import BeliefPropagation
        from pgmpy.models import DiscreteMarkovNetwork as MarkovNetwork
    except ImportError:
        return None
    from crfkit.data.synthetic import grid_edges

    s = 3  # pgmpy's triangulation of a 5x5 grid already asks for a 512 GiB clique table
    e = grid_edges(s, s)
    g = torch.Generator().manual_seed(seed)
    un = torch.randn(s * s, L, generator=g, dtype=torch.float64)
    pw = torch.randn(e.shape[0], L, L, generator=g, dtype=torch.float64) * 0.5
    mn = MarkovNetwork([(f"x{a}", f"x{b}") for a, b in e.tolist()])
    facs = [DiscreteFactor([f"x{i}"], [L], np.exp(un[i].numpy())) for i in range(s * s)]
    facs += [
        DiscreteFactor([f"x{a}", f"x{b}"], [L, L], np.exp(pw[k].numpy()))
        for k, (a, b) in enumerate(e.tolist())
    ]
    mn.add_factors(*facs)
    t = time.perf_counter()
    bpi = BeliefPropagation(mn)
    bpi.calibrate()
    q = bpi.query([f"x{i}" for i in range(3)], joint=False, show_progress=False)
    pgmpy_s = time.perf_counter() - t
    import crfkit

    mrf = crfkit.GraphMRF(un, e, pw)
    t = time.perf_counter()
    r = crfkit.inference.marginals(mrf, method="bethe", tol=1e-8, max_iters=2000, damping=0.5)
    crf_s = time.perf_counter() - t
    err = max(float(np.abs(q[f"x{i}"].values - r.unary[i].numpy()).max()) for i in range(3))
    return {
        "model": f"grid{s}x{s}",
        "pgmpy_junction_tree_s": pgmpy_s,
        "crfkit_bethe_s": crf_s,
        "bethe_vs_exact_max_abs_err": err,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/results/")
    ap.add_argument("--grid-sizes", default="32,64,128,256")
    ap.add_argument("--ba-sizes", default="1000,5000,10000,20000")
    ap.add_argument("--labels", type=int, default=8)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--max-iters", type=int, default=200)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--pgmax-iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-pgmax", action="store_true")
    ap.add_argument("--pgmpy-small", action="store_true")
    ap.add_argument(
        "--quick", action="store_true", help="fewer repetitions and a lower iteration cap"
    )
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.quick:
        a.reps, a.max_iters, a.pgmax_iters = 3, 60, 10
    os.environ.setdefault(
        "XLA_FLAGS",
        f"--xla_cpu_multi_thread_eigen={'true' if a.threads > 1 else 'false'} intra_op_parallelism_threads={a.threads}",
    )
    import torch

    torch.set_num_threads(a.threads)
    have_pgmax = False
    if not a.no_pgmax:
        try:
            import pgmax  # noqa: F401

            have_pgmax = True
        except ImportError:
            print("pgmax not installed: PGMax columns skipped", file=sys.stderr)
    grid_sizes = [int(x) for x in a.grid_sizes.split(",") if x]
    ba_sizes = [int(x) for x in a.ba_sizes.split(",") if x]
    rows = []
    for name, n, e, un, pw in make_models(grid_sizes, ba_sizes, a.labels, a.seed):
        for T, sp in ((1.0, "sum"), (0.0, "max")):
            pg = None
            if have_pgmax:
                try:
                    pg = bench_pgmax(n, e, un, pw, T, a.pgmax_iters, a.reps)
                except Exception as exc:  # a peer failing is reported, not fatal
                    pg = {"error": repr(exc)[:200]}
            for method in ("bethe", "trbp"):
                r = bench_crfkit(n, e, un, pw, method, T, a.tol, a.max_iters, a.reps)
                row = {
                    "model": name,
                    "nodes": n,
                    "edges": int(e.shape[0]),
                    "method": method,
                    "semiring": sp,
                    **r,
                }
                if pg is not None:
                    row.update({f"pgmax_{k}": v for k, v in pg.items()})
                    if "iter_ms" in pg:
                        row["speedup_vs_pgmax"] = pg["iter_ms"] / r["sweep_ms"]
                rows.append(row)
                print(
                    f"{name:>12} {method:>5} {sp:>3}  sweep {r['sweep_ms']:8.2f} ms  "
                    f"conv {str(r['converged']):>5} in {r['sweeps']:4d} sweeps {r['to_convergence_s']:7.2f} s"
                    + (
                        f"  | pgmax {pg['iter_ms']:8.2f} ms/iter (first call {pg['first_call_s']:.1f} s)"
                        if pg and "iter_ms" in pg
                        else ""
                    ),
                    flush=True,
                )
    extra = bench_pgmpy_small(a.labels, a.seed) if a.pgmpy_small else None
    meta = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": a.threads,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "tol": a.tol,
        "max_iters": a.max_iters,
        "damping": 0.5,
        "load_avg": os.getloadavg(),
    }
    if have_pgmax:
        import jax

        meta["jax"] = jax.__version__
    result = {"meta": meta, "rows": rows, "pgmpy_small": extra}
    atomic_write(os.path.join(a.out, "convex_bp.json"), json.dumps(result, indent=1))
    buf = io.StringIO()
    keys = sorted({k for r in rows for k in r})
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    atomic_write(os.path.join(a.out, "convex_bp.csv"), buf.getvalue())
    if extra:
        print("pgmpy (exact junction tree) on", extra)
    print(f"wrote {os.path.join(a.out, 'convex_bp.json')} and .csv")


if __name__ == "__main__":
    main()
