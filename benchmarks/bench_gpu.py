"""GPU benchmarks of the chain kernels (issue 9): Triton against naive PyTorch, naive under
``torch.compile`` and the vectorised PyTorch path, on one GPU, in one run.

One command (from the source tree; the GPU machines have torch and triton preinstalled)::

    PYTHONPATH=src python benchmarks/bench_gpu.py          # all, ~5-10 min (with naive compile)
    PYTHONPATH=src python benchmarks/bench_gpu.py --quick  # fewer repetitions, no naive compile

Without CUDA it says so and exits 0 without measuring anything.

Settings (grid CRFs cut into chains by ``crfkit.decomposition.grid.grid_chain_problem``,
the four default offsets):

- ``paper``: B=16, 33x33 (a 513x513 crop at output stride 16), L=21, per-edge tables;
- ``stereo``: B=1, 500x741, L=64, truncated linear (per-edge weights, truncation 4);
- ``large``: B=32, 65x65, L=21, per-edge tables (about 1 GB of tables: memory-bound).

For each setting and gamma in (1, 0): forward, and forward+backward (random upstream gradients
on the marginals, plus the values), of the chain operation over all four chain groups, for
``naive`` (``benchmarks/naive_chain.py``: a Python loop over positions, autograd backward),
``naive_compiled`` (the same under ``torch.compile``; its first call is the compile time),
``torch`` (``crfkit.ops.chain.torch``, vectorised, hand-written backward) and ``triton``.
Also: one FPI iteration (all offsets' marginals, the multiplier update, no autograd) with the
``torch`` and ``triton`` paths; the bandwidth of a device-to-device copy and the fraction of it
the chain operation reaches counting the floor traffic (per-edge tables read twice, their
gradient written once); peak memory over the inputs plus outputs; Triton's first-call (JIT)
time; the largest difference between the Triton and PyTorch results.

Writes ``<out>/bench_gpu_<settings>.json`` (atomically) and prints a table.

Time: the naive code's ``torch.compile`` alone took 212 s at the paper's size on an H100
(PyTorch 2.11), so it is compiled once, for gamma = 1 at the paper's size only. Where one
command may run at most 10 minutes, run the settings separately::

    PYTHONPATH=src python benchmarks/bench_gpu.py --settings paper
    PYTHONPATH=src python benchmarks/bench_gpu.py --settings stereo,large --tune
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from naive_chain import naive_chain_marginals  # noqa: E402

# ---------------------------------------------------------------------------------------------
# timing helpers
# ---------------------------------------------------------------------------------------------


DEVICE = "cuda"  # ``--device cpu`` (with ``--settings tiny``) is a smoke test of this script


def _cuda() -> bool:
    return DEVICE == "cuda"


def _sync():
    if _cuda():
        torch.cuda.synchronize()


def timeit(fn, warmup: int = 2, reps: int = 10, budget_s: float = 10.0) -> float:
    """Median wall time of ``fn`` in milliseconds (CUDA events; at least one timed run)."""
    for _ in range(warmup):
        fn()
    _sync()
    times = []
    start = time.perf_counter()
    for _ in range(reps):
        if _cuda():
            e0 = torch.cuda.Event(enable_timing=True)
            e1 = torch.cuda.Event(enable_timing=True)
            e0.record()
            fn()
            e1.record()
            _sync()
            times.append(e0.elapsed_time(e1))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
        if time.perf_counter() - start > budget_s:
            break
    return statistics.median(times)


def first_call_s(fn) -> float:
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t0


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Bytes per second of a device-to-device copy (read + write counted)."""
    x = torch.empty(nbytes // 4, device=DEVICE, dtype=torch.float32).fill_(1.0)
    y = torch.empty_like(x)
    ms = timeit(lambda x=x, y=y: y.copy_(x), warmup=3, reps=20)
    del x, y
    _empty_cache()
    return 2 * nbytes / (ms / 1e3)


# ---------------------------------------------------------------------------------------------
# workloads
# ---------------------------------------------------------------------------------------------
SETTINGS = {
    "paper": dict(B=16, H=33, W=33, L=21, form="tables"),
    "stereo": dict(B=1, H=500, W=741, L=64, form="truncated_linear", truncation=4.0),
    "large": dict(B=32, H=65, W=65, L=21, form="tables"),
    "tiny": dict(B=1, H=4, W=5, L=3, form="tables"),  # smoke test (--device cpu)
    "tiny_tl": dict(B=1, H=4, W=5, L=3, form="truncated_linear", truncation=1.0),
}


def _empty_cache():
    if _cuda():
        torch.cuda.empty_cache()


def build(setting: dict, seed: int = 0):
    """The grid CRF of a setting, its chain problem, and per-group chain inputs (leaves)."""
    import crfkit
    from crfkit.decomposition.chains import ChainPairwise
    from crfkit.decomposition.grid import grid_chain_problem
    from crfkit.models.pairwise import TruncatedLinear

    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    B, H, W, L = setting["B"], setting["H"], setting["W"], setting["L"]
    K = len(crfkit.DEFAULT_OFFSETS)
    unary = torch.randn(B, L, H, W, device=DEVICE, generator=gen)
    if setting["form"] == "tables":
        pairwise = [torch.randn(B, L, L, H, W, device=DEVICE, generator=gen) for _ in range(K)]
    else:
        pairwise = [
            TruncatedLinear(
                torch.rand(B, H, W, device=DEVICE, generator=gen), setting["truncation"]
            )
            for _ in range(K)
        ]
    crf = crfkit.GridCRF(unary, pairwise)
    problem = grid_chain_problem(crf)
    groups = []
    for g in problem.groups:
        u = problem.unary[g.nodes.clamp(min=0)].detach().contiguous().requires_grad_()
        pw = g.pairwise
        tables = pw.tables.detach().contiguous().requires_grad_() if pw.tables is not None else None
        weight = pw.weight.detach().contiguous().requires_grad_() if pw.weight is not None else None
        pw = ChainPairwise(pw.kind, tables=tables, weight=weight, truncation=pw.truncation)
        dm = torch.randn(u.shape, device=DEVICE, generator=gen)
        groups.append((u, pw, g.lengths, dm))
    return crf, problem, groups


def leaves(u, pw):
    return [t for t in (u, pw.tables, pw.weight) if t is not None]


def nbytes(ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def run_forward(impl, groups, gamma):
    with torch.no_grad():
        return [impl(u, pw, lens, gamma) for u, pw, lens, _ in groups]


def run_fwd_bwd(impl, groups, gamma):
    outs = []
    for u, pw, lens, dm in groups:
        m, v = impl(u, pw, lens, gamma)
        grads = torch.autograd.grad((m * dm).sum() + v.sum(), leaves(u, pw))
        outs.append((m.detach(), v.detach(), grads))
    return outs


def floor_bytes(groups) -> int:
    """Minimal traffic of forward+backward: tables read twice and their gradient written once;
    unary read, marginals written, upstream gradient read, unary gradient written."""
    tab = sum(
        nbytes([pw.tables]) if pw.kind == "dense" else nbytes([pw.weight]) for _, pw, _, _ in groups
    )
    vec = sum(nbytes([u]) for u, _, _, _ in groups)
    return 3 * tab + 4 * vec


def in_out_bytes(groups) -> int:
    ins = sum(nbytes(leaves(u, pw)) for u, pw, _, _ in groups)
    outs = sum(
        nbytes([u]) + u.shape[0] * u.element_size() for u, _, _, _ in groups
    )  # marginals, value
    return 2 * ins + outs  # inputs, their gradients, the outputs


def peak_memory(fn, groups) -> tuple[int, float]:
    """Peak bytes allocated during ``fn`` above what was live before, plus the inputs; and that
    over the inputs + outputs (gradients included)."""
    if not _cuda():
        fn()
        return float("nan"), float("nan")
    _sync()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    _sync()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    ins = sum(nbytes(leaves(u, pw)) for u, pw, _, _ in groups)
    total = peak + ins
    return total, total / in_out_bytes(groups)


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e)


# ---------------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------------
def implementations(compile_naive: bool):
    from crfkit.ops.chain.torch import chain_marginals_torch
    from crfkit.ops.chain.triton import AVAILABLE, chain_marginals_triton

    impls = {"naive": naive_chain_marginals}
    if compile_naive:
        impls["naive_compiled"] = torch.compile(naive_chain_marginals, dynamic=False)
    impls["torch"] = chain_marginals_torch
    if AVAILABLE:
        impls["triton"] = chain_marginals_triton
    return impls


def bench_setting(name, setting, gammas, impls, copy_bw, reps, rows, notes):
    print(f"\n== {name}: {setting}", flush=True)
    crf, problem, groups = build(setting)
    fb = floor_bytes(groups)
    for gamma in gammas:
        ref = None
        for iname, impl in impls.items():
            if iname == "naive_compiled" and (name not in ("paper", "tiny") or gamma != 1.0):
                continue  # minutes of compilation: once, at the paper's size and gamma = 1
            row = dict(setting=name, gamma=gamma, impl=iname)
            try:
                if iname in ("triton", "naive_compiled"):
                    row["first_call_s"] = first_call_s(
                        lambda impl=impl, gamma=gamma, groups=groups: run_fwd_bwd(
                            impl, groups, gamma
                        )
                    )
                row["forward_ms"] = timeit(
                    lambda impl=impl, gamma=gamma, groups=groups: run_forward(impl, groups, gamma),
                    reps=reps,
                )
                row["fwd_bwd_ms"] = timeit(
                    lambda impl=impl, gamma=gamma, groups=groups: run_fwd_bwd(impl, groups, gamma),
                    reps=reps,
                )
                peak, ratio = peak_memory(
                    lambda impl=impl, gamma=gamma, groups=groups: run_fwd_bwd(impl, groups, gamma),
                    groups,
                )
                row["peak_MiB"] = peak / 2**20
                row["peak_over_in_out"] = ratio
                row["bandwidth_fraction"] = (fb / (row["fwd_bwd_ms"] / 1e3)) / copy_bw
                if iname in ("torch", "triton"):
                    outs = run_fwd_bwd(impl, groups, gamma)
                    if ref is None:
                        ref = outs
                    else:
                        diff = 0.0
                        for (m1, v1, g1), (m2, v2, g2) in zip(outs, ref):
                            for a, b in zip((m1, v1, *g1), (m2, v2, *g2)):
                                diff = max(diff, float((a.float() - b.float()).abs().max()))
                        row["max_abs_diff_vs_torch"] = diff
                    del outs
            except Exception as e:  # report and go on (OOM of the naive code at large sizes)
                row["error"] = (
                    "out of memory: " if is_oom(e) else ""
                ) + f"{type(e).__name__}: {e}"[:300]
                _empty_cache()
            rows.append(row)
            print("  " + _fmt_row(row), flush=True)
        ref = None
    _speedups(rows, name)
    fpi(name, problem, gammas, reps, rows)
    del crf, problem, groups
    _empty_cache()


def fpi(name, problem, gammas, reps, rows):
    """One FPI iteration: marginals of all chain groups at the current multipliers, the update."""
    try:
        from crfkit.inference.dual_decomposition import DualDecomposition
    except Exception as e:  # the lead's module may change; report instead of failing
        rows.append(dict(setting=name, impl="fpi", error=f"{type(e).__name__}: {e}"[:300]))
        return
    for impl in ("torch", "triton"):
        for gamma in gammas:
            row = dict(setting=name, gamma=gamma, impl=f"fpi_{impl}")
            try:
                with torch.no_grad():
                    dd = DualDecomposition(problem, implementation=impl)
                    lam = torch.zeros(dd.S, dd.L, device=DEVICE, dtype=problem.unary.dtype)
                    step = dd.paper_step

                    def it(dd=dd, lam=lam, step=step, gamma=gamma):
                        mu, _ = dd.evaluate(lam, gamma)
                        return dd.project(lam - step * dd.direction(mu))

                    if impl == "triton":
                        row["first_call_s"] = first_call_s(it)
                    row["iteration_ms"] = timeit(it, reps=reps)
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {e}"[:300]
            rows.append(row)
            print("  " + _fmt_row(row), flush=True)


def _speedups(rows, name):
    by = {(r["gamma"], r["impl"]): r for r in rows if r.get("setting") == name and "gamma" in r}
    for (gamma, impl), r in by.items():
        for base in ("naive", "naive_compiled", "torch"):
            b = by.get((gamma, base))
            if b and "fwd_bwd_ms" in b and "fwd_bwd_ms" in r and impl != base:
                r[f"speedup_vs_{base}"] = b["fwd_bwd_ms"] / r["fwd_bwd_ms"]


def _fmt(x, f="{:.3f}"):
    return "-" if x is None else (f.format(x) if isinstance(x, float) else str(x))


def _fmt_row(r):
    if "error" in r:
        return f"{r.get('setting')} g={r.get('gamma')} {r['impl']:<15} ERROR {r['error']}"
    head = f"{r['setting']:<7} g={r['gamma']:<4} {r['impl']:<15}"
    if "iteration_ms" in r:
        return f"{head} iteration {r['iteration_ms']:.3f} ms"
    bw = _fmt(r.get("bandwidth_fraction"), "{:.1%}")
    return (
        f"{head} fwd {_fmt(r.get('forward_ms'))} ms  "
        f"fwd+bwd {_fmt(r.get('fwd_bwd_ms'))} ms  peak {_fmt(r.get('peak_MiB'), '{:.0f}')} MiB "
        f"(x{_fmt(r.get('peak_over_in_out'), '{:.2f}')} in+out)  bw {bw}"
        + (f"  first call {r['first_call_s']:.1f} s" if "first_call_s" in r else "")
        + (
            f"  max |triton - torch| {r['max_abs_diff_vs_torch']:.1e}"
            if "max_abs_diff_vs_torch" in r
            else ""
        )
    )


def table(rows) -> str:
    head = [
        "setting",
        "gamma",
        "impl",
        "fwd ms",
        "fwd+bwd ms",
        "x naive",
        "x compiled",
        "x torch",
        "peak MiB",
        "peak/(in+out)",
        "bw frac",
        "first call s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r.get('setting')} | {r.get('gamma', '')} | {r['impl']} "
                f"| error: {r['error'][:80]} |"
            )
            continue
        ms = r.get("fwd_bwd_ms", r.get("iteration_ms"))
        vals = [
            r["setting"],
            r.get("gamma"),
            r["impl"],
            r.get("forward_ms"),
            ms,
            r.get("speedup_vs_naive"),
            r.get("speedup_vs_naive_compiled"),
            r.get("speedup_vs_torch"),
            r.get("peak_MiB"),
            r.get("peak_over_in_out"),
            r.get("bandwidth_fraction"),
            r.get("first_call_s"),
        ]
        lines.append(
            "| "
            + " | ".join(_fmt(v) if not isinstance(v, float) else f"{v:.3g}" for v in vals)
            + " |"
        )
    return "\n".join(lines)


def tune(reps):
    """Block sizes of the tile kernels at the paper's setting (the defaults are a guess made
    without a GPU): prints and returns the fwd+bwd time of each configuration."""
    from crfkit.ops.chain.triton import chain_marginals_triton

    _, _, groups = build(SETTINGS["paper"])
    out = []
    for bc in (1, 2, 4, 8):
        for bi in (16, 32):
            for warps in (1, 2, 4, 8):
                cfg = dict(BLOCK_C=bc, BLOCK_I=bi, BLOCK_J=32, num_warps=warps)

                def impl(u, pw, lens, gamma, cfg=cfg):
                    return chain_marginals_triton(u, pw, lens, gamma, config=cfg)

                try:
                    ms = timeit(
                        lambda impl=impl, groups=groups: run_fwd_bwd(impl, groups, 1.0),
                        reps=reps,
                    )
                except Exception as e:
                    ms = float("nan")
                    print("  ", cfg, type(e).__name__, str(e)[:200])
                out.append(dict(config=cfg, fwd_bwd_ms=ms))
                print(f"  tune {cfg}: {ms:.3f} ms", flush=True)
    return out


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(
            obj,
            f,
            indent=2,
            default=lambda x: None if isinstance(x, float) and math.isnan(x) else str(x),
        )
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--out", default=os.path.join(HERE, "results"), help="folder for bench_gpu_<settings>.json"
    )
    p.add_argument(
        "--settings", default="paper,stereo,large", help="comma list of " + ",".join(SETTINGS)
    )
    p.add_argument(
        "--quick", action="store_true", help="fewer repetitions, no torch.compile of naive"
    )
    p.add_argument(
        "--no-compile-naive", action="store_true", help="skip torch.compile of the naive code"
    )
    p.add_argument("--tune", action="store_true", help="also sweep the tile kernels' block sizes")
    p.add_argument(
        "--device",
        default="cuda",
        choices=("cuda", "cpu"),
        help="cpu: a smoke test of this script (with --settings tiny; Triton only under "
        "TRITON_INTERPRET=1)",
    )
    args = p.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print(
            "bench_gpu: CUDA is not available on this machine; nothing measured. "
            "Run it on a GPU: PYTHONPATH=src python benchmarks/bench_gpu.py"
        )
        return 0
    reps = 5 if args.quick else 20
    torch.backends.cuda.matmul.allow_tf32 = False
    info = dict(
        device=torch.cuda.get_device_name(0)
        if _cuda()
        else f"cpu ({platform.processor() or 'unknown'})",
        torch=torch.__version__,
        python=platform.python_version(),
    )
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    print(
        f"bench_gpu on {info['device']} (torch {info['torch']}, triton {info['triton']})",
        flush=True,
    )
    copy_bw = copy_bandwidth(1 << 30 if _cuda() else 1 << 24)
    info["copy_bandwidth_GBps"] = copy_bw / 1e9
    print(f"device-to-device copy: {copy_bw / 1e9:.0f} GB/s", flush=True)
    impls = implementations(compile_naive=not (args.quick or args.no_compile_naive))
    rows, notes = [], []
    for name in args.settings.split(","):
        name = name.strip()
        if name not in SETTINGS:
            raise SystemExit(f"unknown setting {name!r}; expected one of {', '.join(SETTINGS)}")
        bench_setting(name, SETTINGS[name], (1.0, 0.0), impls, copy_bw, reps, rows, notes)
    result = dict(info, settings=SETTINGS, rows=rows, notes=notes)
    if args.tune:
        result["tune"] = tune(reps)
    print("\n" + table(rows))
    tag = "_".join(s.strip() for s in args.settings.split(","))
    path = os.path.join(args.out, f"bench_gpu_{tag}.json")
    write_json(path, result)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
