"""Chain kernels on the CPU: the vectorised PyTorch path (hand-written backward) vs a naive
autograd implementation, at the paper's training setting.

    python benchmarks/bench_chain.py [--batch 16] [--size 33] [--labels 21] [--repeats 3] [--out benchmarks/results/]

Setting: B=16, a 33x33 grid (a 513x513 crop at output stride 16), L=21, the four default offsets,
per-edge tables; forward + backward of the chain marginals of every offset (random upstream
gradients), gamma = 1 and gamma = 0. Memory is measured as the bytes autograd keeps for backward beyond the inputs themselves
(saved-tensor hooks, each storage counted once; what dominates the peak memory of a training step).
Prints a table and writes ``chain_cpu.json``; the ratios are the figures to read (same run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import crfkit  # noqa: E402
from crfkit.decomposition.grid import grid_chain_problem  # noqa: E402
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=33)
    ap.add_argument("--labels", type=int, default=21)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--out", default="benchmarks/results/")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    inputs = chain_inputs(a.batch, a.size, a.labels)
    in_bytes = sum(u.numel() * 4 + t.numel() * 4 for u, t, _ in inputs)
    rows = []
    for gamma in (1.0, 0.0):
        res = {}
        for name, fn in (("naive", naive_chain_marginals), ("torch", chain_marginals_torch)):
            best = None
            for _ in range(a.repeats):
                r = run(fn, inputs, gamma)
                best = r if best is None or r[1] < best[1] else best
            res[name] = best
        nf, nt, ns = res["naive"]
        tf, tt, ts = res["torch"]
        rows.append({
            "gamma": gamma, "naive_fwd_s": nf, "naive_fwd_bwd_s": nt, "naive_saved_MiB": ns / 2**20,
            "torch_fwd_s": tf, "torch_fwd_bwd_s": tt, "torch_saved_MiB": ts / 2**20,
            "speedup_fwd_bwd": nt / tt, "saved_memory_ratio": ts / ns,
        })
    print(f"chain kernels, B={a.batch}, {a.size}x{a.size}, L={a.labels}, 4 offsets, per-edge tables "
          f"(inputs {in_bytes / 2**20:.1f} MiB), {torch.get_num_threads()} threads")
    print(f"{'gamma':>6} {'naive f+b s':>12} {'torch f+b s':>12} {'speed-up':>9} {'naive saved MiB':>16} {'torch saved MiB':>16} {'mem ratio':>10}")
    for r in rows:
        print(f"{r['gamma']:>6} {r['naive_fwd_bwd_s']:>12.3f} {r['torch_fwd_bwd_s']:>12.3f} {r['speedup_fwd_bwd']:>9.2f} "
              f"{r['naive_saved_MiB']:>16.1f} {r['torch_saved_MiB']:>16.1f} {r['saved_memory_ratio']:>10.3f}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"setting": vars(a), "input_MiB": in_bytes / 2**20, "threads": torch.get_num_threads(),
               "machine": platform.processor() or platform.machine(), "torch": torch.__version__, "rows": rows}
    tmp = out / "chain_cpu.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, out / "chain_cpu.json")


if __name__ == "__main__":
    main()
