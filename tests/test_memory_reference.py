"""Every fast memory against its plain rule in :mod:`course_lib.memory.reference`, in float64.

Awkward sizes on purpose: batch 2, 3 heads, texts shorter and longer than the memory, lengths
that no window or segment divides. Memories whose output does not depend on the chunking are
fed whole, token by token and in a random chunking; segment-based ones (segment, compressive,
kNN) in the segments their rule is given. The last tests show the comparisons are sharp: a rule
off by one in any size, or cut into other segments, no longer matches.
"""

from __future__ import annotations

import pytest
import torch
from memory_helpers import qkv, run

from course_lib.memory import (
    MEMORIES,
    CompressiveMemory,
    CumulativeAverageMemory,
    DeltaMemory,
    FullMemory,
    KNNMemory,
    LinearMemory,
    MovingAverageMemory,
    SegmentMemory,
    SinkMemory,
    WindowMemory,
    delta_rule_chunked,
    delta_rule_recurrent,
    linear_attention_chunked,
    linear_attention_parallel,
    linear_attention_recurrent,
)
from course_lib.memory import reference as ref
from course_lib.memory.base import Rotation

B, H, D = 2, 3, 4
CHUNKINGS = ["whole", "tokens", "random"]


def sizes_of(kind, t, seed=0):
    """Chunk sizes summing to ``t``: one chunk, one token each, or a random cut."""
    if kind == "whole":
        return [t]
    if kind == "tokens":
        return [1] * t
    g, sizes = torch.Generator().manual_seed(seed), []
    while sum(sizes) < t:
        sizes.append(int(torch.randint(1, t - sum(sizes) + 1, (1,), generator=g)))
    return sizes


def segments(n_s, t):
    """Segments of ``n_s`` tokens, the last one shorter: what the fast memory is fed."""
    return [min(n_s, t - s) for s in range(0, t, n_s)]


def rotation(t, d, start=0):
    """The Rotation ``MemoryLM`` builds for a chunk starting at ``start``, tables for ``t`` positions."""
    from course_lib.models import Rotary

    cos, sin = Rotary(d).rolled_tables(t, "cpu", torch.float64)
    return Rotation(cos, sin, start)


def run_rotating(memory, q, k, v, sizes):
    """Chunks through a memory that rotates itself, each with the Rotation of its first position."""
    t, d = q.shape[2], q.shape[3]
    state = memory.init_state(k.shape[0], k.shape[1], d, dtype=k.dtype)
    outs, p = [], 0
    for c in sizes:
        rot = rotation(t, d, start=p)
        out, state = memory(q[:, :, p:p + c], k[:, :, p:p + c], v[:, :, p:p + c], state, rotary=rot)
        outs.append(out)
        p += c
    return torch.cat(outs, 2), state


def assert_held(memory, state, want):
    got_k, got_v = memory.held(state)
    torch.testing.assert_close(got_k, want[0])
    torch.testing.assert_close(got_v, want[1])


def test_every_registered_memory_has_its_rule_but_the_combination():
    assert set(ref.REFERENCES) == set(MEMORIES) - {"multi"}


# -- chunk-free slot memories ------------------------------------------------------------------------
@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize("t", [3, 13])
def test_full_memory_is_each_query_over_every_key_so_far(t, chunking):
    q, k, v = qkv(t, B, H, t, D, dv=5)
    memory = FullMemory(initial_capacity=4)
    out, state = run(memory, q, k, v, sizes_of(chunking, t, seed=t))
    want, held = ref.full_reference(q, k, v, return_memory=True)
    torch.testing.assert_close(out, want)
    assert_held(memory, state, held)


@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize("window,t", [(1, 7), (5, 3), (5, 17), (4, 16)])
def test_window_memory_is_each_query_over_its_last_n_c_keys(window, t, chunking):
    q, k, v = qkv(window * t, B, H, t, D, dv=5)
    memory = WindowMemory(window)
    out, state = run(memory, q, k, v, sizes_of(chunking, t, seed=window))
    want, held = ref.window_reference(q, k, v, window, return_memory=True)
    torch.testing.assert_close(out, want)
    assert_held(memory, state, held)


SINK_SIZES = [(2, 3, 4), (2, 3, 19), (1, 5, 17), (3, 1, 9), (0, 4, 11)]  # (S, n_c, T)


@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize("sinks,window,t", SINK_SIZES)
def test_sink_memory_is_each_query_over_the_sinks_and_its_last_n_c_keys(sinks, window, t, chunking):
    q, k, v = qkv(t, B, H, t, D)
    memory = SinkMemory(sinks, window)
    out, state = run(memory, q, k, v, sizes_of(chunking, t, seed=sinks))
    want, held = ref.sink_reference(q, k, v, sinks, window, return_memory=True)
    torch.testing.assert_close(out, want)
    assert_held(memory, state, held)


@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize("sinks,window,t", SINK_SIZES)
def test_sinks_at_absolute_positions_are_keys_rotated_by_their_place_in_the_text(sinks, window, t, chunking):
    q, k, v = qkv(t + 1, B, H, t, D)
    rot = rotation(t, D)  # MemoryLM rotates q, k by their positions before a memory with uses_rotary
    out, _ = run(SinkMemory(sinks, window), rot.absolute(q), rot.absolute(k), v, sizes_of(chunking, t, seed=t))
    torch.testing.assert_close(out, ref.sink_reference(q, k, v, sinks, window, "absolute", rot))


@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize("sinks,window,t", SINK_SIZES)
def test_sinks_at_cache_positions_are_keys_rotated_by_their_slot_in_the_cache(sinks, window, t, chunking):
    q, k, v = qkv(t + 2, B, H, t, D)
    memory = SinkMemory(sinks, window, positions="cache")
    out, state = run_rotating(memory, q, k, v, sizes_of(chunking, t, seed=window))
    want, held = ref.sink_reference(q, k, v, sinks, window, "cache", rotation(t, D), return_memory=True)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    assert_held(memory, state, held)  # stored unrotated


# -- averages and matrix memories -------------------------------------------------------------------------
@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize("window,t,weights", [(3, 11, None), (4, 2, [0.5, 0.0, 2.0, 1.0]), (5, 13, [1, 2, 3, 4, 5])])
def test_averages_are_the_means_of_their_values(window, t, weights, chunking):
    q, k, v = qkv(t, B, H, t, D, dv=3)
    sizes = sizes_of(chunking, t, seed=window)
    out, _ = run(MovingAverageMemory(window, weights=weights), q, k, v, sizes)
    torch.testing.assert_close(out, ref.moving_average_reference(v, window, weights))
    out, _ = run(CumulativeAverageMemory(), q, k, v, sizes)
    torch.testing.assert_close(out, ref.cumulative_average_reference(v))


@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize("chunk_size,t", [(3, 11), (64, 9)])
def test_linear_memory_is_linear_attention(chunk_size, t, chunking):
    q, k, v = qkv(t, B, H, t, D, dv=3)
    memory = LinearMemory(chunk_size=chunk_size)
    out, state = run(memory, q, k, v, sizes_of(chunking, t, seed=chunk_size))
    want, (S, z) = ref.linear_attention_reference(q, k, v, return_memory=True)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(state.S, S)
    torch.testing.assert_close(state.z, z)


@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_delta_memory_is_the_delta_rule(chunking, per_token):
    t = 11
    q, k, v = qkv(t, B, H, t, D, dv=3)
    beta = torch.rand(B, H, t, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    memory = DeltaMemory(beta=0.7, chunk_size=3)
    out, state = run(memory, q, k, v, sizes_of(chunking, t, seed=3), beta=beta if per_token else None)
    want, S = ref.delta_rule_reference(q, k, v, beta if per_token else 0.7, return_memory=True)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(state.S, S)


def test_the_token_loops_parallel_and_chunked_forms_follow_the_rules_from_a_given_state():
    t = 10
    q, k, v = qkv(7, B, H, t, D, dv=3)
    g = torch.Generator().manual_seed(7)
    S0 = torch.rand(B, H, D, 3, generator=g, dtype=torch.float64)
    z0 = torch.rand(B, H, D, generator=g, dtype=torch.float64)
    want, (S, z) = ref.linear_attention_reference(q, k, v, S0, z0, return_memory=True)
    for got in (linear_attention_recurrent(q, k, v, S0, z0), linear_attention_parallel(q, k, v, S0, z0),
                linear_attention_chunked(q, k, v, S0, z0, chunk_size=4)):
        for a, b in zip(got, (want, S, z)):
            torch.testing.assert_close(a, b)
    want, S = ref.delta_rule_reference(q, k, v, 0.9, S0, return_memory=True)
    for got in (delta_rule_recurrent(q, k, v, 0.9, S0), delta_rule_chunked(q, k, v, 0.9, S0, chunk_size=4)):
        for a, b in zip(got, (want, S)):
            torch.testing.assert_close(a, b)


# -- segment-based memories -------------------------------------------------------------------------------
@pytest.mark.parametrize("mem_len,n_s,t", [(3, 4, 18), (8, 5, 6), (2, 1, 9), (5, 7, 23)])
def test_segment_memory_is_transformer_xl(mem_len, n_s, t):
    q, k, v = qkv(t, B, H, t, D, dv=5)
    memory = SegmentMemory(mem_len)
    out, state = run(memory, q, k, v, segments(n_s, t))
    want, held = ref.segment_reference(q, k, v, mem_len, n_s, return_memory=True)
    torch.testing.assert_close(out, want)
    assert_held(memory, state, held)
    sizes = sizes_of("random", t, seed=mem_len)  # any segmentation, given as the list of its lengths
    out, _ = run(memory, q, k, v, sizes)
    torch.testing.assert_close(out, ref.segment_reference(q, k, v, mem_len, sizes))


@pytest.mark.parametrize("capacity,top_k,n_s,t", [(3, 2, 4, 18), (10, 3, 4, 7), (6, 6, 5, 23), (5, 1, 3, 16)])
def test_knn_memory_is_top_k_retrieval_beside_the_segment(capacity, top_k, n_s, t):
    q, k, v = qkv(t, B, H, t, D)
    memory = KNNMemory(capacity, top_k)
    out, state = run(memory, q, k, v, segments(n_s, t))
    want, held = ref.knn_reference(q, k, v, capacity, top_k, n_s, return_memory=True)
    torch.testing.assert_close(out, want)
    assert_held(memory, state, held)
    sizes = sizes_of("random", t, seed=capacity)
    out, _ = run(memory, q, k, v, sizes)
    torch.testing.assert_close(out, ref.knn_reference(q, k, v, capacity, top_k, sizes))


def learned(memory):
    """A learned compressor moved away from its mean-pooling start, so that its rule shows."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in memory.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return memory


COMPRESSIVE_SIZES = [(4, 3, 2, 5, 23), (5, 2, 3, 4, 19), (4, 2, 4, 3, 3), (2, 1, 1, 3, 10), (6, 4, 2, 1, 15)]


@pytest.mark.parametrize("compress", ["mean", "max", "most_used", "conv", "conv_shared", "dilated_conv"])
@pytest.mark.parametrize("mem_len,cmem_len,ratio,n_s,t", COMPRESSIVE_SIZES)
def test_compressive_memory_evicts_compresses_and_appends_as_the_paper(mem_len, cmem_len, ratio, n_s, t, compress):
    q, k, v = qkv(t + ratio, B, H, t, D)
    memory = CompressiveMemory(mem_len, cmem_len, ratio, compress, head_dim=D).double()
    f_c = compress if compress in ("mean", "max", "most_used") else learned(memory).compress_pairs
    with torch.no_grad():
        out, state = run(memory, q, k, v, segments(n_s, t))
        want, held = ref.compressive_reference(q, k, v, mem_len, cmem_len, ratio, f_c, n_s, return_memory=True)
        torch.testing.assert_close(out, want)
        assert_held(memory, state, held)
        sizes = sizes_of("random", t, seed=ratio)
        out, _ = run(memory, q, k, v, sizes)
        torch.testing.assert_close(out, ref.compressive_reference(q, k, v, mem_len, cmem_len, ratio, f_c, sizes))


# -- the comparisons are sharp -----------------------------------------------------------------------------
T = 19
Q, K, V = qkv(11, B, H, T, D)
SHARP = {  # fast output, and rules that are each one size (or the segmentation) off
    "window n_c = 5": (lambda: run(WindowMemory(5), Q, K, V, [T])[0],
                       [lambda: ref.window_reference(Q, K, V, 4), lambda: ref.window_reference(Q, K, V, 6)]),
    "sink S = 2, n_c = 3": (lambda: run(SinkMemory(2, 3), Q, K, V, [T])[0],
                            [lambda: ref.sink_reference(Q, K, V, 1, 3), lambda: ref.sink_reference(Q, K, V, 3, 3),
                             lambda: ref.sink_reference(Q, K, V, 2, 2), lambda: ref.sink_reference(Q, K, V, 2, 4)]),
    "sink, cache positions": (lambda: run_rotating(SinkMemory(2, 3, "cache"), Q, K, V, [T])[0],
                              [lambda: ref.sink_reference(Q, K, V, 2, 3, "absolute", rotation(T, D))]),
    "segment n_m = 3, n_s = 4": (lambda: run(SegmentMemory(3), Q, K, V, segments(4, T))[0],
                                 [lambda: ref.segment_reference(Q, K, V, 2, 4),
                                  lambda: ref.segment_reference(Q, K, V, 4, 4),
                                  lambda: ref.segment_reference(Q, K, V, 3, 5)]),
    "kNN N = 6, k = 2, n_s = 4": (lambda: run(KNNMemory(6, 2), Q, K, V, segments(4, T))[0],
                                  [lambda: ref.knn_reference(Q, K, V, 5, 2, 4),
                                   lambda: ref.knn_reference(Q, K, V, 7, 2, 4),
                                   lambda: ref.knn_reference(Q, K, V, 6, 1, 4),
                                   lambda: ref.knn_reference(Q, K, V, 6, 3, 4),
                                   lambda: ref.knn_reference(Q, K, V, 6, 2, 3)]),
    "compressive n_m = 4, n_cm = 2, c = 2, n_s = 3": (
        lambda: run(CompressiveMemory(4, 2, 2, "most_used"), Q, K, V, segments(3, T))[0],
        [lambda: ref.compressive_reference(Q, K, V, 3, 2, 2, "most_used", 3),
         lambda: ref.compressive_reference(Q, K, V, 5, 2, 2, "most_used", 3),
         lambda: ref.compressive_reference(Q, K, V, 4, 1, 2, "most_used", 3),
         lambda: ref.compressive_reference(Q, K, V, 4, 3, 2, "most_used", 3),
         lambda: ref.compressive_reference(Q, K, V, 4, 2, 1, "most_used", 3),
         lambda: ref.compressive_reference(Q, K, V, 4, 2, 2, "mean", 3),
         lambda: ref.compressive_reference(Q, K, V, 4, 2, 2, "most_used", 4)]),
    "moving average n_c = 4": (lambda: run(MovingAverageMemory(4), Q, K, V, [T])[0],
                               [lambda: ref.moving_average_reference(V, 3),
                                lambda: ref.moving_average_reference(V, 5)]),
    "delta beta = 0.7": (lambda: run(DeltaMemory(0.7), Q, K, V, [T])[0],
                         [lambda: ref.delta_rule_reference(Q, K, V, 0.6)]),
}


@pytest.mark.parametrize("case", list(SHARP))
def test_a_rule_one_size_off_does_not_match(case):
    fast, wrong_rules = SHARP[case]
    out = fast()
    for wrong in wrong_rules:
        assert not torch.allclose(out, wrong(), rtol=1e-3, atol=1e-3)


def test_bad_segmentations_are_refused():
    with pytest.raises(ValueError, match=r"segment_len must add up to T=19 tokens, got \[4, 4\]"):
        ref.segment_reference(Q, K, V, 3, [4, 4])
    with pytest.raises(ValueError, match="segment_len must be >= 1, got 0"):
        ref.knn_reference(Q, K, V, 4, 2, 0)
    with pytest.raises(TypeError, match="segment_len must be an int"):
        ref.segment_reference(Q, K, V, 3, 2.5)
