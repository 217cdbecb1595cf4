"""HeavyHitterMemory (H2O) against its plain rule, heavy_hitters' exact semantics, and the sink equivalence."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from memory_helpers import SETTINGS, chunkings, qkv, run

from course_lib.memory import HeavyHitterMemory, SinkMemory, heavy_hitters, make_memory
from course_lib.memory import reference as ref

B, H, D = 2, 3, 4


def cut(t, pattern=(3, 1, 5, 2)):
    """Chunk sizes summing to ``t``, cycling through ``pattern`` (the last one shorter)."""
    sizes = []
    while sum(sizes) < t:
        sizes.append(min(pattern[len(sizes) % len(pattern)], t - sum(sizes)))
    return sizes


@pytest.mark.parametrize("budget,recent,t", [(3, 1, 11), (5, 2, 17), (4, 0, 9), (4, 4, 10), (1, 1, 5), (1, 0, 6),
                                             (6, 3, 4), (7, 3, 23)])
@pytest.mark.parametrize("chunking", ["whole", "tokens", "random"])
def test_heavy_hitter_memory_is_its_rule(budget, recent, t, chunking):
    q, k, v = qkv(budget * t + recent, B, H, t, D, dv=5)
    sizes = {"whole": [t], "tokens": [1] * t}.get(chunking) or cut(t)
    memory = HeavyHitterMemory(budget, recent)
    out, state = run(memory, q, k, v, sizes)
    want, (kk, vv) = ref.heavy_hitter_reference(q, k, v, budget, recent, return_memory=True)
    torch.testing.assert_close(out, want)
    got_k, got_v = memory.held(state)
    torch.testing.assert_close(got_k, kk)
    torch.testing.assert_close(got_v, vv)
    assert memory.kept_positions(state).shape == (B, H, min(t, budget))


@SETTINGS
@given(sizes=chunkings(max_len=30), budget=st.integers(1, 9), data=st.data())
def test_any_chunking_gives_the_rule(sizes, budget, data):
    recent = data.draw(st.integers(0, budget))
    t = sum(sizes)
    q, k, v = qkv(t + 7 * budget, 1, 2, t, 3)
    out, _ = run(HeavyHitterMemory(budget, recent), q, k, v, sizes)
    torch.testing.assert_close(out, ref.heavy_hitter_reference(q, k, v, budget, recent))


def test_a_rule_one_size_off_does_not_match():
    q, k, v = qkv(5, B, H, 19, D)
    out, _ = run(HeavyHitterMemory(6, 2), q, k, v, [19])
    for budget, recent in [(5, 2), (7, 2), (6, 1), (6, 3)]:
        assert not torch.allclose(out, ref.heavy_hitter_reference(q, k, v, budget, recent), atol=1e-3)


def test_heavy_hitters_keeps_recent_then_the_largest_older_scores():
    s = torch.tensor([0.5, 3.0, 0.1, 3.0, 0.2, 9.0, 0.0])
    assert heavy_hitters(s, 4, 2).tolist() == [1, 3, 5, 6]  # recent 5, 6; then 3.0 at 1 and 3
    assert heavy_hitters(s, 3, 0).tolist() == [1, 3, 5]
    assert heavy_hitters(s, 7, 3).tolist() == list(range(7)) and heavy_hitters(s, 9, 0).dtype == torch.long
    ties = torch.tensor([1.0, 2.0, 1.0, 1.0, 0.0])
    assert heavy_hitters(ties, 3, 1).tolist() == [0, 1, 4]  # of the equal 1.0s the earliest
    assert heavy_hitters(s, 2, 2).tolist() == [5, 6]
    assert heavy_hitters(torch.zeros(0), 1, 0).tolist() == []


@pytest.mark.parametrize("call,error,names", [
    (lambda: heavy_hitters(torch.ones(4), 0, 0), ValueError, "budget"),
    (lambda: heavy_hitters(torch.ones(4), 2.0, 0), ValueError, "budget"),
    (lambda: heavy_hitters(torch.ones(4), 2, 3), ValueError, "recent"),
    (lambda: heavy_hitters(torch.ones(4), 2, -1), ValueError, "recent"),
    (lambda: heavy_hitters(torch.ones(2, 2), 2, 1), ValueError, "scores"),
    (lambda: heavy_hitters([1.0, 2.0], 2, 1), ValueError, "scores"),
    (lambda: HeavyHitterMemory(0, 0), ValueError, "budget must be >= 1"),
    (lambda: HeavyHitterMemory(3, 4), ValueError, "recent must be <= budget=3"),
    (lambda: HeavyHitterMemory(3, 1.5), TypeError, "recent must be an int"),
])
def test_heavy_hitters_and_the_memory_refuse_bad_arguments_by_name(call, error, names):
    with pytest.raises(error, match=names):
        call()


def test_where_attention_piles_on_the_first_tokens_it_keeps_what_a_sink_memory_keeps():
    """The first ``S`` keys draw almost all attention from every query, so they are the heavy hitters:
    H2O with budget ``S + n_r`` keeps the sinks ``0..S-1`` and the newest ``n_r``, as SinkMemory(S, n_r)."""
    sinks, recent, t = 3, 5, 40
    q, k, v = qkv(2, B, H, t, D)
    u = torch.ones(D, dtype=torch.float64)
    q = q * 0.3 + u  # every query points along u ...
    k = k * 0.3
    k[:, :, :sinks] += 4 * u  # ... and the first keys lie along u: scores ~ 8 above the others
    h2o = HeavyHitterMemory(sinks + recent, recent)
    sink = SinkMemory(sinks, recent)
    for sizes in ([t], [1] * t, [7, 1, 13, 19]):
        out, state = run(h2o, q, k, v, sizes)
        want, sink_state = run(sink, q, k, v, sizes)
        torch.testing.assert_close(out, want)
        positions = h2o.kept_positions(state)
        assert (positions == torch.tensor([*range(sinks), *range(t - recent, t)])).all()
        torch.testing.assert_close(h2o.held(state)[0], sink.held(sink_state)[0])
    # without the pile-up the two differ: the heavy hitters are elsewhere
    q2, k2, v2 = qkv(3, B, H, t, D)
    assert not torch.allclose(run(h2o, q2, k2, v2, [t])[0], run(sink, q2, k2, v2, [t])[0], atol=1e-3)


def test_gradients_reach_the_chunks_keys_inside_a_long_chunk():
    q, k, v = (x.requires_grad_() for x in qkv(9, 1, 2, 12, 4))
    out, _ = run(HeavyHitterMemory(4, 2), q, k, v, [12])
    want = ref.heavy_hitter_reference(q, k, v, 4, 2)
    g_fast = torch.autograd.grad(out.square().sum(), (q, k, v))
    g_ref = torch.autograd.grad(want.square().sum(), (q, k, v))
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b)


def test_bytes_are_the_budget_pairs_and_their_scores_whatever_the_length():
    memory = make_memory("heavy_hitter", budget=8, recent=2)
    state = memory.init_state(1, 2, 4)
    assert memory.nbytes(state) == 2 * 8 * (4 + 4 + 1) * 4  # keys, values, accumulated attention (float32)
    q, k, v = (x.float() for x in qkv(1, 1, 2, 50, 4))
    _, state = run(memory, q, k, v, [50])
    assert memory.nbytes(state) == 2 * 8 * 9 * 4 and memory.fixed_size
    assert memory.label() == "H2O B_h = 8, n_r = 2"
