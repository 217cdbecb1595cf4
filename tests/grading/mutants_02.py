"""Lesson 02's mutants (known-wrong answers, as learners write them) and reference answers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from course_lib import KVCache, attention, attention_reference, causal_mask, kv_cache_bytes

from . import choice_mutants, mutant, value_mutant


def _cached_with_course_lib(q, k, v, cache):
    K, V = cache.update(k, v)
    return attention(q, K, V, causal_mask(q.shape[2], K.shape[2]))


REFERENCES = {
    "02.growing_cache": KVCache,
    "02.cached_attention": _cached_with_course_lib,
    "02.max_context": lambda budget, *shape, batch=1, bytes_per_value=2: int(
        budget // kv_cache_bytes(*shape, 1, batch=batch, bytes_per_value=bytes_per_value)),
    "02.budget_context": float(16 * 2**30 // kv_cache_bytes(32, 8, 128, 1, batch=4)),  # a float of the right value
    "02.double_context": lambda: " B ",
}

# ---------------------------------------------------------------- 02.growing_cache

class _CatCache:
    """A correct grow-by-concatenation cache, for the mutants below to break one thing each."""

    def __init__(self):
        self.k = self.v = None

    @property
    def seq_len(self):
        return 0 if self.k is None else self.k.shape[2]

    def update(self, k, v):
        self.k, self.v = self._append(self.k, k), self._append(self.v, v)
        return self.k, self.v

    def _append(self, held, new):
        return new if held is None else torch.cat([held, new], dim=2)


@mutant("02.growing_cache", hint="never_grows")
class NeverGrows(_CatCache):
    def update(self, k, v):
        self.k, self.v = k, v
        return self.k, self.v


@mutant("02.growing_cache", hint="evicts")
class EvictsOldest(_CatCache):
    max_tokens = 8

    def _append(self, held, new):
        return new if held is None else torch.cat([held, new], dim=2)[:, :, -self.max_tokens:]


@mutant("02.growing_cache", hint="wrong_axis")
class GrowsAlongHeads(_CatCache):
    def _append(self, held, new):
        return new if held is None else torch.cat([held, new], dim=1)


@mutant("02.growing_cache", hint="prepends")
class Prepends(_CatCache):
    def _append(self, held, new):
        return new if held is None else torch.cat([new, held], dim=2)


@mutant("02.growing_cache", hint="counts_updates")
class CountsUpdates(_CatCache):
    seq_len = 0  # a counter of calls, where the tokens held are expected

    def update(self, k, v):
        self.seq_len += 1
        return super().update(k, v)


@mutant("02.growing_cache", hint="shared")
class SharedClassStorage:
    keys: list = []  # a class attribute: every cache appends to the same list
    values: list = []

    @property
    def seq_len(self):
        return sum(k.shape[2] for k in self.keys)

    def update(self, k, v):
        self.keys.append(k)
        self.values.append(v)
        return torch.cat(self.keys, dim=2), torch.cat(self.values, dim=2)


@mutant("02.growing_cache", hint="seq_len_not_int")
class SeqLenMethod(_CatCache):
    def seq_len(self):  # a method, where a property is expected
        return 0 if self.k is None else self.k.shape[2]


# ---------------------------------------------------------------- 02.cached_attention

@mutant("02.cached_attention", hint="chunk_mask")
def no_mask_inside_chunk(q, k, v, cache):
    K, V = cache.update(k, v)
    return attention_reference(q, K, V)


@mutant("02.cached_attention", hint="first_aligned")
def torch_is_causal(q, k, v, cache):
    K, V = cache.update(k, v)
    return F.scaled_dot_product_attention(q, K, V, is_causal=True)


@mutant("02.cached_attention", hint="ignores_cache")
def only_the_new_tokens(q, k, v, cache):
    cache.update(k, v)
    t = q.shape[2]
    return attention_reference(q, k, v, causal_mask(t, t))


@mutant("02.cached_attention", hint="double_update")
def updates_twice(q, k, v, cache):
    cache.update(k, v)
    K, V = cache.update(k, v)
    return attention_reference(q, K, V, causal_mask(q.shape[2], K.shape[2]))


@mutant("02.cached_attention", hint="no_scale")
def unscaled_scores(q, k, v, cache):
    K, V = cache.update(k, v)
    scores = q @ K.transpose(-2, -1)
    scores = scores.masked_fill(~causal_mask(q.shape[2], K.shape[2]), float("-inf"))
    return torch.softmax(scores, dim=-1) @ V


@mutant("02.cached_attention", hint="not_appended")
def never_appends(q, k, v, cache):
    t = q.shape[2]
    return attention_reference(q, k, v, causal_mask(t, t))


# ---------------------------------------------------------------- 02.max_context

def _per_token(n_layers, n_kv_heads, head_dim, batch, bytes_per_value):
    return 2 * n_layers * n_kv_heads * head_dim * batch * bytes_per_value


@mutant("02.max_context", hint="rounds_up")
def rounds_up(budget_bytes, n_layers, n_kv_heads, head_dim, batch=1, bytes_per_value=2):
    return math.ceil(budget_bytes / _per_token(n_layers, n_kv_heads, head_dim, batch, bytes_per_value))


@mutant("02.max_context", hint="no_factor_two")
def keys_only(budget_bytes, n_layers, n_kv_heads, head_dim, batch=1, bytes_per_value=2):
    return budget_bytes // (n_layers * n_kv_heads * head_dim * batch * bytes_per_value)


@mutant("02.max_context", hint="no_batch")
def ignores_batch(budget_bytes, n_layers, n_kv_heads, head_dim, batch=1, bytes_per_value=2):
    return budget_bytes // _per_token(n_layers, n_kv_heads, head_dim, 1, bytes_per_value)


@mutant("02.max_context", hint="default_bytes")
def assumes_fp32(budget_bytes, n_layers, n_kv_heads, head_dim, batch=1, bytes_per_value=4):
    return budget_bytes // _per_token(n_layers, n_kv_heads, head_dim, batch, bytes_per_value)


@mutant("02.max_context", hint="not_int")
def true_division(budget_bytes, n_layers, n_kv_heads, head_dim, batch=1, bytes_per_value=2):
    return math.floor(budget_bytes / _per_token(n_layers, n_kv_heads, head_dim, batch, bytes_per_value)) * 1.0


# ---------------------------------------------------------------- 02 questions

value_mutant("02.budget_context", "one_conversation", "no_batch", 131072)
value_mutant("02.budget_context", "all_query_heads", "mha", 16 * 2**30 // (2 * 32 * 32 * 128 * 4 * 2))
value_mutant("02.budget_context", "keys_only", "no_factor_two", 65536)
value_mutant("02.budget_context", "fp32", "fp32", lambda: 16 * 2**30 // (2 * 32 * 8 * 128 * 4 * 4))

choice_mutants("02.double_context", last_step_constant="A", bytes_quadratic="C", total_linear="D")


# ---------------------------------------------------------------- 02: wrong answers of issue 11 B

@mutant("02.growing_cache", hint="dtype_changed")  # the downcast is caught on the first update
class DowncastsAndKeeps64(_CatCache):
    def update(self, k, v):
        k, v = k.float(), v.float()
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)[:, :, -64:]
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)[:, :, -64:]
        return self.k, self.v


@mutant("02.growing_cache", hint="dtype_changed")
class Float16Cache(_CatCache):
    def update(self, k, v):
        return super().update(k.half(), v.half())


@mutant("02.growing_cache", hint="evicts")
class Preallocated48:
    def __init__(self):
        self.buf_k = self.buf_v = None
        self.seq_len = 0

    def update(self, k, v):
        if self.buf_k is None:
            shape = (*k.shape[:2], 48, k.shape[3])
            self.buf_k, self.buf_v = k.new_zeros(shape), v.new_zeros(shape)
        n = k.shape[2]
        keep = min(self.seq_len + n, 48)
        self.buf_k = torch.cat([self.buf_k[:, :, :self.seq_len], k], 2)[:, :, -keep:]
        self.buf_v = torch.cat([self.buf_v[:, :, :self.seq_len], v], 2)[:, :, -keep:]
        self.seq_len = keep
        return self.buf_k[:, :, :keep], self.buf_v[:, :, :keep]




@mutant("02.max_context", hint="off_by_one")
def counts_the_current_token_too(budget_bytes, n_layers, n_kv_heads, head_dim, batch=1, bytes_per_value=2):
    return budget_bytes // _per_token(n_layers, n_kv_heads, head_dim, batch, bytes_per_value) + 1


@mutant("02.cached_attention", hint="recent_only")
def newest_64_pairs(q, k, v, cache):
    K, V = cache.update(k, v)
    K, V = K[:, :, -64:], V[:, :, -64:]
    return attention_reference(q, K, V, causal_mask(q.shape[2], K.shape[2]))
