"""QuantizedKVMemory (KIVI) against its plain rule; quantize_kv's exact semantics; its error and bytes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from memory_helpers import SETTINGS, chunkings, qkv, run

from course_lib.cost import ModelConfig
from course_lib.memory import FullMemory, QuantizedKVMemory, WindowMemory, dequantize_kv, quantize_kv
from course_lib.memory import reference as ref

B, H, D = 2, 3, 4
SIZES = [  # (bits, group, residual, window, T): groups that do not divide T, residual 0, windows of every kind
    (4, 4, 4, None, 23), (2, 4, 0, None, 17), (8, 1, 0, None, 9), (4, 2, 3, None, 21), (4, 6, 5, None, 30),
    (4, 4, 4, 9, 33), (2, 4, 2, 5, 31), (8, 3, 1, 4, 25), (4, 2, 6, 5, 20), (4, 4, 0, 13, 40),
]


def cut(t, pattern=(3, 1, 5, 2, 9)):
    """Chunk sizes summing to ``t``, cycling through ``pattern`` (the last one shorter)."""
    sizes = []
    while sum(sizes) < t:
        sizes.append(min(pattern[len(sizes) % len(pattern)], t - sum(sizes)))
    return sizes


@pytest.mark.parametrize("bits,group,residual,window,t", SIZES)
def test_quantized_memory_is_its_rule_whatever_the_chunking(bits, group, residual, window, t):
    q, k, v = qkv(t + bits, B, H, t, D, dv=5)
    want = ref.quantized_reference(q, k, v, bits, group, residual, window)
    memory = QuantizedKVMemory(bits, group, residual, window, initial_groups=1)
    for sizes in ([t], [1] * t, cut(t)):
        out, _ = run(memory, q, k, v, sizes)
        torch.testing.assert_close(out, want)
        out, _ = run(memory, q, k, v, sizes, reserve=True)  # written in place
        torch.testing.assert_close(out, want)
    exact = (ref.full_reference if window is None else lambda *a: ref.window_reference(*a, window))(q, k, v)
    if window is None or window > residual:  # else every key a query sees is still exact
        assert not torch.allclose(want, exact, atol=1e-4), "the rule quantises something"
    else:
        torch.testing.assert_close(want, exact)


@SETTINGS
@given(sizes=chunkings(max_len=36), bits=st.sampled_from([8, 4, 2]), group=st.integers(1, 3),
       residual=st.integers(0, 6), window=st.one_of(st.none(), st.integers(1, 12)))
def test_any_chunking_gives_the_rule(sizes, bits, group, residual, window):
    group *= 8 // bits
    t = sum(sizes)
    q, k, v = qkv(t, 1, 2, t, 3)
    out, _ = run(QuantizedKVMemory(bits, group, residual, window), q, k, v, sizes)
    torch.testing.assert_close(out, ref.quantized_reference(q, k, v, bits, group, residual, window))


def test_with_nothing_old_enough_to_quantise_it_is_the_float_cache():
    q, k, v = qkv(3, B, H, 20, D)
    out, _ = run(QuantizedKVMemory(2, 4, residual=20), q, k, v, [7, 13])
    torch.testing.assert_close(out, run(FullMemory(), q, k, v, [20])[0])
    out, _ = run(QuantizedKVMemory(2, 4, residual=8, window=6), q, k, v, [7, 13])
    torch.testing.assert_close(out, run(WindowMemory(6), q, k, v, [20])[0])


def test_a_rule_one_size_off_does_not_match():
    q, k, v = qkv(5, B, H, 29, D)
    out, _ = run(QuantizedKVMemory(4, 4, 3, window=11), q, k, v, [29])
    for wrong in [(2, 4, 3, 11), (4, 2, 3, 11), (4, 4, 2, 11), (4, 4, 4, 11), (4, 4, 3, 10), (4, 4, 3, 12)]:
        assert not torch.allclose(out, ref.quantized_reference(q, k, v, *wrong), atol=1e-6), wrong


# -- quantize_kv / dequantize_kv ------------------------------------------------------------------
def test_quantize_kv_follows_its_formula_exactly():
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0], [-1.0, -1.0, -1.0, -1.0], [0.0, 0.4, 0.6, 1.5]])
    q, scale, zero = quantize_kv(x, 2, axis=-1)
    assert q.dtype == torch.uint8 and scale.shape == zero.shape == (3, 1) and scale.dtype == x.dtype
    assert q.tolist() == [[0, 1, 2, 3], [0, 0, 0, 0], [0, 1, 1, 3]]  # 0.4/0.5 -> 1, 0.6/0.5 -> 1
    assert scale.flatten().tolist() == [1.0, 1.0, 0.5] and zero.flatten().tolist() == [0.0, -1.0, 0.0]
    torch.testing.assert_close(dequantize_kv(q, scale, zero)[1], x[1])  # max == min: min exactly
    q, scale, zero = quantize_kv(x, 8, axis=0)  # per column
    assert scale.shape == (1, 4) and zero.tolist() == [[-1.0, -1.0, -1.0, -1.0]]
    g = torch.Generator().manual_seed(0)
    y = torch.randn(3, 5, 7, generator=g, dtype=torch.float64)
    for bits in range(1, 9):
        for axis in (-2, -1, 0):
            q, s, z = quantize_kv(y, bits, axis)
            assert int(q.max()) <= 2 ** bits - 1
            assert (dequantize_kv(q, s, z) - y).abs().le(s / 2 + 1e-12).all()  # within half a step


@pytest.mark.parametrize("call,name", [
    (lambda: quantize_kv(torch.ones(3), 0, -1), "bits"), (lambda: quantize_kv(torch.ones(3), 9, -1), "bits"),
    (lambda: quantize_kv(torch.ones(3), 4.0, -1), "bits"), (lambda: quantize_kv(torch.ones(3), 4, 1), "axis"),
    (lambda: quantize_kv(torch.ones(3), 4, -2), "axis"),
    (lambda: quantize_kv(torch.ones(3, dtype=torch.long), 4, 0), "x"),
    (lambda: quantize_kv([1.0, 2.0], 4, 0), "x"), (lambda: dequantize_kv(torch.ones(2), 1.0, 0.0), "scale"),
])
def test_bad_arguments_are_named(call, name):
    with pytest.raises(ValueError, match=rf"^{name} must"):
        call()


def test_the_memory_refuses_bad_sizes_by_name():
    with pytest.raises(ValueError, match="bits must be one of"):
        QuantizedKVMemory(bits=3)
    with pytest.raises(ValueError, match="group must be a multiple of 8 / bits = 4"):
        QuantizedKVMemory(bits=2, group=6)
    with pytest.raises(ValueError, match="residual must be >= 0"):
        QuantizedKVMemory(residual=-1)
    with pytest.raises(ValueError, match="window must be >= 1"):
        QuantizedKVMemory(window=0)


# -- error against the float cache, and bytes -------------------------------------------------------
def test_the_error_against_the_float_cache_grows_as_bits_shrink():
    """Relative error ``|out - out_float| / |out_float|`` of the attention outputs over T = 512 random
    tokens (d_h = 32, group 32, residual 32), measured: about 0.3% at 8 bits, 6% at 4, 31% at 2."""
    t = 512
    q, k, v = qkv(0, 2, 4, t, 32)
    exact, _ = run(FullMemory(), q, k, v, [t])
    errors = {}
    for bits in (8, 4, 2):
        out, _ = run(QuantizedKVMemory(bits, 32, 32), q, k, v, [64, 1, 447])
        errors[bits] = float((out - exact).norm() / exact.norm())
    assert errors[8] < 0.01 and 0.02 < errors[4] < 0.12 and 0.15 < errors[2] < 0.6, errors
    assert errors[4] > 5 * errors[8] and errors[2] > 3 * errors[4], errors


def test_bytes_count_packed_codes_scales_and_the_exact_residual():
    memory = QuantizedKVMemory(bits=4, group=32, residual=32)
    q, k, v = (x.float() for x in qkv(1, 1, 2, 200, 16))
    _, state = run(memory, q, k, v, [200])
    quantised = 160  # Q(200) = floor(168 / 32) * 32
    assert memory.quantized_tokens(state) == quantised
    codes = quantised * (16 + 16) // 2  # 4 bits: half a byte per value
    scales = (quantised // 32) * 2 * 16 * 4 + quantised * 2 * 4  # keys per channel and group, values per token
    exact = 40 * (16 + 16) * 4
    assert memory.nbytes(state) == 2 * (codes + scales + exact)  # 2 heads
    float_cache = run(FullMemory(), q, k, v, [200])[1]
    assert FullMemory().nbytes(float_cache) / memory.nbytes(state) > 2.5
    windowed = QuantizedKVMemory(bits=2, group=32, residual=32, window=128)
    assert windowed.fixed_size and not memory.fixed_size
    empty = windowed.nbytes(windowed.init_state(1, 2, 16))
    _, state = run(windowed, q, k, v, [200])
    assert windowed.nbytes(state) == empty == 2 * (3 * (32 * 32 // 4 + (2 * 16 + 2 * 32) * 4) + 63 * 32 * 4)
    assert windowed.label() == "quantised b = 2, n_c = 128"


def test_a_window_keeps_constant_bytes_and_storage_over_a_long_stream():
    memory = QuantizedKVMemory(bits=4, group=8, residual=8, window=30)
    state = memory.reserve(memory.init_state(1, 2, 8, dtype=torch.float32), 0)
    size = memory.nbytes(state)
    pointers = (state.groups.kc.data_ptr(), state.exact.k.data_ptr())
    q, k, v = (x.float() for x in qkv(2, 1, 2, 37, 8))
    with torch.no_grad():
        for _ in range(30):
            _, state = memory(q, k, v, state)
        for i in range(37):
            _, state = memory(q[:, :, i:i + 1], k[:, :, i:i + 1], v[:, :, i:i + 1], state)
    assert memory.nbytes(state) == size and (state.groups.kc.data_ptr(), state.exact.k.data_ptr()) == pointers
    assert memory.cost_per_token(ModelConfig(1, 2, 8, bytes_per_value=4), 10_000)["bytes"] == size


def test_decoding_after_reserve_allocates_no_new_cache_until_it_is_full():
    memory = QuantizedKVMemory(bits=8, group=4, residual=4, initial_groups=1)
    q, k, v = qkv(4, 1, 2, 60, 4)
    state = memory.reserve(memory.init_state(1, 2, 4, dtype=torch.float64), 60)
    pointer = state.groups.kc.data_ptr()
    out, state = run(memory, q, k, v, [1] * 60, state=state)
    assert state.groups.kc.data_ptr() == pointer
    torch.testing.assert_close(out, ref.quantized_reference(q, k, v, 8, 4, 4))
    with pytest.raises(ValueError, match="out of date"):
        stale = memory.reserve(memory.init_state(1, 2, 4, dtype=torch.float64), 4)
        run(memory, q[:, :, :2], k[:, :, :2], v[:, :, :2], [1, 1], state=stale)
        memory(q[:, :, :1], k[:, :, :1], v[:, :, :1], stale)


def test_a_windowed_cache_keeps_its_states_meaning_and_holds_no_graph():
    memory = QuantizedKVMemory(bits=2, group=4, residual=3, window=10).double()
    q, k, v = qkv(6, 1, 2, 30, 4)
    _, kept = run(memory, q[:, :, :11], k[:, :, :11], v[:, :, :11], [4, 7])
    first, later = run(memory, q[:, :, 11:], k[:, :, 11:], v[:, :, 11:], [3, 1, 15], state=kept)
    run(memory, q, k, v, [30], state=later)
    again, _ = run(memory, q[:, :, 11:], k[:, :, 11:], v[:, :, 11:], [3, 1, 15], state=kept)
    torch.testing.assert_close(again, first)
    torch.testing.assert_close(first, ref.quantized_reference(q, k, v, 2, 4, 3, 10)[:, :, 11:])
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out, state = run(memory, *leaves, [5, 1, 24])
    assert out.requires_grad and not any(x.requires_grad for x in state.groups.tensors())
    assert not state.exact.k.requires_grad
