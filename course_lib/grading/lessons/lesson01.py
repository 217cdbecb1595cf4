r"""Exercises of lesson 01, attention from scratch.

* ``01.scaled_attention``: ``Att_qkv(q, K, V) = Softmax(q K^T / sqrt(d) + Mask) V``
* ``01.causal_mask``: the boolean mask of causal (and windowed) attention
* ``01.split_heads``: ``[B, T, d_model] -> [B, tau, T, d_h]``
* ``01.first_query``: predict what the first query of causal attention returns (multiple choice)
* ``01.window_scores``: how many scores sliding-window attention computes (a number)

The references are :func:`course_lib.attention_reference` and :func:`course_lib.causal_mask`.
"""

from __future__ import annotations

import math

import torch

from ... import attention_reference
from ... import causal_mask as ref_causal_mask
from ..compare import expect_answer, expect_mask, expect_tensor, heads_view, randn, seeded
from ..core import Check, code_exercise
from ..questions import choice_exercise, number_exercise
from ._common import check_factory

# ---------------------------------------------------------------- 01.scaled_attention

ATTENTION_HINTS = {
    "no_scale": "Divide the scores q K^T by sqrt(d), with d = q.shape[-1], before the softmax: "
                "the 1/sqrt(d) scale is missing.",
    "scale_by_d": "Scale by 1/sqrt(d), not 1/d: use q.shape[-1] ** 0.5.",
    "scale_by_dv": "The d in 1/sqrt(d) is the width of q and k (q.shape[-1]), not the width of v.",
    "softmax_axis": "Take the softmax over the keys, the last axis (dim=-1), so that each query's "
                    "weights sum to 1.",
    "mask_after_softmax": "Apply the mask before the softmax: fill blocked scores with -inf, so the "
                          "allowed weights still sum to 1 (zeroing weights after the softmax does not "
                          "renormalise them).",
    "mask_inverted": "The mask is True where a query MAY attend: put -inf where the mask is False "
                     "(scores.masked_fill(~mask, float('-inf'))).",
    "mask_ignored": "The mask was ignored: where it is False the score must become -inf before the softmax.",
    "mask_added": "A boolean mask is not added as 0/1: blocked scores must become -inf "
                  "(scores.masked_fill(~mask, float('-inf'))).",
    "own_mask": "Use the mask you are given, whatever its pattern (a window, sinks, random): your code "
                "applied a causal mask of its own (torch's is_causal=True, or a tril) instead of `mask`.",
    "mask_zero_fill": "Blocked scores must become -inf, not 0 (a 0-fill, or scores * mask): a score of 0 "
                      "still gets weight exp(0) after the softmax; use scores.masked_fill(~mask, float('-inf')).",
    "shape": "The output must have shape [B, H, T_q, d_v]: one row per query, as wide as v.",
    "wrong_values": "The output differs from Softmax(q K^T / sqrt(d) + Mask) V: compare each step "
                    "with the formula (the transpose of K, the scale, the softmax axis, the mask).",
}


def _attention_models(q, k, v, mask=None):
    """Outputs of the known mistakes on these inputs, keyed by hint."""
    d, scale = q.shape[-1], 1.0 / math.sqrt(q.shape[-1])
    scores = q @ k.transpose(-2, -1)  # [B, H, T_q, T_k]
    neg = float("-inf")

    def masked(s, m=mask):
        return s if m is None else s.masked_fill(~m, neg)

    models = {
        "no_scale": lambda: torch.softmax(masked(scores), -1) @ v,
        "scale_by_d": lambda: torch.softmax(masked(scores / d), -1) @ v,
        "scale_by_dv": lambda: torch.softmax(masked(scores / math.sqrt(v.shape[-1])), -1) @ v,
        "softmax_axis": lambda: torch.softmax(masked(scores * scale), -2) @ v,
    }
    if mask is not None:
        models.update({
            "mask_after_softmax": lambda: (torch.softmax(scores * scale, -1) * mask) @ v,
            "mask_inverted": lambda: torch.softmax(scores.mul(scale).masked_fill(mask, neg), -1) @ v,
            "mask_ignored": lambda: torch.softmax(scores * scale, -1) @ v,
            "mask_added": lambda: torch.softmax(scores * scale + mask.to(scores.dtype), -1) @ v,
            "mask_zero_fill": lambda: torch.softmax((scores * scale).masked_fill(~mask, 0.0), -1) @ v,
            "own_mask": lambda: torch.softmax(masked(scores * scale, ref_causal_mask(q.shape[2], k.shape[2])), -1) @ v,
            "own_mask#top_left": lambda: torch.softmax(masked(scores * scale, torch.ones(
                q.shape[2], k.shape[2], dtype=torch.bool).tril()), -1) @ v,
        })
    return models


def _random_mask(gen, b, t_q, t_k):
    """A random boolean mask [B, 1, t_q, t_k] (broadcast over heads) with at least one key per row."""
    mask = torch.rand(b, 1, t_q, t_k, generator=gen) < 0.5
    keep = torch.randint(0, t_k, (b, 1, t_q, 1), generator=gen)
    return mask.scatter(-1, keep, True)


def _sink_mask(t, n_sinks, window):
    """StreamingLLM's pattern: every query sees the first n_sinks keys and its last `window` keys."""
    i, j = torch.arange(t).unsqueeze(1), torch.arange(t).unsqueeze(0)
    return (j <= i) & ((j < n_sinks) | (j > i - window))


@check_factory
def _attention_check(fn, seed, b, h, t_q, t_k, d, d_v=None, *, masked=False, dtype=torch.float64,
                     layout="contiguous", scale=1.0, mask_fn=None):
    gen = seeded(seed)
    dv = d if d_v is None else d_v
    if layout == "heads":  # non-contiguous, as split heads leave them
        q = heads_view(gen, b, h, t_q, d, dtype)
        k, v = heads_view(gen, b, h, t_k, d, dtype), heads_view(gen, b, h, t_k, dv, dtype)
    else:
        q = randn(gen, b, h, t_q, d, dtype=dtype, scale=scale)
        k, v = randn(gen, b, h, t_k, d, dtype=dtype, scale=scale), randn(gen, b, h, t_k, dv, dtype=dtype)
    mask = mask_fn(gen) if mask_fn is not None else ref_causal_mask(t_q, t_k) if masked else None
    args = (q, k, v) if mask is None else (q, k, v, mask)
    expect_answer(fn, args, (b, h, t_q, dv), dtype, attention_reference, _attention_models,
                  shape_text="[B, H, T_q, d_v]")


def _shape_only(fn):
    gen = seeded(10)
    q, k, v = randn(gen, 2, 3, 4, 8), randn(gen, 2, 3, 6, 8), randn(gen, 2, 3, 6, 5)
    expect_tensor(fn(q, k, v), (2, 3, 4, 5), shape_text="[B, H, T_q, d_v]")


SCALED_ATTENTION = code_exercise(
    id="01.scaled_attention", title="Scaled dot-product attention",
    hints=ATTENTION_HINTS,
    checks=[
        Check("output shape [B, H, T_q, d_v] (4 queries over 6 keys, d = 8, d_v = 5)", _shape_only),
        Check("random float64 inputs, B = 2, H = 3, T = 5, d = 16, no mask", _attention_check(11, 2, 3, 5, 5, 16)),
        Check("3 queries over 7 keys, values of another width (d = 16, d_v = 4)",
              _attention_check(12, 1, 2, 3, 7, 16, 4)),
        Check("a causal mask [T, T] broadcast over B = 2, H = 2 (True = may attend)",
              _attention_check(13, 2, 2, 6, 6, 8, masked=True)),
        Check("one query over 6 keys (a decoding step)", _attention_check(14, 1, 2, 1, 6, 8)),
        Check("length 1: one query, one key", _attention_check(15, 2, 1, 1, 1, 4, masked=True)),
        Check("float32 inputs give a float32 output", _attention_check(16, 1, 2, 5, 5, 8, dtype=torch.float32)),
        Check("non-contiguous inputs (heads split from a [B, T, H, D] tensor), causal mask",
              _attention_check(17, 2, 3, 5, 5, 8, masked=True, layout="heads")),
        Check("large scores in float32 stay finite (|q|, |k| entries around 30, d = 64)",
              _attention_check(18, 1, 1, 4, 4, 64, dtype=torch.float32, scale=30.0)),
        Check("a sliding-window mask, n_c = 3 over T = 7 (not the plain causal mask)",
              _attention_check(19, 1, 2, 7, 7, 8, mask_fn=lambda gen: ref_causal_mask(7, 7, window=3))),
        Check("3 queries over 8 keys with a causal mask [3, 8] (the queries are the last 3 positions)",
              _attention_check(20, 2, 2, 3, 8, 8, mask_fn=lambda gen: ref_causal_mask(3, 8))),
        Check("attention sinks: 2 sink keys plus a window of 3, T = 9",
              _attention_check(21, 1, 2, 9, 9, 8, mask_fn=lambda gen: _sink_mask(9, 2, 3))),
        Check("a random boolean mask [B, 1, T_q, T_k], at least one key per row (4 queries, 6 keys)",
              _attention_check(22, 2, 3, 4, 6, 8, mask_fn=lambda gen: _random_mask(gen, 2, 4, 6))),
    ],
)

# ---------------------------------------------------------------- 01.causal_mask

MASK_HINTS = {
    "no_diagonal": "A query attends to itself: keep j <= i, so the diagonal is True.",
    "future": "The query at position i must not see later keys: True where j <= i (the lower "
              "triangle), not where j >= i.",
    "first_aligned": "The t_q queries are the LAST t_q of the t_k positions: row r is position "
                     "i = t_k - t_q + r (with torch.tril, pass diagonal=t_k - t_q).",
    "window_off_by_one": "Window off by one: the window [i - n_c + 1, i] holds exactly n_c keys, so keep "
                         "j >= i - n_c + 1 (that is, j > i - n_c).",
    "window_ignored": "With window = n_c, keys older than i - n_c + 1 must be False: the window was ignored.",
    "window_no_offset": "The window must start from the query's absolute position i = t_k - t_q + r, not from "
                        "its row r: with fewer queries than keys, row r's window is [i - n_c + 1, i].",
    "inverted": "True means may attend: your mask is True exactly where attention is blocked.",
    "dtype_bool": "Return a bool tensor (True = may attend), as a comparison such as j <= i gives.",
    "shape": "The mask must have shape [t_q, t_k]: one row per query, one column per key.",
    "wrong_values": "The mask differs from the causal mask: row r is the query at i = t_k - t_q + r and "
                    "sees keys j with j <= i (and j >= i - n_c + 1 with a window).",
}


def _mask_models(t_q, t_k, window):
    i = torch.arange(t_k - t_q, t_k).unsqueeze(1)  # [t_q, 1] absolute positions of the queries
    j = torch.arange(t_k).unsqueeze(0)  # [1, t_k]
    r = torch.arange(t_q).unsqueeze(1)

    def windowed(base, pos, lo):
        return base if window is None else base & (j >= pos - window + lo)

    models = {
        "no_diagonal": lambda: windowed(j < i, i, 1),
        "future": lambda: j >= i,
        "first_aligned": lambda: windowed(j <= r, r, 1),
        "inverted": lambda: ~ref_causal_mask(t_q, t_k, window=window),
    }
    if window is not None:
        models.update({
            "window_off_by_one": lambda: windowed(j <= i, i, 0),
            "window_off_by_one#narrow": lambda: windowed(j <= i, i, 2),
            "window_no_offset": lambda: (j <= i) & (j >= r - window + 1),
            "window_ignored": lambda: j <= i,
        })
    return models


@check_factory
def _mask_check(fn, t_q, t_k, window=None):
    got = fn(t_q, t_k) if window is None else fn(t_q, t_k, window)
    expect_mask(got, ref_causal_mask(t_q, t_k, window=window), _mask_models(t_q, t_k, window))


CAUSAL_MASK = code_exercise(
    id="01.causal_mask", title="The causal mask, with an optional window",
    hints=MASK_HINTS,
    checks=[
        Check("a bool tensor of shape [t_q, t_k] (t_q = t_k = 4)", _mask_check(4, 4)),
        Check("square mask, T = 6", _mask_check(6, 6)),
        Check("length 1 (t_q = t_k = 1)", _mask_check(1, 1)),
        Check("2 queries over 6 keys (the queries are the last 2 positions)", _mask_check(2, 6)),
        Check("window n_c = 3 over T = 7 (7 is not a multiple of 3)", _mask_check(7, 7, 3)),
        Check("window n_c = 4, 3 queries over 9 keys", _mask_check(3, 9, 4)),
        Check("window n_c = 2, 4 queries over 10 keys (row r is position 6 + r)", _mask_check(4, 10, 2)),
        Check("window n_c = 1: each query sees only itself", _mask_check(5, 5, 1)),
        Check("window n_c = 10 >= T = 5 equals the plain causal mask", _mask_check(5, 5, 10)),
    ],
)

# ---------------------------------------------------------------- 01.split_heads

SPLIT_HINTS = {
    "no_transpose": "Reshape to [B, T, tau, d_h] first, then swap the time and head axes "
                    "(.transpose(1, 2)); reshaping straight to [B, tau, T, d_h] mixes tokens across heads.",
    "interleaved": "Head h owns the consecutive columns h*d_h .. (h+1)*d_h - 1, not every tau-th column: "
                   "reshape to [B, T, tau, d_h] (tau before d_h).",
    "shape": "The result must have shape [B, tau, T, d_h], with d_h = d_model // n_heads.",
    "wrong_values": "Head h of token t must hold x[b, t, h*d_h:(h+1)*d_h].",
}


def _split_reference(x, n_heads):
    """What :meth:`course_lib.MultiHeadAttention.split` does after its projections."""
    b, t, d_model = x.shape
    return x.reshape(b, t, n_heads, d_model // n_heads).transpose(1, 2)  # [B, tau, T, d_h]


@check_factory
def _split_check(fn, seed, b, t, d_model, n_heads, *, dtype=torch.float64, transposed=False):
    gen = seeded(seed)
    x = randn(gen, t, b, d_model, dtype=dtype).transpose(0, 1) if transposed else \
        randn(gen, b, t, d_model, dtype=dtype)
    d_h = d_model // n_heads
    expect_answer(fn, (x, n_heads), (b, n_heads, t, d_h), dtype, _split_reference, lambda x, n_heads: {
        "no_transpose": lambda: x.reshape(b, n_heads, t, d_h),
        "interleaved": lambda: x.reshape(b, t, d_h, n_heads).permute(0, 3, 1, 2),
    }, shape_text="[B, tau, T, d_h]")


SPLIT_HEADS = code_exercise(
    id="01.split_heads", title="Split the model width into heads",
    hints=SPLIT_HINTS,
    checks=[
        Check("B = 2, T = 5, d_model = 12, tau = 3", _split_check(21, 2, 5, 12, 3)),
        Check("head h holds columns h*d_h .. (h+1)*d_h - 1 of every token (B = 2, T = 4, d_model = 8, tau = 4)",
              _split_check(22, 2, 4, 8, 4)),
        Check("one head (tau = 1) is the input with a head axis", _split_check(23, 1, 3, 6, 1)),
        Check("length 1 (T = 1), batch 3", _split_check(24, 3, 1, 8, 2)),
        Check("a non-contiguous input (a transposed view), float32", _split_check(25, 2, 5, 12, 2,
                                                                                    dtype=torch.float32,
                                                                                    transposed=True)),
    ],
)

# ---------------------------------------------------------------- conceptual questions

FIRST_QUERY = choice_exercise(
    id="01.first_query",
    title="Predict the output of the first query under a causal mask",
    options={
        "A": "The mean of all the values, since position 0 has no earlier keys to compare with.",
        "B": "Exactly v_0, whatever q_0 and k_0 are: its one allowed key gets all the weight.",
        "C": "A zero vector, because a query cannot attend before any earlier key exists.",
        "D": "A mix of v_0 and v_1, weighted by the softmax of their two scores with q_0.",
    },
    correct="B",
    wrong_hints={
        "A": "The mask blocks every key j > 0 for the query at i = 0: those keys get weight exactly 0, "
             "so no mean over all values can appear.",
        "C": "Causality comes from the mask, which keeps j <= i: for i = 0 the key k_0 itself is allowed, so the "
             "softmax has one entry, and that entry is 1.",
        "D": "k_1 is a later key (j = 1 > i = 0): the causal mask gives it weight 0.",
    },
)

M_TOKENS, N_HEADS, WINDOW = 1024, 8, 256


def _window_scores(m: int, n_c: int, tau: int) -> int:
    return tau * sum(min(i + 1, n_c) for i in range(m))


WINDOW_SCORES = number_exercise(
    id="01.window_scores",
    title="How many scores does sliding-window attention compute?",
    correct=_window_scores(M_TOKENS, WINDOW, N_HEADS),
    mistakes={
        "no_window": N_HEADS * M_TOKENS * (M_TOKENS + 1) // 2,
        "full_windows": N_HEADS * M_TOKENS * WINDOW,
        "no_heads": _window_scores(M_TOKENS, WINDOW, 1),
        "window_off_by_one": _window_scores(M_TOKENS, WINDOW + 1, N_HEADS),
        "window_off_by_one#narrow": _window_scores(M_TOKENS, WINDOW - 1, N_HEADS),
    },
    hints={
        "no_window": "That is plain causal attention: with the window, query i sees at most n_c = 256 keys.",
        "full_windows": "The first queries have fewer than n_c earlier keys: query i sees min(i + 1, n_c) keys, "
                        "not n_c for every i.",
        "no_heads": "Each of the tau = 8 heads computes its own scores: multiply by tau.",
        "window_off_by_one": "The window [i - n_c + 1, i] holds exactly n_c keys, itself included.",
        "wrong_number": "For each query i count the keys it may see, min(i + 1, n_c), add over the m queries, "
                        "then multiply by the heads.",
    },
    unit="scores",
)

EXERCISES = [SCALED_ATTENTION, CAUSAL_MASK, SPLIT_HEADS, FIRST_QUERY, WINDOW_SCORES]
