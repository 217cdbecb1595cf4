"""The mutation registry: known-wrong answers that every exercise's checks must reject.

Each mutant is written the way a learner would write the mistake (not derived from the
checks' own mistake models), together with the hint key the checks must answer it with.
The test suite asserts, for every mutant, that ``check`` gives it less than full marks and
prints exactly that hint. Every exercise has at least three mutants.

Add one with the decorator::

    @mutant("01.scaled_attention", hint="no_scale")
    def no_scale(q, k, v, mask=None):
        ...
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import attention_reference, causal_mask

__all__ = ["Mutant", "MUTANTS", "mutant", "mutants_for"]


@dataclass(frozen=True)
class Mutant:
    exercise_id: str
    name: str
    hint: str  # key of the hint the checks must give (Exercise.hint(key) is the text)
    answer: object


MUTANTS: list[Mutant] = []


def mutant(exercise_id: str, *, hint: str, name: str | None = None):
    """Register the decorated function or class (or ``answer=`` for a value) as a mutant."""
    def register(answer):
        MUTANTS.append(Mutant(exercise_id, name or answer.__name__, hint, answer))
        return answer
    return register


def value_mutant(exercise_id: str, name: str, hint: str, value) -> None:
    MUTANTS.append(Mutant(exercise_id, name, hint, value))


def mutants_for(exercise_id: str) -> list[Mutant]:
    return [m for m in MUTANTS if m.exercise_id == exercise_id]


# ---------------------------------------------------------------- 01.scaled_attention

@mutant("01.scaled_attention", hint="no_scale")
def no_scale(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@mutant("01.scaled_attention", hint="scale_by_d")
def scale_by_d(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / q.shape[-1]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@mutant("01.scaled_attention", hint="softmax_axis")
def softmax_over_queries(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-2) @ v


@mutant("01.scaled_attention", hint="mask_after_softmax")
def mask_after_softmax(q, k, v, mask=None):
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    if mask is not None:
        weights = weights * mask
    return weights @ v


@mutant("01.scaled_attention", hint="mask_inverted")
def mask_inverted(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@mutant("01.scaled_attention", hint="non_contiguous")
def flattens_with_view(q, k, v, mask=None):
    b, h, t, d = q.shape
    q2, k2, v2 = q.view(b * h, t, d), k.view(b * h, -1, d), v.view(b * h, k.shape[2], -1)
    scores = torch.bmm(q2, k2.transpose(1, 2)) / math.sqrt(d)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.bmm(torch.softmax(scores, dim=-1), v2).view(b, h, t, -1)


@mutant("01.scaled_attention", hint="nonfinite")
def softmax_without_max(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    e = torch.exp(scores)
    if mask is not None:
        e = e * mask
    return e / e.sum(dim=-1, keepdim=True) @ v


@mutant("01.scaled_attention", hint="modified_input")
def scales_q_in_place(q, k, v, mask=None):
    q /= math.sqrt(q.shape[-1])  # changes the caller's tensor
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


# ---------------------------------------------------------------- 01.causal_mask

def _positions(t_q, t_k):
    i = torch.arange(t_k - t_q, t_k).unsqueeze(1)  # [t_q, 1]
    j = torch.arange(t_k).unsqueeze(0)  # [1, t_k]
    return i, j


@mutant("01.causal_mask", hint="no_diagonal")
def strictly_lower(t_q, t_k, window=None):
    i, j = _positions(t_q, t_k)
    mask = j < i
    return mask if window is None else mask & (j > i - window)


@mutant("01.causal_mask", hint="first_aligned")
def tril_without_offset(t_q, t_k, window=None):
    mask = torch.tril(torch.ones(t_q, t_k, dtype=torch.bool))
    if window is not None:
        mask = mask & ~torch.tril(torch.ones(t_q, t_k, dtype=torch.bool), diagonal=-window)
    return mask


@mutant("01.causal_mask", hint="window_off_by_one")
def window_one_too_wide(t_q, t_k, window=None):
    i, j = _positions(t_q, t_k)
    mask = j <= i
    return mask if window is None else mask & (j >= i - window)


@mutant("01.causal_mask", hint="window_off_by_one")
def window_one_too_narrow(t_q, t_k, window=None):
    i, j = _positions(t_q, t_k)
    mask = j <= i
    return mask if window is None else mask & (j > i - window + 1)


@mutant("01.causal_mask", hint="window_ignored")
def ignores_window(t_q, t_k, window=None):
    i, j = _positions(t_q, t_k)
    return j <= i


@mutant("01.causal_mask", hint="dtype_bool")
def float_mask(t_q, t_k, window=None):
    i, j = _positions(t_q, t_k)
    mask = j <= i
    if window is not None:
        mask = mask & (j > i - window)
    return mask.float()


@mutant("01.causal_mask", hint="future")
def upper_triangle(t_q, t_k, window=None):
    i, j = _positions(t_q, t_k)
    return j >= i


# ---------------------------------------------------------------- 01.split_heads

@mutant("01.split_heads", hint="no_transpose")
def reshape_without_transpose(x, n_heads):
    b, t, d_model = x.shape
    return x.reshape(b, n_heads, t, d_model // n_heads)


@mutant("01.split_heads", hint="interleaved")
def heads_interleaved(x, n_heads):
    b, t, d_model = x.shape
    return x.reshape(b, t, d_model // n_heads, n_heads).permute(0, 3, 1, 2)


@mutant("01.split_heads", hint="shape")
def forgets_transpose(x, n_heads):
    b, t, d_model = x.shape
    return x.view(b, t, n_heads, d_model // n_heads)


@mutant("01.split_heads", hint="shape")
def transposes_wrong_axes(x, n_heads):
    b, t, d_model = x.shape
    return x.reshape(b, t, n_heads, d_model // n_heads).transpose(1, 3)


# ---------------------------------------------------------------- 01 questions

value_mutant("01.why_sqrt_d", "weights_sum_to_one", "chose_A", "A")
value_mutant("01.why_sqrt_d", "causality", "chose_C", "C")
value_mutant("01.why_sqrt_d", "memory", "chose_D", lambda: "d")
value_mutant("01.why_sqrt_d", "not_a_letter", "invalid_choice", "sqrt(d)")

value_mutant("01.causal_scores", "every_pair", "no_mask", 8 * 1024 * 1024)
value_mutant("01.causal_scores", "without_the_diagonal", "no_diagonal", lambda: 8 * 1024 * 1023 // 2)
value_mutant("01.causal_scores", "one_head", "no_heads", 1024 * 1025 // 2)
value_mutant("01.causal_scores", "a_formula_as_text", "not_number", "8 * 1024 * 1025 / 2")


# ---------------------------------------------------------------- 02.growing_cache

class _CatCache:
    """A correct grow-by-concatenation cache, for the mutants below to break one thing each."""

    def __init__(self):
        self.k = self.v = None

    @property
    def seq_len(self):
        return 0 if self.k is None else self.k.shape[2]


@mutant("02.growing_cache", hint="never_grows")
class NeverGrows(_CatCache):
    def update(self, k, v):
        self.k, self.v = k, v
        return self.k, self.v


@mutant("02.growing_cache", hint="evicts")
class EvictsOldest(_CatCache):
    max_tokens = 8

    def update(self, k, v):
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)[:, :, -self.max_tokens:]
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)[:, :, -self.max_tokens:]
        return self.k, self.v


@mutant("02.growing_cache", hint="wrong_axis")
class GrowsAlongHeads(_CatCache):
    def update(self, k, v):
        self.k = k if self.k is None else torch.cat([self.k, k], dim=1)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=1)
        return self.k, self.v


@mutant("02.growing_cache", hint="prepends")
class Prepends(_CatCache):
    def update(self, k, v):
        self.k = k if self.k is None else torch.cat([k, self.k], dim=2)
        self.v = v if self.v is None else torch.cat([v, self.v], dim=2)
        return self.k, self.v


@mutant("02.growing_cache", hint="counts_updates")
class CountsUpdates:
    def __init__(self):
        self.k = self.v = None
        self.seq_len = 0

    def update(self, k, v):
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        self.seq_len += 1
        return self.k, self.v


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

    def update(self, k, v):
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


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


# ---------------------------------------------------------------- 02.kv_cache_bytes

@mutant("02.kv_cache_bytes", hint="no_factor_two")
def keys_only(n_layers, n_kv_heads, head_dim, seq_len, batch=1, bytes_per_value=2):
    return n_layers * n_kv_heads * head_dim * seq_len * batch * bytes_per_value


@mutant("02.kv_cache_bytes", hint="no_batch")
def ignores_batch(n_layers, n_kv_heads, head_dim, seq_len, batch=1, bytes_per_value=2):
    return 2 * n_layers * n_kv_heads * head_dim * seq_len * bytes_per_value


@mutant("02.kv_cache_bytes", hint="no_bytes")
def counts_values(n_layers, n_kv_heads, head_dim, seq_len, batch=1, bytes_per_value=2):
    return 2 * n_layers * n_kv_heads * head_dim * seq_len * batch


@mutant("02.kv_cache_bytes", hint="default_bytes")
def assumes_fp32(n_layers, n_kv_heads, head_dim, seq_len, batch=1, bytes_per_value=4):
    return 2 * n_layers * n_kv_heads * head_dim * seq_len * batch * bytes_per_value


@mutant("02.kv_cache_bytes", hint="gib")
def in_gib(n_layers, n_kv_heads, head_dim, seq_len, batch=1, bytes_per_value=2):
    return 2 * n_layers * n_kv_heads * head_dim * seq_len * batch * bytes_per_value / 1024**3


@mutant("02.kv_cache_bytes", hint="not_int")
def true_division(n_layers, n_kv_heads, head_dim, seq_len, batch=1, bytes_per_value=2):
    return n_layers * n_kv_heads * head_dim * seq_len * batch * bytes_per_value / 0.5


# ---------------------------------------------------------------- 02 questions

value_mutant("02.llama3_bytes", "all_query_heads", "mha", 2 * 32 * 32 * 128 * 8192 * 2)
value_mutant("02.llama3_bytes", "keys_only", "no_factor_two", 32 * 8 * 128 * 8192 * 2)
value_mutant("02.llama3_bytes", "fp32", "fp32", lambda: 2 * 32 * 8 * 128 * 8192 * 4)
value_mutant("02.llama3_bytes", "in_gib", "gib", 1.0)

value_mutant("02.growth_cost", "fixed_size", "chose_A", "A")
value_mutant("02.growth_cost", "stores_weights", "chose_C", "C")
value_mutant("02.growth_cost", "constant_time", "chose_D", "D")
