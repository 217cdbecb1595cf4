"""KNNMemory: top-k retrieval by q . k over the store, plus the chunk causally, in one softmax."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from memory_helpers import SETTINGS, chunkings, qkv, run

from course_lib.attention import attention_reference, causal_mask
from course_lib.memory import KNNMemory


def knn_reference(q, k, v, sizes, capacity, top_k):
    """Per query: the top-k stored keys (the last N before its chunk) by q . k, plus the chunk causally."""
    t = sum(sizes)
    b, h, _, _ = q.shape
    mask = torch.zeros(b, h, t, t, dtype=torch.bool)
    s = 0
    for c in sizes:
        store = list(range(max(0, s - capacity), s))
        for i in range(s, s + c):
            mask[:, :, i, s:i + 1] = True
            if store:
                scores = (q[:, :, i, None] @ k[:, :, store].transpose(-2, -1))[:, :, 0]  # [B, H, n_stored]
                best = scores.topk(min(top_k, len(store)), -1).indices
                for bi in range(b):
                    for hi in range(h):
                        mask[bi, hi, i, [store[j] for j in best[bi, hi].tolist()]] = True
        s += c
    return attention_reference(q, k, v, mask)


@SETTINGS
@given(sizes=chunkings(), capacity=st.integers(1, 12), top_k=st.integers(1, 6), seed=st.integers(0, 2**16),
       reserve=st.booleans())
def test_knn_memory_equals_the_loop(sizes, capacity, top_k, seed, reserve):
    top_k = min(top_k, capacity)
    q, k, v = qkv(seed, 2, 2, sum(sizes), 3)
    out, _ = run(KNNMemory(capacity, top_k), q, k, v, sizes, reserve=reserve)
    torch.testing.assert_close(out, knn_reference(q, k, v, sizes, capacity, top_k))


@SETTINGS
@given(sizes=chunkings(), extra=st.integers(0, 3), seed=st.integers(0, 2**16))
def test_retrieving_everything_stored_is_full_attention(sizes, extra, seed):
    t = sum(sizes)
    q, k, v = qkv(seed, 1, 3, t, 4)
    out, _ = run(KNNMemory(capacity=t + extra, top_k=t + extra), q, k, v, sizes)
    torch.testing.assert_close(out, attention_reference(q, k, v, causal_mask(t, t)))


def test_the_pairs_a_query_picks():
    # 2-d keys at angles; the store holds positions 0..4, the capacity drops nothing
    keys = torch.tensor([[1, 0], [0, 1], [-1, 0], [0, -1], [3, 3]], dtype=torch.float64).view(1, 1, 5, 2)
    memory = KNNMemory(capacity=8, top_k=2)
    _, state = run(memory, keys, keys, keys, [5])
    assert memory.spans(state) == [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]
    queries = torch.tensor([[1, 0], [0, -1], [-2, 1]], dtype=torch.float64).view(1, 1, 3, 2)
    picked = memory.retrieve(queries, state)[0, 0].tolist()
    # q = (1, 0): scores 1, 0, -1, 0, 3 -> positions 4 and 0
    # q = (0, -1): scores 0, -1, 0, 1, -3 -> position 3, then a tie of 0 and 2 (either)
    # q = (-2, 1): scores -2, 1, 2, -1, -3 -> positions 2 and 1
    assert picked[0] == [4, 0]
    assert picked[1][0] == 3 and picked[1][1] in (0, 2)
    assert picked[2] == [2, 1]


def test_a_small_store_forgets_the_oldest_pairs():
    memory = KNNMemory(capacity=3, top_k=3)
    x = torch.arange(7.0).view(1, 1, 7, 1)
    _, state = run(memory, x, x, x, [4, 3])
    assert memory.spans(state) == [(4, 4), (5, 5), (6, 6)]
    assert memory.held(state)[0].flatten().tolist() == [4.0, 5.0, 6.0]
    one = torch.ones(1, 1, 1, 1)  # q . k = k: the best first
    assert memory.retrieve(one, state)[0, 0, 0].tolist() == [6, 5, 4]  # all 3 stored
    fresh = memory.init_state(1, 1, 1)
    assert memory.retrieve(one, fresh)[0, 0, 0].tolist() == [-1, -1, -1]  # nothing stored yet


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        KNNMemory(4, 0)
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        KNNMemory(0, 2)
    with pytest.raises(ValueError, match="top_k=10 must be <= capacity=4"):
        KNNMemory(4, 10)
