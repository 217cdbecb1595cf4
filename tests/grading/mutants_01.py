"""Lesson 01's mutants (known-wrong answers, as learners write them) and reference answers."""

from __future__ import annotations

import math

import torch

from course_lib import attention_reference, causal_mask

from . import choice_mutants, mutant, value_mutant

REFERENCES = {
    "01.scaled_attention": lambda q, k, v, mask=None: attention_reference(q, k, v, mask),
    "01.causal_mask": lambda t_q, t_k, window=None: causal_mask(t_q, t_k, window=window),
    "01.split_heads": lambda x, n: x.reshape(x.shape[0], x.shape[1], n, -1).transpose(1, 2),
    "01.first_query": "b",  # lower case is accepted
    "01.window_scores": lambda: 8 * (256 * 257 // 2 + (1024 - 256) * 256),
}

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

choice_mutants("01.first_query", mean_of_values="A", zero_before_any_key="C")
value_mutant("01.first_query", "next_key_too", "chose_D", lambda: "d")
value_mutant("01.first_query", "not_a_letter", "invalid_choice", "v_0")

value_mutant("01.window_scores", "plain_causal", "no_window", 8 * 1024 * 1025 // 2)
value_mutant("01.window_scores", "every_query_a_full_window", "full_windows", lambda: 8 * 1024 * 256)
value_mutant("01.window_scores", "one_head", "no_heads", 256 * 257 // 2 + 768 * 256)
value_mutant("01.window_scores", "window_of_257", "window_off_by_one", 8 * (257 * 258 // 2 + 767 * 257))
value_mutant("01.window_scores", "a_formula_as_text", "not_number", "8 * (256 * 257 / 2 + 768 * 256)")


# ---------------------------------------------------------------- 01: masks unlike the default (issue 11 B)

@mutant("01.scaled_attention", hint="own_mask")
def own_square_causal_mask(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:  # ignores the given mask's pattern
        t = scores.shape[-1]
        own = torch.ones(t, t, dtype=torch.bool).tril()[-scores.shape[-2]:]
        scores = scores.masked_fill(~own, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@mutant("01.scaled_attention", hint="own_mask")
def sdpa_is_causal(q, k, v, mask=None):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=mask is not None)


@mutant("01.scaled_attention", hint="mask_zero_fill")
def mask_fills_zero(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, 0.0)
    return torch.softmax(scores, dim=-1) @ v


@mutant("01.scaled_attention", hint="mask_zero_fill")
def scores_times_mask(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores * mask
    return torch.softmax(scores, dim=-1) @ v


@mutant("01.causal_mask", hint="window_no_offset")
def window_from_the_row(t_q, t_k, window=None):
    i, j = _positions(t_q, t_k)
    mask = j <= i
    if window is not None:
        r = torch.arange(t_q).unsqueeze(1)
        mask = mask & (j > r - window)
    return mask
