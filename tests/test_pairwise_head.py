"""PairwiseHead: against a literal fully-connected layer over concatenated endpoint features."""

from __future__ import annotations

import pytest
import torch

import crfkit
from crfkit._validation import CRFShapeError, CRFValueError
from crfkit.nn import PairwiseHead, shift_to_partner

OFFSETS = ((0, 1), (1, 0), (0, 2), (2, 0), (1, -1))


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one thread avoids oversubscription on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _edge_reference(head: PairwiseHead, feats: torch.Tensor, fn):
    """Loop over every edge; ``fn(concat [2F]) -> per-edge output``; None off the grid."""
    B, F, H, W = feats.shape
    out = {}
    for k, (dy, dx) in enumerate(head.offsets):
        for b in range(B):
            for y in range(H):
                for x in range(W):
                    y2, x2 = y + dy, x + dx
                    if 0 <= y2 < H and 0 <= x2 < W:
                        cat = torch.cat([feats[b, :, y, x], feats[b, :, y2, x2]])
                        out[(b, k, y, x)] = fn(cat)
    return out


def _literal_linear(head: PairwiseHead):
    """The [O, 2F] weight and [O] bias of the concatenated-feature layer the head stands for."""
    O = head.out_per_edge
    w = head.proj.weight[:, :, 0, 0]
    weight = torch.cat([w[:O], w[O:]], dim=1)
    return weight, head.proj.bias[:O] + head.proj.bias[O:]


def test_shift_to_partner_matches_loops():
    t = torch.randn(2, 3, 4, 5)
    for dy, dx in [(0, 1), (1, 0), (2, -1), (1, 3), (0, 7), (-1, 2)]:
        s = shift_to_partner(t, dy, dx)
        for y in range(4):
            for x in range(5):
                inside = 0 <= y + dy < 4 and 0 <= x + dx < 5
                want = t[..., y + dy, x + dx] if inside else torch.zeros(2, 3)
                assert torch.equal(s[..., y, x], want)


@pytest.mark.parametrize("form", ["full", "lowrank"])
def test_tables_equal_fc_layer_over_concatenated_features(form):
    torch.manual_seed(0)
    B, F, L, H, W = 2, 3, 3, 3, 4
    head = PairwiseHead(F, L, OFFSETS, form=form, rank=2, init_std=0.3).double()
    with torch.no_grad():
        head.proj.bias.normal_()
    feats = torch.randn(B, F, H, W, dtype=torch.float64)
    out = head(feats)
    assert out.shape == (B, len(OFFSETS), L, L, H, W)
    weight, bias = _literal_linear(head)
    if form == "full":
        ref = _edge_reference(head, feats, lambda c: (weight @ c + bias).reshape(L, L))
    else:
        ref = _edge_reference(
            head, feats, lambda c: torch.einsum("r,rac->ac", weight @ c + bias, head.basis)
        )
    seen = torch.zeros(B, len(OFFSETS), H, W, dtype=torch.bool)
    for (b, k, y, x), table in ref.items():
        torch.testing.assert_close(out[b, k, :, :, y, x], table)
        seen[b, k, y, x] = True
    # off-grid entries are zero
    assert torch.all(out.permute(0, 1, 4, 5, 2, 3)[~seen] == 0)


def test_full_head_has_the_papers_parameter_count():
    F, L = 256, 21
    head = PairwiseHead(F, L)
    n = sum(p.numel() for p in head.parameters())
    # one fully connected layer 2F -> L^2 (the paper's "about 0.2M" for VOC), the split
    # convolution carries one extra (unused, zero) bias vector of L^2
    assert n == (2 * F * L * L + L * L) + L * L
    assert abs((2 * F * L * L + L * L) - 0.2e6) < 0.05e6


def test_weighted_form_is_gridcrf_ready_and_never_expanded():
    torch.manual_seed(1)
    B, F, L, H, W = 2, 4, 3, 3, 3
    head = PairwiseHead(F, L, OFFSETS, form="weighted", init_std=0.5).double()
    feats = torch.randn(B, F, H, W, dtype=torch.float64)
    out = head(feats)
    assert isinstance(out, list) and len(out) == len(OFFSETS)
    weight, bias = _literal_linear(head)
    ref = _edge_reference(head, feats, lambda c: weight @ c + bias)
    for (b, k, y, x), w in ref.items():
        wk, tk = out[k]
        assert wk.shape == (B, H, W) and tk.shape == (L, L)
        torch.testing.assert_close(wk[b, y, x], w[0])
    # the CRF model accepts the output; its score equals the sum over edges by hand
    unary = torch.randn(B, L, H, W, dtype=torch.float64)
    crf = crfkit.GridCRF(unary, out, offsets=OFFSETS)
    labels = torch.randint(0, L, (B, H, W))
    want = unary.gather(1, labels[:, None]).squeeze(1).sum((1, 2))
    for (b, k, y, x), w in ref.items():
        dy, dx = OFFSETS[k]
        want[b] += w[0] * out[k][1][labels[b, y, x], labels[b, y + dy, x + dx]]
    torch.testing.assert_close(crf.score(labels), want)


def test_full_output_scores_through_gridcrf():
    torch.manual_seed(2)
    B, F, L, H, W = 1, 2, 2, 3, 3
    head = PairwiseHead(F, L, OFFSETS, init_std=0.5)
    feats = torch.randn(B, F, H, W)
    tables = head(feats)
    crf = crfkit.GridCRF(torch.zeros(B, L, H, W), tables, offsets=OFFSETS)
    labels = torch.randint(0, L, (B, H, W))
    weight, bias = _literal_linear(head)
    ref = _edge_reference(head, feats, lambda c: (weight @ c + bias).reshape(L, L))
    want = sum(
        t[labels[b, y, x], labels[b, y + OFFSETS[k][0], x + OFFSETS[k][1]]]
        for (b, k, y, x), t in ref.items()
    )
    torch.testing.assert_close(crf.score(labels)[0], want)


def test_gradients_flow_to_features_and_weights():
    head = PairwiseHead(3, 2, form="full", init_std=0.1)
    feats = torch.randn(1, 3, 4, 4, requires_grad=True)
    head(feats).square().sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    assert head.proj.weight.grad.abs().sum() > 0


def test_bad_inputs_raise_clear_errors():
    head = PairwiseHead(3, 2)
    with pytest.raises(CRFShapeError, match=r"features of shape \[B, F, H, W\]"):
        head(torch.randn(1, 4, 3, 3))
    with pytest.raises(CRFShapeError):
        head(torch.randn(3, 3, 3))
    with pytest.raises(CRFValueError, match="form"):
        PairwiseHead(3, 2, form="dense")
    with pytest.raises(CRFValueError):
        PairwiseHead(3, 2, offsets=((0, -1),))
