"""End-to-end stereo on real data: a small CNN's cost volume + learned pairwise + CRF, trained end to end.

The bundled Middlebury motorcycle pair (scikit-image) at 1/``factor`` resolution (default 4:
125 × 185 pixels, disparities 0..15 as labels).  A small CNN computes matching features of the
left and right images; the unaries are the cost volume ``scale · cos(f_L(y, x), f_R(y, x - l))``
for each disparity label ``l``.  The ``+CRF`` model adds a context branch and a
:class:`~crfkit.nn.PairwiseHead` (a per-edge weight from the context features of both ends ×
a learned table per offset: ``--table distance``, a learned function of ``|a - c|``, the
default; or ``--table full``, a learned ``L × L`` table, which can learn label priors of the
training part that do not transfer) and the :class:`~crfkit.nn.DualDecompositionCRF` layer;
the plain model uses the unaries as logits.
Both are trained with cross-entropy against the rounded ground truth on random crops of the
**left part** of the image (x < ``split`` of the width) and evaluated on the **right part**
(disjoint pixels; its right-image columns reach into the left part as the disparities need).

Bad-pixel rates: the fraction of pixels with known ground truth whose decoded disparity
(argmax of the logits) is off by more than 1 and 2 pixels **at the working resolution**
(``factor`` × that at full resolution), and the same at full resolution after scaling the
disparities by ``factor`` (thresholds 1 and 2 full-resolution pixels; these include the
quantisation to ``factor``-pixel steps).

    python benchmarks/bench_stereo_e2e.py --steps 200 --seeds 0 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from crfkit.nn import DualDecompositionCRF, PairwiseHead
from crfkit.training.checkpoint import atomic_write_text

HERE = os.path.dirname(os.path.abspath(__file__))


def conv_relu(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True))


class E2EStereo(nn.Module):
    """``(left [B, 3, h, w], right [B, 3, h, w + L - 1]) -> logits [B, L, h, w]``.

    The right crop carries ``L - 1`` extra columns on its left so that every disparity of
    every left pixel has a partner.
    """

    def __init__(
        self,
        num_labels: int,
        crf_iters: int = 0,
        gamma: float = 1.0,
        width: int = 32,
        feat: int = 24,
        table: str = "distance",
    ):
        super().__init__()
        self.L = num_labels
        self.features = nn.Sequential(
            conv_relu(3, width),
            conv_relu(width, width),
            conv_relu(width, width),
            nn.Conv2d(width, feat, 3, padding=1),
        )
        self.log_scale = nn.Parameter(torch.tensor(float(np.log(10.0))))
        self.crf = None
        self.table = table
        if crf_iters > 0:
            self.context = nn.Sequential(conv_relu(3, 16), conv_relu(16, 16))
            self.pairwise = PairwiseHead(16, num_labels, form="weighted", init_std=0.01)
            self.crf = DualDecompositionCRF(num_iters=crf_iters, gamma=gamma)
            if table == "distance":
                # score of a label pair depends on |a - c| only: no label prior that would
                # not transfer from the training part of the image to the test part
                self.distance_scores = nn.Parameter(torch.zeros(num_labels))
                idx = torch.arange(num_labels)
                self.register_buffer(
                    "distance_index", (idx[:, None] - idx[None, :]).abs(), persistent=False
                )

    def unary(self, left, right):
        fl = F.normalize(self.features(left), dim=1)
        fr = F.normalize(self.features(right), dim=1)
        w = left.shape[-1]
        L = self.L
        cost = [(fl * fr[..., L - 1 - d : L - 1 - d + w]).sum(1) for d in range(L)]
        return self.log_scale.exp() * torch.stack(cost, dim=1)

    def forward(self, left, right):
        u = self.unary(left, right)
        if self.crf is None:
            return u
        pw = self.pairwise(self.context(left))  # K pairs (weight [B, h, w], table [L, L])
        if self.table == "distance":
            t = self.distance_scores[self.distance_index]
            pw = [(w, t) for w, _ in pw]
        return self.crf(u, pw)


def prepare(factor: int):
    from crfkit.data.stereo import downscale, downscale_disparity, load_motorcycle

    pair = load_motorcycle()
    left = torch.from_numpy(downscale(pair.left, factor).astype(np.float32)).permute(2, 0, 1)
    right = torch.from_numpy(downscale(pair.right, factor).astype(np.float32)).permute(2, 0, 1)
    mean, std = left.mean((1, 2), keepdim=True), left.std((1, 2), keepdim=True)
    left, right = (left - mean) / std, (right - mean) / std
    disp = downscale_disparity(pair.disparity, factor)  # working-resolution pixels, inf unknown
    return left, right, torch.from_numpy(np.asarray(disp, dtype=np.float32)), pair


def labels_of(disp: torch.Tensor, L: int) -> torch.Tensor:
    lab = disp.round()
    bad = ~torch.isfinite(disp) | (lab < 0) | (lab >= L)
    return torch.where(bad, torch.full_like(lab, 255), lab).long()


def crop_batch(left, right, labels, g, batch, h, w, x_lo, x_hi, L):
    H = left.shape[1]
    xs, rs, ys = [], [], []
    for _ in range(batch):
        y0 = int(torch.randint(0, H - h + 1, (), generator=g))
        x0 = int(torch.randint(max(x_lo, L - 1), x_hi - w + 1, (), generator=g))
        xs.append(left[:, y0 : y0 + h, x0 : x0 + w])
        rs.append(right[:, y0 : y0 + h, x0 - L + 1 : x0 + w])
        ys.append(labels[y0 : y0 + h, x0 : x0 + w])
    return torch.stack(xs), torch.stack(rs), torch.stack(ys)


def bad_rates(pred: torch.Tensor, disp: torch.Tensor, factor: int) -> dict:
    ok = torch.isfinite(disp)
    err = (pred.float() - disp).abs()[ok]
    err_full = err * factor
    return {
        "bad1": float((err > 1).float().mean()),
        "bad2": float((err > 2).float().mean()),
        "bad1_fullres": float((err_full > 1).float().mean()),
        "bad2_fullres": float((err_full > 2).float().mean()),
        "epe": float(err.mean()),
        "pixels": int(ok.sum()),
    }


def run(args, seed: int, crf_iters: int, data) -> dict:
    left, right, disp, _ = data
    L = args.labels
    labels = labels_of(disp, L)
    H, W = labels.shape
    split = int(W * args.split)
    torch.manual_seed(seed)
    model = E2EStereo(L, crf_iters=crf_iters, gamma=args.gamma, table=args.table)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = args.lr * (1 - step / args.steps) ** 0.9
        xl, xr, y = crop_batch(
            left, right, labels, g, args.batch, args.crop_h, args.crop_w, 0, split, L
        )
        loss = F.cross_entropy(model(xl, xr), y, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % max(1, args.steps // 5) == 0:
            print(
                f"  seed {seed} {'+CRF' if crf_iters else 'plain'} step {step + 1} loss {loss.item():.4f}",
                flush=True,
            )
    train_s = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        x0 = split
        logits = model(left[None, :, :, x0:], right[None, :, :, x0 - L + 1 :])
        pred = logits.argmax(1)[0]
        test = bad_rates(pred, disp[:, x0:], args.factor)
        # the training part, for reference (the plain model's over-fitting shows here)
        xs = L - 1
        pred_tr = model(left[None, :, :, xs:split], right[None, :, :, :split])[0].argmax(0)
        train = bad_rates(pred_tr, disp[:, xs:split], args.factor)
    return {
        "seed": seed,
        "variant": "+CRF" if crf_iters else "plain",
        "test": test,
        "train": train,
        "train_seconds": train_s,
        "final_loss": loss.item(),
    }


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--factor", type=int, default=4)
    p.add_argument("--labels", type=int, default=16)
    p.add_argument(
        "--split", type=float, default=0.5, help="train on x < split * width, test on the rest"
    )
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--crop-h", type=int, default=32)
    p.add_argument("--crop-w", type=int, default=28)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--crf-iters", type=int, default=5)
    p.add_argument("--gamma", type=float, default=1.0)
    p.add_argument(
        "--table",
        choices=["distance", "full"],
        default="distance",
        help="pairwise table per offset: a learned function of |a - c|, or a full learned L x L table",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = prepare(args.factor)
    rows = []
    for seed in args.seeds:
        for iters in (0, args.crf_iters):
            r = run(args, seed, iters, data)
            rows.append(r)
            t = r["test"]
            print(
                f"seed {seed} {r['variant']:6s} test bad1 {100 * t['bad1']:.2f}%  bad2 {100 * t['bad2']:.2f}%  "
                f"EPE {t['epe']:.3f}  (full-res bad1 {100 * t['bad1_fullres']:.2f}%, bad2 {100 * t['bad2_fullres']:.2f}%)  "
                f"train {r['train_seconds']:.0f}s",
                flush=True,
            )
    summary = {}
    for v in ("plain", "+CRF"):
        b2 = [100 * r["test"]["bad2"] for r in rows if r["variant"] == v]
        b1 = [100 * r["test"]["bad1"] for r in rows if r["variant"] == v]
        summary[v] = {"bad1_mean": statistics.mean(b1), "bad2_mean": statistics.mean(b2)}
    summary["bad2_ratio_crf_over_plain"] = summary["+CRF"]["bad2_mean"] / max(
        summary["plain"]["bad2_mean"], 1e-12
    )
    print(f"\n+CRF / plain bad-2 ratio (test part): {summary['bad2_ratio_crf_over_plain']:.3f}")
    os.makedirs(args.out, exist_ok=True)
    result = {"args": vars(args), "rows": rows, "summary": summary, "torch": torch.__version__}
    atomic_write_text(
        os.path.join(args.out, f"stereo_e2e_{args.table}.json"), json.dumps(result, indent=2)
    )


if __name__ == "__main__":
    main()
