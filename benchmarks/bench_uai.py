"""``crfkit solve`` on real UAI competition instances, against their known answers and toulbar2.

One command::

    python benchmarks/bench_uai.py [--data ../shared/uai] [--out benchmarks/results/]
        [--iters 500] [--time-limit 10] [--tb2-time 10] [--no-mar] [--no-toulbar2] [--only NAME ...]

The data folder (not part of the repository) holds ``NAME.uai`` files, their ``.evid``/``.MAR``
files and ``solutions.json`` (reference values, log10 units); the script says so and exits 0
when it is absent.  Per instance it runs, through the functions ``crfkit solve`` uses
(:func:`crfkit.cli.solve.solve_file`):

- MAP (``--method auto``: exact variable elimination when its tables are small enough, else
  dual decomposition then the local search of :mod:`crfkit.inference.rounding`, all within
  ``--time-limit`` seconds): the labelling's log10 value, recomputed here from the raw file
  by a plain-Python evaluator (an independent check of the reader), against the optimum or
  best known; the certificate (log10) against the optimum; where the certificate comes from
  (``exact`` or ``dual decomposition``); the relative gap; the time; whether the issue's
  target is met (within 0.1% of a proven optimum, a valid certificate and at most 10 s; on a
  best-known-only instance, at least toulbar2's value);
- MAR with ``trbp`` (an upper bound on log Z) and ``bethe``: log10 Z against the exact value, and
  the largest absolute marginal error against the reference ``.MAR``;
- toulbar2 (``pytoulbar2``, in a subprocess, ``--tb2-time`` seconds) on the same file: the row
  to beat (its labelling valued by the same evaluator).

Higher-order instances are refused by crfkit (pairwise only): their rows carry the error
message and toulbar2's value.  Results: a table on stdout and ``uai.json`` / ``uai.txt`` in
``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import torch

from crfkit.cli.solve import solve_file
from crfkit.io.atomic import atomic_write_text
from crfkit.io.uai import read_map_result, read_mar_result

HERE = os.path.dirname(os.path.abspath(__file__))
LN10 = math.log(10.0)


def log10_value(path: str, labels: list[int]) -> float:
    """log10 of the product of factor values at ``labels``, read from the raw file (plain Python)."""
    toks = open(path, encoding="utf-8").read().split()
    p = 1
    n = int(toks[p])
    p += 1
    cards = [int(t) for t in toks[p : p + n]]
    p += n
    nf = int(toks[p])
    p += 1
    scopes = []
    for _ in range(nf):
        k = int(toks[p])
        scopes.append([int(t) for t in toks[p + 1 : p + 1 + k]])
        p += 1 + k
    total = 0.0
    for sc in scopes:
        cnt = int(toks[p])
        idx = 0
        for v in sc:
            idx = idx * cards[v] + labels[v]
        val = float(toks[p + 1 + idx])
        total += math.log10(val) if val > 0 else -math.inf
        p += 1 + cnt
    return total


def run_toulbar2(path: str, limit: float) -> dict:
    code = (
        "import json,sys,pytoulbar2\n"
        "c=pytoulbar2.CFN(resolution=6)\nc.Read(sys.argv[1])\n"
        "r=c.Solve(timeLimit=int(sys.argv[2]))\n"
        "print('RESULT', json.dumps(None if r is None else [int(x) for x in r[0]]))\n"
    )
    t0 = time.perf_counter()
    try:
        p = subprocess.run(
            [sys.executable, "-c", code, path, str(int(math.ceil(limit)))],
            capture_output=True, text=True, timeout=limit * 6 + 60,
        )
    except subprocess.TimeoutExpired:
        return {"value": None, "seconds": time.perf_counter() - t0, "note": "timed out"}
    sec = time.perf_counter() - t0
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        return {"value": None, "seconds": sec, "note": (p.stderr or p.stdout)[-200:]}
    lab = json.loads(lines[-1][7:])
    return {"value": None if lab is None else log10_value(path, lab), "seconds": sec}


def run_instance(name: str, ref: dict, data: str, args, tmp: str) -> dict:
    path = os.path.join(data, ref["file"])
    evid = path + ".evid"
    evid = evid if os.path.exists(evid) and open(evid).read().split() not in ([], ["0"]) else None
    row = {"instance": name, "pairwise": ref.get("pairwise"), "opt_log10": ref.get("log10_MAP_value"),
           "opt_status": ref.get("MAP_status", "")[:40], "log10_Z_exact": ref.get("log10_Z_recomputed_exact_here")
           or ref.get("log10_Z_reference")}
    try:
        s = solve_file(path, "MAP", evidence_path=evid, iters=args.iters, out=os.path.join(tmp, name + ".MAP"),
                       progress=False, time_limit=args.time_limit)
        lab = read_map_result(s["result_file"]).tolist()
        row.update({
            "map_log10": log10_value(path, lab) if evid is None else s["log10_score"],
            "map_log10_crfkit": s["log10_score"], "bound_log10": s["log10_dual_bound"],
            "rel_gap": s["relative_gap"], "map_s": s["seconds"], "feasible": s["feasible"],
            "source": "exact" if s["certificate_source"] == "exact" else "dd", "optimal": s["optimal"],
            "solver_log10": s["rounding"]["solver_score"] / LN10 if s.get("rounding") else None,
        })
    except ValueError as err:
        row["error"] = str(err).split(": ", 1)[-1][:160]
        print(f"[{name}] crfkit refused: {row['error']}", file=sys.stderr, flush=True)
    if "error" not in row and not args.no_mar:
        mar = read_mar_result(path + ".MAR") if os.path.exists(path + ".MAR") else None
        for method in ("trbp", "bethe"):
            s = solve_file(path, "MAR", evidence_path=evid, iters=args.bp_iters, method=method,
                           out=os.path.join(tmp, f"{name}.{method}.MAR"), progress=False)
            row[f"{method}_log10Z"] = s["log10_partition"]
            row[f"{method}_converged"] = s["converged"]
            row[f"{method}_s"] = s["seconds"]
            if mar is not None:
                got = read_mar_result(s["result_file"])
                row[f"{method}_mar_err"] = max(float((a - b).abs().max()) for a, b in zip(got, mar))
    if not args.no_toulbar2:
        tb = run_toulbar2(path, args.tb2_time)
        row["tb2_log10"], row["tb2_s"] = tb["value"], tb["seconds"]
        if "note" in tb:
            row["tb2_note"] = tb["note"]
    row["target"] = target_met(row, proven=(ref.get("MAP_status") or "").startswith("proven"))
    return row


def target_met(row: dict, proven: bool) -> str | None:
    """The issue's MAP target: within 0.1% of a proven optimum with a valid certificate in <= 10 s;
    on a best-known-only instance, at least toulbar2's (10 s) value."""
    val, opt = row.get("map_log10"), row.get("opt_log10")
    if val is None or opt is None:
        return None
    if proven:
        ok = (opt - val) <= 1e-3 * abs(opt) and row["bound_log10"] >= opt - 1e-6 * max(1.0, abs(opt))
        return "met" if ok and row["map_s"] <= 10.0 else "not met"
    tb = row.get("tb2_log10")
    return None if tb is None else ("met" if val >= tb - 1e-9 * max(1.0, abs(tb)) else "not met")


COLS = [("instance", "instance"), ("map_log10", "crfkit log10"), ("opt_log10", "optimum/best"),
        ("tb2_log10", "toulbar2"), ("bound_log10", "certificate"), ("source", "from"),
        ("rel_gap", "rel gap"), ("map_s", "MAP s"), ("target", "target"),
        ("trbp_log10Z", "trbp log10Z"), ("bethe_log10Z", "bethe log10Z"), ("log10_Z_exact", "exact log10Z"),
        ("trbp_mar_err", "trbp MAR err"), ("bethe_mar_err", "bethe MAR err")]


def render(rows: list[dict]) -> str:
    def f(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.6g}"
        return str(v)

    lines = [" | ".join(h for _, h in COLS)]
    for r in rows:
        lines.append(" | ".join(f(r.get(k)) for k, _ in COLS) + (f"  [{r['error'][:70]}]" if "error" in r else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "uai"))
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--iters", type=int, default=500)
    ap.add_argument("--time-limit", type=float, default=10.0, help="crfkit solve --time-limit (MAP)")
    ap.add_argument("--no-mar", action="store_true", help="skip the MAR runs")
    ap.add_argument("--bp-iters", type=int, default=1000)
    ap.add_argument("--tb2-time", type=float, default=10.0)
    ap.add_argument("--no-toulbar2", action="store_true")
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args(argv)
    sol_path = os.path.join(args.data, "solutions.json")
    if not os.path.exists(sol_path):
        print(f"no UAI data at {os.path.abspath(args.data)} (solutions.json missing): nothing to run")
        return 0
    torch.set_num_threads(1)
    refs = json.load(open(sol_path))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, ref in refs.items():
            if args.only and name not in args.only:
                continue
            print(f"[{name}] ...", file=sys.stderr, flush=True)
            rows.append(run_instance(name, ref, args.data, args, tmp))
            os.makedirs(args.out, exist_ok=True)
            atomic_write_text(os.path.join(args.out, "uai.json"), json.dumps(
                {"args": vars(args), "rows": rows}, indent=1, default=str) + "\n")
            print(json.dumps(rows[-1], default=str), file=sys.stderr, flush=True)
    table = render(rows)
    print(table)
    atomic_write_text(os.path.join(args.out, "uai.txt"), table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
