"""Moving and cumulative averages: the 1x2 memories of the book, against plain loops."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from memory_helpers import SETTINGS, chunkings, qkv, run

from course_lib.memory import CumulativeAverageMemory, MovingAverageMemory


def moving_average_reference(v, window, weights):
    """For each ``i``: the newest ``m = min(i+1, n_c)`` weights, renormalised, over ``v_{i-m+1..i}``."""
    outs = []
    for i in range(v.shape[2]):
        m = min(i + 1, window)
        w = weights[window - m:]
        outs.append((v[:, :, i - m + 1:i + 1] * w[:, None]).sum(2) / w.sum())
    return torch.stack(outs, dim=2)


@SETTINGS
@given(sizes=chunkings(), window=st.integers(1, 9), weighted=st.booleans(), seed=st.integers(0, 2**16))
def test_moving_average_equals_the_loop_for_any_chunking(sizes, window, weighted, seed):
    q, k, v = qkv(seed, 2, 2, sum(sizes), 3, dv=2)
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(window, generator=g, dtype=torch.float64) + 0.1 if weighted else None
    out, state = run(MovingAverageMemory(window, weights=weights), q, k, v, sizes)
    ref_weights = torch.ones(window, dtype=torch.float64) if weights is None else weights
    torch.testing.assert_close(out, moving_average_reference(v, window, ref_weights))
    assert state.values.shape[2] == window - 1


@SETTINGS
@given(sizes=chunkings(), seed=st.integers(0, 2**16))
def test_cumulative_average_is_the_mean_so_far_for_any_chunking(sizes, seed):
    q, k, v = qkv(seed, 2, 2, sum(sizes), 3, dv=2)
    out, state = run(CumulativeAverageMemory(), q, k, v, sizes)
    counts = torch.arange(1, v.shape[2] + 1, dtype=torch.float64)[:, None]
    torch.testing.assert_close(out, v.cumsum(2) / counts)
    torch.testing.assert_close(state.k_mean, k.mean(2, keepdim=True))
    torch.testing.assert_close(state.v_mean, v.mean(2, keepdim=True))


def small(*values):
    return torch.tensor(values, dtype=torch.float64).view(1, 1, -1, 1)


def test_small_integer_averages_by_hand():
    v = small(2, 4, 6, 8, 10)
    out, _ = run(MovingAverageMemory(window=3), v, v, v, [2, 3])
    assert out.flatten().tolist() == pytest.approx([2, 3, 4, 6, 8])
    # weights 1, 1, 2 favour the newest token; the first outputs renormalise the newest weights
    v = small(4, 8, 10, 12)
    out, _ = run(MovingAverageMemory(window=3, weights=[1.0, 1.0, 2.0]), v, v, v, [1, 1, 1, 1])
    assert out.flatten().tolist() == pytest.approx([4, (4 + 16) / 3, (4 + 8 + 20) / 4, (8 + 10 + 24) / 4])
    # the cumulative average dilutes: token 0 weighs 1/(i+1)
    v = small(9, 0, 0)
    out, _ = run(CumulativeAverageMemory(), v, v, v, [3])
    assert out.flatten().tolist() == pytest.approx([9, 4.5, 3])


def test_output_ignores_queries_and_keys():
    q, k, v = qkv(3, 2, 2, 7, 3, dv=2)
    out1, _ = run(MovingAverageMemory(4), q, k, v, [7])
    out2, _ = run(MovingAverageMemory(4), -q, 2 * k, v, [3, 4])
    torch.testing.assert_close(out1, out2)


def test_bad_weights_are_refused():
    with pytest.raises(ValueError, match="weights must hold window=3"):
        MovingAverageMemory(3, weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="weights\\[-1\\] > 0"):
        MovingAverageMemory(2, weights=[1.0, 0.0])
    with pytest.raises(ValueError, match="window must be >= 1"):
        MovingAverageMemory(0)
