"""A chain form the backends have never seen runs on every backend (``docs/architecture.md``,
"Pairwise forms": adding a form is one class; a backend without a kernel for it uses its dense
tables).

The new form here is an untruncated linear cost ``-w[c, k] |a - b|`` defined only by
:meth:`edge_table`, :meth:`dense` and :meth:`accumulate_grad`. Truth: enumeration of every
labelling of each chain (``helpers.chain_brute``) on tables built from the definition in numpy;
gradients of the torch backend by finite differences (float64); the Triton kernels and the custom
op (in Triton's interpreter, in a subprocess so that the interpreter variable is set before Triton
is imported) against the torch backend with random upstream gradients.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from crfkit.models.chain_pairwise import CHAIN_FORMS, ChainPairwise
from crfkit.ops.chain import chain_marginals
from helpers import chain_brute

KIND = "test_untruncated_linear"


class UntruncatedLinear(ChainPairwise):
    """``-weight[c, k] * |a - b|``: ``weight [C, n-1]`` (a form no backend knows by name)."""

    kind = KIND
    SHAPES = {"weight": "C n-1"}

    def _distance(self, L: int) -> torch.Tensor:
        idx = torch.arange(L, dtype=self.weight.dtype, device=self.weight.device)
        return (idx[:, None] - idx[None, :]).abs()

    def edge_table(self, k, L):
        return -self.weight[:, k, None, None] * self._distance(L)

    def dense(self, num_labels):
        return -self.weight[:, :, None, None] * self._distance(num_labels)

    def accumulate_grad(self, grads, k, d_table):
        grads["weight"][:, k] -= (d_table * self._distance(d_table.shape[-1])).sum(dim=(1, 2))


@pytest.fixture(scope="module", autouse=True)
def _unregister_at_end():
    yield
    CHAIN_FORMS.pop(KIND, None)


def _problem(seed: int, C: int = 3, n: int = 4, L: int = 3):
    gen = torch.Generator().manual_seed(seed)
    unary = torch.randn(C, n, L, generator=gen, dtype=torch.float64)
    weight = torch.randn(C, n - 1, generator=gen, dtype=torch.float64)  # both signs
    lengths = torch.tensor([n] + [int(x) for x in torch.randint(1, n + 1, (C - 1,), generator=gen)])
    return unary, weight, lengths


def _brute(unary, weight, lengths, gamma):
    """Marginals and values of every chain by enumeration, from ``-w |a - b|`` written in numpy."""
    C, n, L = unary.shape
    a = np.arange(L)
    dist = np.abs(a[:, None] - a[None, :]).astype(np.float64)
    marg = np.zeros((C, n, L))
    value = np.zeros(C)
    for c in range(C):
        m = int(lengths[c])
        tables = -weight[c, : m - 1].numpy()[:, None, None] * dist
        value[c], marg[c, :m] = chain_brute(unary[c, :m].numpy(), tables, gamma)
    return torch.from_numpy(marg), torch.from_numpy(value)


@pytest.mark.parametrize("gamma", [0.0, 0.5])
@pytest.mark.parametrize("implementation", ["reference", "torch"])
def test_new_form_matches_enumeration(implementation, gamma):
    unary, weight, lengths = _problem(seed=1)
    m, v = chain_marginals(unary, UntruncatedLinear(weight=weight), lengths, gamma, implementation=implementation)
    m_ref, v_ref = _brute(unary, weight, lengths, gamma)
    torch.testing.assert_close(m, m_ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(v, v_ref, atol=1e-10, rtol=1e-10)


def test_new_form_torch_gradients_by_finite_differences():
    unary, weight, lengths = _problem(seed=2)
    u = unary.clone().requires_grad_()
    w = weight.clone().requires_grad_()

    def f(u, w):
        return chain_marginals(u, UntruncatedLinear(weight=w), lengths, 0.5, implementation="torch")

    assert torch.autograd.gradcheck(f, (u, w))


_TRITON_CHECK = """
import sys, torch
sys.path.insert(0, {tests!r})
import test_chain_new_form as t
from crfkit.ops.chain import custom_op as O
from crfkit.ops.chain import triton as T
assert T.AVAILABLE, "Triton's interpreter did not start"
for gamma in (0.0, 0.5):
    unary, weight, lengths = t._problem(seed=3)
    gen = torch.Generator().manual_seed(4)
    dm = torch.randn(unary.shape, generator=gen, dtype=torch.float64)
    dv = torch.randn(unary.shape[0], generator=gen, dtype=torch.float64)

    def run(fn, dtype):
        u = unary.to(dtype).requires_grad_()
        w = weight.to(dtype).requires_grad_()
        m, v = fn(u, t.UntruncatedLinear(weight=w), lengths, gamma)
        loss = (m.double() * dm).sum() + (v.double() * dv).sum()
        return [m, v, *torch.autograd.grad(loss, (u, w))]

    from crfkit.ops.chain.torch import chain_marginals_torch
    truth = run(chain_marginals_torch, torch.float32)
    fns = [T.chain_marginals_triton]
    if O.REGISTERED:
        fns.append(O.chain_marginals_op)
    for fn in fns:
        for got, want in zip(run(fn, torch.float32), truth):
            torch.testing.assert_close(got.detach(), want.detach(), atol=1e-4, rtol=1e-4)
print("ok")
"""


def test_new_form_on_triton_and_the_custom_op():
    pytest.importorskip("triton")
    tests = os.path.dirname(os.path.abspath(__file__))
    src = os.path.join(os.path.dirname(tests), "src")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run(
        [sys.executable, "-c", _TRITON_CHECK.format(tests=tests)], env=env, capture_output=True, text=True,
        timeout=600,
    )
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stdout[-3000:] + res.stderr[-3000:]
