"""The solvers' CPU threads: one torch thread by default (never slower than one thread on a busy
machine), CRFKIT_NUM_THREADS or the caller's own choice otherwise, and the caller's count back
after the call."""

import pytest
import torch

import crfkit
from crfkit._validation import CRFValueError
from crfkit.inference import threads


@pytest.fixture
def untouched_torch(monkeypatch):
    """torch at 3 threads, as if that were its default and nobody had chosen it."""
    old = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("CRFKIT_NUM_THREADS", raising=False)
    torch.set_num_threads(3)
    monkeypatch.setattr(threads, "_TORCH_DEFAULT", 3)
    yield
    torch.set_num_threads(old)


def _threads_during_solve() -> int:
    seen = []
    crf = crfkit.GridCRF(torch.randn(1, 3, 4, 5), [crfkit.Potts(0.5)], offsets=[(0, 1)])
    crfkit.solve_map(crf, iters=3, callback=lambda info: seen.append(torch.get_num_threads()))
    assert seen, "the callback never ran"
    return seen[0]


def test_default_is_one_thread_and_restored(untouched_torch):
    assert _threads_during_solve() == 1
    assert torch.get_num_threads() == 3


def test_environment_variable_sets_the_count(untouched_torch, monkeypatch):
    monkeypatch.setenv("CRFKIT_NUM_THREADS", "2")
    assert _threads_during_solve() == 2
    assert torch.get_num_threads() == 3


def test_callers_own_choice_is_left_alone(untouched_torch):
    torch.set_num_threads(2)  # not torch's default (3 here): the caller chose it
    assert _threads_during_solve() == 2


@pytest.mark.parametrize("raw", ["0", "-2", "two", "1.5"])
def test_bad_environment_value_is_a_clear_error(untouched_torch, monkeypatch, raw):
    monkeypatch.setenv("CRFKIT_NUM_THREADS", raw)
    with pytest.raises(CRFValueError, match="CRFKIT_NUM_THREADS"):
        _threads_during_solve()
    assert torch.get_num_threads() == 3


def test_belief_propagation_runs_with_one_thread(untouched_torch, monkeypatch):
    seen = []
    real = threads.torch.set_num_threads

    def spy(n):
        seen.append(n)
        real(n)

    monkeypatch.setattr(threads.torch, "set_num_threads", spy)
    mrf = crfkit.GraphMRF(torch.randn(4, 2), torch.tensor([[0, 1], [1, 2], [2, 3]]), torch.randn(2, 2))
    crfkit.belief_propagation(mrf, method="trbp")
    assert seen[:1] == [1] and seen[-1] == 3
