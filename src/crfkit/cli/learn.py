"""``crfkit learn``: the BBPL paper's learning experiments.

    crfkit learn convergence --graph grid --sizes 10,20,30 --blocks 16 --seconds 60 --out runs/conv
    crfkit learn blocksize   --graph ba --size 2000 --blocks 2,5,10,20,50 --seconds 60 --out runs/bs
    crfkit learn scale       --graph grid --sizes 25,100 --block-nodes 256 --out runs/scale
    crfkit learn segment     --data ROOT --out runs/seg        (Stanford Background layout)
    crfkit learn segment     --synthetic 12 --out runs/seg     (a generated data set in that layout)

Each writes its numbers (JSON and CSV) and figures (PNG) into ``--out``, atomically.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time

from .._validation import CRFValueError
from ..io.atomic import atomic_savefig  # noqa: E402
from ..io.atomic import atomic_write_text as _atomic_text  # noqa: E402
from .main import check_out_folder


def _atomic_png(fig, path: str) -> None:
    atomic_savefig(fig, path, dpi=110, bbox_inches="tight")


def _csv(rows, keys) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ints(s: str, option: str = "--sizes", low: int = 1) -> list[int]:
    """A comma-separated list of integers ``>= low``, at least one (``option`` names it in errors)."""
    try:
        values = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise CRFValueError(f"expected {option} as comma-separated integers (e.g. 10,20), got {s!r}") from None
    if not values or min(values) < low:
        raise CRFValueError(f"expected {option} as one or more integers >= {low}, got {s!r}")
    return values


def _check_graph(graph: str, sizes, option: str = "--sizes") -> None:
    if graph not in ("grid", "ba"):
        raise CRFValueError(f"expected --graph grid or ba, got {graph!r}")
    if graph == "ba" and min(sizes) < 3:
        raise CRFValueError(f"expected {option} >= 3 nodes with --graph ba (Barabási-Albert), got {min(sizes)}")


def _check_range(value, option: str, low: float, *, strict: bool = False) -> None:
    """``value >= low`` (``> low`` when ``strict``) and finite (``option`` names it in errors)."""
    ok = value == value and abs(value) != float("inf") and (value > low if strict else value >= low)
    if not ok:
        raise CRFValueError(f"expected {option} {'>' if strict else '>='} {low:g} and finite, got {value!r}")


def run_convergence(
    graph: str,
    sizes,
    blocks: int,
    seconds: float,
    out: str,
    l2: float,
    seed: int,
    rtol: float,
    threads: int = 1,
    evals: int = 40,
    damping: float | None = None,
    ref_iters: int = 300,
    eval_tol: float = 1e-8,
    suffix: str = "",
    bbpl_lr_scales=(),
):
    import torch

    from ..learning import FeatureCRF
    from .learn_experiments import compare_learners, reference_optimum, synthetic_problem

    torch.set_num_threads(threads)
    from tqdm.auto import tqdm

    results, table = {}, []
    for size in tqdm(sizes, desc="sizes"):
        inst, _ = synthetic_problem(graph, size, seed=seed)
        model = FeatureCRF(8, 20, 10)
        t0 = time.perf_counter()
        ref = reference_optimum(model, [inst], l2=l2, max_iter=ref_iters, tol=eval_tol)
        ref_s = time.perf_counter() - t0
        d = (0.5 if graph == "ba" else 0.0) if damping is None else damping
        r = compare_learners(
            inst,
            model,
            num_blocks=blocks,
            l2=l2,
            max_seconds=seconds,
            rtol=rtol,
            reference=ref,
            evals=evals,
            damping=d,
            eval_tol=eval_tol,
            bbpl_lr_scales=bbpl_lr_scales,
        )
        r["reference_seconds"] = ref_s
        r["nodes"] = inst.num_nodes
        results[str(size)] = r
        row = _convergence_row(graph, size, inst.num_nodes, ref[1], r["methods"])
        table.append(row)
        print(json.dumps(row))
    _write_convergence(out, f"convergence_{graph}{suffix}", graph, sizes, table, results, rtol)
    return table


def _convergence_row(graph: str, size: int, nodes: int, reference_objective: float, methods: dict) -> dict:
    """One row of the convergence table: per learner its time to the reference, steps and final
    values, and BBPL's speed-up over inner-dual and full BP."""
    row = {"graph": graph, "size": size, "nodes": nodes, "reference_objective": reference_objective}
    for m, v in methods.items():
        row[f"{m}_time_to_reference"] = v["time_to_reference"]
        row[f"{m}_steps"] = v["steps"]
        row[f"{m}_final_objective"] = v["final_objective"]
        row[f"{m}_final_distance"] = v["final_distance"]
    t = {m: v["time_to_reference"] for m, v in methods.items()}
    for b in [m for m in t if m.startswith("bbpl")]:
        for m in ("inner_dual", "full"):
            row[f"speedup_{b}_vs_{m}"] = (t[m] / t[b]) if (t.get(m) and t.get(b)) else None
    return row


def _plot_gap(ax, history, reference_objective: float, label: str) -> None:
    """The relative objective gap of one learner's history against learner seconds (log scale)."""
    ts = [h["seconds"] for h in history]
    gap = [max(abs(h["objective"] - reference_objective) / abs(reference_objective), 1e-12) for h in history]
    ax.semilogy(ts, gap, label=label)


def _write_convergence(out: str, stem: str, graph: str, sizes, table, results, rtol: float) -> None:
    """``STEM.json``, ``STEM.csv`` and ``STEM.png`` (one panel per size) into ``out``, atomically."""
    _atomic_text(os.path.join(out, f"{stem}.json"), json.dumps({"rows": table, "runs": results}, indent=1))
    keys = sorted({k for r in table for k in r})
    _atomic_text(os.path.join(out, f"{stem}.csv"), _csv(table, keys))
    plt = _plt()
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        r = results[str(size)]
        for m, v in r["methods"].items():
            _plot_gap(ax, v["history"], r["reference_objective"], m)
        ax.axhline(rtol, color="k", lw=0.5, ls="--")
        ax.set_title(f"{graph} {size} ({r['nodes']} nodes)")
        ax.set_xlabel("learner seconds")
        ax.set_ylabel("relative objective gap")
        ax.legend()
    _atomic_png(fig, os.path.join(out, f"{stem}.png"))


def run_blocksize(
    graph: str,
    size: int,
    block_counts,
    seconds: float,
    out: str,
    l2: float,
    seed: int,
    rtol: float,
    threads: int = 1,
    evals: int = 40,
    lr_scale: float | None = None,
):
    import torch

    from ..learning import FeatureCRF
    from .learn_experiments import block_size_sensitivity, reference_optimum, synthetic_problem

    torch.set_num_threads(threads)
    inst, _ = synthetic_problem(graph, size, seed=seed)
    model = FeatureCRF(8, 20, 10)
    ref = reference_optimum(model, [inst], l2=l2)
    r = block_size_sensitivity(
        inst,
        model,
        block_counts,
        l2=l2,
        max_seconds=seconds,
        rtol=rtol,
        reference=ref,
        evals=evals,
        damping=0.5 if graph == "ba" else 0.0,
        lr_scale=lr_scale,
    )
    rows = [
        {k: v for k, v in row.items() if k != "history"} | {"graph": graph, "size": size}
        for row in r["rows"]
    ]
    for row in rows:
        print(json.dumps(row))
    _atomic_text(os.path.join(out, f"blocksize_{graph}{size}.json"), json.dumps(r, indent=1))
    _atomic_text(os.path.join(out, f"blocksize_{graph}{size}.csv"), _csv(rows, sorted(rows[0])))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in r["rows"]:
        _plot_gap(ax, row["history"], r["reference_objective"], f"{row['blocks']} blocks")
    ax.axhline(rtol, color="k", lw=0.5, ls="--")
    ax.set_xlabel("learner seconds")
    ax.set_ylabel("relative objective gap")
    ax.set_title(f"BBPL block-size sensitivity, {graph} {size}")
    ax.legend()
    _atomic_png(fig, os.path.join(out, f"blocksize_{graph}{size}.png"))
    return rows


def run_scale(
    graph: str, sizes, block_nodes: int, steps: int, out: str, seed: int, threads: int = 1
):
    import torch

    from .learn_experiments import bbpl_step_time

    torch.set_num_threads(threads)
    rows = bbpl_step_time(sizes, graph=graph, block_nodes=block_nodes, steps=steps, seed=seed)
    base = rows[0]["seconds_per_step"]
    for r in rows:
        r["ratio_to_smallest"] = r["seconds_per_step"] / base
        print(json.dumps(r))
    _atomic_text(os.path.join(out, f"scale_{graph}.json"), json.dumps(rows, indent=1))
    _atomic_text(os.path.join(out, f"scale_{graph}.csv"), _csv(rows, sorted(rows[0])))
    return rows


def run_segment(
    data: str | None,
    synthetic: int,
    out: str,
    train: int,
    test: int,
    downsample: int,
    method: str,
    steps: int,
    blocks: int,
    seed: int,
    threads: int = 1,
):
    import torch

    from ..data.stanford_background import PixelClassifier, segmentation_instance
    from ..inference.convex_bp import marginals
    from ..learning import fit

    torch.set_num_threads(threads)
    generate = data is None
    if generate:
        data = os.path.join(out, "synthetic_stanford_background")
    tr, te = _segment_split(data, generate, synthetic, train, test, downsample, seed)
    clf = PixelClassifier().fit(tr)
    tr_inst = [segmentation_instance(s, clf) for s in tr]
    te_inst = [segmentation_instance(s, clf) for s in te]
    C = clf.C
    model = _classifier_start(C, tr_inst[0])
    t0 = time.perf_counter()
    res = fit(
        model,
        tr_inst,
        method=method,
        blocks=blocks,
        l2=1e-3,
        max_steps=steps,
        gtol=1e-6,
        eval_every=max(1, steps // 20),
        progress=True,
    )
    learn_s = time.perf_counter() - t0
    acc_clf = _pixel_accuracy(te, te_inst, lambda inst: inst.unary_features[:, :C].argmax(-1))
    acc_crf = _pixel_accuracy(
        te,
        te_inst,
        lambda inst: marginals(
            res.model.to_graph_mrf(inst), method="trbp", tol=1e-4, max_iters=200, damping=0.3
        ).unary.argmax(-1),
    )
    summary = {
        "data": data,
        "train": len(tr),
        "test": len(te),
        "method": method,
        "steps": res.steps,
        "learn_seconds": learn_s,
        "pixel_accuracy_classifier": acc_clf,
        "pixel_accuracy_crf": acc_crf,
        "final_objective": res.history[-1]["objective"],
    }
    print(json.dumps(summary))
    _write_segment(out, summary, res.history, method)
    return summary


def _segment_split(data: str, generate: bool, synthetic: int, train: int, test: int, downsample: int, seed: int):
    """The training and test images (a seeded shuffle of the data set); ``generate``: write
    ``synthetic`` generated images into ``data`` first."""
    import torch

    from ..data.stanford_background import load_stanford_background, write_synthetic_dataset

    if generate:
        write_synthetic_dataset(data, num_images=synthetic, seed=seed)
    samples = load_stanford_background(data, max_images=train + test, downsample=downsample)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(samples), generator=g).tolist()
    tr = [samples[i] for i in order[:train]]
    te = [samples[i] for i in order[train : train + test]]
    if not tr or not te:
        raise SystemExit(
            f"need at least one training and one test image, got {len(tr)} and {len(te)} of {len(samples)}"
        )
    return tr, te


def _classifier_start(C: int, instance):
    """A :class:`FeatureCRF` that starts from the pixel classifier: unary weights the identity on
    its ``C`` log-probabilities (the first ``C`` unary features), pairwise weights zero."""
    import torch

    from ..learning import FeatureCRF

    Fu, Fp = instance.unary_features.shape[1], instance.pairwise_features.shape[1]
    wu = torch.zeros(Fu, C, dtype=torch.float64)
    wu[:C, :C] = torch.eye(C, dtype=torch.float64)
    return FeatureCRF(C, Fu, Fp, wu, torch.zeros(Fp, C, C, dtype=torch.float64))


def _pixel_accuracy(samples, instances, pred_fn) -> float:
    """Fraction of labelled pixels (label ``>= 0``) where ``pred_fn(instance)`` is right."""
    correct = total = 0
    for s, inst in zip(samples, instances):
        pred = pred_fn(inst)
        lab = s.labels.flatten()
        keep = lab >= 0
        correct += int((pred[keep] == lab[keep]).sum())
        total += int(keep.sum())
    return correct / max(1, total)


def _write_segment(out: str, summary: dict, history, method: str) -> None:
    """``segment.json``, ``segment.csv`` and ``segment.png`` (objective against time) into ``out``."""
    _atomic_text(
        os.path.join(out, "segment.json"),
        json.dumps({"summary": summary, "history": history}, indent=1),
    )
    _atomic_text(
        os.path.join(out, "segment.csv"),
        _csv(history, ["step", "seconds", "objective", "grad_norm"]),
    )
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([h["seconds"] for h in history], [h["objective"] for h in history])
    ax.set_xlabel("learner seconds")
    ax.set_ylabel("objective")
    ax.set_title(f"segmentation CRF learning ({method})")
    _atomic_png(fig, os.path.join(out, "segment.png"))


#: Most threads and generated images accepted (``torch.set_num_threads`` crashes far above the former).
MAX_THREADS, MAX_SYNTHETIC = 1024, 100_000


def _check_threads(threads: int) -> None:
    if not 1 <= threads <= MAX_THREADS:
        raise CRFValueError(f"expected --threads in [1, {MAX_THREADS}], got {threads}")


def _check_common(
    graph: str, sizes, out: str, threads: int, *, seconds=None, l2=None, rtol=None, **at_least_one
) -> None:
    """The arguments the experiments share, checked before any work (one-line errors)."""
    _check_graph(graph, sizes, "--size" if "size" in at_least_one else "--sizes")
    _check_threads(threads)
    for name, value in at_least_one.items():
        if value < 1:
            raise CRFValueError(f"expected --{name.replace('_', '-')} >= 1, got {value}")
    for option, value in (("--seconds", seconds), ("--l2", l2), ("--rtol", rtol)):
        if value is not None:
            _check_range(value, option, 0.0)
    check_out_folder(out)


def _check_segment(data, synthetic, out, train, test, downsample, method, steps, blocks, threads) -> None:
    from ..learning.learners import METHODS

    if data is not None and not os.path.isdir(data):
        raise CRFValueError(
            f"expected --data a Stanford Background folder (images/, labels/), got {data!r}: no such folder"
        )
    if method not in METHODS:
        raise CRFValueError(f"expected --method in {METHODS}, got {method!r}")
    _check_threads(threads)
    if data is None and synthetic > MAX_SYNTHETIC:
        raise CRFValueError(f"expected --synthetic <= {MAX_SYNTHETIC} generated images, got {synthetic}")
    checks = {"--train": train, "--test": test, "--downsample": downsample, "--steps": steps, "--blocks": blocks}
    if data is None:
        checks["--synthetic"] = synthetic
    for option, value in checks.items():
        if value < 1:
            raise CRFValueError(f"expected {option} >= 1, got {value}")
    if data is None and synthetic < train + test:
        raise CRFValueError(f"expected --synthetic >= --train + --test = {train + test} images, got {synthetic}")
    check_out_folder(out)


def register(app) -> None:
    import typer

    learn = typer.Typer(
        help="Parameter-learning experiments of the BBPL paper (full BP, inner-dual, BBPL).",
        no_args_is_help=True,
    )
    for add in (_add_convergence, _add_blocksize, _add_scale, _add_segment):
        add(learn, typer)
    app.add_typer(learn, name="learn")


def _add_convergence(learn, typer) -> None:
    @learn.command("convergence")
    def convergence(
        graph: str = typer.Option("grid", help="grid or ba"),
        sizes: str = typer.Option("10,20,30", help="grid sides or BA node counts, comma separated"),
        blocks: int = typer.Option(16, help="BBPL blocks (grid: tiles)"),
        seconds: float = typer.Option(60.0, help="budget per learner (learner time)"),
        l2: float = typer.Option(1e-2),
        rtol: float = typer.Option(
            1e-4, help="relative objective gap counted as reaching the reference"
        ),
        seed: int = typer.Option(0),
        threads: int = typer.Option(1),
        out: str = typer.Option("runs/learn", help="output folder"),
    ):
        """The three learners on networks of growing size: objective against time."""
        size_list = _ints(sizes)
        _check_common(graph, size_list, out, threads, blocks=blocks, seconds=seconds, l2=l2, rtol=rtol)
        run_convergence(graph, size_list, blocks, seconds, out, l2, seed, rtol, threads)


def _add_blocksize(learn, typer) -> None:
    @learn.command("blocksize")
    def blocksize(
        graph: str = typer.Option("grid"),
        size: int = typer.Option(30),
        blocks: str = typer.Option("4,9,16,36,64"),
        seconds: float = typer.Option(60.0),
        l2: float = typer.Option(1e-2),
        rtol: float = typer.Option(1e-4),
        seed: int = typer.Option(0),
        threads: int = typer.Option(1),
        lr_scale: float = typer.Option(
            None,
            help="one step for all block counts: this x the full-learning step (default: step / blocks)",
        ),
        out: str = typer.Option("runs/learn"),
    ):
        """BBPL's sensitivity to the number of blocks."""
        block_list = _ints(blocks, "--blocks")
        _check_common(graph, [size], out, threads, seconds=seconds, l2=l2, rtol=rtol, size=size)
        if lr_scale is not None:
            _check_range(lr_scale, "--lr-scale", 0.0, strict=True)
        run_blocksize(
            graph, size, block_list, seconds, out, l2, seed, rtol, threads, lr_scale=lr_scale
        )


def _add_scale(learn, typer) -> None:
    @learn.command("scale")
    def scale(
        graph: str = typer.Option("grid"),
        sizes: str = typer.Option(
            "25,100", help="graph sizes (grid side: 25 -> 100 is 16x the nodes)"
        ),
        block_nodes: int = typer.Option(256),
        steps: int = typer.Option(50),
        seed: int = typer.Option(0),
        threads: int = typer.Option(1),
        out: str = typer.Option("runs/learn"),
    ):
        """Seconds per BBPL step at a fixed block size as the graph grows."""
        size_list = _ints(sizes)
        _check_common(graph, size_list, out, threads, block_nodes=block_nodes, steps=steps)
        run_scale(graph, size_list, block_nodes, steps, out, seed, threads)


def _add_segment(learn, typer) -> None:
    @learn.command("segment")
    def segment(
        data: str = typer.Option(None, help="Stanford Background root (images/, labels/)"),
        synthetic: int = typer.Option(
            12, help="without --data: generate this many images in that layout"
        ),
        train: int = typer.Option(8),
        test: int = typer.Option(4),
        downsample: int = typer.Option(1),
        method: str = typer.Option("bbpl"),
        steps: int = typer.Option(300),
        blocks: int = typer.Option(4),
        seed: int = typer.Option(0),
        threads: int = typer.Option(1),
        out: str = typer.Option("runs/segment"),
    ):
        """CRF segmentation learning on the Stanford Background layout; pixel accuracy."""
        _check_segment(data, synthetic, out, train, test, downsample, method, steps, blocks, threads)
        run_segment(
            data, synthetic, out, train, test, downsample, method, steps, blocks, seed, threads
        )
