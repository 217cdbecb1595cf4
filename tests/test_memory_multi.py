"""MultiMemory: a learned per-head gate between two memories, or one softmax over their slots."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from memory_helpers import SETTINGS, chunkings, qkv, run

from course_lib.attention import attention_reference
from course_lib.memory import (
    CompressiveMemory,
    CumulativeAverageMemory,
    FullMemory,
    KNNMemory,
    LinearMemory,
    MultiMemory,
    SegmentMemory,
    WindowMemory,
)


def pair():
    return [WindowMemory(3), LinearMemory(chunk_size=4)]


@SETTINGS
@given(sizes=chunkings(max_len=30), seed=st.integers(0, 2**16), h=st.integers(1, 3))
def test_a_gate_at_1_is_the_first_memory_alone_and_at_0_the_second(sizes, seed, h):
    q, k, v = qkv(seed, 2, h, sum(sizes), 4)
    multi = MultiMemory(pair(), combine="gate", n_heads=h).double()
    alone = [run(m, q, k, v, sizes)[0] for m in pair()]
    with torch.no_grad():
        multi.gate_logit.fill_(float("inf"))  # g = sigmoid(+inf) = 1
    torch.testing.assert_close(run(multi, q, k, v, sizes)[0], alone[0])
    with torch.no_grad():
        multi.gate_logit.fill_(float("-inf"))  # g = 0
    torch.testing.assert_close(run(multi, q, k, v, sizes)[0], alone[1])


def test_the_gate_starts_at_one_half_per_head_and_learns():
    q, k, v = (x.requires_grad_() for x in qkv(1, 1, 2, 9, 4))
    multi = MultiMemory(pair(), combine="gate", n_heads=2).double()
    assert multi.gate.tolist() == [0.5, 0.5]
    out, state = run(multi, q, k, v, [4, 5])
    a, b = (run(m, q, k, v, [4, 5])[0] for m in pair())
    torch.testing.assert_close(out, (a + b) / 2)
    (out[:, 0] * a[:, 0].detach()).sum().backward()  # only head 0 matters: only its gate gets a gradient
    grad = multi.gate_logit.grad
    assert grad[0] != 0 and grad[1] == 0
    assert multi.nbytes(state) == sum(m.nbytes(s) for m, s in zip(multi.memories, state.states))


@SETTINGS
@given(prefix=st.integers(0, 20), t=st.integers(1, 12), window=st.integers(1, 6), mem_len=st.integers(1, 6),
       seed=st.integers(0, 2**16))
def test_concat_is_one_softmax_over_both_memories_and_the_chunk(prefix, t, window, mem_len, seed):
    q, k, v = qkv(seed, 2, 2, prefix + t, 3)
    multi = MultiMemory([WindowMemory(window), SegmentMemory(mem_len)], combine="concat")
    out, state = run(multi, q, k, v, [prefix, t] if prefix else [t])
    win = list(range(max(0, prefix - window), prefix))  # the window's ring before the chunk
    seg = list(range(max(0, prefix - mem_len), prefix))  # the segment memory before the chunk
    chunk = list(range(prefix, prefix + t))
    keys, values = (torch.cat([x[:, :, win], x[:, :, seg], x[:, :, chunk]], 2) for x in (k, v))
    i = torch.tensor(chunk)[:, None]
    mask = torch.cat([torch.tensor(win)[None, :] > i - window,  # the window hides what left it
                      torch.ones(t, len(seg), dtype=torch.bool),
                      torch.tensor(chunk)[None, :] <= i], dim=1)  # the chunk once, causally
    torch.testing.assert_close(out[:, :, prefix:], attention_reference(q[:, :, chunk], keys, values, mask))
    assert multi.spans(state) == multi.memories[0].spans(state.states[0]) + multi.memories[1].spans(state.states[1])


@SETTINGS
@given(sizes=chunkings(max_len=30), seed=st.integers(0, 2**16))
def test_concat_passes_attention_mass_to_a_most_used_compressor(sizes, seed):
    # a window of 1 adds one slot that no query of a later chunk may see: the same as the compressor alone
    q, k, v = qkv(seed, 1, 2, sum(sizes), 3)
    alone, s_alone = run(CompressiveMemory(3, 2, 2, "most_used"), q, k, v, sizes)
    multi = MultiMemory([CompressiveMemory(3, 2, 2, "most_used"), WindowMemory(1)], combine="concat")
    out, s_multi = run(multi, q, k, v, sizes)
    torch.testing.assert_close(out, alone)
    for x, y in zip(multi.memories[0].held(s_multi.states[0]), CompressiveMemory(3, 2, 2).held(s_alone)):
        torch.testing.assert_close(x, y)


def test_concat_with_a_full_cache_and_a_knn_memory_runs_and_decodes():
    q, k, v = qkv(2, 1, 2, 12, 4)
    multi = MultiMemory([FullMemory(), KNNMemory(8, 2)], combine="concat")
    out, state = run(multi, q, k, v, [5, 1, 1, 5])
    assert out.shape == q.shape and torch.isfinite(out).all()
    assert len(multi.spans(state)) == 12 + 8


def test_bad_combinations_are_refused():
    with pytest.raises(ValueError, match=r"memories\[1\] \(LinearMemory\) holds no slots"):
        MultiMemory([WindowMemory(4), LinearMemory()], combine="concat")
    with pytest.raises(ValueError, match="holds no slots"):
        MultiMemory([CumulativeAverageMemory(), SegmentMemory(4)], combine="concat")
    with pytest.raises(ValueError, match="needs n_heads"):
        MultiMemory(pair(), combine="gate")
    with pytest.raises(ValueError, match="mixes two memories"):
        MultiMemory([*pair(), WindowMemory(2)], combine="gate", n_heads=2)
    with pytest.raises(ValueError, match="combine must be 'gate' or 'concat'"):
        MultiMemory(pair(), combine="sum", n_heads=2)
    with pytest.raises(TypeError, match=r"memories\[0\] must be a course_lib.memory.Memory"):
        MultiMemory(["window", LinearMemory()], n_heads=2)
    multi = MultiMemory(pair(), n_heads=2)
    q = torch.zeros(1, 3, 2, 4)
    with pytest.raises(ValueError, match="q has 3 heads but this gate was made for n_heads=2"):
        multi(q, q, q, multi.init_state(1, 3, 4))
