"""``crfkit.nn.DualDecompositionCRF``: the unrolled fixed-point iteration as a layer.

Against an unrolled transcription of the paper's iteration on the reference kernel (outputs and
gradients, up to a constant per pixel, which soft-max and arg-max do not see), closed forms
(no pairwise: soft-max of the unaries; one offset: exact smoothed max-marginals by
enumeration), and ``torch.autograd.gradcheck`` in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import crfkit
from crfkit.nn import DualDecompositionCRF
from helpers import (
    all_scores,
    grid_chain_groups,
    random_spec,
    spec_tables,
    spec_to_crf,
    unrolled_fpi,
)

DIAG = ((0, 1), (1, 0), (1, 1), (1, -1))


def _centre(x: torch.Tensor) -> torch.Tensor:
    """Remove the mean over labels (dim 1): what soft-max sees."""
    return x - x.mean(dim=1, keepdim=True)


def transcription(spec, unary, tables, gamma, num_iters):
    """Logits of the paper's unrolled iteration: ``num_iters`` chain passes with
    ``num_iters - 1`` updates (Eq. 42) between them. ``unary [B, L, H, W]``, ``tables`` a list of
    ``[B, L, L, H, W]`` tensors (gradients flow to both)."""
    B, L, H, W = spec.shape
    out = []
    for b in range(B):
        groups = grid_chain_groups(spec, b, tables=tables)
        _, summed, _ = unrolled_fpi(unary[b].reshape(L, H * W).T, groups, gamma, num_iters - 1)
        out.append(summed.T.reshape(L, H, W))
    return torch.stack(out)


def test_output_shape_and_module():
    rng = np.random.default_rng(0)
    spec = random_spec(rng, 2, 3, 4, 5)
    layer = DualDecompositionCRF(num_iters=3, gamma=1.0, offsets=crfkit.DEFAULT_OFFSETS)
    assert isinstance(layer, torch.nn.Module)
    crf = spec_to_crf(spec)
    out = layer(crf.unary, crf.pairwise)
    assert out.shape == (2, 3, 4, 5) and out.dtype == torch.float64
    assert torch.isfinite(out).all()
    out32 = layer(
        crf.unary.float(), [torch.as_tensor(t, dtype=torch.float32) for t in spec_tables(spec)]
    )
    assert out32.dtype == torch.float32
    torch.testing.assert_close(_centre(out32.double()), _centre(out), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("gamma,num_iters", [(2.0, 1), (1.0, 3), (2.0, 5), (0.0, 3)])
def test_layer_matches_unrolled_transcription(gamma, num_iters):
    """Logits (up to a constant per pixel) and the gradients of a soft-max loss with respect to
    unary and pairwise, against autograd through the transcription on the reference kernel.
    At gamma = 0 the inputs are continuous and random, so argmaxes are unique."""
    rng = np.random.default_rng(1)
    spec = random_spec(rng, 2, 3, 3, 4, offsets=DIAG, forms=["dense"] * 4)
    B, L, H, W = spec.shape
    weights = torch.as_tensor(rng.normal(size=(B, L, H, W)))

    def run(fn):
        unary = torch.as_tensor(spec.unary).clone().requires_grad_(True)
        tables = [torch.as_tensor(t).clone().requires_grad_(True) for t in spec_tables(spec)]
        logits = fn(unary, tables)
        loss = (weights * torch.log_softmax(logits, dim=1)).sum()
        grads = torch.autograd.grad(loss, [unary, *tables])
        return logits.detach(), grads

    layer = DualDecompositionCRF(num_iters=num_iters, gamma=gamma, offsets=DIAG)
    got, g_got = run(lambda u, t: layer(u, t))
    want, g_want = run(lambda u, t: transcription(spec, u, t, gamma, num_iters))
    torch.testing.assert_close(_centre(got), _centre(want), rtol=1e-9, atol=1e-9)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("case", ["dense", "potts", "weighted"])
def test_gradcheck(case):
    """float64 gradcheck of the layer with respect to unary and the pairwise tensors."""
    rng = np.random.default_rng(2)
    B, L, H, W = 1, 2, 3, 3
    offsets = ((0, 1), (1, 0), (1, 1))
    K = len(offsets)
    unary = torch.as_tensor(rng.normal(size=(B, L, H, W)), dtype=torch.float64).requires_grad_(True)
    if case == "dense":
        pw = torch.as_tensor(rng.normal(size=(B, K, L, L, H, W))).requires_grad_(True)
        inputs = (unary, pw)

        def fn(u, p):
            return DualDecompositionCRF(num_iters=3, gamma=1.0, offsets=offsets)(u, p)
    elif case == "potts":
        w = torch.as_tensor(rng.uniform(0.2, 1.0, size=(K, B, H, W))).requires_grad_(True)
        inputs = (unary, w)

        def fn(u, w):
            return DualDecompositionCRF(num_iters=3, gamma=1.0, offsets=offsets)(
                u, [crfkit.Potts(w[k]) for k in range(K)]
            )
    else:
        w = torch.as_tensor(rng.uniform(-1.0, 1.0, size=(K, B, H, W))).requires_grad_(True)
        table = torch.as_tensor(rng.normal(size=(L, L))).requires_grad_(True)
        inputs = (unary, w, table)

        def fn(u, w, t):
            return DualDecompositionCRF(num_iters=3, gamma=1.0, offsets=offsets)(
                u, [(w[k], t) for k in range(K)]
            )

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_zero_pairwise_gives_softmax_of_unary(gamma):
    """No pairwise scores: Σ_t μ_i^t = unary_i + a constant, whatever the iterations did."""
    torch.manual_seed(0)
    unary = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    pairwise = [torch.zeros(2, 4, 4, 3, 5, dtype=torch.float64) for _ in crfkit.DEFAULT_OFFSETS]
    out = DualDecompositionCRF(num_iters=4, gamma=gamma)(unary, pairwise)
    torch.testing.assert_close(
        torch.softmax(out, 1), torch.softmax(unary, 1), rtol=1e-10, atol=1e-10
    )


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_single_offset_gives_exact_marginals(gamma):
    """One offset: the logits are each pixel's smoothed max-marginal over all labellings
    (enumeration), up to a constant per pixel."""
    rng = np.random.default_rng(3)
    spec = random_spec(rng, 1, 3, 3, 3, offsets=((1, -1),), forms=["dense"])
    crf = spec_to_crf(spec)
    out = DualDecompositionCRF(num_iters=3, gamma=gamma, offsets=((1, -1),))(
        crf.unary, crf.pairwise
    )
    scores, X = all_scores(spec)
    B, L, H, W = spec.shape
    want = np.zeros((B, L, H, W))
    for y in range(H):
        for x in range(W):
            for l in range(L):
                s = scores[0, X[:, y, x] == l]
                want[0, l, y, x] = s.max() + gamma * np.log(np.exp((s - s.max()) / gamma).sum())
    torch.testing.assert_close(_centre(out), _centre(torch.as_tensor(want)), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("form", ["shared", "weighted", "potts", "tl"])
def test_pairwise_forms_like_full_tables(form):
    rng = np.random.default_rng(4)
    spec = random_spec(
        rng, 2, 4, 4, 4, offsets=((0, 1), (1, 0), (1, 1)), forms=[form, form, "dense"]
    )
    layer = DualDecompositionCRF(num_iters=4, gamma=1.0, offsets=spec.offsets)
    a = spec_to_crf(spec)
    b = spec_to_crf(spec, dense=True)
    torch.testing.assert_close(
        _centre(layer(a.unary, a.pairwise)),
        _centre(layer(b.unary, b.pairwise)),
        rtol=1e-9,
        atol=1e-9,
    )


def test_trains_inside_a_network():
    """A conv net producing unary and pairwise scores, the layer, a cross-entropy loss: every
    parameter gets a finite gradient and a few steps lower the loss."""
    torch.manual_seed(5)
    B, C, L, H, W = 2, 3, 3, 6, 6
    offsets = ((0, 1), (1, 0))
    image = torch.randn(B, C, H, W)
    target = torch.randint(0, L, (B, H, W))
    unary_net = torch.nn.Conv2d(C, L, 3, padding=1)
    weight_net = torch.nn.Conv2d(C, len(offsets), 3, padding=1)
    layer = DualDecompositionCRF(num_iters=3, gamma=1.0, offsets=offsets)
    params = list(unary_net.parameters()) + list(weight_net.parameters())
    opt = torch.optim.SGD(params, lr=0.05)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        w = torch.nn.functional.softplus(weight_net(image))
        logits = layer(unary_net(image), [crfkit.Potts(w[:, k]) for k in range(len(offsets))])
        loss = torch.nn.functional.cross_entropy(logits, target)
        loss.backward()
        for p in params:
            assert p.grad is not None and torch.isfinite(p.grad).all()
        assert any(float(p.grad.abs().sum()) > 0 for p in weight_net.parameters())
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
