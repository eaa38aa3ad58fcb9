"""Segmentation benchmarks.

1. The bundled context benchmark (``crfkit.data.shapes``): the small CNN alone vs the same CNN
   + dual-decomposition CRF, same data, steps and optimiser, over several seeds; mIoU on the
   validation split (mean and spread).
2. (``--step-time``, needs torchvision) the cost of one training step of DeepLabV3-ResNet-50
   block4 + 15 FPI against the baseline on the same device and batch, as a ratio.

    python benchmarks/bench_segmentation.py --seeds 0 1 2 --steps 200 --val-images 128 --threads 1 --out benchmarks/results
    python benchmarks/bench_segmentation.py --step-time --skip-shapes --size 513 --batch 1

Writes ``segmentation.json`` and ``segmentation.csv`` to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import statistics
import tempfile
import time

import torch

from crfkit.training.checkpoint import atomic_write_text

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(os.path.dirname(HERE), "configs")


def run_shapes(args) -> list[dict]:
    from crfkit.training import load_config, train

    rows = []
    for seed in args.seeds:
        for variant, cfg_name in (("baseline", "shapes_cpu.toml"), ("+CRF", "shapes_cpu_crf.toml")):
            overrides = [
                f"train.seed={seed}",
                f"train.steps={args.steps}",
                "train.progress=false",
                f"data.shapes_train_images={args.train_images}",
                f"data.shapes_val_images={args.val_images}",
                "train.checkpoint_every=0",
            ]
            if variant == "+CRF":
                overrides.append(f"model.crf_iters={args.crf_iters}")
            cfg = load_config(os.path.join(CONFIGS, cfg_name), overrides)
            with tempfile.TemporaryDirectory() as out:
                t0 = time.perf_counter()
                summary = train(cfg, out)
                secs = time.perf_counter() - t0
            m = summary["metrics"]
            row = {
                "seed": seed,
                "variant": variant,
                "miou": m["miou"],
                "pixel_acc": m["pixel_acc"],
                "iou": m["iou"],
                "final_loss": summary["loss"],
                "seconds": secs,
                "steps": args.steps,
            }
            rows.append(row)
            print(
                f"seed {seed} {variant:9s} mIoU {100 * m['miou']:.2f}  acc {100 * m['pixel_acc']:.2f}  "
                f"loss {summary['loss']:.4f}  {secs:.0f}s",
                flush=True,
            )
    return rows


def summarise(rows: list[dict]) -> dict:
    out = {}
    for variant in ("baseline", "+CRF"):
        v = [100 * r["miou"] for r in rows if r["variant"] == variant]
        if v:
            out[variant] = {
                "mean": statistics.mean(v),
                "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                "min": min(v),
                "max": max(v),
                "n": len(v),
            }
    if "baseline" in out and "+CRF" in out:
        diffs = [
            100 * (c["miou"] - b["miou"])
            for b, c in zip(
                [r for r in rows if r["variant"] == "baseline"],
                [r for r in rows if r["variant"] == "+CRF"],
            )
        ]
        out["gain"] = {"mean": statistics.mean(diffs), "min": min(diffs), "max": max(diffs)}
    return out


def step_time(args) -> dict:
    from crfkit.nn import build_segmentation_model

    res = {}
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 21, (args.batch, args.size, args.size))
    for name, iters in (("block4", 0), ("block4+15FPI", 15)):
        torch.manual_seed(0)
        model = build_segmentation_model(21, backbone="resnet50", head="block4", crf_iters=iters)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        times = []
        for i in range(args.reps + 1):
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(x), y, ignore_index=255)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i > 0:  # the first step warms up
                times.append(time.perf_counter() - t0)
        res[name] = statistics.median(times)
        print(
            f"{name:14s} step {res[name]:.3f} s  (batch {args.batch}, {args.size}x{args.size})",
            flush=True,
        )
    res["ratio"] = res["block4+15FPI"] / res["block4"]
    print(f"ratio +15FPI / baseline: {res['ratio']:.3f}")
    return res


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--train-images", type=int, default=1024)
    p.add_argument("--val-images", type=int, default=256)
    p.add_argument("--crf-iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--skip-shapes", action="store_true")
    p.add_argument(
        "--step-time",
        action="store_true",
        help="DeepLabV3-ResNet-50 step-time ratio (needs torchvision)",
    )
    p.add_argument("--size", type=int, default=513)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {"device": "cpu", "torch": torch.__version__, "threads": torch.get_num_threads()}
    rows = []
    if not args.skip_shapes:
        rows = run_shapes(args)
        result["shapes"] = {
            "rows": rows,
            "summary": summarise(rows),
            "steps": args.steps,
            "train_images": args.train_images,
            "val_images": args.val_images,
            "crf_iters": args.crf_iters,
        }
        s = result["shapes"]["summary"]
        print("\nvariant     mIoU mean ± std (min..max) over seeds")
        for k in ("baseline", "+CRF"):
            if k in s:
                print(
                    f"{k:9s}  {s[k]['mean']:.2f} ± {s[k]['std']:.2f} ({s[k]['min']:.2f}..{s[k]['max']:.2f})"
                )
        if "gain" in s:
            print(
                f"gain       {s['gain']['mean']:+.2f} (min {s['gain']['min']:+.2f}, max {s['gain']['max']:+.2f})"
            )
    if args.step_time:
        result["step_time"] = step_time(args)
    os.makedirs(args.out, exist_ok=True)
    tag = "segmentation" if not args.skip_shapes else "segmentation_step_time"
    atomic_write_text(os.path.join(args.out, f"{tag}.json"), json.dumps(result, indent=2))
    if rows:
        buf = io.StringIO()
        w = csv.writer(buf)
        cols = ["seed", "variant", "miou", "pixel_acc", "final_loss", "seconds", "steps"]
        w.writerow(cols)
        for r in rows:
            w.writerow([r[c] for c in cols])
        atomic_write_text(os.path.join(args.out, f"{tag}.csv"), buf.getvalue())


if __name__ == "__main__":
    main()
