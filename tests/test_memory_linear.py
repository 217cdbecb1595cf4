"""Linear attention and the delta rule: the token loop, the parallel and the chunked forms agree."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from memory_helpers import SETTINGS, assert_same_gradients, chunkings, run

from course_lib.memory import (
    DeltaMemory,
    LinearMemory,
    delta_rule_chunked,
    delta_rule_recurrent,
    linear_attention_chunked,
    linear_attention_parallel,
    linear_attention_recurrent,
)


def tensors(seed, b, h, t, d, dv):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, h, t, d, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(b, h, t, dv, generator=g, dtype=torch.float64)
    S = torch.randn(b, h, d, dv, generator=g, dtype=torch.float64)
    z = torch.rand(b, h, d, generator=g, dtype=torch.float64) * 3
    beta = torch.rand(b, h, t, generator=g, dtype=torch.float64)
    return q, k, v, S, z, beta


shapes = dict(b=st.integers(1, 2), h=st.integers(1, 3), t=st.integers(1, 40), d=st.integers(1, 6),
              dv=st.integers(1, 5), chunk=st.integers(1, 16), seed=st.integers(0, 2**16))


@SETTINGS
@given(**shapes)
def test_linear_recurrent_equals_parallel_equals_chunked(b, h, t, d, dv, chunk, seed):
    q, k, v, S, z, _ = tensors(seed, b, h, t, d, dv)
    reference = linear_attention_recurrent(q, k, v, S, z)
    for result in (linear_attention_parallel(q, k, v, S, z), linear_attention_chunked(q, k, v, S, z, chunk)):
        for got, want in zip(result, reference):
            torch.testing.assert_close(got, want)


@SETTINGS
@given(**shapes, float_beta=st.booleans())
def test_delta_recurrent_equals_chunked(b, h, t, d, dv, chunk, seed, float_beta):
    q, k, v, S, _, beta = tensors(seed, b, h, t, d, dv)
    beta = 0.6 if float_beta else beta * 2
    for got, want in zip(delta_rule_chunked(q, k, v, beta, S, chunk), delta_rule_recurrent(q, k, v, beta, S)):
        torch.testing.assert_close(got, want)


@SETTINGS
@given(sizes=chunkings(), chunk=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_linear_memory_gives_the_same_result_for_any_chunking(sizes, chunk, seed):
    q, k, v, *_ = tensors(seed, 2, 2, sum(sizes), 4, 3)
    out, state = run(LinearMemory(chunk_size=chunk), q, k, v, sizes)
    want, S, z = linear_attention_recurrent(q, k, v)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(state.S, S)
    torch.testing.assert_close(state.z, z)


@SETTINGS
@given(sizes=chunkings(), chunk=st.integers(1, 9), seed=st.integers(0, 2**16), per_token=st.booleans())
def test_delta_memory_gives_the_same_result_for_any_chunking(sizes, chunk, seed, per_token):
    q, k, v, _, _, beta = tensors(seed, 1, 3, sum(sizes), 5, 4)
    if per_token:
        out, state = run(DeltaMemory(chunk_size=chunk), q, k, v, sizes, beta=beta)
    else:
        out, state = run(DeltaMemory(beta=0.8, chunk_size=chunk), q, k, v, sizes)
    want, S = delta_rule_recurrent(q, k, v, beta if per_token else 0.8)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(state.S, S)


@pytest.mark.parametrize("form", ["linear", "delta"])
def test_chunked_gradients_equal_the_loop_gradients(form):
    q, k, v, S, z, beta = tensors(7, 1, 2, 19, 4, 3)
    leaves = [x.requires_grad_() for x in (q, k, v, beta)]
    if form == "linear":
        fast, slow = linear_attention_chunked(q, k, v, S, z, 5), linear_attention_recurrent(q, k, v, S, z)
    else:
        fast, slow = delta_rule_chunked(q, k, v, beta, S, 5), delta_rule_recurrent(q, k, v, beta, S)
    assert_same_gradients(fast, slow, leaves)


def one_hot(*rows, d=3):
    return torch.eye(d, dtype=torch.float64)[list(rows)].view(1, 1, len(rows), d)


def test_the_delta_rule_overwrites_where_linear_attention_piles_up():
    # write e0 -> 1, e1 -> 0, then e0 -> 9; each query reads right after its token is written
    k = one_hot(0, 1, 0)
    v = torch.tensor([1.0, 0.0, 9.0], dtype=torch.float64).view(1, 1, 3, 1)
    q = one_hot(1, 0, 0)
    out, _ = run(DeltaMemory(beta=1.0), q, k, v, [3])
    # q0 = e1: nothing stored under e1 yet; q1 = e0 reads 1; q2 = e0 reads 9, the 1 is overwritten
    assert out.flatten().tolist() == pytest.approx([0.0, 1.0, 9.0])
    # linear attention (large one-hot keys, so phi is nearly one-hot): e0 holds both 1 and 9
    out, _ = run(LinearMemory(), 30 * q, 30 * k, v, [1, 1, 1])
    assert out[0, 0, 2, 0].item() == pytest.approx(5.0, abs=0.2)


def test_a_single_token_is_read_back():
    q, k, v, *_ = tensors(1, 1, 2, 1, 4, 3)
    out, _ = run(LinearMemory(), q, k, v, [1])  # phi(q) phi(k)^T v / (phi(q) . phi(k)) = v
    torch.testing.assert_close(out, v)
    out, _ = run(DeltaMemory(beta=1.0), q, k, v, [1])  # q^ k^^T v = cos(q, k) v
    torch.testing.assert_close(out, torch.nn.functional.cosine_similarity(q, k, dim=-1)[..., None] * v)


def test_bad_beta_and_chunk_size_are_refused():
    with pytest.raises(ValueError, match="beta must be in \\[0, 2\\]"):
        DeltaMemory(beta=3.0)
    with pytest.raises(TypeError, match="beta must be a float in \\[0, 2\\] or 'learned'.*got list"):
        DeltaMemory(beta=[0.5])
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        LinearMemory(chunk_size=0)
    memory = DeltaMemory()
    q = torch.zeros(1, 2, 3, 4)
    with pytest.raises(ValueError, match="beta must be a float or a \\[B, H, T\\]"):
        memory(q, q, q, memory.init_state(1, 2, 4), beta=torch.ones(1, 2, 5))


# -- a learned write strength: beta_t = sigma(W_beta x_t), one per head and token ---------------
@pytest.mark.parametrize("typo", ["learnt", "Learned", "big", ""])
def test_a_misspelt_beta_names_the_argument_what_it_got_and_what_it_expected(typo):
    with pytest.raises(ValueError, match=f"beta must be a float in \\[0, 2\\] or 'learned'.*got str '{typo}'"):
        DeltaMemory(beta=typo)


@pytest.mark.parametrize("bad", [-0.01, 2.5, float("nan")])
def test_a_tensor_beta_outside_0_to_2_is_refused(bad):
    memory = DeltaMemory(beta="learned")
    q = torch.zeros(2, 3, 5, 4, dtype=torch.float64)
    beta = torch.full((2, 3, 5), 0.5, dtype=torch.float64)
    beta[1, 2, 3] = bad
    with pytest.raises(ValueError, match="beta must hold values in \\[0, 2\\].*got a tensor with values from"):
        memory(q, q, q, memory.init_state(2, 3, 4, dtype=torch.float64), beta=beta)
    beta[1, 2, 3] = 2.0  # the ends are allowed
    beta[0, 0, 0] = 0.0
    memory(q, q, q, memory.init_state(2, 3, 4, dtype=torch.float64), beta=beta)


def test_a_learned_beta_memory_declares_it_and_needs_a_beta_per_call():
    assert DeltaMemory(beta="learned").learns_beta and DeltaMemory(beta="learned").beta == "learned"
    assert not DeltaMemory().learns_beta and not DeltaMemory(0.3).learns_beta and not LinearMemory().learns_beta
    assert "beta='learned'" in repr(DeltaMemory(beta="learned"))
    memory = DeltaMemory(beta="learned")
    q = torch.zeros(1, 2, 3, 4)
    with pytest.raises(ValueError, match="beta must be given to a DeltaMemory\\(beta='learned'\\).*got beta=None"):
        memory(q, q, q, memory.init_state(1, 2, 4))
    with pytest.raises(ValueError, match="beta must be given"):
        memory.forward_unchecked(q, q, q, memory.init_state(1, 2, 4))


@SETTINGS
@given(sizes=chunkings(), chunk=st.integers(1, 9), seed=st.integers(0, 2**16), b=st.integers(1, 3),
       h=st.integers(1, 3), d=st.integers(1, 7), dv=st.integers(1, 5))
def test_a_learned_memory_gives_the_loop_for_any_chunking_with_a_per_token_beta(sizes, chunk, seed, b, h, d, dv):
    """A per-token beta in (0, 1), as sigma(W_beta x) gives: the chunked (WY/UT) form over any
    chunking, and the one-token path, agree with the token loop (and the unchecked path too)."""
    q, k, v, *_ = tensors(seed, b, h, sum(sizes), d, dv)
    logits = torch.randn(b, h, sum(sizes), generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    beta = torch.sigmoid(3 * logits)
    out, state = run(DeltaMemory(beta="learned", chunk_size=chunk), q, k, v, sizes, beta=beta)
    want, S = delta_rule_recurrent(q, k, v, beta)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state.S, S, rtol=1e-12, atol=1e-12)
    assert state.length == sum(sizes)
    memory = DeltaMemory(beta="learned", chunk_size=chunk)
    fast, fast_state = memory.forward_unchecked(q, k, v, memory.init_state(b, h, d, dtype=q.dtype, v_dim=dv), beta)
    torch.testing.assert_close(fast, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast_state.S, S, rtol=1e-12, atol=1e-12)


def test_a_per_token_beta_that_is_constant_equals_the_float():
    q, k, v, S, _, _ = tensors(4, 2, 3, 13, 5, 3)
    memory = DeltaMemory(beta=0.7, chunk_size=4)
    state = memory.init_state(2, 3, 5, dtype=torch.float64, v_dim=3)
    state.S = S
    by_float, s1 = memory(q, k, v, state)
    by_tensor, s2 = DeltaMemory(beta="learned", chunk_size=4)(q, k, v, state, beta=torch.full((2, 3, 13), 0.7,
                                                                                              dtype=torch.float64))
    assert torch.equal(by_float, by_tensor) and torch.equal(s1.S, s2.S)
