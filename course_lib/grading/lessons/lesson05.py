r"""Exercises of lesson 05, recurrent memory.

* ``05.delta_update``: one delta-rule write ``S + beta k^T (v - k S)``
* ``05.linear_memory_update``: one linear-attention write ``(S + phi(k)^T v, z + phi(k))``
* ``05.segment_update``: Transformer-XL's FIFO, the newest ``mem_len`` pairs, detached
* ``05.capacity``: how many associations a ``d x d`` matrix reads back *exactly* (a number; with a
  read-out among ``V`` values it recalls more, about ``d d_v / (4 ln V)``, which lesson 05 measures)
* ``05.overwrite``: what a linear memory and a delta memory return for a key written twice
  (multiple choice)

References: :func:`course_lib.memory.delta_rule_recurrent` and
:func:`course_lib.memory.linear_attention_recurrent` (one token), and the FIFO rule of
:class:`course_lib.memory.SegmentMemory`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...memory import delta_rule_recurrent, linear_attention_recurrent
from ..compare import call_keeping_inputs, close, expect_answer, expect_close, expect_tensor, make, randn, seeded, twice
from ..compare import probe as register_probe
from ..core import Check, Mistake, code_exercise, type_name
from ..questions import choice_exercise, number_exercise
from ._common import check_factory

# torch's error for S + an outer product taken the other way round ([D_v, D] against S's [D, D_v])
OUTER_ORDER_ERROR = r"size of tensor a \(\d+\) must match the size of tensor b \(\d+\)"

# ---------------------------------------------------------------- 05.delta_update

DELTA_HINTS = {
    "no_read": "You added beta k^T v on top of S: that is the linear memory. The delta rule first reads "
               "what S returns for k, v_old = k S, and writes only the correction beta k^T (v - v_old).",
    "no_beta": "Scale the correction by beta: S + beta * k^T (v - k S) (beta = 1 replaces, beta < 1 blends).",
    "outer_order": "The write is an outer product k^T (v - k S): a column of D (the key) times a row of D_v "
                   "(the correction), so the result is [B, H, D, D_v] like S. Yours is the other way round: "
                   "use k[..., :, None] * u[..., None, :].",
    "read_side": "Read the memory with the key as a row vector: v_old = k S, a [D_v] row "
                 "((k[..., None, :] @ S) or torch.einsum('bhd,bhde->bhe', k, S)), not S k.",
    "sign": "Add the correction: S + beta k^T (v - k S). With a minus sign the memory moves away from v.",
    "beta_broadcast": "beta may be a [B, H] tensor, one strength per head: broadcast it over the last two "
                      "axes, beta[..., None, None], before multiplying a [B, H, D, D_v] tensor.",
    "blend": "beta is not a blend of S and the new pair: (1 - beta) S + beta k^T v fades EVERY stored "
             "association. The delta rule keeps S and corrects it along k only: S + beta k^T (v - k S).",
    "beta_tensor": "beta may be a [B, H] tensor (one strength per head): do not turn it into one number "
                   "(float(beta), beta.item()); multiply by beta[..., None, None] instead (a float works too).",
    "beta_on_v": "Scale the whole correction by beta: beta k^T (v - k S), not k^T (beta v - k S) (beta on v "
                 "only still subtracts all of k S).",
    "shape": "Return the new memory S, shape [B, H, D, D_v] like the input S.",
    "wrong_values": "S_new = S + beta * k^T (v - k S): read v_old = k S, take v - v_old, write it along k.",
}


def _delta_ref(S, k, v, beta):
    """One write of :func:`course_lib.memory.delta_rule_recurrent` (keys are already unit length)."""
    b, h = k.shape[:2]
    beta_t = beta[..., None] if isinstance(beta, torch.Tensor) else beta
    _, S_new = delta_rule_recurrent(k[:, :, None], k[:, :, None], v[:, :, None], beta_t, S)
    return S_new


def _delta_models(S, k, v, beta):
    bb = beta[..., None, None] if isinstance(beta, torch.Tensor) else beta
    bv = beta[..., None] if isinstance(beta, torch.Tensor) else beta  # over v's D_v
    read = (k[..., None, :] @ S).squeeze(-2)  # k S   [B, H, D_v]
    models = {
        "no_read": lambda: S + bb * k[..., :, None] * v[..., None, :],
        "no_beta": lambda: S + k[..., :, None] * (v - read)[..., None, :],
        "outer_order": lambda: S + bb * (v - read)[..., :, None] * k[..., None, :],  # [D_v, D]: only when D = D_v
        "read_side": lambda: S + bb * k[..., :, None] * (v - (S @ k[..., :, None]).squeeze(-1))[..., None, :],
        "sign": lambda: S - bb * k[..., :, None] * (v - read)[..., None, :],
        "blend": lambda: (1 - bb) * S + bb * k[..., :, None] * v[..., None, :],
        "beta_on_v": lambda: S + k[..., :, None] * (bv * v - read)[..., None, :],
    }
    if isinstance(beta, torch.Tensor):
        models["beta_broadcast"] = lambda: S + beta * (k[..., :, None] * (v - read)[..., None, :])
    return models


@check_factory
def _delta_check(fn, seed, b, h, d, d_v, *, beta=1.0, beta_per_head=False, dtype=torch.float64, empty=False,
                 non_contiguous=False):
    gen = seeded(seed)
    S = torch.zeros(b, h, d, d_v, dtype=dtype) if empty else randn(gen, b, h, d, d_v, dtype=dtype)
    if non_contiguous:
        S = randn(gen, b, h, d_v, d, dtype=dtype).transpose(-2, -1)
    k = F.normalize(randn(gen, b, h, d, dtype=dtype), dim=-1)
    v = randn(gen, b, h, d_v, dtype=dtype)
    bt = (0.2 + 0.7 * torch.rand(b, h, generator=gen, dtype=torch.float64)).to(dtype) if beta_per_head else beta
    expect_answer(fn, (S, k, v, bt), (b, h, d, d_v), dtype, _delta_ref, _delta_models, shape_text="[B, H, D, D_v]")


def _overwrite_check(fn):
    """Write key k with v1, then with v2 (beta = 1): reading k must return v2 exactly."""
    gen = seeded(506)
    S = randn(gen, 1, 2, 6, 4)
    k = F.normalize(randn(gen, 1, 2, 6), dim=-1)
    v1, v2 = randn(gen, 1, 2, 4), randn(gen, 1, 2, 4)
    S1 = call_keeping_inputs(fn, S, k, v1, 1.0)
    expect_tensor(S1, (1, 2, 6, 4), torch.float64, shape_text="[B, H, D, D_v]")
    S2 = call_keeping_inputs(fn, S1, k, v2, 1.0)
    expect_tensor(S2, (1, 2, 6, 4), torch.float64, shape_text="[B, H, D, D_v]")
    read = (k[..., None, :] @ S2).squeeze(-2)
    expect_close(read, v2, {"no_read": lambda: (k[..., None, :] @ (S + k[..., :, None] * (v1 + v2)[..., None, :]))
                            .squeeze(-2)})


DELTA_UPDATE = code_exercise(
    id="05.delta_update", title="One write of the delta rule",
    hints=DELTA_HINTS,
    error_hints={OUTER_ORDER_ERROR: "outer_order",
                 r"only one element tensors can be converted to Python scalars": "beta_tensor",
                 r"Expected size for first two dimensions of batch2 tensor": "read_side"},
    checks=[
        Check("random float64, B = 1, H = 1, D = D_v = 4, beta = 1, a memory that already holds pairs",
              _delta_check(501, 1, 1, 4, 4)),
        Check("B = 2, H = 3, D = 5, D_v = 3 (values of another width), beta = 0.5",
              _delta_check(502, 2, 3, 5, 3, beta=0.5)),
        Check("beta a [B, H] tensor, one strength per head (B = H = D = D_v = 3)",
              _delta_check(503, 3, 3, 3, 3, beta_per_head=True)),
        Check("an empty memory S = 0, beta = 0.8", _delta_check(504, 1, 2, 6, 6, beta=0.8, empty=True)),
        Check("float32 in, float32 out; S a non-contiguous (transposed) view",
              _delta_check(505, 2, 2, 4, 5, beta=0.7, dtype=torch.float32, non_contiguous=True)),
        Check("the same key written twice (beta = 1): reading it returns the second value", _overwrite_check),
        Check("called twice on the same inputs (B = 1, H = 2, D = 3, D_v = 2, beta = 0.7): the same result",
              twice(_delta_check(506, 1, 2, 3, 2, beta=0.7))),
    ],
)

# ---------------------------------------------------------------- 05.linear_memory_update

LINEAR_HINTS = {
    "no_phi": "Apply the feature map to the key: phi(k) = elu(k) + 1 (F.elu(k) + 1), in both S and z.",
    "wrong_phi": "The feature map is phi(x) = elu(x) + 1, not relu, exp or elu alone.",
    "relu_plus_one": "phi(x) = elu(x) + 1, not relu(x) + 1: they agree for x >= 0, but for negative x "
                     "elu(x) + 1 = exp(x) shrinks towards 0 while relu(x) + 1 stays at 1.",
    "phi_on_v": "phi applies to the key only; the value enters as it is: S + phi(k)^T v.",
    "z_not_updated": "Update the normaliser as well: z + phi(k).",
    "z_raw_k": "The normaliser sums the same features as S: z + phi(k), not z + k.",
    "outer_order": "The write is an outer product phi(k)^T v: [D] key features as a column times the [D_v] "
                   "value as a row, so the result is [B, H, D, D_v] like S.",
    "replaces": "Add to the memory: S + phi(k)^T v and z + phi(k), not the new terms alone.",
    "not_pair": "Return a pair (S_new, z_new).",
    "shape": "S_new must have S's shape [B, H, D, D_v] and z_new z's shape [B, H, D].",
    "wrong_values": "S_new = S + phi(k)^T v and z_new = z + phi(k), phi(x) = elu(x) + 1.",
}


def _phi(x):
    return F.elu(x) + 1


@check_factory
def _linear_check(fn, seed, b, h, d, d_v, *, dtype=torch.float64, non_contiguous=False, scale=1.0):
    gen = seeded(seed)
    S = randn(gen, b, h, d, d_v, dtype=dtype).abs()
    z = randn(gen, b, h, d, dtype=dtype).abs()
    if non_contiguous:
        k = randn(gen, b, d, h, dtype=dtype).transpose(1, 2)  # [B, H, D] views, not contiguous
        v = randn(gen, b, d_v, h, dtype=dtype).transpose(1, 2)
    else:
        k, v = randn(gen, b, h, d, dtype=dtype, scale=scale), randn(gen, b, h, d_v, dtype=dtype)
    out = call_keeping_inputs(fn, S, z, k, v)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise Mistake("not_pair", f"got {type_name(out)}")
    S_new, z_new = out
    expect_tensor(S_new, (b, h, d, d_v), dtype, shape_text="S [B, H, D, D_v]")
    expect_tensor(z_new, (b, h, d), dtype, shape_text="z [B, H, D]")
    _, S_ref, z_ref = linear_attention_recurrent(k[:, :, None], k[:, :, None], v[:, :, None], S, z)
    fk = _phi(k)
    outer = lambda f, x: f[..., :, None] * x[..., None, :]  # noqa: E731
    expect_close(S_new, S_ref, {
        "no_phi": lambda: S + outer(k, v),
        "wrong_phi#relu": lambda: S + outer(F.relu(k), v),
        "wrong_phi#exp": lambda: S + outer(k.exp(), v),
        "wrong_phi#elu": lambda: S + outer(F.elu(k), v),
        "relu_plus_one": lambda: S + outer(F.relu(k) + 1, v),
        "phi_on_v": lambda: S + outer(fk, _phi(v)),
        "outer_order": lambda: S + outer(v, fk),  # [D_v, D]: only when D = D_v
        "replaces": lambda: outer(fk, v),
    })
    expect_close(z_new, z_ref, {
        "z_not_updated": lambda: z,
        "z_raw_k": lambda: z + k,
        "no_phi": lambda: z + k,
        "replaces": lambda: fk,
        "wrong_phi#relu": lambda: z + F.relu(k),
        "wrong_phi#elu": lambda: z + F.elu(k),
        "relu_plus_one": lambda: z + F.relu(k) + 1,
    })


LINEAR_MEMORY_UPDATE = code_exercise(
    id="05.linear_memory_update", title="One write of the linear-attention memory",
    hints=LINEAR_HINTS,
    error_hints={OUTER_ORDER_ERROR: "outer_order"},
    checks=[
        Check("random float64, B = 1, H = 1, D = D_v = 4", _linear_check(511, 1, 1, 4, 4)),
        Check("B = 2, H = 3, D = 5, D_v = 3 (values of another width)", _linear_check(512, 2, 3, 5, 3)),
        Check("large keys (scale 3): negative entries show the feature map", _linear_check(513, 1, 2, 6, 6, scale=3.0)),
        Check("float32 in, float32 out", _linear_check(514, 2, 2, 4, 4, dtype=torch.float32)),
        Check("non-contiguous k, v (transposed views)", _linear_check(515, 2, 3, 4, 6, non_contiguous=True)),
    ],
)

# ---------------------------------------------------------------- 05.segment_update

SEGMENT_HINTS = {
    "not_detached": "Store the memory with a stop-gradient: .detach() the pairs you keep, so the next "
                    "segment's backward pass ends at the memory (Transformer-XL's SG).",
    "keeps_oldest": "Keep the NEWEST mem_len pairs (the last ones along dim 2), not the first ones.",
    "new_first": "Oldest first: torch.cat([K_mem, k], dim=2), the new pairs at the end.",
    "never_evicts": "Cap the memory: keep only the newest mem_len pairs of [K_mem, k].",
    "off_by_one": "Keep exactly mem_len pairs once there are that many (x[:, :, -mem_len:]).",
    "only_new": "The memory keeps older pairs too: the newest mem_len of [K_mem, k], not only the new chunk.",
    "values_swapped": "Return (K, V): the keys first, then the values, each from its own input.",
    "not_pair": "Return a pair (K, V) of tensors.",
    "not_called": "Call the method: K.detach() with brackets. K.detach without them is the method itself "
                  "(a bound method), not a tensor, so the pair you returned holds two functions.",
    "shape": "Return the newest min(m + T, mem_len) pairs: shape [B, H, min(m + T, mem_len), D].",
    "wrong_values": "K = the newest mem_len pairs of torch.cat([K_mem, k], dim=2) (and V likewise), detached.",
}


@check_factory
def _segment_check(fn, seed, b, h, m, t, d, mem_len, *, dtype=torch.float64, grad=False, d_v=None):
    d_v = d if d_v is None else d_v
    gen = seeded(seed)
    K_mem, V_mem = randn(gen, b, h, m, d, dtype=dtype), randn(gen, b, h, m, d_v, dtype=dtype)
    k, v = randn(gen, b, h, t, d, dtype=dtype), randn(gen, b, h, t, d_v, dtype=dtype)
    out = call_keeping_inputs(fn, K_mem, V_mem, k, v, mem_len)
    if grad:  # where the answer lives, with k and v requiring grad: is what it keeps detached?
        flags = make(fn, detached_probe, fn, [K_mem, V_mem, k, v, mem_len])
        if flags is not None and any(flags):
            raise Mistake("not_detached")
    if isinstance(out, (tuple, list)) and len(out) == 2 and all(callable(x) for x in out):
        raise Mistake("not_called", f"got a pair of {type_name(out[0])}")
    if not isinstance(out, (tuple, list)) or len(out) != 2 or not all(isinstance(x, torch.Tensor) for x in out):
        raise Mistake("not_pair", f"got {type_name(out)}")
    K, V = out
    all_k, all_v = torch.cat([K_mem, k.detach()], 2), torch.cat([V_mem, v.detach()], 2)
    n = min(m + t, mem_len)
    if K.dim() == 4 and K.shape[2] == m + t and m + t > mem_len:
        raise Mistake("never_evicts", f"it holds {m + t} pairs, mem_len = {mem_len}")
    if K.dim() == 4 and K.shape[2] == t and t < n:
        raise Mistake("only_new")
    if K.dim() == 4 and abs(K.shape[2] - n) == 1:
        raise Mistake("off_by_one", f"it holds {K.shape[2]} pairs, expected {n}")
    expect_tensor(K, (b, h, n, d), dtype, shape_text="[B, H, min(m + T, mem_len), D]")
    expect_tensor(V, (b, h, n, d_v), dtype, shape_text="[B, H, min(m + T, mem_len), D_v]")
    if close(K, all_v[:, :, -n:]) and close(V, all_k[:, :, -n:]) and d == d_v:
        raise Mistake("values_swapped")
    models = {
        "keeps_oldest": lambda: all_k[:, :, :n],
        "new_first": lambda: torch.cat([k.detach(), K_mem], 2)[:, :, -n:],
        "new_first#head": lambda: torch.cat([k.detach(), K_mem], 2)[:, :, :n],
    }
    expect_close(K, all_k[:, :, -n:], models)
    expect_close(V, all_v[:, :, -n:], {"keeps_oldest": lambda: all_v[:, :, :n]})


@register_probe
def detached_probe(fn, args):
    """A probe (``compare.probe``: graded, it runs in a fresh interpreter, not the kernel):
    ``fn(*args)`` with ``k, v`` (arguments 2 and 3) requiring grad, as in training; returns whether
    each returned tensor still requires grad (``None`` when the answer does not return a pair of tensors)."""
    args = list(args)
    args[2], args[3] = (a.detach().clone().requires_grad_(True) for a in args[2:4])
    out = fn(*args)
    if not isinstance(out, (tuple, list)) or not all(isinstance(x, torch.Tensor) for x in out):
        return None
    return [bool(x.requires_grad) for x in out]


SEGMENT_UPDATE = code_exercise(
    id="05.segment_update", title="Transformer-XL's memory update",
    hints=SEGMENT_HINTS,
    checks=[
        Check("an empty memory (m = 0), a segment of T = 3, mem_len = 5: all 3 are kept",
              _segment_check(521, 1, 2, 0, 3, 4, 5)),
        Check("m = 4, T = 3, mem_len = 5: the newest 5, oldest first", _segment_check(522, 1, 2, 4, 3, 4, 5)),
        Check("a segment longer than the memory: m = 3, T = 7, mem_len = 4", _segment_check(523, 2, 3, 3, 7, 4, 4)),
        Check("room for everything: m = 2, T = 2, mem_len = 8", _segment_check(524, 1, 1, 2, 2, 3, 8)),
        Check("k, v that require grad (a training step): the memory must be detached",
              _segment_check(525, 1, 2, 4, 4, 4, 6, grad=True)),
        Check("float32, values of another width D_v = 3, m = 6, T = 2, mem_len = 6",
              _segment_check(526, 2, 2, 6, 2, 5, 6, dtype=torch.float32, d_v=3)),
    ],
)

# ---------------------------------------------------------------- questions

CAPACITY = number_exercise(
    id="05.capacity",
    title="How many associations does a 64 x 64 memory read back exactly?",
    correct=64,
    mistakes={"entries": 64 * 64, "sqrt": 8, "half": 32, "two_d": 128, "minus_one": 63},
    hints={
        "entries": "S has 64 x 64 = 4,096 numbers, but each association is written along a whole key "
                   "direction: with more keys than dimensions they can no longer all be orthogonal, so not every "
                   "one is read back exactly. (With a read-out that picks the nearest of V values, the 4,096 "
                   "numbers do count: about d d_v / (4 ln V) pairs are recalled, lesson 05 section 4.)",
        "sqrt": "The limit is the number of mutually orthogonal keys in d dimensions, which is d itself.",
        "half": "Orthogonal keys of dimension d: there are d of them, each read back exactly.",
        "minus_one": "All d = 64 of them: 64 dimensions hold 64 mutually orthogonal unit keys (a basis), none "
                     "reserved; it is the 65th key that can no longer be orthogonal to the others.",
        "two_d": "Keys and values both have 64 numbers, but only the keys decide whether writes interfere "
                 "exactly: "
                 "at most d mutually orthogonal keys.",
        "wrong_number": "Count how many unit keys of dimension d can be mutually orthogonal: each one is then "
                        "read back exactly.",
    },
    unit="associations",
)

OVERWRITE = choice_exercise(
    id="05.overwrite",
    title="A key written twice",
    options={
        "A": "Both return v2: the newest write always wins when the same key is read back.",
        "B": "The sum returns v1 + v2; the delta rule returns v2, having subtracted what k read.",
        "C": "The sum returns v2; the delta rule returns (v1 + v2) / 2, since beta = 1 averages.",
        "D": "Both return v1 + v2: a matrix memory can only add to what a key wrote before.",
    },
    correct="B",
    wrong_hints={
        "A": "The sum S = k^T v1 + k^T v2 never removes the first write: k S = v1 + v2.",
        "C": "It is the other way round: the delta rule reads v1 = k S first and writes v2 - v1, so k S becomes v2.",
        "D": "The delta rule does remove it: its write is the correction v2 - k S, which cancels v1 for that key.",
    },
)

EXERCISES = [DELTA_UPDATE, LINEAR_MEMORY_UPDATE, SEGMENT_UPDATE, CAPACITY, OVERWRITE]
