"""Chain kernels on the CPU: the compiled numba backend (``ops/chain/numba.py``) vs the vectorised
PyTorch path (``ops/chain/torch.py``, hand-written backward) vs a naive autograd implementation.

    PYTHONPATH=src python benchmarks/bench_chain.py [--repeats 3] [--out benchmarks/results/]

Three parts, all ratios within one run (the machine's load changes wall times):

1. the stereo rows pass: 125 chains x 185 positions x 32 labels, truncated linear (truncation 4)
   with per-edge weights, max (gamma = 0): values + max-marginals (forward and backward messages),
   float32, torch vs numba with 1 and 2 numba threads (torch at 1 thread);
2. the paper's training setting: B=16, a 33x33 grid, L=21, the four default offsets, per-edge
   tables; forward + backward of the chain marginals of every offset (random upstream gradients),
   gamma = 1 and gamma = 0: naive autograd, torch, numba (1 and 2 threads), and the bytes autograd
   keeps for backward beyond the inputs (saved-tensor hooks, each storage counted once);
3. numba compile time: a fresh process with an empty cache (first call of every kernel, float32 and
   float64) and a second process reading that cache.

Prints a table and writes ``chain_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import crfkit  # noqa: E402
from crfkit.decomposition.grid import grid_chain_problem  # noqa: E402
from crfkit.io.atomic import atomic_write_text  # noqa: E402
from crfkit.ops.chain import numba as nbk  # noqa: E402
from crfkit.ops.chain.torch import chain_marginals_torch  # noqa: E402
from naive_chain import naive_chain_marginals  # noqa: E402


def chain_inputs(B, S, L, seed=0):
    g = torch.Generator().manual_seed(seed)
    unary = torch.randn(B, L, S, S, generator=g)
    pw = torch.randn(B, 4, L, L, S, S, generator=g)
    crf = crfkit.GridCRF(unary, pw)
    problem = grid_chain_problem(crf)
    out = []
    for grp in problem.groups:
        C, n = grp.nodes.shape
        u = torch.randn(C, n, L, generator=g)
        tables = grp.pairwise.tables.detach().clone()
        out.append((u, tables, grp.lengths))
    return out


def run(fn, inputs, gamma):
    saved = [0]
    input_ptrs: set[int] = set()
    seen: set[int] = set()

    def pack(t):
        # count each storage once, and not the inputs themselves (they exist anyway)
        ptr = t.untyped_storage().data_ptr()
        if ptr not in input_ptrs and ptr not in seen:
            seen.add(ptr)
            saved[0] += t.untyped_storage().nbytes()
        return t

    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        losses = []
        leaves = []
        for u, tables, lengths in inputs:
            u = u.clone().requires_grad_()
            tab = tables.clone().requires_grad_()
            input_ptrs.update({u.untyped_storage().data_ptr(), tab.untyped_storage().data_ptr()})
            pw = crfkit.decomposition.ChainPairwise("dense", tables=tab)
            m, v = fn(u, pw, lengths, gamma)
            gm = torch.randn(m.shape, generator=torch.Generator().manual_seed(1))
            losses.append((m * gm).sum() + v.sum())
            leaves += [u, tab]
    t1 = time.perf_counter()
    torch.autograd.grad(sum(losses), leaves)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t0, saved[0]


def best_of(fn, repeats):
    fn()  # warm-up (numba: loads / compiles the kernels)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def with_threads(n, fn):
    """Run ``fn`` with ``CRFKIT_NUM_THREADS=n`` (the numba kernels read it on every call)."""
    old = os.environ.get("CRFKIT_NUM_THREADS")
    os.environ["CRFKIT_NUM_THREADS"] = str(n)
    try:
        return fn()
    finally:
        if old is None:
            del os.environ["CRFKIT_NUM_THREADS"]
        else:
            os.environ["CRFKIT_NUM_THREADS"] = old


def stereo_rows(repeats, C=125, n=185, L=32, truncation=4.0):
    g = torch.Generator().manual_seed(0)
    u = 3 * torch.randn(C, n, L, generator=g)
    pw = crfkit.decomposition.ChainPairwise(
        "truncated_linear", weight=torch.rand(C, n - 1, generator=g), truncation=truncation
    )
    lengths = torch.full((C,), n)
    with torch.no_grad():
        m0, _ = chain_marginals_torch(u, pw, lengths, 0.0)
        m1, _ = nbk.chain_marginals_numba(u, pw, lengths, 0.0)
        row = {"setting": f"{C} chains x {n} x {L} labels, truncated linear T={truncation:g}, max, float32",
               "max_abs_diff": float((m0 - m1).abs().max()),
               "torch_s": best_of(lambda: chain_marginals_torch(u, pw, lengths, 0.0), repeats)}
        for t in (1, 2):
            row[f"numba_{t}t_s"] = with_threads(
                t, lambda: best_of(lambda: nbk.chain_marginals_numba(u, pw, lengths, 0.0), repeats))
            row[f"numba_values_{t}t_s"] = with_threads(
                t, lambda: best_of(lambda: nbk.chain_values_numba(u, pw, lengths, 0.0), repeats))
    row["speedup_1t"] = row["torch_s"] / row["numba_1t_s"]
    row["speedup_2t"] = row["torch_s"] / row["numba_2t_s"]
    return row


_COMPILE_SCRIPT = r"""
import time, torch
t0 = time.perf_counter()
from crfkit.decomposition.chains import ChainPairwise
import crfkit.ops.chain.numba as nb
t1 = time.perf_counter()
for dt in (torch.float32, torch.float64):
    u = torch.randn(2, 3, 4, dtype=dt, requires_grad=True)
    pw = ChainPairwise("dense", tables=torch.randn(2, 2, 4, 4, dtype=dt))
    lens = torch.tensor([3, 2])
    m, v = nb.chain_marginals_numba(u, pw, lens, 0.5)
    (m.sum() + v.sum()).backward()
    nb.chain_values_numba(u, pw, lens, 0.0)
    nb.chain_viterbi_numba(u, pw, lens)
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def compile_times():
    """(import s, first calls s) in a process with an empty numba cache, then in a second one."""
    env = dict(os.environ)
    src = str(Path(crfkit.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env["NUMBA_CACHE_DIR"] = cache
        for name in ("fresh", "cached"):
            r = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True,
                               check=True)
            imp, first = map(float, r.stdout.split()[-2:])
            out[name] = {"import_s": imp, "first_calls_s": first}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=33)
    ap.add_argument("--labels", type=int, default=21)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: leave torch's default)")
    ap.add_argument("--out", default="benchmarks/results/")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    inputs = chain_inputs(a.batch, a.size, a.labels)
    in_bytes = sum(u.numel() * 4 + t.numel() * 4 for u, t, _ in inputs)
    rows = []
    for gamma in (1.0, 0.0):
        res = {}
        run(nbk.chain_marginals_numba, inputs, gamma)  # warm-up: load / compile
        impls = (("naive", naive_chain_marginals, 1), ("torch", chain_marginals_torch, 1),
                 ("numba_1t", nbk.chain_marginals_numba, 1), ("numba_2t", nbk.chain_marginals_numba, 2))
        for name, fn, threads in impls:
            best = None
            for _ in range(a.repeats):
                r = with_threads(threads, lambda fn=fn, gamma=gamma: run(fn, inputs, gamma))
                best = r if best is None or r[1] < best[1] else best
            res[name] = best
        nf, nt, ns = res["naive"]
        tf, tt, ts = res["torch"]
        _, c1, cs = res["numba_1t"]
        _, c2, _ = res["numba_2t"]
        rows.append({
            "gamma": gamma, "naive_fwd_s": nf, "naive_fwd_bwd_s": nt, "naive_saved_MiB": ns / 2**20,
            "torch_fwd_s": tf, "torch_fwd_bwd_s": tt, "torch_saved_MiB": ts / 2**20,
            "numba_1t_fwd_bwd_s": c1, "numba_2t_fwd_bwd_s": c2, "numba_saved_MiB": cs / 2**20,
            "speedup_fwd_bwd": nt / tt, "saved_memory_ratio": ts / ns,
            "numba_vs_torch": tt / c1, "numba_vs_naive": nt / c1, "numba_2t_vs_torch": tt / c2,
        })
    stereo = stereo_rows(a.repeats)
    compiled = compile_times()
    print(f"stereo rows pass ({stereo['setting']}; max |torch - numba| {stereo['max_abs_diff']:.1e}):")
    print(f"  torch {stereo['torch_s'] * 1e3:.1f} ms | numba 1 thread {stereo['numba_1t_s'] * 1e3:.2f} ms "
          f"({stereo['speedup_1t']:.1f}x), 2 threads {stereo['numba_2t_s'] * 1e3:.2f} ms ({stereo['speedup_2t']:.1f}x)"
          f" | values only: {stereo['numba_values_1t_s'] * 1e3:.2f} ms / {stereo['numba_values_2t_s'] * 1e3:.2f} ms")
    f, c = compiled["fresh"], compiled["cached"]
    print(f"numba compile (first call of every kernel, f32+f64): fresh cache {f['first_calls_s']:.2f} s, "
          f"second process {c['first_calls_s']:.2f} s (module import {c['import_s']:.2f} s)")
    print(f"chain kernels, B={a.batch}, {a.size}x{a.size}, L={a.labels}, 4 offsets, per-edge tables "
          f"(inputs {in_bytes / 2**20:.1f} MiB), {torch.get_num_threads()} threads")
    print(f"{'gamma':>6} {'naive f+b s':>12} {'torch f+b s':>12} {'numba 1t s':>11} {'numba 2t s':>11} "
          f"{'nb/torch':>9} {'nb/naive':>9} {'saved MiB naive/torch/numba':>28}")
    for r in rows:
        saved = f"{r['naive_saved_MiB']:.1f}/{r['torch_saved_MiB']:.1f}/{r['numba_saved_MiB']:.1f}"
        print(f"{r['gamma']:>6} {r['naive_fwd_bwd_s']:>12.3f} {r['torch_fwd_bwd_s']:>12.3f} "
              f"{r['numba_1t_fwd_bwd_s']:>11.3f} {r['numba_2t_fwd_bwd_s']:>11.3f} {r['numba_vs_torch']:>8.1f}x "
              f"{r['numba_vs_naive']:>8.1f}x {saved:>28}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"setting": vars(a), "input_MiB": in_bytes / 2**20, "threads": torch.get_num_threads(),
               "machine": platform.processor() or platform.machine(), "torch": torch.__version__, "rows": rows,
               "stereo_rows": stereo, "numba_compile": compiled,
               "numba": getattr(nbk.numba, "__version__", None)}
    atomic_write_text(out / "chain_cpu.json", json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
