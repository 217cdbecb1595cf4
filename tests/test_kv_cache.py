"""KV caches: the growing and the preallocated cache hold the same pairs; the size formula."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib import KVCache, StaticKVCache, kv_cache_bytes


@settings(max_examples=25, deadline=None)
@given(chunks=st.lists(st.integers(1, 7), min_size=1, max_size=6), seed=st.integers(0, 999))
def test_static_cache_equals_growing_cache_over_uneven_updates(chunks, seed):
    g = torch.Generator().manual_seed(seed)
    dynamic, static = KVCache(), StaticKVCache(2, 3, sum(chunks) + 2, 4, dtype=torch.float64)
    for t in chunks:
        k = torch.randn(2, 3, t, 4, generator=g, dtype=torch.float64)
        v = torch.randn(2, 3, t, 4, generator=g, dtype=torch.float64)
        K1, V1 = dynamic.update(k, v)
        K2, V2 = static.update(k, v)
        assert torch.equal(K1, K2) and torch.equal(V1, V2)
        assert dynamic.seq_len == static.seq_len
        assert dynamic.nbytes == static.nbytes


def test_a_cache_of_three_tokens_holds_them_in_order():
    cache = StaticKVCache(1, 1, 4, 1)
    for token in (10.0, 20.0, 30.0):
        K, _ = cache.update(torch.full((1, 1, 1, 1), token), torch.zeros(1, 1, 1, 1))
    assert K.flatten().tolist() == [10.0, 20.0, 30.0]
    assert cache.seq_len == 3


def test_static_cache_writes_in_place_without_allocating():
    cache = StaticKVCache(1, 2, 16, 4)
    pointer = cache.k_buf.data_ptr()
    for _ in range(10):
        K, V = cache.update(torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4))
        assert K.data_ptr() == pointer and cache.k_buf.data_ptr() == pointer


def test_growing_cache_reallocates_every_step():
    cache = KVCache()
    pointers = {cache.update(torch.randn(1, 1, 1, 2), torch.randn(1, 1, 1, 2))[0].data_ptr() for _ in range(5)}
    assert len(pointers) == 5


def test_overflowing_a_static_cache_says_how_much_room_is_left():
    cache = StaticKVCache(1, 1, 4, 2)
    cache.update(torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 2))
    with pytest.raises(ValueError, match=r"max_len=4.*at most 1 more"):
        cache.update(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"k": torch.zeros(2, 1, 1, 2), "v": torch.zeros(2, 1, 1, 2)}, r"holds \[B=1"),
        ({"k": torch.zeros(1, 1, 1, 2, dtype=torch.float64), "v": torch.zeros(1, 1, 1, 2, dtype=torch.float64)},
         "dtype"),
        ({"k": torch.zeros(1, 1, 1, 2, device="meta"), "v": torch.zeros(1, 1, 1, 2, device="meta")},
         "on meta but this cache lives on cpu"),
        ({"k": torch.zeros(1, 1, 2)}, "k must have 4"),
        ({"v": torch.zeros(1, 1, 2, 2)}, "one shape"),
    ],
)
def test_static_cache_rejects_pairs_that_do_not_fit(kwargs, match):
    cache = StaticKVCache(1, 1, 8, 2)
    args = {"k": torch.zeros(1, 1, 1, 2), "v": torch.zeros(1, 1, 1, 2)} | kwargs
    with pytest.raises((ValueError, TypeError), match=match):
        cache.update(args["k"], args["v"])


def test_llama_2_7b_at_4096_tokens_in_fp16_needs_exactly_2_gib():
    assert kv_cache_bytes(n_layers=32, n_kv_heads=32, head_dim=128, seq_len=4096) == 2 * 1024**3


def test_gqa_divides_the_cache_by_the_group_factor():
    # Llama-2-70B: 80 layers, 64 query heads but 8 KV heads, d_h = 128
    mha = kv_cache_bytes(80, 64, 128, 4096)
    gqa = kv_cache_bytes(80, 8, 128, 4096)
    assert mha == 8 * gqa
    assert gqa == 2 * 80 * 8 * 128 * 4096 * 2 == 1_342_177_280


def test_cache_bytes_formula_matches_a_real_cache():
    cache = StaticKVCache(3, 2, 10, 8, dtype=torch.float32)
    cache.update(torch.zeros(3, 2, 7, 8), torch.zeros(3, 2, 7, 8))
    assert cache.nbytes == kv_cache_bytes(1, 2, 8, 7, batch=3, bytes_per_value=4)


@pytest.mark.parametrize("bad", [{"n_layers": 0}, {"seq_len": -1}, {"head_dim": 2.5}])
def test_cache_bytes_rejects_impossible_sizes(bad):
    args = {"n_layers": 1, "n_kv_heads": 1, "head_dim": 1, "seq_len": 1} | bad
    with pytest.raises((ValueError, TypeError), match=next(iter(bad))):
        kv_cache_bytes(**args)


@pytest.mark.gpu
def test_static_cache_on_cuda_matches_cpu():
    cpu = StaticKVCache(1, 2, 8, 4)
    gpu = StaticKVCache(1, 2, 8, 4, device="cuda")
    k, v = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    K1, _ = cpu.update(k, v)
    K2, _ = gpu.update(k.cuda(), v.cuda())
    torch.testing.assert_close(K1, K2.cpu())


def test_the_growing_cache_keeps_its_own_copy_of_the_first_pairs():
    """Zeroing the tensors passed in (a caller reusing its buffers) must not change the cache."""
    k, v = torch.arange(8.0).view(1, 1, 2, 4), -torch.arange(8.0).view(1, 1, 2, 4)
    cache = KVCache()
    cache.update(k, v)
    k.zero_()
    v.zero_()
    K, V = cache.update(torch.ones(1, 1, 1, 4), torch.ones(1, 1, 1, 4))
    assert K[0, 0, :, 0].tolist() == [0.0, 4.0, 1.0] and V[0, 0, :, 0].tolist() == [0.0, -4.0, 1.0]
