"""How fast the certificate ``res.dual`` of ``crfkit.solve_map`` reaches the LP optimum.

Random 6x6 grids with 4 labels and the default offsets ((0,1), (1,0), (0,2), (2,0)); unary
scores and per-edge tables drawn from N(0, 1).  The local-polytope LP relaxation is solved
exactly by HiGHS (``crfkit.inference.lp.local_polytope_lp``); every certificate is >= its
optimum, and the benchmark reports the relative distance ``(res.dual - LP) / |LP|``:

- the paper's iteration (``gamma=0.0, step="paper"``): one long run; its certificate after
  ``k`` iterations is the lowest max-dual of the first ``k`` (``dual_history``);
- the default solver (continuation in gamma, adaptive step): one run per iteration budget (the
  continuation's schedule depends on the budget), plus the running certificate of the longest
  run (through ``callback``).

All instances run as one batch (every batch element has its own step).  Targets for the
default: within 1e-3 of the LP optimum by 2,000 iterations and within 1e-4 by 10,000, on every
instance.

    python benchmarks/bench_certificate.py [--instances 8] [--budgets 100,300,1000,2000,5000,10000]
        [--seed 0] [--out benchmarks/results/]

Prints a table; writes ``certificate.json`` and ``certificate.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

import crfkit
from crfkit.inference.lp import local_polytope_lp

TARGETS = {2000: 1e-3, 10000: 1e-4}


from crfkit.io.atomic import atomic_write_bytes as _atomic_write  # noqa: E402


def random_grids(n: int, H: int = 6, W: int = 6, L: int = 4, seed: int = 0) -> crfkit.GridCRF:
    """``n`` random grids as one batch: unary ``[n, L, H, W]`` and per-edge tables
    ``[n, L, L, H, W]`` per default offset, all N(0, 1), float64."""
    g = torch.Generator().manual_seed(seed)
    unary = torch.randn(n, L, H, W, generator=g, dtype=torch.float64)
    pairwise = [
        torch.randn(n, L, L, H, W, generator=g, dtype=torch.float64) for _ in crfkit.DEFAULT_OFFSETS
    ]
    return crfkit.GridCRF(unary, pairwise, offsets=crfkit.DEFAULT_OFFSETS)


def lp_optima(crf: crfkit.GridCRF) -> np.ndarray:
    B, L, H, W = crf.shape
    edges, tables = crf.edge_list()
    unary = crf.unary.permute(0, 2, 3, 1).reshape(B, H * W, L)
    return np.array([local_polytope_lp(unary[b], edges, tables[b]).value for b in range(B)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", type=int, default=8)
    ap.add_argument(
        "--budgets",
        default="100,300,1000,2000,5000,10000",
        help=(
            "comma-separated iteration budgets for the default solver; the largest is also the "
            "paper run's length"
        ),
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--separate",
        action="store_true",
        help="solve each instance on its own (default: all as one batch; each batch element has "
        "its own step, the continuation's gamma scale is the batch's mean spread)",
    )
    ap.add_argument(
        "--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    budgets = sorted({int(b) for b in args.budgets.split(",")})
    os.makedirs(args.out, exist_ok=True)

    crf = random_grids(args.instances, seed=args.seed)
    t0 = time.perf_counter()
    lp = lp_optima(crf)
    t_lp = time.perf_counter() - t0
    scale = np.abs(lp)

    def rel(d) -> np.ndarray:
        return (np.asarray(d, dtype=np.float64) - lp) / scale

    # one batch of all instances, or (--separate) one solve per instance, results stacked
    if args.separate:
        parts = [
            crfkit.GridCRF(
                crf.unary[b : b + 1], [t.tables[b : b + 1] for t in crf.terms], offsets=crf.offsets
            )
            for b in range(args.instances)
        ]
    else:
        parts = [crf]

    def solve(trace: bool = False, **kw):
        """Certificates ``[B]``, dual histories ``[iters + 1, B]`` and (``trace``) the running
        certificates ``[iters, B]`` reported to the callback, over all parts."""
        duals, hists, traces = [], [], []
        for part in parts:
            tr = []

            def cb(state, _tr=tr):
                _tr.append(state["certificate"].double().numpy().copy())

            res = crfkit.solve_map(part, callback=cb if trace else None, **kw)
            duals.append(res.dual.double().numpy())
            hists.append(res.dual_history.double().numpy())
            traces.append(np.stack(tr) if tr else np.zeros((0, part.batch_size)))
        return np.concatenate(duals), np.concatenate(hists, axis=1), np.concatenate(traces, axis=1)

    # the paper's iteration: one run, running minimum of D_0
    kmax = budgets[-1]
    t0 = time.perf_counter()
    _, hist_p, _ = solve(iters=kmax, gamma=0.0, step="paper")
    t_paper = time.perf_counter() - t0
    hist_p = np.minimum.accumulate(hist_p, axis=0)  # [kmax + 1, B]
    paper = {k: rel(hist_p[min(k, hist_p.shape[0] - 1)]) for k in budgets}

    # the default solver: one run per budget; the longest also records its running certificate
    default, times, trace = {}, {}, None
    for k in budgets:
        t0 = time.perf_counter()
        dual, _, tr = solve(iters=k, trace=(k == kmax))
        times[k] = time.perf_counter() - t0
        default[k] = rel(dual)
        if k == kmax:
            trace = tr
        if bool((dual < lp - 1e-7 * scale).any()):
            print(f"WARNING: a certificate below the LP optimum at {k} iterations", file=sys.stderr)
        print(f"  default solver, {k} iterations: {times[k]:.1f} s", file=sys.stderr, flush=True)
    trace = rel(trace) if trace is not None and len(trace) else np.zeros((0, args.instances))

    # table
    head = (
        "instance      LP opt | "
        + " ".join(f"{'paper@' + str(k):>11}" for k in budgets)
        + " | "
        + " ".join(f"{'dflt@' + str(k):>11}" for k in budgets)
    )
    print(head)
    print("-" * len(head))
    for b in range(args.instances):
        print(
            f"{b:8d} {lp[b]:11.4f} | "
            + " ".join(f"{paper[k][b]:11.2e}" for k in budgets)
            + " | "
            + " ".join(f"{default[k][b]:11.2e}" for k in budgets)
        )
    print("-" * len(head))
    print(
        f"{'max':>8} {'':11} | "
        + " ".join(f"{paper[k].max():11.2e}" for k in budgets)
        + " | "
        + " ".join(f"{default[k].max():11.2e}" for k in budgets)
    )
    verdicts = {}
    for k, tol in TARGETS.items():
        if k in default:
            ok = bool((default[k] <= tol).all())
            verdicts[str(k)] = {
                "tolerance": tol,
                "max_relative_distance": float(default[k].max()),
                "met": ok,
            }
            print(
                f"target: default within {tol:g} of the LP optimum by {k} iterations on every "
                f"instance: "
                f"{'MET' if ok else 'NOT MET'} (max {default[k].max():.2e})"
            )
    print(
        f"times: LP {t_lp:.1f} s; paper {kmax} its {t_paper:.1f} s; default "
        + ", ".join(f"{k}: {times[k]:.1f} s" for k in budgets)
        + f"  ({'one at a time' if args.separate else 'one batch'} of {args.instances}, "
        + f"{args.threads} thread(s))"
    )

    result = {
        "benchmark": "certificate",
        "setting": {
            "grid": [6, 6],
            "labels": 4,
            "offsets": [list(o) for o in crfkit.DEFAULT_OFFSETS],
            "instances": args.instances,
            "separate": args.separate,
            "seed": args.seed,
            "dtype": "float64",
            "potentials": "unary and per-edge tables N(0, 1)",
        },
        "lp_optimum": lp.tolist(),
        "budgets": budgets,
        "paper_relative_distance": {str(k): paper[k].tolist() for k in budgets},
        "default_relative_distance": {str(k): default[k].tolist() for k in budgets},
        "default_anytime_relative_distance_every_10": trace[::10].tolist(),
        "targets": verdicts,
        "seconds": {"lp": t_lp, "paper": t_paper, "default": {str(k): v for k, v in times.items()}},
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": args.threads,
        },
    }
    _atomic_write(
        os.path.join(args.out, "certificate.json"), (json.dumps(result, indent=1) + "\n").encode()
    )

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
        return 0
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    floor = 1e-9
    its = np.arange(hist_p.shape[0])
    for b in range(args.instances):
        ax.plot(
            its[1:],
            np.maximum(rel(hist_p)[1:, b], floor),
            color="tab:red",
            alpha=0.5,
            lw=1,
            label="paper (gamma=0, step 1/max|V|)" if b == 0 else None,
        )
        if len(trace):
            ax.plot(
                np.arange(1, len(trace) + 1),
                np.maximum(trace[:, b], floor),
                color="tab:blue",
                alpha=0.35,
                lw=1,
                label=f"default, running certificate of the {kmax}-iteration run"
                if b == 0
                else None,
            )
        ax.plot(
            budgets,
            np.maximum([default[k][b] for k in budgets], floor),
            "o",
            color="tab:blue",
            ms=3,
            label="default, final certificate at each budget" if b == 0 else None,
        )
    for k, tol in TARGETS.items():
        ax.plot([k], [tol], "k*", ms=10, label="targets" if k == 2000 else None)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("iterations")
    ax.set_ylabel("(certificate - LP optimum) / |LP optimum|")
    ax.set_title(f"Certificate vs LP optimum: {args.instances} random 6x6 grids, 4 labels")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = os.path.join(args.out, ".certificate.png.tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, os.path.join(args.out, "certificate.png"))
    print(f"wrote {os.path.join(args.out, 'certificate.json')} and certificate.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
