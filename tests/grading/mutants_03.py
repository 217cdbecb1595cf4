"""Lesson 03's mutants (known-wrong answers, as learners write them) and reference answers."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from course_lib.experiments.lesson03 import evictable, strided_mask
from course_lib.memory import LinearMemory

from . import choice_mutants, mutant, right, right_value, value_mutant


def _linear_memory(q, k, v):
    memory = LinearMemory(chunk_size=3)
    state = memory.init_state(q.shape[0], q.shape[1], q.shape[-1], dtype=q.dtype, v_dim=v.shape[-1])
    return memory(q, k, v, state)[0]


REFERENCES = {
    "03.linear_attention": _linear_memory,
    "03.strided_mask": strided_mask,
    "03.evictable": evictable,
    "03.state_bytes": lambda: (2 * 24 * 16 * 64 * 4096 * 2) / (24 * 16 * (64 * 64 + 64) * 2),
    "03.sparse_cache": "b",
}

# ---------------------------------------------------------------- 03.linear_attention


def _loop(q, k, v, feature, read_before_write=False, normalise=True):
    b, h, t, d = q.shape
    mu = q.new_zeros(b, h, d, v.shape[-1])
    nu = q.new_zeros(b, h, d)
    outs = []
    for i in range(t):
        fq, fk = feature(q[:, :, i]), feature(k[:, :, i])
        if read_before_write:
            num, den = torch.einsum("bhd,bhde->bhe", fq, mu), (fq * nu).sum(-1, keepdim=True)
        mu = mu + torch.einsum("bhd,bhe->bhde", fk, v[:, :, i])
        nu = nu + fk
        if not read_before_write:
            num, den = torch.einsum("bhd,bhde->bhe", fq, mu), (fq * nu).sum(-1, keepdim=True)
        outs.append(num / den if normalise else num)
    return torch.stack(outs, 2)


@mutant("03.linear_attention", hint="exclusive")
def reads_before_writing(q, k, v):
    return _loop(q, k, v, lambda x: F.elu(x) + 1, read_before_write=True)


@mutant("03.linear_attention", hint="no_normaliser")
def forgets_the_denominator(q, k, v):
    return _loop(q, k, v, lambda x: F.elu(x) + 1, normalise=False)


@mutant("03.linear_attention", hint="wrong_phi")
def relu_features(q, k, v):
    return _loop(q, k, v, F.relu)


@mutant("03.linear_attention", hint="non_causal")
def sums_over_everything(q, k, v):
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    mu = fk.transpose(-2, -1) @ v  # [B, H, D, D_v]: every token at once
    nu = fk.sum(2)  # [B, H, D]
    return (fq @ mu) / (fq @ nu.unsqueeze(-1))


@mutant("03.linear_attention", hint="softmax")
def plain_causal_softmax(q, k, v):
    t = q.shape[2]
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1) @ v


@mutant("03.linear_attention", hint="modified_input")
def phi_in_place(q, k, v):
    fq = F.elu_(q).add_(1)  # phi(q) written over q
    fk = F.elu(k) + 1
    return _loop(fq, fk, v, lambda x: x)


@mutant("03.linear_attention", hint="dtype")
def accumulates_in_float64(q, k, v):
    out = _loop(q.double(), k.double(), v.double(), lambda x: F.elu(x) + 1)
    return out


_STATE: dict = {}


@mutant("03.linear_attention", hint="stateful")
def state_kept_between_calls(q, k, v):
    """A.2.1: a streaming decoder's state that is reset only when the shapes change."""
    b, h, t, d = q.shape
    key = (b, h, d, v.shape[-1], q.dtype)
    if _STATE.get("key") != key:
        _STATE.clear()
        _STATE["key"] = key
        _STATE["mu"] = q.new_zeros(b, h, d, v.shape[-1])
        _STATE["nu"] = q.new_zeros(b, h, d)
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    outs = []
    for i in range(t):
        _STATE["mu"] = _STATE["mu"] + fk[:, :, i, :, None] * v[:, :, i, None, :]
        _STATE["nu"] = _STATE["nu"] + fk[:, :, i]
        num = (fq[:, :, i, :, None] * _STATE["mu"]).sum(-2)
        den = (fq[:, :, i] * _STATE["nu"]).sum(-1, keepdim=True)
        outs.append(num / den)
    return torch.stack(outs, 2)


@mutant("03.linear_attention", hint="eps")
def epsilon_in_the_denominator(q, k, v):
    """A.1.3: the usual eps of fast-transformers."""
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    mu = torch.einsum("bhjd,bhje->bhjde", fk, v).cumsum(2)
    nu = fk.cumsum(2)
    return torch.einsum("bhid,bhide->bhie", fq, mu) / ((fq * nu).sum(-1, keepdim=True) + 1e-6)


@right("03.linear_attention")
def cumsum_and_where(q, k, v):
    """cumsum + einsum, elu + 1 written with torch.where (accepted in the review)."""
    fq = torch.where(q > 0, q + 1, q.exp())
    fk = torch.where(k > 0, k + 1, k.exp())
    mu = torch.einsum("bhjd,bhje->bhjde", fk, v).cumsum(2)
    nu = fk.cumsum(2)
    return torch.einsum("bhid,bhide->bhie", fq, mu) / (fq * nu).sum(-1, keepdim=True)


# ---------------------------------------------------------------- 03.strided_mask


@mutant("03.strided_mask", hint="first_aligned")
def queries_from_zero(t_q, t_k, stride):
    i = torch.arange(t_q).unsqueeze(1)
    j = torch.arange(t_k).unsqueeze(0)
    return (j <= i) & ((i - j < stride) | ((i - j) % stride == 0))


@mutant("03.strided_mask", hint="no_local")
def every_stride_only(t_q, t_k, stride):
    i = torch.arange(t_k - t_q, t_k).unsqueeze(1)
    j = torch.arange(t_k).unsqueeze(0)
    return (j <= i) & ((i - j) % stride == 0)


@mutant("03.strided_mask", hint="fixed_pattern")
def every_stride_th_position(t_q, t_k, stride):
    i = torch.arange(t_k - t_q, t_k).unsqueeze(1)
    j = torch.arange(t_k).unsqueeze(0)
    return (j <= i) & ((i - j < stride) | (j % stride == 0))


@mutant("03.strided_mask", hint="not_causal")
def forgets_causality_in_stride(t_q, t_k, stride):
    i = torch.arange(t_k - t_q, t_k).unsqueeze(1)
    j = torch.arange(t_k).unsqueeze(0)
    return ((j <= i) & (i - j < stride)) | ((i - j) % stride == 0)


@mutant("03.strided_mask", hint="dtype_bool")
def int_mask(t_q, t_k, stride):
    return strided_mask(t_q, t_k, stride).int()


# ---------------------------------------------------------------- 03.evictable


@mutant("03.evictable", hint="strict")
def only_later_queries(mask, t):
    return [j for j in range(t) if not mask[t + 1:, j].any()]


@mutant("03.evictable", hint="past_queries")
def looks_at_the_past(mask, t):
    return [j for j in range(t) if not mask[:t, j].any()]


@mutant("03.evictable", hint="kept")
def lists_the_kept_keys(mask, t):
    return [j for j in range(t) if mask[t:, j].any()]


@mutant("03.evictable", hint="not_list")
def returns_a_tensor(mask, t):
    return (~mask[t:, :t].any(0)).nonzero().flatten()


@mutant("03.evictable", hint="all_keys")
def every_unread_column(mask, t):
    return [j for j in range(mask.shape[1]) if not mask[t:, j].any()]


@mutant("03.evictable", hint="all_keys", name="includes_key_t")
def includes_key_t(mask, t):
    """A.2.2: range(t + 1) lists key t, which is not cached yet."""
    read = mask[t:, :].any(0)
    return [j for j in range(min(t + 1, mask.shape[1])) if not read[j]]


@mutant("03.evictable", hint="all_instead_of_any")
def not_read_by_all(mask, t):
    """.all() where not .any() is meant: keys that not every future query reads."""
    return [j for j in range(t) if not mask[t:, j].all()]


@mutant("03.evictable", hint="past_queries", name="rows_from_t_minus_1")
def rows_from_t_minus_1(mask, t):
    return [j for j in range(t) if not mask[max(t - 1, 0):, j].any()]


@mutant("03.evictable", hint="not_list", name="numpy_positions")
def numpy_positions(mask, t):
    import numpy as np
    return np.flatnonzero(~mask[t:, :t].any(0).numpy())


@right("03.evictable")
def flatnonzero_as_list(mask, t):
    import numpy as np
    return np.flatnonzero(~mask[t:, :t].numpy().any(0)).tolist()


@right("03.evictable")
def set_arithmetic(mask, t):
    read = {j for i in range(t, mask.shape[0]) for j in range(t) if bool(mask[i, j])}
    return sorted(set(range(t)) - read)


# ---------------------------------------------------------------- questions

value_mutant("03.state_bytes", "forgets_nu", "no_nu", 128.0)
value_mutant("03.state_bytes", "keys_only", "no_factor_two", lambda: (24 * 16 * 64 * 4096 * 2) / (24 * 16 * 4160 * 2))
value_mutant("03.state_bytes", "state_over_cache", "inverted", 4160 / (2 * 64 * 4096))
value_mutant("03.state_bytes", "rounded", "rounded", lambda: round(2 * 4096 / 65))  # A.1.3
value_mutant("03.state_bytes", "two_decimals", "rounded", 126.03)
right_value("03.state_bytes", "as_a_fraction", lambda: 2 * 4096 / 65)
choice_mutants("03.sparse_cache", next_query_only="A", recompute="C", sqrt="D")


# ---------------------------------------------------------------- A.3: mistakes the feedback now names


@mutant("03.linear_attention", hint="softmax_habits")
def softplus_and_scale(q, k, v):
    """softplus features and the 1/sqrt(d) of softmax attention, carried over."""
    d = q.shape[-1]
    fq, fk = F.softplus(q / d ** 0.5), F.softplus(k)
    mu = torch.einsum("bhjd,bhje->bhjde", fk, v).cumsum(2)
    nu = fk.cumsum(2)
    return torch.einsum("bhid,bhide->bhie", fq, mu) / (fq * nu).sum(-1, keepdim=True)


@mutant("03.strided_mask", hint="precedence")
def or_without_brackets(t_q, t_k, stride):
    i = torch.arange(t_k - t_q, t_k)[:, None]
    j = torch.arange(t_k)[None, :]
    d = i - j
    return (d >= 0) & (d % stride == 0) | (d < stride)


@mutant("03.strided_mask", hint="query_offset")
def query_positions_off_by_one(t_q, t_k, stride):
    i = torch.arange(t_k - t_q + 1, t_k + 1)[:, None]  # one past each query's position
    j = torch.arange(t_k)[None, :]
    d = i - j
    return (d >= 0) & ((d < stride) | (d % stride == 0))


value_mutant("03.state_bytes", "state_per_head", "per_head",
             lambda: (2 * 24 * 16 * 64 * 4096 * 2) / ((64 * 64 + 64) * 2))
value_mutant("03.state_bytes", "cache_per_head", "per_head",
             lambda: (2 * 64 * 4096 * 2) / (24 * 16 * (64 * 64 + 64) * 2))


@mutant("03.strided_mask", hint="sparse")
def sparse_mask(t_q, t_k, stride):
    """A.4: a sparse mask (most pairs are blocked) is not 'not attempted yet'."""
    return strided_mask(t_q, t_k, stride).to_sparse()
