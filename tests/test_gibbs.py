"""The Gibbs sampler against exact marginals (enumeration)."""

import pytest
import torch

import crfkit
from crfkit.data.synthetic import ba_edges, gibbs_sample, greedy_colouring, grid_edges
from crfkit.inference.exact import enumerate_mrf


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_colouring_is_proper():
    for edges, n in [(grid_edges(5, 7), 35), (ba_edges(200, 3, seed=1), 200)]:
        c = greedy_colouring(edges, n)
        assert bool((c[edges[:, 0]] != c[edges[:, 1]]).all())
    assert int(greedy_colouring(grid_edges(6, 6), 36).max()) == 1  # checkerboard


def test_gibbs_marginals_match_exact():
    gen = torch.Generator().manual_seed(0)
    edges = torch.cat([grid_edges(3, 3), torch.tensor([[0, 8]])])
    L = 3
    mrf = crfkit.GraphMRF(
        torch.randn(9, L, generator=gen, dtype=torch.float64),
        edges,
        torch.randn(edges.shape[0], L, L, generator=gen, dtype=torch.float64),
    )
    ref = enumerate_mrf(mrf)
    M = 6000
    x = gibbs_sample(mrf, M, burn_in=50, thin=3, chains=1000, seed=1)
    assert x.shape == (M, 9) and x.dtype == torch.long
    emp = torch.nn.functional.one_hot(x, L).double().mean(0)
    # binomial standard error <= 0.5 / sqrt(M) ~ 0.0065; samples of a chain are correlated
    assert float((emp - ref.unary).abs().max()) < 0.03
    e = mrf.edges
    pair = (
        torch.einsum(
            "mea,mec->eac",
            torch.nn.functional.one_hot(x[:, e[:, 0]], L).double(),
            torch.nn.functional.one_hot(x[:, e[:, 1]], L).double(),
        )
        / M
    )
    assert float((pair - ref.pairwise).abs().max()) < 0.03


def test_gibbs_is_seeded_and_checks_input():
    edges = grid_edges(2, 2)
    mrf = crfkit.GraphMRF(
        torch.zeros(4, 2, dtype=torch.float64), edges, torch.zeros(4, 2, 2, dtype=torch.float64)
    )
    a = gibbs_sample(mrf, 5, seed=3)
    b = gibbs_sample(mrf, 5, seed=3)
    assert torch.equal(a, b)
    with pytest.raises(ValueError):
        gibbs_sample(mrf, 0)
    with pytest.raises(TypeError):
        gibbs_sample("not a model", 3)
