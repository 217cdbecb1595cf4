r"""Exercises of lesson 03, two routes to long context.

* ``03.linear_attention``: causal linear attention through the recurrence
  ``mu_i = mu_{i-1} + phi(k_i)^T v_i``, ``nu_i = nu_{i-1} + phi(k_i)``,
  ``out_i = phi(q_i) mu_i / (phi(q_i) . nu_i)``, ``phi = elu + 1``
* ``03.strided_mask``: the Sparse Transformer's strided pattern
* ``03.evictable``: the cached keys that no later query reads
* ``03.state_bytes``: the KV cache against the ``mu, nu`` state at a given ``m`` (a number)
* ``03.sparse_cache``: what a strided layer must keep (multiple choice)

The references are :func:`course_lib.memory.linear_attention_parallel` and
:mod:`course_lib.experiments.lesson03`.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from ... import attention_reference, causal_mask
from ...experiments.lesson03 import evictable as ref_evictable
from ...experiments.lesson03 import global_mask, window_mask
from ...experiments.lesson03 import strided_mask as ref_strided_mask
from ...memory import linear_attention_parallel
from ..compare import call_keeping_inputs, expect_answer, expect_mask, heads_view, randn, seeded, twice
from ..core import Check, Mistake, code_exercise, type_name
from ..questions import choice_exercise, number_exercise
from ._common import check_factory

# ---------------------------------------------------------------- 03.linear_attention

LINEAR_HINTS = {
    "non_causal": "Each output must use the state after ITS token, mu_i and nu_i: you used the sums over "
                  "the whole sequence for every position (update mu, nu and read them inside the loop).",
    "exclusive": "Add phi(k_i)^T v_i to mu and phi(k_i) to nu BEFORE reading them for out_i: token i "
                 "attends to itself (the sums run over j <= i).",
    "no_normaliser": "Divide by phi(q_i) . nu_i: without the normaliser the weights do not sum to 1.",
    "no_phi_q": "Apply the feature map to the query too: out_i = phi(q_i) mu_i / (phi(q_i) . nu_i).",
    "no_phi": "Apply phi(x) = elu(x) + 1 to the queries and keys: raw q k^T can be negative, and the "
              "normaliser can then approach 0.",
    "wrong_phi": "The feature map is phi(x) = elu(x) + 1 (F.elu(x) + 1), not relu, exp, softplus or elu alone.",
    "softmax_habits": "No 1/sqrt(d) and no softplus here: both are carried over from softmax attention. Linear "
                      "attention applies phi(x) = elu(x) + 1 to the raw q and k (the scale would change phi's "
                      "input; the normaliser phi(q_i) . nu_i already makes the weights sum to 1).",
    "phi_on_v": "phi applies to queries and keys only; the values enter as they are: mu += phi(k_i)^T v_i.",
    "softmax": "This is softmax attention: linear attention replaces exp(q k^T / sqrt(d)) by phi(q) phi(k)^T "
               "(no softmax, no 1/sqrt(d)).",
    "eps": "Leave the epsilon out of the denominator: with phi = elu + 1 every term of phi(q_i) . nu_i is "
           "positive, so the division is safe, and an eps only shifts every output a little.",
    "wrong_values": "out_i = phi(q_i) mu_i / (phi(q_i) . nu_i) with mu_i = sum_{j<=i} phi(k_j)^T v_j and "
                    "nu_i = sum_{j<=i} phi(k_j), phi = elu + 1.",
    "shape": "Return one row per query: shape [B, H, T, D_v], D_v = v.shape[-1].",
}


def _phi(x):
    return F.elu(x) + 1


def _masked_linear(fq, fk, v, *, normalise=True, diagonal=0):
    a = (fq @ fk.transpose(-2, -1)).tril(diagonal)  # [B, H, T, T]
    num = a @ v
    return num / a.sum(-1, keepdim=True) if normalise else num


def _linear_models(q, k, v):
    fq, fk = _phi(q), _phi(k)
    t, d = q.shape[2], q.shape[-1]
    return {
        "non_causal": lambda: (fq @ (fk.transpose(-2, -1) @ v)) / (fq @ fk.sum(2)[..., None]),
        "exclusive": lambda: _masked_linear(fq, fk, v, diagonal=-1),
        "no_normaliser": lambda: _masked_linear(fq, fk, v, normalise=False),
        "no_phi_q": lambda: _masked_linear(q, fk, v),
        "no_phi": lambda: _masked_linear(q, k, v),
        "wrong_phi#relu": lambda: _masked_linear(F.relu(q), F.relu(k), v),
        "wrong_phi#exp": lambda: _masked_linear(q.exp(), k.exp(), v),
        "wrong_phi#elu": lambda: _masked_linear(F.elu(q), F.elu(k), v),
        "phi_on_v": lambda: _masked_linear(fq, fk, _phi(v)),
        "softmax": lambda: attention_reference(q, k, v, causal_mask(t, t)),
        "wrong_phi#softplus": lambda: _masked_linear(F.softplus(q), F.softplus(k), v),
        "softmax_habits#softplus_q": lambda: _masked_linear(F.softplus(q * d ** -0.5), F.softplus(k), v),
        "softmax_habits#softplus_both": lambda: _masked_linear(F.softplus(q * d ** -0.5), F.softplus(k * d ** -0.5), v),
        "softmax_habits#softplus_quarter": lambda: _masked_linear(F.softplus(q * d ** -0.25),
                                                                  F.softplus(k * d ** -0.25), v),
        "softmax_habits#elu_q": lambda: _masked_linear(_phi(q * d ** -0.5), fk, v),
        "softmax_habits#elu_both": lambda: _masked_linear(_phi(q * d ** -0.5), _phi(k * d ** -0.5), v),
        **{f"eps#{eps:g}": (lambda eps=eps: _masked_linear(fq, fk, v, normalise=False)
                            / (_masked_linear(fq, fk, torch.ones_like(v[..., :1]), normalise=False) + eps))
           for eps in (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3)},
    }


@check_factory
def _linear_check(fn, seed, b, h, t, d, d_v=None, *, dtype=torch.float64, non_contiguous=False, scale=1.0):
    d_v = d if d_v is None else d_v
    gen = seeded(seed)
    if non_contiguous:
        q, k = heads_view(gen, b, h, t, d, dtype), heads_view(gen, b, h, t, d, dtype)
        v = heads_view(gen, b, h, t, d_v, dtype)
    else:
        q, k = randn(gen, b, h, t, d, dtype=dtype, scale=scale), randn(gen, b, h, t, d, dtype=dtype, scale=scale)
        v = randn(gen, b, h, t, d_v, dtype=dtype)
    expect_answer(fn, (q, k, v), (b, h, t, d_v), dtype, lambda *qkv: linear_attention_parallel(*qkv)[0],
                  _linear_models, shape_text="[B, H, T, D_v]")


LINEAR_ATTENTION = code_exercise(
    id="03.linear_attention", title="Causal linear attention through the mu, nu recurrence",
    hints=LINEAR_HINTS,
    checks=[
        Check("random float64 inputs, B = 1, H = 1, T = 5, D = 4", _linear_check(301, 1, 1, 5, 4)),
        Check("length 1: one token attends to itself", _linear_check(302, 1, 2, 1, 3)),
        Check("B = 2, H = 3, T = 17, D = 8, values of another width D_v = 5", _linear_check(303, 2, 3, 17, 8, 5)),
        Check("large queries and keys (scale 3): the feature map matters", _linear_check(304, 1, 2, 9, 4, scale=3.0)),
        Check("float32 in, float32 out", _linear_check(305, 2, 2, 6, 4, dtype=torch.float32)),
        Check("non-contiguous q, k, v (views of [B, T, H, D])", _linear_check(306, 2, 3, 7, 4, 6, non_contiguous=True)),
        Check("called twice on the same inputs (B = 1, H = 2, T = 6, D = 3): the same result both times",
              twice(_linear_check(309, 1, 2, 6, 3))),
    ],
)

# ---------------------------------------------------------------- 03.strided_mask

STRIDED_HINTS = {
    "dtype_bool": "Return a bool tensor (True = may attend), for example from comparisons such as (i - j) >= 0.",
    "first_aligned": "The t_q queries are the LAST t_q of the t_k positions: query row r sits at position "
                     "i = t_k - t_q + r.",
    "no_local": "Keep the local part too: a query sees the keys with i - j < stride, as well as every "
                "stride-th key before them.",
    "no_stride": "Add the strided part: keys with (i - j) % stride == 0 stay visible however far back.",
    "fixed_pattern": "The strided part depends on the distance i - j: (i - j) % stride == 0. Testing the key's "
                     "position (j % stride == 0) gives the Sparse Transformer's other, 'fixed' pattern.",
    "not_causal": "Keep j <= i: (i - j) % stride == 0 also holds for future keys (i - j = -stride, ...).",
    "precedence": "Bracket the 'or': & binds tighter than | in Python, so (d >= 0) & (d % s == 0) | (d < s) "
                  "reads ((d >= 0) & (d % s == 0)) | (d < s), and d < s holds for every future key (d < 0). "
                  "Write (d >= 0) & ((d < s) | (d % s == 0)).",
    "query_offset": "The queries' positions are off by one: query row r sits at position i = t_k - t_q + r "
                    "(torch.arange(t_k - t_q, t_k)), so the last query is at t_k - 1 and sees itself.",
    "sparse": "Return a dense tensor (mask.to_dense(), or no .to_sparse()): the checks and attention read an "
              "ordinary strided bool mask.",
    "inverted": "True means the query MAY attend (the visible pairs), not the blocked ones.",
    "shape": "The mask has one row per query and one column per key: shape [t_q, t_k].",
    "wrong_values": "True where j <= i and (i - j < stride or (i - j) % stride == 0), with i = t_k - t_q + r.",
}


def _strided_models(t_q, t_k, stride):
    i = torch.arange(t_k - t_q, t_k)[:, None]
    j = torch.arange(t_k)[None, :]
    d = i - j
    top = torch.arange(t_q)[:, None] - j  # queries at positions 0..t_q-1
    def pattern(d):
        return (d >= 0) & ((d < stride) | (d % stride == 0))

    return {
        "precedence": lambda: (d >= 0) & (d % stride == 0) | (d < stride),
        "query_offset#late": lambda: pattern(d + 1),
        "query_offset#early": lambda: pattern(d - 1),
        "first_aligned": lambda: (top >= 0) & ((top < stride) | (top % stride == 0)),
        "no_local": lambda: (d >= 0) & (d % stride == 0),
        "no_stride": lambda: (d >= 0) & (d < stride),
        "fixed_pattern": lambda: (d >= 0) & ((d < stride) | (j % stride == 0)),
        "not_causal": lambda: ((d >= 0) & (d < stride)) | (d % stride == 0),
        "inverted": lambda: ~ref_strided_mask(t_q, t_k, stride),
    }


@check_factory
def _strided_check(fn, t_q, t_k, stride):
    got = fn(t_q, t_k, stride)
    if isinstance(got, torch.Tensor) and got.layout != torch.strided:
        raise Mistake("sparse", f"got layout {got.layout}")
    expect_mask(got, ref_strided_mask(t_q, t_k, stride), _strided_models(t_q, t_k, stride))


STRIDED_MASK = code_exercise(
    id="03.strided_mask", title="The Sparse Transformer's strided mask",
    hints=STRIDED_HINTS,
    error_hints={r"holds a torch\.sparse|sparse": "sparse"},
    checks=[
        Check("a bool [t_q, t_k] mask, T = 10, stride 3", _strided_check(10, 10, 3)),
        Check("T = 16, stride 4: local keys and every 4th key", _strided_check(16, 16, 4)),
        Check("3 queries over 11 keys (the queries are the last 3 positions), stride 4", _strided_check(3, 11, 4)),
        Check("one query over 13 keys, stride 5", _strided_check(1, 13, 5)),
        Check("stride 1 is plain causal attention (T = 5)", _strided_check(5, 5, 1)),
        Check("stride 2 over T = 9 (9 is not a multiple of 2)", _strided_check(9, 9, 2)),
    ],
)

# ---------------------------------------------------------------- 03.evictable

EVICT_HINTS = {
    "not_list": "Return a plain Python list of int positions, such as [0, 1, 2] (use .tolist()).",
    "not_sorted": "Return the positions sorted from the oldest: sorted(...).",
    "strict": "Queries at positions i >= t count, i = t included: the query at t is the next one to come.",
    "past_queries": "Look at the FUTURE queries, rows i >= t (mask[t:]): queries before t have already run.",
    "kept": "Return the keys that may be DROPPED (no later query attends to them), not the ones still needed.",
    "all_keys": "Only keys j < t are cached after step t - 1: do not list keys at positions t and beyond.",
    "transposed": "Rows are queries and columns are keys: key j is read by query i when mask[i, j] is True "
                  "(look down column j, from row t).",
    "all_instead_of_any": "Key j may go only when NO query i >= t reads it: not mask[t:, j].any(). A key that "
                          "some, but not all, of those queries read is still needed (not .all() is not enough).",
    "wrong_list": "Key j < t is evictable when mask[i, j] is False for every query i >= t.",
}


def _as_positions(got):
    if isinstance(got, torch.Tensor) or not isinstance(got, (list, tuple)):
        raise Mistake("not_list", f"got {type_name(got)}")
    if any(isinstance(x, bool) or not isinstance(x, numbers.Integral) for x in got):
        raise Mistake("not_list", "it holds something other than ints")
    return [int(x) for x in got]


def _evict_models(mask, t):
    big = mask.shape[0]
    keys = torch.arange(t)
    return {
        "strict": (~mask[t + 1:, :t].any(0)).nonzero().flatten().tolist(),
        "all_instead_of_any": (~mask[t:, :t].all(0)).nonzero().flatten().tolist() if t < big else [],
        "past_queries": (~mask[:t, :t].any(0)).nonzero().flatten().tolist(),
        "past_queries#from_t_minus_1": (~mask[max(t - 1, 0):, :t].any(0)).nonzero().flatten().tolist(),
        "all_keys#key_t": (~mask[t:, :t + 1].any(0)).nonzero().flatten().tolist(),
        "kept": mask[t:, :t].any(0).nonzero().flatten().tolist(),
        "all_keys": (~mask[t:, :].any(0)).nonzero().flatten().tolist() if t < big else list(range(big)),
        "transposed": keys[~mask[:t, t:].any(1)].tolist(),
    }


@check_factory
def _evict_check(fn, make_mask, t):
    mask = make_mask()
    got = _as_positions(call_keeping_inputs(fn, mask, t))
    want = ref_evictable(mask, t)
    if got == want:
        return
    if sorted(got) == want:
        raise Mistake("not_sorted")
    for key, model in _evict_models(mask, t).items():
        if got == model or sorted(got) == sorted(model):
            raise Mistake(key.split("#")[0])
    raise Mistake("wrong_list")


def _random_causal(seed, size, p):
    gen = seeded(seed)
    return (torch.rand(size, size, generator=gen) < p) & causal_mask(size, size)


def _unread_key_t(seed, size, p, t):
    """A random causal pattern in which no query reads key ``t`` (its diagonal is False too): key t is
    not cached yet at step t, so it must not be listed although nobody reads it."""
    mask = _random_causal(seed, size, p)
    mask[:, t] = False
    return mask


EVICTABLE = code_exercise(
    id="03.evictable", title="Which cached keys no future query reads",
    hints=EVICT_HINTS,
    checks=[
        Check("window n_c = 3 over T = 10, t = 6: the old keys go", _evict_check(lambda: window_mask(10, 3), 6)),
        Check("strided, stride 3, T = 12, t = 7: every key stays",
              _evict_check(lambda: ref_strided_mask(12, 12, 3), 7)),
        Check("a global token every 5 plus a window of 2, T = 12, t = 7",
              _evict_check(lambda: global_mask(12, 2, 5), 7)),
        Check("a random causal pattern, T = 14, t = 9", _evict_check(lambda: _random_causal(307, 14, 0.3), 9)),
        Check("a random causal pattern, T = 20, t = 5", _evict_check(lambda: _random_causal(308, 20, 0.15), 5)),
        Check("key 2 read only by the query at t = 5 itself (T = 8)",
              _evict_check(lambda: window_mask(8, 1) | (torch.arange(8)[:, None] == 5) & (torch.arange(8) == 2), 5)),
        Check("t = 0: nothing is cached yet", _evict_check(lambda: window_mask(6, 2), 0)),
        Check("t = T: no query is left, every key may go (T = 5)", _evict_check(lambda: ref_strided_mask(5, 5, 2), 5)),
        Check("a random causal pattern in which no query reads key t, T = 10, t = 4",
              _evict_check(lambda: _unread_key_t(314, 10, 0.25, 4), 4)),
    ],
)

# ---------------------------------------------------------------- questions

# L = 24 layers, tau = 16 heads, d_h = 64, fp16, m = 4096 tokens
_L, _TAU, _D, _M, _B = 24, 16, 64, 4096, 2
_KV = 2 * _L * _TAU * _D * _M * _B
_STATE = _L * _TAU * (_D * _D + _D) * _B
STATE_BYTES = number_exercise(
    id="03.state_bytes",
    title="The KV cache against the mu, nu state",
    correct=_KV / _STATE,
    mistakes={
        "no_nu": _KV / (_L * _TAU * _D * _D * _B),
        "no_factor_two": _KV / 2 / _STATE,
        "inverted": _STATE / _KV,
        "inverted#no_nu": (_L * _TAU * _D * _D * _B) / _KV,
        "bytes": _KV - _STATE,
        "per_head": _KV / (_STATE / (_L * _TAU)),
        "per_head#cache_per_head": (_KV / (_L * _TAU)) / _STATE,
        "per_head#cache_per_layer": (_KV / _L) / _STATE,
        "per_head#state_per_layer": _KV / (_STATE / _L),
    },
    hints={
        "no_nu": "The state is mu (d_h x d_h) AND nu (d_h values) per head: count both.",
        "no_factor_two": "The KV cache stores keys AND values: 2 * L * tau * d_h * m values.",
        "inverted": "The question asks how many times LARGER the KV cache is: cache bytes / state bytes.",
        "bytes": "Give the ratio (cache bytes / state bytes), not a difference of bytes.",
        "per_head": "Count the cache and the state over the same layers and heads: both are kept for each of "
                    "the L layers and tau heads (you counted one side per head or per layer and the other for "
                    "all of them); L and tau then cancel in the ratio.",
        "wrong_number": "Cache: 2 * L * tau * d_h * m values; state: L * tau * (d_h * d_h + d_h) values; "
                        "the bytes per value cancel in the ratio.",
    },
    unit="times (a ratio)",
)

SPARSE_CACHE = choice_exercise(
    id="03.sparse_cache",
    title="What must a strided layer keep?",
    options={
        "A": "The last 128 pairs and every 128th pair before them: about 1,000 pairs, the ones the next query reads.",
        "B": "Every one of the 100,000 pairs: each old key will be read again by a later query at the right offset.",
        "C": "Only the last 128 pairs: the strided keys can be recomputed from the hidden states when needed.",
        "D": "About 316 pairs (the square root of 100,000), since a strided query reads O(sqrt(m)) keys.",
    },
    correct="B",
    wrong_hints={
        "A": "That is what the NEXT query reads. The query after it reads a different set of strided keys "
             "(shifted by one): over the coming steps every old key is read again, so none may be dropped.",
        "C": "Recomputing a key needs that token's hidden state at every layer, which is no smaller than "
             "the key itself: keeping hidden states is keeping the cache in another form.",
        "D": "O(sqrt(m)) is the compute per query. The memory is decided by which keys any FUTURE query "
             "reads, and for a strided pattern that is all of them.",
    },
)

EXERCISES = [LINEAR_ATTENTION, STRIDED_MASK, EVICTABLE, STATE_BYTES, SPARSE_CACHE]
