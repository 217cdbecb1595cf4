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


def _per_token_memory(q, k, v, budget, recent, sizes):
    """The memory before its NumPy blocks (kept here as the reference): chunk by chunk, a masked softmax
    over ``[held, chunk]`` after a loop of torch ops on ``[B, H, budget + 1]`` per full token.
    Returns the outputs, the sorted positions held and their accumulated attention."""
    b, h, _, d = q.shape
    p = budget
    held_k, held_v = k.new_zeros(b, h, p, d), v.new_zeros(b, h, p, v.shape[-1])
    pos, acc = torch.full((b, h, p), -1, dtype=torch.long), q.new_zeros(b, h, p)
    outs, n = [], 0
    for t in sizes:
        qc, kc, vc = (x[:, :, n:n + t] for x in (q, k, v))
        keys, values = torch.cat([held_k, kc], 2), torch.cat([held_v, vc], 2)
        scores = qc @ keys.transpose(-2, -1) * d ** -0.5
        mask = torch.zeros(b, h, t, p + t, dtype=torch.bool)
        col = torch.arange(p).expand(b, h, p).clone()
        f = max(0, min(t, p - n))
        if f:
            mask[:, :, :f, :p] = pos[:, :, None, :] >= 0
            mask[:, :, :f, p:p + f] = torch.ones(f, f, dtype=torch.bool).tril()
            w = torch.softmax(scores[:, :, :f].masked_fill(~mask[:, :, :f], float("-inf")), -1).sum(2)
            acc = acc + w[..., :p]
            col[..., n:n + f], pos[..., n:n + f] = torch.arange(p, p + f), torch.arange(n, n + f)
            acc[..., n:n + f] = w[..., p:p + f]
        slot = torch.arange(p + 1)
        for r in range(f, t):
            i = n + r
            cand_col = torch.cat([col, torch.full_like(col[..., :1], p + r)], -1)
            cand_pos = torch.cat([pos, torch.full_like(pos[..., :1], i)], -1)
            cand_acc = torch.cat([acc, acc.new_zeros(b, h, 1)], -1)
            older = cand_pos <= i - recent
            a = torch.where(older, cand_acc, torch.tensor(float("inf"), dtype=acc.dtype))
            tie = older & (a == a.amin(-1, keepdim=True))
            drop = torch.where(tie, cand_pos, -1).argmax(-1, keepdim=True)
            seen = slot != drop
            mask[:, :, r].scatter_(-1, cand_col, seen)
            w = torch.softmax(scores[:, :, r].gather(-1, cand_col).masked_fill(~seen, float("-inf")), -1)
            new_acc = cand_acc + w
            replace = slot[:p] == drop
            col, pos = torch.where(replace, p + r, col), torch.where(replace, i, pos)
            acc = torch.where(replace, new_acc[..., p:], new_acc[..., :p])
        outs.append(torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ values)
        held_k = keys.gather(2, col[..., None].expand(-1, -1, -1, d))
        held_v = values.gather(2, col[..., None].expand(-1, -1, -1, values.shape[-1]))
        n += t
    order = pos.argsort(-1)[..., p - min(n, p):]
    return torch.cat(outs, 2), pos.gather(-1, order), acc.gather(-1, order)


@pytest.mark.parametrize("budget,recent,dtype,scale", [
    (31, 15, torch.float64, 1.0), (7, 3, torch.float64, 4.0), (9, 2, torch.float32, 2.0), (5, 0, torch.float64, 1.0),
    (6, 6, torch.float64, 4.0), (1, 1, torch.float32, 1.0), (13, 12, torch.float64, 3.0)])
@pytest.mark.parametrize("numpy_path", [True, False])
def test_fast_eviction_keeps_what_the_per_token_loop_kept(budget, recent, dtype, scale, numpy_path, monkeypatch):
    """The NumPy blocks (CPU float32/float64) and the torch loop (any other device or dtype, forced here)
    against the previous per-token loop: the same positions held, exactly, in chunks of awkward
    lengths, long ones too (past a block, and past the masked softmax of short chunks); ``scale``
    sharpens the attention so that the heavy hitters change and blocks stop early."""
    from course_lib.memory import heavy_hitter as module

    if not numpy_path:
        monkeypatch.setattr(module, "_NUMPY_DTYPES", ())
    sizes = [3, 1, 70, 17, 1, 1, 100, 5]
    q, k, v = (x.to(dtype) for x in qkv(budget * 7 + recent, 2, 3, sum(sizes), 5, dv=3))
    q = q * scale
    memory = HeavyHitterMemory(budget, recent)
    want_out, want_pos, want_acc = _per_token_memory(q, k, v, budget, recent, sizes)
    out, state = run(memory, q, k, v, sizes)
    positions = memory.kept_positions(state)
    assert torch.equal(positions, want_pos) and positions.dtype == torch.long
    accumulated = state.buffer.acc.gather(-1, state.buffer.pos.argsort(-1))
    assert accumulated.dtype == dtype
    torch.testing.assert_close(accumulated, want_acc)
    torch.testing.assert_close(out, want_out)


def test_gradients_reach_q_k_v_through_a_long_full_chunk():
    """A chunk past the masked softmax of short chunks (its queries' softmax over the columns they see)."""
    q, k, v = (x.requires_grad_() for x in qkv(4, 1, 2, 90, 4))
    out, _ = run(HeavyHitterMemory(6, 3), q, k, v, [90])
    want = ref.heavy_hitter_reference(q, k, v, 6, 3)
    torch.testing.assert_close(out, want)
    for a, b in zip(torch.autograd.grad(out.square().sum(), (q, k, v)),
                    torch.autograd.grad(want.square().sum(), (q, k, v))):
        torch.testing.assert_close(a, b)
