r"""Exercises of lesson 02, the KV cache.

* ``02.growing_cache``: a cache that appends ``(k_i, v_i)`` and never evicts
* ``02.cached_attention``: ``Att(q_i, Mem)`` with ``Mem = (K_{<=i}, V_{<=i})`` from a cache,
  one decoding step or a chunk of new tokens
* ``02.max_context``: the longest context whose cache fits a memory budget (the byte formula inverted)
* ``02.budget_context``: how long each of 4 conversations may be under a 16 GiB budget (a number)
* ``02.double_context``: predict what doubling the context costs (multiple choice)

The references are :class:`course_lib.KVCache`, :func:`course_lib.attention_reference`,
:func:`course_lib.causal_mask` and :func:`course_lib.kv_cache_bytes`.
"""

from __future__ import annotations

import numbers

import torch

from ... import KVCache, StaticKVCache, attention_reference, causal_mask, kv_cache_bytes
from ..compare import call_keeping_inputs, close, expect_close, expect_number, expect_tensor, make, randn, seeded
from ..core import Check, Mistake, code_exercise, type_name
from ..questions import choice_exercise, number_exercise
from ._common import check_factory

# ---------------------------------------------------------------- 02.growing_cache

CACHE_HINTS = {
    "never_grows": "The cache never grows: update must append the new pairs to the stored ones "
                   "(torch.cat along dim 2) and keep the result, not replace them.",
    "wrong_axis": "Grow along the time axis: torch.cat([...], dim=2) for [B, H, T, D] tensors.",
    "prepends": "The newest pairs go at the end, oldest first: torch.cat([self.k, k], dim=2).",
    "evicts": "A plain KV cache never evicts: Mem = (K_{<=i}, V_{<=i}) keeps every pair (dropping "
              "old pairs makes a window memory, lesson 04).",
    "swapped": "update returns (K, V): the keys first, then the values.",
    "counts_updates": "seq_len counts cached tokens (positions along dim 2), not calls to update.",
    "seq_len_wrong": "seq_len must be the number of cached tokens, K.shape[2].",
    "seq_len_not_int": "seq_len must be an int attribute or @property (for example self.k.shape[2]), "
                       "not a method or a tensor.",
    "shared": "A new cache already holds tokens: each cache needs its own storage, created in __init__ "
              "(self.k = None), not a class attribute or a default argument.",
    "not_pair": "update must return a pair (K, V) of tensors.",
    "dtype_changed": "Keep the dtype of the pairs you are given: a cache that stores them as float32 or "
                     "float16 (.float(), .half(), a buffer made with a fixed dtype) changes every value it returns.",
    "shape": "K and V must have shape [B, H, m, D]: every pair cached so far.",
    "wrong_values": "K and V must hold every pair passed so far, oldest first, along dim 2.",
}


def _seq_len(cache) -> int:
    n = cache.seq_len
    if callable(n) or isinstance(n, torch.Tensor) or isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise Mistake("seq_len_not_int", f"got {type_name(n)}")
    return int(n)


def _fresh(cls):
    """A new cache, after another one was fed a pair: storage shared between caches (a class
    attribute) then shows in every check, however often the class was used before."""
    probe = cls()
    if _seq_len(probe) != 0:
        raise Mistake("shared")
    _update(probe, torch.zeros(1, 1, 1, 2, dtype=torch.float64), torch.zeros(1, 1, 1, 2, dtype=torch.float64))
    cache = cls()
    if _seq_len(cache) != 0:
        raise Mistake("shared")
    return cache


def _update(cache, k, v):
    out = cache.update(k, v)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise Mistake("not_pair", f"got {type_name(out)}")
    K, V = out
    if not isinstance(K, torch.Tensor) or not isinstance(V, torch.Tensor):
        raise Mistake("not_pair", f"got ({type_name(K)}, {type_name(V)})")
    return K, V


def _expect_cached(K, V, ks, vs, n_updates, seq_len):
    """``K, V`` must be the concatenation of the chunks ``ks, vs`` along time."""
    want_k, want_v = torch.cat(ks, 2), torch.cat(vs, 2)
    m = want_k.shape[2]
    if K.shape != want_k.shape:
        if close(K, ks[-1]):
            raise Mistake("never_grows")
        if K.numel() == want_k.numel():
            raise Mistake("wrong_axis")
        if K.dim() == 4 and K.shape[2] < m and close(K, want_k[:, :, m - K.shape[2]:]):
            raise Mistake("evicts", f"it holds {K.shape[2]} of {m} tokens")
        raise Mistake("shape", f"got {tuple(K.shape)}, expected [B, H, m, D] = {tuple(want_k.shape)}")
    if K.dtype != want_k.dtype or V.dtype != want_v.dtype:
        raise Mistake("dtype_changed", f"got {K.dtype} for {want_k.dtype} pairs")
    if close(K, want_v) and close(V, want_k):
        raise Mistake("swapped")
    expect_close(K, want_k, {"prepends": lambda: torch.cat(ks[::-1], 2)})
    expect_close(V, want_v, {"prepends": lambda: torch.cat(vs[::-1], 2)})
    if seq_len != m:
        raise Mistake("counts_updates" if seq_len == n_updates else "seq_len_wrong", f"got {seq_len}, m = {m}")


@check_factory
def _feed_check(cls, seed, b, h, d, chunks, *, dtype=torch.float64, transposed=False):
    gen = seeded(seed)
    cache = _fresh(cls)
    ks, vs = [], []
    for n_updates, n in enumerate(chunks, start=1):
        if transposed:  # non-contiguous views of [B, H, D, T] tensors
            k, v = (randn(gen, b, h, d, n, dtype=dtype).transpose(2, 3) for _ in range(2))
        else:
            k, v = randn(gen, b, h, n, d, dtype=dtype), randn(gen, b, h, n, d, dtype=dtype)
        ks.append(k)
        vs.append(v)
        K, V = _update(cache, k, v)
        _expect_cached(K, V, ks, vs, n_updates, _seq_len(cache))


def _independent_check(cls):
    gen = seeded(36)
    a, b = _fresh(cls), _fresh(cls)
    _update(a, randn(gen, 1, 1, 2, 3), randn(gen, 1, 1, 2, 3))
    if _seq_len(b) != 0:
        raise Mistake("shared")
    k, v = randn(gen, 1, 1, 1, 3), randn(gen, 1, 1, 1, 3)
    K, V = _update(b, k, v)
    if K.shape != k.shape:
        raise Mistake("shared")


GROWING_CACHE = code_exercise(
    id="02.growing_cache", title="A KV cache that grows",
    hints=CACHE_HINTS,
    error_hints={r"must match except in dimension [013]": "wrong_axis"},
    checks=[
        Check("a new cache holds 0 tokens", _fresh),
        Check("the first update of 3 tokens returns them, seq_len == 3", _feed_check(31, 1, 2, 3, [3])),
        Check("one more token goes after them along time (dim 2)", _feed_check(32, 1, 2, 4, [3, 1])),
        Check("chunks of 3, 1, 2 and 5 tokens, B = 2, H = 3, D = 4", _feed_check(33, 2, 3, 4, [3, 1, 2, 5])),
        Check("length 1: a single token", _feed_check(34, 1, 1, 2, [1])),
        Check("40 tokens one at a time: every one is kept", _feed_check(35, 1, 2, 2, [1] * 40)),
        Check("300 tokens in chunks of 1 to 7, float64: every one is kept, in float64",
              _feed_check(38, 1, 1, 2, [1, 7, 3, 5, 2, 6, 4] * 10 + [1] * 20)),
        Check("float16 pairs stay float16 (2 tokens, then 1)", _feed_check(39, 1, 2, 4, [2, 1], dtype=torch.float16)),
        Check("two caches do not share storage", _independent_check),
        Check("non-contiguous new k, v (transposed views), float32",
              _feed_check(37, 2, 2, 3, [2, 3], dtype=torch.float32, transposed=True)),
    ],
)

# ---------------------------------------------------------------- 02.cached_attention

CACHED_HINTS = {
    "chunk_mask": "Inside a chunk of several new tokens, query r must not see the chunk's later tokens: "
                  "pass causal_mask(T, m) for T new queries over m cached keys.",
    "first_aligned": "The T new queries are the LAST T of the m cached positions: use causal_mask(T, m) "
                     "(torch's is_causal=True aligns the queries to the first positions when T != m).",
    "ignores_cache": "Attend over everything cache.update returns, K_{<=i} and V_{<=i}, not only the "
                     "new chunk's keys and values.",
    "recent_only": "Attend over every cached pair, K_{<=i} and V_{<=i}: keeping only the newest pairs makes a "
                   "window memory (lesson 04), not the full cache of this lesson.",
    "no_scale": "Divide the scores by sqrt(d) (course_lib.attention does it for you): the 1/sqrt(d) "
                "scale is missing.",
    "double_update": "Call cache.update(k, v) exactly once per call: the cache now holds some tokens twice.",
    "not_appended": "Append the new pairs with cache.update(k, v): afterwards the cache must hold "
                    "every token seen so far.",
    "shape": "Return one output row per new query: shape [B, H, T, D].",
    "wrong_values": "Each new query at position i must get Att(q_i, K_{<=i}, V_{<=i}): the same output as "
                    "causal attention over the whole sequence.",
}


def _per_chunk(q, chunks, attend):
    """Concatenate ``attend(q_chunk, end, n)`` over the chunks (``end`` = tokens cached after it)."""
    outs, end = [], 0
    for n in chunks:
        end += n
        outs.append(attend(q[:, :, end - n:end], end, n))
    return torch.cat(outs, 2)


def _cached_models(q, k, v, chunks):
    def first_aligned(qc, end, n):
        mask = torch.arange(end).unsqueeze(0) <= torch.arange(n).unsqueeze(1)  # [n, end], top-left aligned
        return attention_reference(qc, k[:, :, :end], v[:, :, :end], mask)

    return {
        "chunk_mask": lambda: _per_chunk(q, chunks, lambda qc, end, n: attention_reference(
            qc, k[:, :, :end], v[:, :, :end])),
        "first_aligned": lambda: _per_chunk(q, chunks, first_aligned),
        "ignores_cache": lambda: _per_chunk(q, chunks, lambda qc, end, n: attention_reference(
            qc, k[:, :, end - n:end], v[:, :, end - n:end], causal_mask(n, n))),
        "no_scale": lambda: _per_chunk(q, chunks, lambda qc, end, n: attention_reference(
            qc, k[:, :, :end], v[:, :, :end], causal_mask(n, end), scale=1.0)),
        **{f"recent_only#{w}": (lambda w=w: _per_chunk(q, chunks, lambda qc, end, n: attention_reference(
            qc, k[:, :, max(0, end - w):end], v[:, :, max(0, end - w):end], causal_mask(n, min(end, w)))))
           for w in (32, 48, 64, 100, 128)},
    }


@check_factory
def _cached_check(fn, seed, b, h, d, chunks, *, dtype=torch.float64, static=False):
    gen = seeded(seed)
    t = sum(chunks)
    q, k, v = (randn(gen, b, h, t, d, dtype=dtype) for _ in range(3))
    cache = make(fn, StaticKVCache, b, h, 2 * t, d, dtype=dtype) if static else make(fn, KVCache)
    outs, seen = [], 0
    for n in chunks:
        out = call_keeping_inputs(fn, q[:, :, seen:seen + n], k[:, :, seen:seen + n], v[:, :, seen:seen + n], cache)
        expect_tensor(out, (b, h, n, d), dtype, shape_text="[B, H, T, D]")
        outs.append(out)
        seen += n
        if cache.seq_len != seen:
            key = "double_update" if cache.seq_len > seen else "not_appended"
            raise Mistake(key, f"it holds {cache.seq_len} tokens after {seen}")
    mask = causal_mask(t, t)
    expect_close(torch.cat(outs, 2), attention_reference(q, k, v, mask), _cached_models(q, k, v, chunks))


CACHED_ATTENTION = code_exercise(
    id="02.cached_attention", title="Attention over a KV cache",
    hints=CACHED_HINTS,
    checks=[
        Check("decoding 6 tokens one at a time equals causal attention over all 6",
              _cached_check(41, 1, 2, 8, [1] * 6)),
        Check("length 1: the first token alone", _cached_check(42, 1, 1, 4, [1])),
        Check("a prompt of 4 tokens, then 3 decoding steps", _cached_check(43, 1, 2, 8, [4, 1, 1, 1])),
        Check("chunks of 3, 2 and 4 tokens (causal inside each chunk)", _cached_check(44, 1, 2, 8, [3, 2, 4])),
        Check("batch 2, float32", _cached_check(45, 2, 3, 8, [2, 1, 3], dtype=torch.float32)),
        Check("a StaticKVCache (its K, V are views into a preallocated buffer)",
              _cached_check(46, 2, 2, 8, [3, 1, 2], static=True)),
        Check("a prompt of 60 tokens, 10 decoding steps, then chunks of 8 up to 102 tokens: every pair is used",
              _cached_check(47, 1, 1, 4, [60] + [1] * 10 + [8] * 4)),
    ],
)

# ---------------------------------------------------------------- 02.max_context

CONTEXT_HINTS = {
    "rounds_up": "The cache must FIT: take the largest m whose bytes are <= the budget, rounding down "
                 "(integer division //), never up.",
    "no_factor_two": "Count keys AND values: each token costs 2 * L * n_g * d_h * batch * bytes_per_value bytes.",
    "off_by_one": "One token off: m tokens cost m times the bytes per token, so the answer is exactly "
                  "budget_bytes // bytes_per_token (no + 1 for the current token, no - 1 for safety).",
    "no_batch": "Each sequence in the batch has its own cache: the budget is shared by batch caches.",
    "no_bytes": "Divide by the bytes per token, bytes_per_value included: as written you count stored numbers.",
    "no_layers": "Every layer keeps its own cache: multiply the bytes per token by n_layers.",
    "default_bytes": "bytes_per_value must default to 2 (fp16 / bf16) and be used as given.",
    "not_int": "Return an int number of tokens: use integer division (//), not / or math.floor on floats.",
    "not_number": "Return an int number of tokens.",
    "wrong_number": "m = budget_bytes // (2 * n_layers * n_kv_heads * head_dim * batch * bytes_per_value).",
}


@check_factory
def _context_check(fn, budget, n_layers, n_kv_heads, head_dim, *, batch=None, bytes_per_value=None):
    kwargs = {k: v for k, v in (("batch", batch), ("bytes_per_value", bytes_per_value)) if v is not None}
    b, per = kwargs.get("batch", 1), kwargs.get("bytes_per_value", 2)
    token = 2 * n_layers * n_kv_heads * head_dim * b * per
    want = budget // token
    mistakes = {
        # one more than the right number: rounding up where the budget is not a multiple of a token
        ("rounds_up" if budget % token else "off_by_one"): budget // token + 1,
        "no_factor_two": budget // (token // 2),
        "no_batch": budget // (token // b),
        "no_bytes": budget // (token // per),
        "no_layers": budget // (token // n_layers),
        "default_bytes": budget // (token // per * 4),
        "off_by_one#minus": budget // token - 1,
    }
    got = fn(budget, n_layers, n_kv_heads, head_dim, **kwargs)
    expect_number(got, want, _unambiguous(mistakes, want), integer=True)


MAX_CONTEXT = code_exercise(
    id="02.max_context", title="The longest context a memory budget holds",
    hints=CONTEXT_HINTS,
    checks=[
        Check("a budget that holds exactly 100 tokens (L = 2, n_g = 3, d_h = 4, fp16)",
              _context_check(2 * 2 * 3 * 4 * 2 * 100, 2, 3, 4)),
        Check("one byte less than 100 tokens need holds 99 (round down)",
              _context_check(2 * 2 * 3 * 4 * 2 * 100 - 1, 2, 3, 4)),
        Check("a budget smaller than one token holds 0", _context_check(1000, 32, 8, 128)),
        Check("Llama-2-7B (L = 32, n_g = 32, d_h = 128) in 16 GiB, fp16", _context_check(16 * 2**30, 32, 32, 128)),
        Check("GQA: L = 32, n_g = 8, d_h = 128, batch = 3, 24 GiB, fp16",
              _context_check(24 * 2**30, 32, 8, 128, batch=3, bytes_per_value=2)),
        Check("float32 values (4 bytes), batch 5, a budget that is not a multiple of a token's bytes",
              _context_check(10**9 + 7, 6, 4, 64, batch=5, bytes_per_value=4)),
    ],
)


def _unambiguous(mistakes: dict, want: float) -> dict:
    """Keep the mistakes whose number no other mistake (nor the right answer) shares on these
    inputs, so a hint is only given when the number identifies the mistake."""
    values = [v for v in mistakes.values()]
    return {key: v for key, v in mistakes.items()
            if v != want and sum(abs(v - w) <= 1e-9 * max(abs(v), 1) for w in values) == 1}


# ---------------------------------------------------------------- conceptual questions

GQA = dict(n_layers=32, n_kv_heads=8, head_dim=128)  # Llama-3-8B's attention shape, fp16
BUDGET, BATCH = 16 * 2**30, 4
BUDGET_CONTEXT = number_exercise(
    id="02.budget_context",
    title="How long may each conversation be under a 16 GiB cache budget?",
    correct=BUDGET // kv_cache_bytes(**GQA, seq_len=1, batch=BATCH),
    mistakes={
        "no_batch": BUDGET // kv_cache_bytes(**GQA, seq_len=1),
        "mha": BUDGET // kv_cache_bytes(**{**GQA, "n_kv_heads": 32}, seq_len=1, batch=BATCH),
        "no_factor_two": BUDGET // (kv_cache_bytes(**GQA, seq_len=1, batch=BATCH) // 2),
        "fp32": BUDGET // kv_cache_bytes(**GQA, seq_len=1, batch=BATCH, bytes_per_value=4),
        "gib": 16 / (kv_cache_bytes(**GQA, seq_len=1, batch=BATCH) / 2**30) / 1024,
    },
    hints={
        "no_batch": "The 4 conversations each keep their own cache: the budget is shared by 4 caches.",
        "mha": "Only the n_g = 8 key/value heads are cached (grouped-query attention), not all 32 query heads.",
        "no_factor_two": "Count keys AND values: the factor 2.",
        "fp32": "fp16 stores 2 bytes per value, not 4.",
        "gib": "Give a number of tokens: divide the budget in bytes (16 * 2**30) by the bytes per token.",
        "wrong_number": "Bytes per token = 2 * L * n_g * d_h * batch * bytes_per_value; the context is the budget "
                        "divided by that, rounded down.",
    },
    unit="tokens",
)

DOUBLE_CONTEXT = choice_exercise(
    id="02.double_context",
    title="Predict what doubling the context costs a full KV cache",
    options={
        "A": "Cache bytes x2, time of the last step x1, total decoding time x2.",
        "B": "Cache bytes x2, time of the last step x2, total decoding time x4.",
        "C": "Cache bytes x4, time of the last step x2, total decoding time x4.",
        "D": "Cache bytes x2, time of the last step x2, total decoding time x2.",
    },
    correct="B",
    wrong_hints={
        "A": "Caching saves recomputing k and v, but the last query still reads every cached pair: twice the "
             "pairs, twice the time of that step.",
        "C": "The cache keeps one (k_i, v_i) pair per token and layer, not weights between pairs: its bytes grow "
             "linearly with m.",
        "D": "Step i costs O(i): adding up steps whose cost grows linearly gives O(m^2) in total, so twice the "
             "tokens cost about four times the time.",
    },
)

EXERCISES = [GROWING_CACHE, CACHED_ATTENTION, MAX_CONTEXT, BUDGET_CONTEXT, DOUBLE_CONTEXT]
