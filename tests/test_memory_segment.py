"""SegmentMemory (Transformer-XL): each chunk sees the last M pairs before it, then itself causally."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from memory_helpers import SETTINGS, chunkings, qkv, run

from course_lib.attention import attention_reference, causal_mask
from course_lib.memory import SegmentMemory


def segment_mask(sizes, mem_len):
    """Query ``i`` of the chunk starting at ``s`` sees keys ``max(0, s - M) .. i``."""
    t = sum(sizes)
    mask = torch.zeros(t, t, dtype=torch.bool)
    s = 0
    for c in sizes:
        for i in range(s, s + c):
            mask[i, max(0, s - mem_len):i + 1] = True
        s += c
    return mask


@SETTINGS
@given(sizes=chunkings(), mem_len=st.integers(1, 12), seed=st.integers(0, 2**16), reserve=st.booleans(),
       gqa=st.booleans())
def test_each_chunk_sees_the_last_M_pairs_before_it(sizes, mem_len, seed, reserve, gqa):
    q, k, v = qkv(seed, 2, 4 if gqa else 2, sum(sizes), 3, h_kv=2)
    out, _ = run(SegmentMemory(mem_len), q, k, v, sizes, reserve=reserve)
    torch.testing.assert_close(out, attention_reference(q, k, v, segment_mask(sizes, mem_len)))


@SETTINGS
@given(sizes=chunkings(), extra=st.integers(0, 4), seed=st.integers(0, 2**16))
def test_a_memory_as_long_as_the_text_is_full_attention(sizes, extra, seed):
    t = sum(sizes)
    q, k, v = qkv(seed, 1, 2, t, 4)
    out, _ = run(SegmentMemory(t + extra), q, k, v, sizes)
    torch.testing.assert_close(out, attention_reference(q, k, v, causal_mask(t, t)))


def test_decoding_token_by_token_is_a_window_of_M_plus_1():
    q, k, v = qkv(3, 1, 2, 15, 4)
    out, _ = run(SegmentMemory(4), q, k, v, [1] * 15)
    torch.testing.assert_close(out, attention_reference(q, k, v, causal_mask(15, 15, window=5)))


def test_segments_of_3_with_a_memory_of_2_by_hand():
    memory = SegmentMemory(mem_len=2)
    x = torch.arange(9.0, dtype=torch.float64).view(1, 1, 9, 1)
    zero = torch.zeros_like(x)
    out, state = run(memory, zero, zero, x, [3, 3, 3])
    assert memory.spans(state) == [(7, 7), (8, 8)]
    assert memory.held(state)[1].flatten().tolist() == [7.0, 8.0]
    # equal scores: each output is the mean of the values seen. Segment 2 (positions 3..5)
    # sees memory {1, 2}, then itself causally; segment 3 sees {4, 5}
    assert out.flatten().tolist() == pytest.approx([0, 0.5, 1, 2, 2.5, 3, 5, 5.5, 6])


def test_bad_mem_len_is_refused():
    with pytest.raises(ValueError, match="mem_len must be >= 1, got 0"):
        SegmentMemory(0)
