r"""Exercises of lesson 10, gated memories.

* ``10.decay_update``: one write of the decay memory, ``S_new = alpha S + k^T v`` (RetNet, Mamba-2)
* ``10.gated_delta_update``: one write of the gated delta rule (Gated DeltaNet),
  ``S_new = alpha (I - beta k^T k) S + beta k^T v`` with a unit key
* ``10.decay_mask``: the decay mask ``L_ij = prod_{j < t <= i} alpha_t`` (``1`` on the diagonal, ``0`` above)
* ``10.chunked_decay``: the decay memory's outputs ``out_i = q_i S_i`` computed chunk by chunk
* ``10.gated_delta_limits``: what the gated delta rule is at ``alpha = 1`` and what ``beta = 0`` does
  (multiple choice)
* ``10.scenario_memory``: which memory a long support chat needs (multiple choice)
* ``10.fading_fact``: how much of a fact comes back after 100 decays (a number)

References: :func:`course_lib.memory.decay_recurrent` and :func:`course_lib.memory.gated_delta_recurrent`
(one token; the whole text for ``10.chunked_decay``: the token loop, unnormalised), and
:func:`course_lib.memory.linear.lower_decay` (the decay mask from cumulative log-decays).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...memory import decay_recurrent, gated_delta_recurrent
from ...memory.gated import rms_normalize
from ...memory.linear import lower_decay
from ..compare import call_keeping_inputs, expect_answer, expect_close, expect_tensor, heads_view, randn, seeded, twice
from ..core import Check, Mistake, code_exercise
from ..questions import choice_exercise, number_exercise
from ._common import check_factory

# torch's error when two shapes do not broadcast (alpha [B, H] against S [B, H, D, D_v], or an outer
# product taken the other way round, [D_v, D] against S's [D, D_v])
BROADCAST_ERROR = r"size of tensor a \(\d+\) must match the size of tensor b \(\d+\)"


def _outer(a, b):
    """``a^T b`` per head: ``[..., D] x [..., D_v] -> [..., D, D_v]``."""
    return a[..., :, None] * b[..., None, :]


def _read(k, S):
    """``k S`` per head: ``[..., D] x [..., D, D_v] -> [..., D_v]``."""
    return (k[..., None, :] @ S).squeeze(-2)


def _gates(gen, b, h, low, high, dtype):
    """One gate per head, ``[B, H]``, uniform in ``[low, high]``."""
    return (low + (high - low) * torch.rand(b, h, generator=gen, dtype=torch.float64)).to(dtype)


def _memory(gen, b, h, d, d_v, dtype, non_contiguous):
    """A memory that already holds pairs, ``[B, H, D, D_v]``; with ``non_contiguous`` a transposed view
    (drawn after the contiguous one, which it replaces)."""
    S = randn(gen, b, h, d, d_v, dtype=dtype)
    return randn(gen, b, h, d_v, d, dtype=dtype).transpose(-2, -1) if non_contiguous else S


def _one_write_exercise(exercise_id, title, hints, factory, seed, first, middle):
    """The two one-write exercises: ``factory``'s case B = H = D = D_v = 3 (named ``first``), every axis its
    own size, the ``middle`` checks, then float32 with a transposed ``S`` and a second call (seeds from ``seed``)."""
    return code_exercise(
        id=exercise_id, title=title, hints=hints, error_hints={BROADCAST_ERROR: "broadcast"},
        checks=[
            Check(first, factory(seed, 3, 3, 3, 3)),
            Check("B = 2, H = 3, D = 5, D_v = 4 (every axis its own size)", factory(seed + 1, 2, 3, 5, 4)),
            *middle,
            Check("float32 in, float32 out; S a non-contiguous (transposed) view (B = 2, H = 4, D = 6, D_v = 3)",
                  factory(seed + 4, 2, 4, 6, 3, dtype=torch.float32, non_contiguous=True)),
            Check("called twice on the same inputs (B = 1, H = 2, D = 3, D_v = 2): the same result",
                  twice(factory(seed + 5, 1, 2, 3, 2))),
        ],
    )


def _wrong_alphas(alpha):
    """``alpha [B, H]`` broadcast the wrong way against a ``[B, H, D, D_v]`` tensor: each a function
    ``x -> alpha (wrongly broadcast) * x`` (they run only where B = H = D = D_v; otherwise torch raises)."""
    return {
        "trailing": lambda x: alpha * x,  # [B, H] lined up with the last two axes [D, D_v]
        "one_axis": lambda x: alpha[..., None] * x,  # [B, H, 1]: one None short
        "transposed": lambda x: alpha.T[..., None, None] * x,  # batch and heads swapped
    }


# ---------------------------------------------------------------- 10.decay_update

DECAY_HINTS = {
    "no_decay": "You added k^T v to S without the decay: that is lesson 05's linear memory, which never "
                "forgets. Multiply the old memory by alpha first: alpha S + k^T v.",
    "decay_after": "Decay the OLD memory, then write: alpha S + k^T v. Yours, alpha (S + k^T v), also fades "
                   "the new pair before it is ever read.",
    "decay_on_write": "alpha multiplies the memory S (the past fades), not the new pair: alpha S + k^T v, "
                      "not S + alpha k^T v.",
    "blend": "alpha is not a blend weight of old and new: alpha S + (1 - alpha) k^T v shrinks every write. "
             "The new pair enters at full strength: alpha S + k^T v.",
    "complement": "alpha is the fraction of the memory KEPT (alpha = 1 never forgets): alpha S + k^T v, "
                  "not (1 - alpha) S + k^T v.",
    "no_memory": "Keep the old memory: alpha S + k^T v, not the new pair k^T v alone.",
    "outer_order": "The write is an outer product k^T v: a column of D (the key) times a row of D_v (the "
                   "value), [B, H, D, D_v] like S. Yours is the other way round: k[..., :, None] * v[..., None, :].",
    "alpha_broadcast": "alpha is [B, H], one decay per sequence and head: give it two trailing axes, "
                       "alpha[..., None, None] ([B, H, 1, 1]), before multiplying S [B, H, D, D_v]. "
                       "alpha * S or alpha[..., None] * S lines alpha up with the wrong axes.",
    "broadcast": "The shapes do not line up. alpha is [B, H]: use alpha[..., None, None] ([B, H, 1, 1]) to "
                 "multiply S [B, H, D, D_v]; the write k^T v is [B, H, D, D_v]: k[..., :, None] * v[..., None, :].",
    "shape": "Return the new memory S, shape [B, H, D, D_v] like the input S.",
    "wrong_values": "S_new = alpha S + k^T v: the old memory decayed by alpha (one per head), plus the outer "
                    "product of the key (a column) and the value (a row).",
}


def _decay_ref(S, k, v, alpha):
    """One token of :func:`course_lib.memory.decay_recurrent`."""
    return decay_recurrent(k[:, :, None], k[:, :, None], v[:, :, None], alpha[..., None], S)[1]


def _decay_models(S, k, v, alpha):
    a = alpha[..., None, None]
    kv = _outer(k, v)
    return {
        "no_decay": lambda: S + kv,
        "decay_after": lambda: a * (S + kv),
        "decay_on_write": lambda: S + a * kv,
        "blend": lambda: a * S + (1 - a) * kv,
        "complement": lambda: (1 - a) * S + kv,
        "no_memory": lambda: kv,
        "outer_order": lambda: a * S + _outer(v, k),  # [D_v, D]: only when D = D_v
        **{f"alpha_broadcast#{name}": (lambda f=f: f(S) + kv) for name, f in _wrong_alphas(alpha).items()},
    }


@check_factory
def _decay_check(fn, seed, b, h, d, d_v, *, dtype=torch.float64, empty=False, non_contiguous=False, alpha=None):
    gen = seeded(seed)
    S = _memory(gen, b, h, d, d_v, dtype, non_contiguous)
    if empty:
        S = torch.zeros(b, h, d, d_v, dtype=dtype)
    k, v = randn(gen, b, h, d, dtype=dtype), randn(gen, b, h, d_v, dtype=dtype)
    a = _gates(gen, b, h, 0.2, 0.9, dtype) if alpha is None else torch.tensor(alpha, dtype=dtype)
    expect_answer(fn, (S, k, v, a), (b, h, d, d_v), dtype, _decay_ref, _decay_models, shape_text="[B, H, D, D_v]")


DECAY_UPDATE = _one_write_exercise(
    "10.decay_update", "One write of the decay memory", DECAY_HINTS, _decay_check, 1001,
    "B = H = D = D_v = 3, one alpha per head, a memory that already holds pairs",
    [Check("alpha = 1 on one head (no forgetting), 0.01 on the other (B = 1, H = 2, D = 3, D_v = 5)",
           _decay_check(1003, 1, 2, 3, 5, alpha=[[1.0, 0.01]])),
     Check("an empty memory S = 0 (B = 2, H = 1, D = 4, D_v = 2)", _decay_check(1004, 2, 1, 4, 2, empty=True))],
)

# ---------------------------------------------------------------- 10.gated_delta_update

GATED_HINTS = {
    "no_decay": "You wrote lesson 05's delta rule: S + beta k^T (v - k S) never forgets. Gated DeltaNet "
                "decays the memory by alpha first: alpha (I - beta k^T k) S + beta k^T v.",
    "no_erase": "alpha S + beta k^T v decays and adds, but never removes what k read: it is the decay "
                "memory. The delta part erases along k first: alpha (I - beta k^T k) S + beta k^T v.",
    "decay_after": "Decay, then write: alpha (I - beta k^T k) S + beta k^T v. You decayed after the write, "
                   "alpha (S + beta k^T (v - k S)), which also fades the new pair by alpha.",
    "read_before_decay": "You read v_old = k S from the memory before its decay. Gated DeltaNet decays first "
                         "and corrects what the DECAYED memory returns: alpha (I - beta k^T k) S + beta k^T v "
                         "= alpha S + beta k^T (v - k (alpha S)); the erase is decayed too.",
    "beta_one_term": "beta scales both the erase and the write: alpha (I - beta k^T k) S + beta k^T v "
                     "(beta = 0 must leave alpha S, beta = 1 must make k S_new = v).",
    "read_side": "Read the memory with the key as a row vector: k S, a [D_v] row ((k[..., None, :] @ S) or "
                 "torch.einsum('bhd,bhde->bhe', k, S)), not S k.",
    "sign": "Add the correction: alpha S + beta k^T (v - alpha k S); with a minus sign the memory moves away from v.",
    "outer_order": "The write is an outer product k^T u: a column of D (the key) times a row of D_v, "
                   "[B, H, D, D_v] like S. Yours is the other way round: k[..., :, None] * u[..., None, :].",
    "alpha_broadcast": "alpha and beta are [B, H], one per sequence and head: give them two trailing axes, "
                       "alpha[..., None, None] ([B, H, 1, 1]), before multiplying a [B, H, D, D_v] tensor; "
                       "beta[..., None] for a [B, H, D_v] row.",
    "broadcast": "The shapes do not line up. alpha, beta are [B, H]: alpha[..., None, None] multiplies S "
                 "[B, H, D, D_v]; the outer product k^T u is k[..., :, None] * u[..., None, :].",
    "shape": "Return the new memory S, shape [B, H, D, D_v] like the input S.",
    "wrong_values": "S_new = alpha (I - beta k^T k) S + beta k^T v, which is alpha S + beta k^T (v - k (alpha S)): "
                    "decay, read the decayed memory with k, write the correction along k.",
}


def _gated_ref(S, k, v, alpha, beta):
    """One token of :func:`course_lib.memory.gated_delta_recurrent` (the key is unit length already)."""
    return gated_delta_recurrent(k[:, :, None], k[:, :, None], v[:, :, None], alpha[..., None], beta[..., None], S)[1]


def _gated_models(S, k, v, alpha, beta):
    a, bb, bv = alpha[..., None, None], beta[..., None, None], beta[..., None]
    kS = _read(k, S)
    decayed = a * S
    models = {
        "no_decay": lambda: S + bb * _outer(k, v - kS),
        "no_erase": lambda: decayed + bb * _outer(k, v),
        "decay_after": lambda: a * (S + bb * _outer(k, v - kS)),
        "read_before_decay": lambda: decayed + bb * _outer(k, v - kS),
        "beta_one_term#write": lambda: a * (S - _outer(k, kS)) + bb * _outer(k, v),
        "beta_one_term#erase": lambda: a * (S - bb * _outer(k, kS)) + _outer(k, v),
        "beta_one_term#v": lambda: decayed + _outer(k, bv * v - _read(k, decayed)),
        "read_side": lambda: decayed + bb * _outer(k, v - (decayed @ k[..., :, None]).squeeze(-1)),
        "sign": lambda: decayed - bb * _outer(k, v - _read(k, decayed)),
        "outer_order": lambda: decayed + bb * _outer(v - _read(k, decayed), k),  # only when D = D_v
    }
    for name, f in _wrong_alphas(alpha).items():  # the two ways of writing it, each with alpha misplaced
        models[f"alpha_broadcast#{name}_read"] = lambda f=f: f(S) + bb * _outer(k, v - _read(k, f(S)))
        models[f"alpha_broadcast#{name}_erase"] = lambda f=f: f(S - bb * _outer(k, kS)) + bb * _outer(k, v)
    for name, f in _wrong_alphas(beta).items():  # beta misplaced the same ways
        models[f"alpha_broadcast#beta_{name}"] = lambda f=f: decayed + f(_outer(k, v - _read(k, decayed)))
    return models


@check_factory
def _gated_check(fn, seed, b, h, d, d_v, *, dtype=torch.float64, non_contiguous=False, alpha=None, beta=None):
    gen = seeded(seed)
    S = _memory(gen, b, h, d, d_v, dtype, non_contiguous)
    k = F.normalize(randn(gen, b, h, d, dtype=dtype), dim=-1)
    v = randn(gen, b, h, d_v, dtype=dtype)
    a = _gates(gen, b, h, 0.3, 0.9, dtype) if alpha is None else torch.full((b, h), alpha, dtype=dtype)
    bt = _gates(gen, b, h, 0.2, 0.9, dtype) if beta is None else torch.full((b, h), beta, dtype=dtype)
    expect_answer(fn, (S, k, v, a, bt), (b, h, d, d_v), dtype, _gated_ref, _gated_models,
                  shape_text="[B, H, D, D_v]")


def _overwrite_check(fn):
    """beta = 1, alpha = 0.5: reading k from the new memory returns v exactly, whatever S held."""
    gen = seeded(1017)
    S = randn(gen, 2, 3, 5, 4)
    k = F.normalize(randn(gen, 2, 3, 5), dim=-1)
    v = randn(gen, 2, 3, 4)
    alpha, beta = torch.full((2, 3), 0.5, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64)
    S_new = call_keeping_inputs(fn, S, k, v, alpha, beta)
    expect_tensor(S_new, (2, 3, 5, 4), torch.float64, shape_text="[B, H, D, D_v]")
    expect_close(_read(k, S_new), v, {"decay_after": lambda: 0.5 * v,
                                      "read_before_decay": lambda: v - 0.5 * _read(k, S),
                                      "no_erase": lambda: 0.5 * _read(k, S) + v})
    expect_close(S_new, _gated_ref(S, k, v, alpha, beta), _gated_models(S, k, v, alpha, beta))


GATED_DELTA_UPDATE = _one_write_exercise(
    "10.gated_delta_update", "One write of the gated delta rule", GATED_HINTS, _gated_check, 1011,
    "B = H = D = D_v = 3, alpha and beta one per head, a memory that already holds pairs",
    [Check("alpha = 1 on every head: lesson 05's delta rule (B = 1, H = 2, D = 4, D_v = 6, beta per head)",
           _gated_check(1013, 1, 2, 4, 6, alpha=1.0)),
     Check("beta = 0 on every head: no write, the memory only fades (B = 2, H = 2, D = 3, D_v = 2)",
           _gated_check(1014, 2, 2, 3, 2, beta=0.0)),
     Check("beta = 1, alpha = 0.5 (B = 2, H = 3, D = 5, D_v = 4): reading k afterwards returns v exactly",
           _overwrite_check)],
)

# ---------------------------------------------------------------- 10.decay_mask

MASK_HINTS = {
    "includes_j": "Off by one at the start: the product runs over j < t <= i, so alpha_j itself is left out "
                  "and the diagonal is 1 (a token reads its own write undecayed). Yours includes alpha_j.",
    "excludes_i": "Off by one: the product runs over j < t <= i, from alpha_{j+1} up to and including "
                  "alpha_i. Yours runs from alpha_j to alpha_{i-1}.",
    "upper_not_zero": "Above the diagonal (j > i) L must be 0: a query never reads a later key. Mask the "
                      "upper triangle out (torch.tril, or torch.where with a lower-triangular mask).",
    "transposed": "L_ij has the query position i as its row and the key position j as its column, lower-"
                  "triangular (j <= i): yours is its transpose.",
    "cumprod_division": "Dividing cumulative products, cumprod(alpha)_i / cumprod(alpha)_j, breaks once a "
                        "product underflows to 0 (small alphas): 0 / 0 is NaN. Multiply only the alphas "
                        "between j and i, or work with logarithms: exp(g_i - g_j), g = cumsum(log alpha).",
    "exp_then_mask": "exp(g_i - g_j) above the diagonal is the exp of a positive number, inf for small "
                     "alphas, and inf * 0 is NaN: mask before the exp (torch.where(mask, g_i - g_j, -inf).exp()) "
                     "or pick 0 with torch.where instead of multiplying by the mask.",
    "nonfinite": "The mask holds inf or NaN for small alphas: a ratio of products that underflowed (0 / 0), "
                 "or the exp of a positive exponent above the diagonal (inf * 0). Multiply only the alphas "
                 "between j and i, or mask log-decays before the exp.",
    "dtype": "L must have alpha's dtype (float64 in, float64 out): create it with "
             "torch.zeros(T, T, dtype=alpha.dtype) or alpha.new_zeros(T, T), not torch.zeros(T, T).",
    "shape": "Return a [T, T] matrix for alpha of shape [T]: row i a query position, column j a key position.",
    "wrong_values": "L_ij = alpha_{j+1} alpha_{j+2} ... alpha_i for j < i, 1 on the diagonal, 0 above it.",
}


def _mask_ref(alpha):
    """:func:`course_lib.memory.linear.lower_decay` of ``g = cumsum(log alpha)``, in float64."""
    return lower_decay(alpha.double().log().cumsum(0)).to(alpha.dtype)


def _mask_models(alpha):
    a = alpha.double()
    t = a.shape[0]
    g = a.log().cumsum(0)
    lower = torch.ones(t, t, dtype=torch.bool).tril()
    diff = g[:, None] - g[None, :]
    c = torch.cumprod(alpha, 0)
    ratio = c[:, None] / c[None, :]
    shifted = torch.cat([g.new_zeros(1), g[:-1]])
    cast = lambda x: x.to(alpha.dtype)  # noqa: E731
    return {
        "includes_j": lambda: cast(lower_decay(g) * a[None, :]),
        "excludes_i": lambda: cast(lower_decay(shifted)),
        "upper_not_zero#ones": lambda: cast(lower_decay(g) + torch.ones(t, t, dtype=a.dtype).triu(1)),
        "upper_not_zero#inverse": lambda: cast(diff.exp()),
        "transposed": lambda: cast(lower_decay(g).T),
        "cumprod_division#where": lambda: torch.where(lower, ratio, torch.zeros_like(ratio)),
        "cumprod_division#tril": lambda: ratio.tril(),
        "cumprod_division#mul": lambda: ratio * lower.to(ratio.dtype),
        "exp_then_mask": lambda: (g[:, None].to(alpha.dtype) - g[None, :].to(alpha.dtype)).exp()
        * lower.to(alpha.dtype),
    }


@check_factory
def _mask_check(fn, seed, t, *, dtype=torch.float64, low=0.5, high=1.0, values=None):
    gen = seeded(seed)
    if values is not None:
        alpha = torch.tensor(values, dtype=dtype)
    else:
        alpha = (low + (high - low) * torch.rand(t, generator=gen, dtype=torch.float64)).to(dtype)
    expect_answer(fn, (alpha,), (t, t), dtype, _mask_ref, _mask_models, shape_text="[T, T]")


_TINY = [0.5, 1e-200, 0.9, 1e-200, 1e-200, 1.0, 0.3, 1e-200]  # products of two underflow to 0 in float64

_MASK_CASES = [  # (what the check tries, seed, T, options of _mask_check)
    ("T = 5, alpha between 0.5 and 1, float64", 1021, 5, {}),
    ("T = 1: a 1 x 1 mask", 1022, 1, {}),
    ("alpha = 1 everywhere (T = 4): the causal mask of ones", 1023, 4, {"values": [1.0] * 4}),
    ("alphas of 10^-200 (T = 8, float64): products underflow to 0, the diagonal stays 1", 1024, 8,
     {"values": _TINY}),
    ("float32 in, float32 out (T = 12, alpha between 0.8 and 1)", 1025, 12, {"dtype": torch.float32, "low": 0.8}),
    ("float32 alphas of 10^-30 (T = 6): the product of two is 0 in float32", 1026, 6,
     {"dtype": torch.float32, "values": [1.0, 1e-30, 0.7, 1e-30, 1e-30, 0.9]}),
    ("a long text, T = 300 (alpha between 0.95 and 1)", 1027, 300, {"low": 0.95}),
]

DECAY_MASK = code_exercise(
    id="10.decay_mask", title="The decay mask", hints=MASK_HINTS,
    checks=[Check(what, _mask_check(seed, t, **options)) for what, seed, t, options in _MASK_CASES],
)

# ---------------------------------------------------------------- 10.chunked_decay

CHUNK_HINTS = {
    "state_not_carried": "Each chunk must start from the state the chunks before it left: carry S from chunk "
                         "to chunk (S = decayed S + the chunk's writes) instead of starting every chunk from 0.",
    "read_not_decayed": "The state S_0 from before the chunk reaches token t decayed by every alpha from the "
                        "chunk's start to t: read it as exp(g_t) q_t S_0 (g_t = sum of log alpha over the chunk "
                        "up to t), not q_t S_0.",
    "state_not_decayed": "Passing the state to the next chunk, decay the old one by the whole chunk's decay: "
                         "S_next = exp(g_C) S_0 + sum_s exp(g_C - g_s) k_s^T v_s. Yours keeps S_0 undecayed.",
    "writes_not_decayed": "Each write k_s^T v_s reaches the chunk's end decayed by the alphas after s: "
                          "S_next = exp(g_C) S_0 + sum_s exp(g_C - g_s) k_s^T v_s. Yours adds the writes undecayed.",
    "intra_off_by_one": "Inside a chunk, token t reads token s's write decayed by prod_{s < r <= t} alpha_r "
                        "(exp(g_t - g_s)): alpha_s is not in it, the diagonal s = t is 1 and included "
                        "(token t reads its own write).",
    "future": "Inside a chunk token t may read only s <= t: mask the intra-chunk scores lower-triangular.",
    "last_chunk_dropped": "The last chunk may be shorter than C when T is not a multiple of C: compute it too "
                          "(range(0, T, C) with slices x[:, :, start:start + C] handles it).",
    "normalised": "Return the raw outputs q_i S_i: this exercise has no normalisation (DecayMemory's RMS "
                  "norm comes after it).",
    "no_decay": "The decay is missing: this is causal linear attention. Weigh the pair (q_t, k_s) by "
                "prod_{s < r <= t} alpha_r inside a chunk, and decay the carried state.",
    "nonfinite": "The outputs hold inf or NaN for small alphas: a ratio of cumulative products that underflowed "
                 "(0 / 0), or the exp of a positive exponent above the diagonal. Use log-decays "
                 "g = cumsum(log alpha) and mask before the exp.",
    "shape": "Return one row per query: shape [B, H, T, D_v], D_v = v.shape[-1].",
    "wrong_values": "out_i = q_i S_i with S_i = alpha_i S_{i-1} + k_i^T v_i, S before the text 0; by chunks: "
                    "exp(g_t) q_t S_0 + sum_{s <= t} exp(g_t - g_s) (q_t . k_s) v_s, then the state passed on.",
}


def _chunk_model(q, k, v, alpha, c, *, carry=True, read_decay=True, state_decay=True, write_decay=True,
                 diag=True, include_s=False, causal=True, drop_last=False, decay=True):
    """The chunked decay with one thing changed (a mistake model): plain loops over chunks."""
    b, h, t, d = q.shape
    S = q.new_zeros(b, h, d, v.shape[-1])
    outs = []
    for start in range(0, t, c):
        if drop_last and start + c > t:
            outs.append(q.new_zeros(b, h, t - start, v.shape[-1]))
            break
        sl = slice(start, start + c)
        qc, kc, vc = q[:, :, sl], k[:, :, sl], v[:, :, sl]
        la = alpha[:, :, sl].log() if decay else torch.zeros_like(alpha[:, :, sl])
        g = la.cumsum(-1)  # [B, H, n]
        n = g.shape[-1]
        diff = g[..., :, None] - g[..., None, :] + (la[..., None, :] if include_s else 0)
        keep = torch.ones(n, n, dtype=torch.bool).tril(0 if diag else -1)
        gamma = torch.where(keep, diff, float("-inf")).exp() if causal else diff.exp()
        read = (qc * g.exp()[..., None]) if read_decay else qc
        outs.append(read @ S + ((qc @ kc.transpose(-2, -1)) * gamma) @ vc)
        w = (g[..., -1:] - g).exp()[..., None] if write_decay else 1.0
        S_new = (kc * w).transpose(-2, -1) @ vc
        if carry:
            S = (g[..., -1, None, None].exp() * S if state_decay else S) + S_new
    return torch.cat(outs, dim=2)


def _chunk_models(q, k, v, alpha, c):
    m = lambda **kw: lambda: _chunk_model(q, k, v, alpha, c, **kw)  # noqa: E731
    return {
        "state_not_carried": m(carry=False),
        "read_not_decayed": m(read_decay=False),
        "state_not_decayed": m(state_decay=False),
        "writes_not_decayed": m(write_decay=False),
        "intra_off_by_one#includes_s": m(include_s=True),
        "intra_off_by_one#strict": m(diag=False),
        "future": m(causal=False),
        "last_chunk_dropped": m(drop_last=True),
        "no_decay": m(decay=False),
        "normalised": lambda: rms_normalize(decay_recurrent(q, k, v, alpha)[0]),
    }


def _chunk_ref(q, k, v, alpha, c):
    """The token loop :func:`course_lib.memory.decay_recurrent` (the chunk size changes nothing)."""
    return decay_recurrent(q, k, v, alpha)[0]


@check_factory
def _chunk_check(fn, seed, b, h, t, c, d, d_v, *, dtype=torch.float64, low=0.5, high=1.0, tiny=(),
                 non_contiguous=False):
    gen = seeded(seed)
    if non_contiguous:
        q, k = heads_view(gen, b, h, t, d, dtype), heads_view(gen, b, h, t, d, dtype)
    else:
        q, k = randn(gen, b, h, t, d, dtype=dtype), randn(gen, b, h, t, d, dtype=dtype)
    v = randn(gen, b, h, t, d_v, dtype=dtype)
    alpha = low + (high - low) * torch.rand(b, h, t, generator=gen, dtype=torch.float64)
    for i in tiny:
        alpha[:, :, i] = 1e-200
    alpha = alpha.to(dtype)
    got = call_keeping_inputs(fn, q, k, v, alpha, c)
    if isinstance(got, torch.Tensor) and got.dim() == 4 and t % c and got.shape[2] == t - t % c:
        raise Mistake("last_chunk_dropped", f"got {got.shape[2]} of T = {t} outputs")
    expect_tensor(got, (b, h, t, d_v), dtype, shape_text="[B, H, T, D_v]")
    expect_close(got, _chunk_ref(q, k, v, alpha, c), _chunk_models(q, k, v, alpha, c))


CHUNKED_DECAY = code_exercise(
    id="10.chunked_decay", title="The decay memory, chunk by chunk",
    hints=CHUNK_HINTS,
    error_hints={r"expected a non-empty list of Tensors": "last_chunk_dropped"},
    checks=[
        Check("T = 8 in two chunks of C = 4 (B = H = 1, D = 3, D_v = 2)", _chunk_check(1031, 1, 1, 8, 4, 3, 2)),
        Check("T = 10, C = 4: a last chunk of 2 tokens", _chunk_check(1032, 1, 2, 10, 4, 3, 3)),
        Check("C = 1: every token its own chunk (T = 5)", _chunk_check(1033, 1, 1, 5, 1, 4, 2)),
        Check("C = 16 > T = 6: one chunk", _chunk_check(1034, 2, 1, 6, 16, 3, 4)),
        Check("B = 2, H = 3, T = 37, C = 8, D = 4, D_v = 5, alpha per sequence, head and token",
              _chunk_check(1035, 2, 3, 37, 8, 4, 5)),
        Check("a long text: T = 300, C = 32, alpha between 0.95 and 1 (old writes still count)",
              _chunk_check(1036, 1, 2, 300, 32, 4, 4, low=0.95)),
        Check("alpha = 10^-200 at tokens 3, 4 and 9 (T = 12, C = 6): the memory is wiped there",
              _chunk_check(1037, 1, 2, 12, 6, 3, 3, tiny=(3, 4, 9))),
        Check("float32 in, float32 out; q, k non-contiguous views (B = 2, H = 2, T = 20, C = 6)",
              _chunk_check(1038, 2, 2, 20, 6, 4, 3, dtype=torch.float32, low=0.8, non_contiguous=True)),
    ],
)

# ---------------------------------------------------------------- questions

GATED_DELTA_LIMITS = choice_exercise(
    id="10.gated_delta_limits",
    title="The gated delta rule at its limits",
    options={
        "A": "alpha = 1 gives the delta rule (DeltaNet); a token with beta = 0 writes nothing and erases "
             "nothing, and S only fades by alpha.",
        "B": "alpha = 1 gives linear attention (a plain sum of k^T v); a token with beta = 0 writes nothing, "
             "and S stays exactly as it was.",
        "C": "alpha = 1 gives the delta rule (DeltaNet); a token with beta = 0 erases what its key reads, "
             "so k S becomes 0 and S fades by alpha.",
        "D": "alpha = 1 gives the delta rule (DeltaNet); a token with beta = 0 leaves S exactly as it was, "
             "its decay by alpha included.",
    },
    correct="A",
    wrong_hints={
        "B": "With alpha = 1 the rule is (I - beta k^T k) S + beta k^T v = S + beta k^T (v - k S): it still reads "
             "and corrects, the delta rule; linear attention has no erase term. And beta = 0 leaves alpha S.",
        "C": "With beta = 0 the erase factor I - beta k^T k is the identity: nothing is erased along k, and the "
             "write beta k^T v is 0 too. Only the decay alpha S remains.",
        "D": "beta = 0 removes the erase and the write, not the decay: S_i = alpha_i S_{i-1} still fades. Only "
             "alpha = 1 and beta = 0 together leave S unchanged.",
    },
)

SCENARIO_MEMORY = choice_exercise(
    id="10.scenario_memory",
    title="A support chat that must keep one early fact",
    options={
        "A": "A decay memory with a learned alpha_t: the past fades at a rate the model learns, and every "
             "token writes its pair at full strength.",
        "B": "A gated delta memory with learned alpha_t and beta_t: a strong write for the number, weak "
             "writes and little forgetting during small talk.",
        "C": "A window cache of n_c = 512 tokens: whatever it holds is recalled exactly, at a fixed size and "
             "a fixed cost per step.",
        "D": "A delta memory with beta = 1: each token replaces what its key reads, so the newest pairs are "
             "always read back exactly.",
    },
    correct="B",
    wrong_hints={
        "A": "The decay memory has no write gate: the small talk is written as strongly as the number, and "
             "an alpha slow enough to keep the number for thousands of tokens lets that small talk pile up "
             "on it (the linear memory's interference).",
        "C": "The number was told thousands of tokens ago: it left a 512-token window long before the end, "
             "and a window that reached back that far would hold the whole chat.",
        "D": "This is lesson 09's failure: with beta = 1 every small-talk token overwrites along its key, and "
             "the number fades within a few thousand random tokens.",
    },
)

# a fact written at position 0 with beta = 1, 100 later tokens with keys orthogonal to it, alpha = 0.99
FADING = 0.99 ** 100

FADING_FACT = number_exercise(
    id="10.fading_fact",
    title="How much of a fact comes back after 100 tokens",
    correct=FADING,
    mistakes={"no_decay": 1.0, "off_by_one#99": 0.99 ** 99, "off_by_one#101": 0.99 ** 101,
              "e_approx": math.exp(-1), "overwritten": 0.0},
    hints={
        "no_decay": "The orthogonal keys erase nothing along k, but the decay still acts: every one of the "
                    "100 later tokens multiplies the whole memory by alpha = 0.99.",
        "off_by_one": "Count the decays: the write at position 0 is read at position 100, and "
                      "L_{100,0} = prod_{0 < t <= 100} alpha_t has one factor for each of positions 1 to 100.",
        "e_approx": "0.99^100 is close to 1/e but not equal to it: compute 0.99 ** 100.",
        "overwritten": "Close to nothing? The later keys are orthogonal to k: their erase I - beta k_t^T k_t "
                       "leaves k's row alone, and alpha = 0.99 is the fraction KEPT per token, so only the "
                       "decay shrinks the fact, by 0.99 per token.",
        "wrong_number": "Read k S_100: the write k^T v at position 0 is multiplied by alpha once per later token, "
                        "and the orthogonal writes add nothing along k.",
    },
    unit="a fraction of v, between 0 and 1",
)

EXERCISES = [DECAY_UPDATE, GATED_DELTA_UPDATE, DECAY_MASK, CHUNKED_DECAY, GATED_DELTA_LIMITS, SCENARIO_MEMORY,
             FADING_FACT]
