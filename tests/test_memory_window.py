"""WindowMemory and SinkMemory: ring buffers that equal masked attention whatever the chunking."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from memory_helpers import SETTINGS, chunkings, qkv, run

from course_lib.attention import attention_reference, causal_mask
from course_lib.memory import SinkMemory, WindowMemory


def positions(t):
    """``[1, 1, t, 2]`` rows that spell their position: row ``j`` is ``[j, j]``."""
    return torch.arange(float(t)).view(1, 1, t, 1).expand(1, 1, t, 2)


@SETTINGS
@given(sizes=chunkings(), window=st.integers(1, 12), sinks=st.integers(0, 5), b=st.integers(1, 2),
       h=st.integers(1, 3), d=st.integers(1, 5), seed=st.integers(0, 2**16), reserve=st.booleans())
def test_sink_and_window_equal_masked_attention_for_any_chunking(sizes, window, sinks, b, h, d, seed, reserve):
    t = sum(sizes)
    q, k, v = qkv(seed, b, h, t, d)
    memory = SinkMemory(sinks=sinks, window=window) if sinks else WindowMemory(window=window)
    out, _ = run(memory, q, k, v, sizes, reserve=reserve)
    expected = attention_reference(q, k, v, causal_mask(t, t, window=window, sinks=sinks))
    torch.testing.assert_close(out, expected)


@SETTINGS
@given(sizes=chunkings(), extra=st.integers(0, 5), seed=st.integers(0, 2**16))
def test_window_at_least_the_text_is_full_attention(sizes, extra, seed):
    t = sum(sizes)
    q, k, v = qkv(seed, 1, 2, t, 3)
    out, _ = run(WindowMemory(window=t + extra), q, k, v, sizes)
    torch.testing.assert_close(out, attention_reference(q, k, v, causal_mask(t, t)))


@SETTINGS
@given(sizes=chunkings(), sinks=st.integers(0, 8), extra=st.integers(0, 3), seed=st.integers(0, 2**16))
def test_sinks_plus_window_covering_the_text_is_full_attention(sizes, sinks, extra, seed):
    t = sum(sizes)
    q, k, v = qkv(seed, 2, 1, t, 4)
    window = max(1, t - sinks + extra)
    out, _ = run(SinkMemory(sinks=sinks, window=window), q, k, v, sizes)
    torch.testing.assert_close(out, attention_reference(q, k, v, causal_mask(t, t)))


@SETTINGS
@given(sizes=chunkings(30), window=st.integers(1, 9), sinks=st.integers(0, 3), seed=st.integers(0, 2**16))
def test_grouped_query_heads_see_their_key_value_group(sizes, window, sinks, seed):
    t = sum(sizes)
    q, k, v = qkv(seed, 1, 4, t, 3, h_kv=2)
    out, _ = run(SinkMemory(sinks=sinks, window=window), q, k, v, sizes)
    torch.testing.assert_close(out, attention_reference(q, k, v, causal_mask(t, t, window=window, sinks=sinks)))


def test_a_window_of_4_holding_1_to_4_holds_2_to_5_after_one_more_token():
    memory = WindowMemory(window=4)
    x = positions(6)
    _, state = run(memory, x[:, :, :5], x[:, :, :5], x[:, :, :5], [5])
    assert memory.spans(state) == [(1, 1), (2, 2), (3, 3), (4, 4)]
    assert memory.held(state)[0][0, 0, :, 0].tolist() == [1, 2, 3, 4]
    _, state = memory(x[:, :, 5:], x[:, :, 5:], x[:, :, 5:], state)
    assert memory.spans(state) == [(2, 2), (3, 3), (4, 4), (5, 5)]
    assert memory.held(state)[0][0, 0, :, 0].tolist() == [2, 3, 4, 5]


def test_sinks_keep_the_first_tokens_and_the_window_the_last():
    memory = SinkMemory(sinks=2, window=3)
    x = positions(8)
    for sizes in ([8], [1] * 8, [3, 5]):
        _, state = run(memory, x, x, x, sizes)
        assert memory.spans(state) == [(0, 0), (1, 1), (5, 5), (6, 6), (7, 7)]
        assert memory.held(state)[1][0, 0, :, 0].tolist() == [0, 1, 5, 6, 7]


def test_a_chunk_longer_than_the_window_keeps_its_last_pairs_and_stays_exact():
    memory = WindowMemory(window=3)
    x = positions(10)
    out, state = run(memory, x, x, x, [10])
    assert memory.held(state)[0][0, 0, :, 0].tolist() == [7, 8, 9]
    # with equal scores (q = 0) each output is the mean of the window's values
    zero = torch.zeros_like(x)
    out, _ = run(memory, zero, zero, x, [10])
    assert out[0, 0, :, 0].tolist() == [0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]


def test_states_keep_their_meaning_and_can_be_branched():
    memory = SinkMemory(sinks=1, window=3)
    q, k, v = qkv(0, 1, 2, 9, 4)
    _, s5 = run(memory, q[:, :, :5], k[:, :, :5], v[:, :, :5], [2, 3])
    held5 = [t.clone() for t in memory.held(s5)]
    out_a, _ = run(memory, q[:, :, 5:], k[:, :, 5:], v[:, :, 5:], [1, 1, 2], state=s5)
    out_b, _ = run(memory, q[:, :, 5:], k[:, :, 5:], v[:, :, 5:], [4], state=s5)
    torch.testing.assert_close(out_a, out_b)
    for before, after in zip(held5, memory.held(s5)):
        assert torch.equal(before, after)


def test_decoding_after_reserve_writes_in_place():
    memory = WindowMemory(window=4)
    q, k, v = qkv(1, 1, 2, 12, 4)
    state = memory.reserve(memory.init_state(1, 2, 4, dtype=torch.float64), 12)
    pointers = (state.buffer.k.data_ptr(), state.buffer.v.data_ptr(), state.buffer.pos.data_ptr())
    first = state
    kept = None
    for i in range(12):
        _, state = memory(q[:, :, i:i + 1], k[:, :, i:i + 1], v[:, :, i:i + 1], state)
        assert (state.buffer.k.data_ptr(), state.buffer.v.data_ptr(), state.buffer.pos.data_ptr()) == pointers
        if i == 5:
            kept = memory.snapshot(state)
    assert memory.spans(kept) == [(2, 2), (3, 3), (4, 4), (5, 5)]
    assert memory.held(kept)[0].equal(k[:, :, 2:6])
    with pytest.raises(ValueError, match="out of date"):
        memory(q[:, :, :1], k[:, :, :1], v[:, :, :1], first)


def test_gradients_reach_the_chunk_but_the_state_is_detached():
    memory = WindowMemory(window=3)
    q, k, v = (x.requires_grad_() for x in qkv(2, 1, 1, 6, 2))
    state = memory.init_state(1, 1, 2, dtype=torch.float64)
    for c in (1, 5):  # a single token too: it must not take the no-grad decoding path
        out, state = memory(q[:, :, :c], k[:, :, :c], v[:, :, :c], state)
        assert out.requires_grad
    assert not state.buffer.k.requires_grad and not state.buffer.v.requires_grad
    out.sum().backward()
    assert k.grad[:, :, 1:5].abs().sum() > 0


def test_bad_window_and_sinks_are_refused():
    with pytest.raises(ValueError, match="window must be >= 1, got 0"):
        WindowMemory(window=0)
    with pytest.raises(ValueError, match="sinks must be >= 0"):
        SinkMemory(sinks=-1, window=2)
    with pytest.raises(TypeError, match="window must be an int"):
        WindowMemory(window=2.5)


# -- StreamingLLM's positions within the cache ----------------------------------------------------
def rotation(t, d, start=0):
    from course_lib.memory.base import Rotation
    from course_lib.models import Rotary

    cos, sin = Rotary(d).rolled_tables(t, "cpu", torch.float64)
    return Rotation(cos, sin, start)


def run_cache(memory, q, k, v, sizes, *, reserve=False):
    """Chunks of ``sizes`` through a memory that rotates itself, each with the Rotation of its start."""
    t, d = q.shape[2], q.shape[3]
    state = memory.init_state(k.shape[0], k.shape[1], d, dtype=k.dtype)
    if reserve:
        state = memory.reserve(state, t)
    outs, p = [], 0
    for c in sizes:
        out, state = memory(q[:, :, p:p + c], k[:, :, p:p + c], v[:, :, p:p + c], state, rotary=rotation(t, d, p))
        outs.append(out)
        p += c
    return torch.cat(outs, 2), state


@SETTINGS
@given(sizes=chunkings(), window=st.integers(1, 12), sinks=st.integers(0, 5), b=st.integers(1, 2),
       h=st.integers(1, 3), d=st.sampled_from([2, 4, 6]), seed=st.integers(0, 2**16), reserve=st.booleans())
def test_cache_positions_equal_each_querys_own_cache_built_token_by_token(sizes, window, sinks, b, h, d, seed,
                                                                          reserve):
    from course_lib.memory.reference import sink_reference

    t = sum(sizes)
    q, k, v = qkv(seed, b, h, t, d)
    out, _ = run_cache(SinkMemory(sinks, window, positions="cache"), q, k, v, sizes, reserve=reserve)
    torch.testing.assert_close(out, sink_reference(q, k, v, sinks, window, "cache", rotation(t, d)),
                               rtol=1e-12, atol=1e-12)


@SETTINGS
@given(sizes=chunkings(30), window=st.integers(1, 9), sinks=st.integers(0, 3), seed=st.integers(0, 2**16))
def test_cache_positions_with_grouped_query_heads(sizes, window, sinks, seed):
    from course_lib.attention import repeat_kv
    from course_lib.memory.reference import sink_reference

    t = sum(sizes)
    q, k, v = qkv(seed, 1, 4, t, 4, h_kv=2)
    out, _ = run_cache(SinkMemory(sinks, window, positions="cache"), q, k, v, sizes)
    expected = sink_reference(q, repeat_kv(k, 2), repeat_kv(v, 2), sinks, window, "cache",
                              rotation(t, 4))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sinks,window", [(4, 12), (2, 3), (1, 1)])
def test_both_options_agree_before_the_first_s_plus_n_c_tokens_and_not_after(sinks, window):
    """With absolute positions MemoryLM rotates q, k beforehand; with cache positions the memory does:
    while the cache still holds the whole text the two are the same attention."""
    t, d = sinks + window + 6, 4
    q, k, v = qkv(3, 2, 2, t, d)
    rot = rotation(t, d)
    cached, _ = run_cache(SinkMemory(sinks, window, positions="cache"), q, k, v, [t])
    absolute, _ = run(SinkMemory(sinks, window), rot.absolute(q), rot.absolute(k), v, [t])
    n = sinks + window
    torch.testing.assert_close(cached[:, :, :n], absolute[:, :, :n], rtol=1e-12, atol=1e-12)
    assert (cached[:, :, n:] - absolute[:, :, n:]).abs().amax(dim=(0, 1, 3)).min() > 1e-6  # the sinks moved


def test_a_window_with_cache_positions_is_the_window():
    """Rotary scores depend on i - j only, and a window key is as far from its query in the cache as
    in the text: cache positions change nothing for a window (S = 0), up to rounding."""
    t, d = 30, 6
    q, k, v = qkv(5, 1, 2, t, d)
    rot = rotation(t, d)
    cached, _ = run_cache(SinkMemory(0, 7, positions="cache"), q, k, v, [4, 1, 25])
    window, _ = run(WindowMemory(7), rot.absolute(q), rot.absolute(k), v, [t])
    torch.testing.assert_close(cached, window, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sinks,window", [(2, 3), (4, 12), (0, 5)])
def test_cache_positions_in_a_memory_lm_are_chunk_free_and_decode_alike(sinks, window):
    from course_lib.models import MemoryLM

    torch.manual_seed(0)
    lm = MemoryLM(19, 16, 2, 2, memory=SinkMemory(sinks, window, positions="cache")).double()
    assert lm.memories[0].rotates_itself
    idx = torch.randint(0, 19, (2, 23), generator=torch.Generator().manual_seed(0))
    whole, _ = lm(idx)
    parts, state, p = [], None, 0
    for c in (5, 1, 8, 3, 6):
        logits, state = lm(idx[:, p:p + c], state)
        parts.append(logits)
        p += c
    torch.testing.assert_close(torch.cat(parts, 1), whole, rtol=1e-12, atol=1e-12)


def test_the_option_is_labelled_and_checked():
    memory = SinkMemory(4, 12, positions="cache")
    assert memory.label() == "sink S = 4, n_c = 12 (cache positions)"
    assert SinkMemory(4, 12).label() == "sink S = 4, n_c = 12" and not SinkMemory(4, 12).rotates_itself
    assert "positions='cache'" in repr(memory)
    with pytest.raises(ValueError, match="positions must be 'absolute'.* or 'cache'.*got 'relative'"):
        SinkMemory(4, 12, positions="relative")
    q = torch.zeros(1, 1, 2, 4)
    with pytest.raises(TypeError, match="rotary is for SinkMemory\\(positions='cache'\\)"):
        SinkMemory(1, 2)(q, q, q, SinkMemory(1, 2).init_state(1, 1, 4), rotary=rotation(4, 4))
