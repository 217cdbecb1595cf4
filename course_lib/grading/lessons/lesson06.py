r"""Exercises of lesson 06, the Compressive Transformer.

* ``06.compress``: ``f_c`` as mean or max pooling over consecutive groups of ``c``
* ``06.compressive_update``: append, evict the oldest whole groups, compress, append to
  ``CMem``, keep its newest ``n_cm``
* ``06.reconstruction_loss``: the attention-reconstruction loss, gradients to ``f_c``'s output only
* ``06.reach``: ``|CMem|`` and the reach from ``n_s, c, n_m`` (a number)
* ``06.equal_bytes``: which memory of the same carried bytes still sees a fact (multiple choice)

References: the pop rule of :class:`course_lib.memory.CompressiveMemory` (whose streaming form
the update exercise asks for) and :func:`course_lib.attention_reference`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ... import attention_reference, causal_mask
from ..compare import call_keeping_inputs, close, expect_close, expect_tensor, heads_view, make, randn, seeded
from ..compare import probe as register_probe
from ..core import Check, Mistake, code_exercise, error_name, type_name
from ..questions import choice_exercise, number_exercise
from ._common import check_factory

# ---------------------------------------------------------------- 06.compress

COMPRESS_HINTS = {
    "strided": "Group CONSECUTIVE rows: group g is rows g*c .. g*c + c - 1. x.reshape(B, H, n // c, c, D) "
               "then reduce dim 3; reshape(B, H, c, n // c, D) takes every (n // c)-th row instead.",
    "ignores_how": "Use `how`: \"mean\" averages each group, \"max\" takes its element-wise maximum.",
    "max_tuple": "torch.max(x, dim) returns a (values, indices) pair: take .values, or use x.amax(dim).",
    "drop_remainder": "When n is not a multiple of c, raise ValueError (naming n and c) instead of "
                      "silently dropping the last rows: a compressed memory must not lose pairs unnoticed.",
    "no_error": "n must be a multiple of c: raise ValueError otherwise.",
    "wrong_error": "Raise a ValueError (not another exception type) when n is not a multiple of c.",
    "subsampled": "Pool each whole group of c rows (its mean or max, over dim 3 of x.reshape(B, H, n // c, c, D)): "
                  "x[:, :, ::c] keeps the first row of each group and drops the others.",
    "shape": "Return [B, H, n // c, D]: one row per group of c.",
    "wrong_values": "Row g of the result is the mean (or max) of rows g*c .. g*c + c - 1 of x.",
}


def _compress_ref(x, c, how):
    groups = x.unflatten(2, (-1, c))  # [B, H, n / c, c, D]
    return groups.mean(3) if how == "mean" else groups.amax(3)


@check_factory
def _compress_check(fn, seed, b, h, n, d, c, how, *, dtype=torch.float64, non_contiguous=False):
    gen = seeded(seed)
    x = heads_view(gen, b, h, n, d, dtype) if non_contiguous else randn(gen, b, h, n, d, dtype=dtype)
    out = call_keeping_inputs(fn, x, c, how)
    if not isinstance(out, torch.Tensor):
        try:
            out.indices  # noqa: B018 -- torch.max(x, dim) returns (values, indices)
        except Exception:  # anything else: the shape check names it
            pass
        else:
            raise Mistake("max_tuple")
    expect_tensor(out, (b, h, n // c, d), dtype, shape_text="[B, H, n // c, D]")
    other = "max" if how == "mean" else "mean"
    expect_close(out, _compress_ref(x, c, how), {
        "strided": lambda: x.unflatten(2, (c, -1)).mean(2) if how == "mean" else x.unflatten(2, (c, -1)).amax(2),
        "ignores_how": lambda: _compress_ref(x, c, other),
        "subsampled": lambda: x[:, :, ::c],
    })


def _remainder_check(fn):
    gen = seeded(607)
    x = randn(gen, 1, 2, 7, 3)
    try:
        out = fn(x, 2, "mean")
    except ValueError:
        return
    except NotImplementedError:
        raise
    except Exception as err:
        raise Mistake("wrong_error", f"got {error_name(err)}") from None
    if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[2] == 3:
        raise Mistake("drop_remainder")
    raise Mistake("no_error")


COMPRESS = code_exercise(
    id="06.compress", title="Compress groups of c pairs: mean and max pooling",
    hints=COMPRESS_HINTS,
    checks=[
        Check("mean, n = 6, c = 2, B = H = 1, D = 3", _compress_check(601, 1, 1, 6, 3, 2, "mean")),
        Check("max, n = 9, c = 3, B = 2, H = 3, D = 4", _compress_check(602, 2, 3, 9, 4, 3, "max")),
        Check("mean, n = 12, c = 4 (groups are consecutive rows)", _compress_check(603, 1, 2, 12, 5, 4, "mean")),
        Check("c = 1: every row is its own group", _compress_check(604, 1, 2, 5, 3, 1, "max")),
        Check("c = n: one group", _compress_check(605, 2, 1, 4, 3, 4, "mean")),
        Check("float32, non-contiguous x (a view of [B, n, H, D]), max, n = 8, c = 2",
              _compress_check(606, 2, 3, 8, 4, 2, "max", dtype=torch.float32, non_contiguous=True)),
        Check("n = 7, c = 2: not a multiple, a ValueError", _remainder_check),
    ],
)

# ---------------------------------------------------------------- 06.compressive_update

UPDATE_HINTS = {
    "evict_first": "The popped pairs must be compressed and appended to CMem, not dropped: take them from "
                   "Mem first (the oldest ones), compress them in groups of c, then append the slots to CMem.",
    "newest": "Pop the OLDEST pairs of Mem (its first rows): the newest stay exact in Mem.",
    "drop_remainder": "Pop whole groups: ceil((|Mem| - n_m) / c) * c pairs, so that every popped pair lands in a "
                      "compressed slot (popping exactly |Mem| - n_m and compressing only full groups loses the "
                      "remainder).",
    "floor": "Pop ceil((|Mem| - n_m) / c) * c pairs, rounding UP: with floor, Mem keeps more than n_m pairs.",
    "no_cap": "CMem is a FIFO of n_cm slots: after appending, keep only its newest n_cm.",
    "cap_oldest": "Keep CMem's NEWEST n_cm slots (the last ones), not its oldest: the oldest leave.",
    "prepend": "Append the new compressed slots at the END of CMem (they are its newest), oldest first.",
    "max_pool": "Compress each group of c popped pairs with its MEAN (f_c here is mean pooling): max pooling "
                "keeps each coordinate's largest value instead.",
    "not_pairs": "Return (mem, cmem), each a pair (K, V) of tensors.",
    "shape": "Mem keeps between n_m - c + 1 and n_m pairs after an eviction; CMem at most n_cm slots.",
    "mem_wrong": "Mem after the update: [Mem, S_kv] without its oldest ceil((len - n_m) / c) * c pairs "
                 "(none when len <= n_m).",
    "cmem_wrong": "CMem after the update: [CMem, mean of each group of c popped pairs], its newest n_cm slots; "
                  "keys and values are compressed alike.",
}


def _update_model(mem, cmem, s_kv, n_m, n_cm, c, *, pop="ceil", which="oldest", compress=True, cap="newest",
                  prepend=False, how="mean"):
    (mk, mv), (ck, cv), (sk, sv) = mem, cmem, s_kv
    k, v = torch.cat([mk, sk], 2), torch.cat([mv, sv], 2)
    n = k.shape[2]
    over = n - n_m
    if over <= 0:
        return (k, v), (ck, cv)
    n_pop = {"ceil": math.ceil(over / c) * c, "floor": over // c * c, "exact": over}[pop]
    if which == "oldest":
        pk, pv, k, v = k[:, :, :n_pop], v[:, :, :n_pop], k[:, :, n_pop:], v[:, :, n_pop:]
    else:
        pk, pv, k, v = k[:, :, n - n_pop:], v[:, :, n - n_pop:], k[:, :, :n - n_pop], v[:, :, :n - n_pop]
    if compress:
        g = n_pop // c
        nk, nv = (x[:, :, :g * c].unflatten(2, (g, c)).mean(3) if how == "mean" else
                  x[:, :, :g * c].unflatten(2, (g, c)).amax(3) for x in (pk, pv))
        ck, cv = (torch.cat([new, old] if prepend else [old, new], 2) for old, new in ((ck, nk), (cv, nv)))
        if cap == "newest":
            ck, cv = ck[:, :, max(0, ck.shape[2] - n_cm):], cv[:, :, max(0, cv.shape[2] - n_cm):]
        elif cap == "oldest":
            ck, cv = ck[:, :, :n_cm], cv[:, :, :n_cm]
    return (k, v), (ck, cv)


def _flat(result):
    """``((K, V), (CK, CV))`` -> the four tensors, or a Mistake."""
    try:
        (k, v), (ck, cv) = result
    except (TypeError, ValueError):
        raise Mistake("not_pairs", f"got {type_name(result)}") from None
    out = [k, v, ck, cv]
    if not all(isinstance(x, torch.Tensor) for x in out):
        raise Mistake("not_pairs")
    return out


def _all_close(got, want):
    return all(close(g, w) for g, w in zip(got, want))


def _count_detail(name, unit, got, want):
    """What differs in Mem or CMem: how many rows it holds, or, when that is right, their values."""
    n_got, n_want = got.shape[2] if got.dim() == 4 else None, want.shape[2]
    if n_got == n_want and tuple(got.shape) == tuple(want.shape):
        return f"{name} holds the right number of {unit} ({n_want}), but their values differ"
    return f"{name} holds {n_got} {unit}, expected {n_want}" if n_got is not None else \
        f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}"


@check_factory
def _update_check(fn, seed, b, h, d, m, n_cm_held, t, n_m, n_cm, c, *, dtype=torch.float64, d_v=None):
    d_v = d if d_v is None else d_v
    gen = seeded(seed)
    mem = (randn(gen, b, h, m, d, dtype=dtype), randn(gen, b, h, m, d_v, dtype=dtype))
    cmem = (randn(gen, b, h, n_cm_held, d, dtype=dtype), randn(gen, b, h, n_cm_held, d_v, dtype=dtype))
    s_kv = (randn(gen, b, h, t, d, dtype=dtype), randn(gen, b, h, t, d_v, dtype=dtype))
    inputs = [x for pair in (mem, cmem, s_kv) for x in pair]
    before = [x.clone() for x in inputs]
    got = _flat(fn(mem, cmem, s_kv, n_m, n_cm, c))
    if not all(torch.equal(x, y) for x, y in zip(inputs, before)):
        raise Mistake("modified_input")
    want = _flat(_update_model(mem, cmem, s_kv, n_m, n_cm, c))
    for g, w, name in zip(got, want, ("Mem K", "Mem V", "CMem K", "CMem V")):
        if g.dtype != w.dtype:
            raise Mistake("dtype", f"{name}: got {g.dtype} for {w.dtype} inputs")
    if _all_close(got, want):
        return
    variants = {
        "evict_first": dict(compress=False),
        "newest": dict(which="newest"),
        "drop_remainder": dict(pop="exact"),
        "floor": dict(pop="floor"),
        "no_cap": dict(cap=None),
        "cap_oldest": dict(cap="oldest"),
        "prepend": dict(prepend=True),
        "max_pool": dict(how="max"),
    }
    for key, kw in variants.items():
        model = _flat(_update_model(mem, cmem, s_kv, n_m, n_cm, c, **kw))
        if not _all_close(model, want) and _all_close(got, model):
            raise Mistake(key)
    if not (close(got[0], want[0]) and close(got[1], want[1])):
        raise Mistake("mem_wrong", _count_detail("Mem", "pairs", got[0], want[0]))
    raise Mistake("cmem_wrong", _count_detail("CMem", "slots", got[2], want[2]))


COMPRESSIVE_UPDATE = code_exercise(
    id="06.compressive_update", title="The Compressive Transformer's memory update", points=3,
    hints=UPDATE_HINTS,
    checks=[
        Check("the paper's rule: Mem full (n_m = 4), a segment of n_s = 4, c = 2, CMem empty",
              _update_check(611, 1, 2, 3, 4, 0, 4, 4, 4, 2)),
        Check("no overflow: |Mem| = 2, one new pair, n_m = 4: nothing is compressed",
              _update_check(612, 1, 1, 3, 2, 1, 1, 4, 4, 2)),
        Check("CMem at capacity: 3 of n_cm = 3 slots held, 2 more arrive (n_s = 4, c = 2)",
              _update_check(613, 2, 2, 3, 4, 3, 4, 4, 3, 2)),
        Check("one token at a time, c = 3: Mem holds n_m = 4, one more pair pops a whole group of 3",
              _update_check(614, 1, 2, 3, 4, 1, 1, 4, 4, 3)),
        Check("a chunk longer than Mem: |Mem| = 2, T = 7, n_m = 4, c = 2, n_cm = 2",
              _update_check(615, 1, 2, 3, 2, 1, 7, 4, 2, 2)),
        Check("float32, values of another width D_v = 5, B = 2, H = 3, n_m = 6, T = 4, c = 3",
              _update_check(616, 2, 3, 4, 6, 2, 4, 6, 4, 3, dtype=torch.float32, d_v=5)),
    ],
)

# ---------------------------------------------------------------- 06.reconstruction_loss

RECON_HINTS = {
    "q_leak": "Detach the queries: the loss must train f_c only, so q.detach() (no gradient may reach q and, "
              "through it, the rest of the model).",
    "old_leak": "Detach the old pairs too (old_k.detach(), old_v.detach()): the target Att(q, old) is fixed; "
                "only the compressed pairs may receive gradients.",
    "comp_detached": "The loss must keep its graph to comp_k and comp_v: do not detach them or compute the "
                     "loss under torch.no_grad() (that is how f_c learns).",
    "sum": "Use the MEAN squared error (F.mse_loss's default), not the sum.",
    "no_scale": "Att is scaled dot-product attention: softmax(q K^T / sqrt(d)) V (course_lib.attention_reference).",
    "rmse": "Return the mean squared error itself, not its square root.",
    "causal": "No mask: every old and every compressed pair lies before the queries, so each query reads "
              "all of them (no causal mask, no is_causal=True, which would hide most compressed slots).",
    "not_scalar": "Return one number as a 0-dimensional tensor (a scalar loss).",
    "shape": "Return a scalar: a 0-dimensional tensor.",
    "wrong_values": "loss = mean over every entry of (Att(q, old_k, old_v) - Att(q, comp_k, comp_v))^2, "
                    "Att = softmax(q K^T / sqrt(d)) V with no mask.",
}


def _recon_ref(q, ok, ov, ck, cv):
    return F.mse_loss(attention_reference(q, ck, cv), attention_reference(q, ok, ov))


def _recon_inputs(seed, b, h, t, n, c, d, d_v, dtype):
    gen = seeded(seed)
    q = randn(gen, b, h, t, d, dtype=dtype, scale=1.5)
    ok, ov = randn(gen, b, h, n, d, dtype=dtype), randn(gen, b, h, n, d_v, dtype=dtype)
    ck = ok.unflatten(2, (-1, c)).mean(3) + 0.1 * randn(gen, b, h, n // c, d, dtype=dtype)
    cv = ov.unflatten(2, (-1, c)).mean(3)
    return q, ok, ov, ck, cv


@check_factory
def _recon_value_check(fn, seed, b, h, t, n, c, d, d_v=None, *, dtype=torch.float64):
    d_v = d if d_v is None else d_v
    q, ok, ov, ck, cv = _recon_inputs(seed, b, h, t, n, c, d, d_v, dtype)
    out = call_keeping_inputs(fn, q, ok, ov, ck, cv)
    if isinstance(out, torch.Tensor) and out.numel() == 1 and out.dim() > 0:
        raise Mistake("not_scalar", f"got shape {tuple(out.shape)}")
    expect_tensor(out, (), dtype, shape_text="a scalar")
    a, target = attention_reference(q, ck, cv), attention_reference(q, ok, ov)
    expect_close(out, _recon_ref(q, ok, ov, ck, cv), {
        "sum": lambda: F.mse_loss(a, target, reduction="sum"),
        "no_scale": lambda: F.mse_loss(attention_reference(q, ck, cv, scale=1.0),
                                       attention_reference(q, ok, ov, scale=1.0)),
        "rmse": lambda: F.mse_loss(a, target).sqrt(),
        "sum#last_axis": lambda: ((a - target) ** 2).sum(-1).mean(),
        "causal": lambda: F.mse_loss(attention_reference(q, ck, cv, causal_mask(t, ck.shape[2])),
                                     attention_reference(q, ok, ov, causal_mask(t, n))),
        "causal#top_left": lambda: F.mse_loss(
            F.scaled_dot_product_attention(q, ck, cv, is_causal=True),
            F.scaled_dot_product_attention(q, ok, ov, is_causal=True)),
    })


@register_probe
def gradient_probe(fn, args, needs_grad):
    """A probe (``compare.probe``: graded, it runs in a fresh interpreter, not the kernel):
    ``fn(*args)`` with the arguments at the
    indices ``needs_grad`` requiring grad, then ``backward()`` on the (scalar) result. Returns data:
    ``{"requires_grad": bool, "reached": [index of each argument that got a nonzero gradient]}``."""
    args = [a.detach().clone().requires_grad_(True) if i in needs_grad else a for i, a in enumerate(args)]
    out = fn(*args)
    if not isinstance(out, torch.Tensor) or out.numel() != 1:
        return {"requires_grad": None, "reached": []}
    if not out.requires_grad:
        return {"requires_grad": False, "reached": []}
    out.sum().backward()
    reached = [i for i in needs_grad if args[i].grad is not None and bool(args[i].grad.abs().sum() > 0)]
    return {"requires_grad": True, "reached": reached}


_RECON_ARGS = ("q", "old_k", "old_v", "comp_k", "comp_v")


def _recon_grad_check(fn):
    """Every input requires grad; the backward pass of the loss must reach comp_k and comp_v only."""
    inputs = _recon_inputs(620, 1, 2, 3, 6, 2, 4, 4, torch.float64)
    probe = make(fn, gradient_probe, fn, list(inputs), [0, 1, 2, 3, 4])
    if probe["requires_grad"] is None:
        raise Mistake("not_scalar")
    reached = {_RECON_ARGS[i] for i in probe["reached"]}
    if "q" in reached:
        raise Mistake("q_leak")
    if reached & {"old_k", "old_v"}:
        raise Mistake("old_leak")
    if reached != {"comp_k", "comp_v"}:
        raise Mistake("comp_detached")


RECONSTRUCTION_LOSS = code_exercise(
    id="06.reconstruction_loss", title="The attention-reconstruction loss",
    hints=RECON_HINTS,
    checks=[
        Check("float64, B = 1, H = 2, 3 queries, 6 old pairs compressed into 3, D = 4",
              _recon_value_check(621, 1, 2, 3, 6, 2, 4)),
        Check("B = 2, H = 3, 5 queries, 12 old pairs into 3 (c = 4), D = 8, values of width D_v = 3",
              _recon_value_check(622, 2, 3, 5, 12, 4, 8, 3)),
        Check("float32 in, float32 out", _recon_value_check(623, 2, 2, 4, 8, 2, 4, dtype=torch.float32)),
        Check("every input requires grad: backward() reaches comp_k and comp_v, never q or the old pairs",
              _recon_grad_check),
    ],
)

# ---------------------------------------------------------------- questions

# n_s = 12, c = 3, n_m = 12; CMem sized for the compressed slots of the last 5 segments
_NS, _C, _NM, _SEGS = 12, 3, 12, 5
_NCM = _SEGS * _NS // _C  # 20 slots
REACH = number_exercise(
    id="06.reach",
    title="|CMem| and the reach",
    correct=_NM + _C * _NCM,
    mistakes={
        "no_ratio": _NM + _NCM,
        "no_mem": _C * _NCM,
        "slots_times_c": _NM + _C * (_SEGS * _NS * _C),
        "slots_per_segment": _NM + _C * (_SEGS * _C),
        "bytes": (_NM + _NCM) * _C,
        "cmem_for_mem": _NCM + _C * _NCM,
    },
    hints={
        "no_ratio": "Each CMem slot stands for c tokens: the reach is n_m + c * n_cm, not n_m + n_cm.",
        "no_mem": "Add the n_m tokens that Mem still holds as they are: reach = n_m + c * n_cm.",
        "slots_times_c": "A segment of n_s pairs becomes n_s / c slots (c into 1), not n_s * c.",
        "slots_per_segment": "Each segment adds n_s / c = 4 slots, not c: |CMem| = 5 * n_s / c.",
        "bytes": "Only the CMem slots stand for c tokens each; Mem's n_m pairs stand for one token each.",
        "cmem_for_mem": "You added |CMem| = 20 where Mem's n_m = 12 belongs: the slots already count as c * |CMem| "
                        "= 60 tokens; the exact part is Mem's n_m = 12 pairs, so reach = n_m + c * |CMem|.",
        "wrong_number": "|CMem| = 5 segments * n_s / c slots; reach = n_m + c * |CMem| tokens.",
    },
    unit="tokens",
)

EQUAL_BYTES = choice_exercise(
    id="06.equal_bytes",
    title="Which memory of the same carried bytes still sees the fact?",
    options={
        "A": "Only the compressive memory: its reach is 80 tokens, though the fact is blurred into a slot.",
        "B": "All three: they hold the same bytes, so they must hold the same amount of the past.",
        "C": "Transformer-XL and the compressive memory: both carry pairs across segment boundaries.",
        "D": "None of them: a fact that far back has left every fixed-size memory of 32 pairs.",
    },
    correct="A",
    wrong_hints={
        "B": "Same carried bytes, different reach: a window and Transformer-XL keep 32 pairs as they are, 32 tokens; "
             "the compressive memory trades precision for reach, n_m + c n_cm = 16 + 4 * 16 = 80.",
        "C": "Transformer-XL keeps only the last n_m = 32 pairs from before the segment: 60 tokens back is gone.",
        "D": "The compressive memory reaches n_m + c * n_cm = 16 + 64 = 80 tokens back, in 32 slots.",
    },
)

EXERCISES = [COMPRESS, COMPRESSIVE_UPDATE, RECONSTRUCTION_LOSS, REACH, EQUAL_BYTES]
