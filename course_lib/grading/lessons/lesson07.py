r"""Exercises of lesson 07, multiple memories.

* ``07.gate``: ``g * out_a + (1 - g) * out_b`` with ``g = sigmoid(w_h)``, one ``w_h`` per head
* ``07.knn_select``: the ``top_k`` stored pairs with the highest ``q . k``, in store order
* ``07.concat_attention``: ``Att(q, [Mem_a, Mem_b])``, one softmax over both memories
* ``07.internal_external``: which memory the seed's chatbot can use (multiple choice)
* ``07.concat_weight``: the share of one softmax that goes to ``Mem_knn`` (a number)

The references are :func:`course_lib.attention_reference` and ``torch.topk``; the gate is
the one of :class:`course_lib.MultiMemory`.
"""

from __future__ import annotations

import math

import torch

from ... import attention_reference
from ..compare import (
    call_keeping_inputs,
    close,
    expect_answer,
    expect_close,
    expect_tensor,
    grads,
    heads_view,
    randn,
    run_beside,
    seeded,
    twice,
)
from ..core import Check, Mistake, code_exercise, error_name, type_name
from ..questions import choice_exercise, number_exercise
from ._common import check_factory

# ---------------------------------------------------------------- 07.gate

GATE_HINTS = {
    "no_sigmoid": "g must be sigmoid(w), a number in (0, 1): you used w itself as the gate.",
    "swapped": "g weighs the FIRST memory: g * out_a + (1 - g) * out_b (you swapped g and 1 - g).",
    "one_gate": "One gate per head: g has H values, g = sigmoid(w) of shape [H], applied to head h "
                "as g[h] (not one number such as sigmoid(w.mean()) for every head).",
    "not_per_head": "g must broadcast over the head axis (dim 1) of [B, H, T, D]: reshape it to "
                    "[1, H, 1, 1] (g[None, :, None, None] or g.view(1, -1, 1, 1)); a plain [H] "
                    "tensor lines up with the last axis, D.",
    "batch_axis": "g has one value per HEAD, the axis 1 of [B, H, T, D]: reshape it to [1, H, 1, 1] "
                  "(g.view(1, -1, 1, 1)); g.view(-1, 1, 1, 1) lines it up with the batch axis (dim 0), "
                  "and g.view(1, 1, -1, 1) with the time axis.",
    "tanh": "The gate is g = sigmoid(w), in (0, 1): tanh(w) lies in (-1, 1), so a negative w gives a negative "
            "g that subtracts out_a and a weight 1 - g above 1 on out_b.",
    "softmax": "Each head has its own independent gate g_h = sigmoid(w_h); a softmax over the heads "
               "would make them compete (they need not sum to 1).",
    "detached": "Keep g in the autograd graph: compute it with torch.sigmoid on the tensor w (no "
                ".item(), .tolist(), .detach() or torch.tensor(...) around it), so that training can learn w.",
    "shape": "Return a tensor shaped like out_a: [B, H, T, D].",
    "wrong_values": "out = g * out_a + (1 - g) * out_b with g = torch.sigmoid(w) shaped [1, H, 1, 1].",
}


def _gate_ref(a, b, w):
    g = torch.sigmoid(w).to(a.dtype)[None, :, None, None]
    return g * a + (1 - g) * b


def _gate_models(a, b, w):
    g4 = torch.sigmoid(w).to(a.dtype)[None, :, None, None]
    return {
        "swapped": lambda: (1 - g4) * a + g4 * b,
        "no_sigmoid": lambda: w.to(a.dtype)[None, :, None, None] * a + (1 - w.to(a.dtype)[None, :, None, None]) * b,
        "one_gate": lambda: torch.sigmoid(w.mean()) * a + (1 - torch.sigmoid(w.mean())) * b,
        "not_per_head": lambda: torch.sigmoid(w).to(a.dtype) * a + (1 - torch.sigmoid(w).to(a.dtype)) * b,
        "softmax": lambda: (lambda s: s * a + (1 - s) * b)(torch.softmax(w, 0).to(a.dtype)[None, :, None, None]),
        "tanh": lambda: (lambda s: s * a + (1 - s) * b)(torch.tanh(w).to(a.dtype)[None, :, None, None]),
        "tanh#rescaled": lambda: (lambda s: s * a + (1 - s) * b)(
            ((torch.tanh(w) + 1) / 2).to(a.dtype)[None, :, None, None]),
    }


@check_factory
def _gate_check(fn, seed, b, h, t, d, *, w=None, dtype=torch.float64, non_contiguous=False):
    gen = seeded(seed)
    if non_contiguous:
        out_a, out_b = heads_view(gen, b, h, t, d, dtype), heads_view(gen, b, h, t, d, dtype)
    else:
        out_a, out_b = randn(gen, b, h, t, d, dtype=dtype), randn(gen, b, h, t, d, dtype=dtype)
    ww = randn(gen, h, dtype=dtype, scale=1.5) if w is None else torch.tensor(w, dtype=dtype)
    expect_answer(fn, (out_a, out_b, ww), (b, h, t, d), dtype, _gate_ref, _gate_models, shape_text="[B, H, T, D]")


def _gate_grad_check(fn):
    """Run where the answer lives (``run_beside``): only data crosses back, gradients included."""
    gen = seeded(75)
    out_a, out_b, w = randn(gen, 2, 3, 4, 5), randn(gen, 2, 3, 4, 5), randn(gen, 3)
    weight = randn(gen, 2, 3, 4, 5)
    got, (_, _, grad_w) = run_beside(fn, grads, [out_a, out_b, w], weight)
    expect_tensor(got, (2, 3, 4, 5), torch.float64, shape_text="[B, H, T, D]")
    expect_close(got, _gate_ref(out_a, out_b, w), _gate_models(out_a, out_b, w))
    if grad_w is None:
        raise Mistake("detached")
    w_ref = w.clone().requires_grad_(True)
    (want,) = torch.autograd.grad((_gate_ref(out_a, out_b, w_ref) * weight).sum(), w_ref)
    if not close(grad_w, want):
        raise Mistake("wrong_values")


GATE = code_exercise(
    id="07.gate", title="A learned gate per head",
    hints=GATE_HINTS,
    error_hints={r"must match the size of tensor b .* at non-singleton dimension 3": "not_per_head",
                 r"must match the size of tensor b .* at non-singleton dimension [02]": "batch_axis",
                 r"a Tensor with \d+ elements cannot be converted to Scalar": "one_gate"},
    checks=[
        Check("B = 2, H = 3, T = 4, D = 5, float64, w of both signs", _gate_check(71, 2, 3, 4, 5)),
        Check("w = [0, 0]: g = 1/2 for both heads (T = 1)", _gate_check(72, 1, 2, 1, 3, w=[0.0, 0.0])),
        Check("H = D = 4: a gate on the last axis is caught", _gate_check(73, 2, 4, 3, 4, w=[2.0, -1.0, 0.5, -3.0])),
        Check("float32 in, float32 out", _gate_check(74, 1, 3, 5, 2, dtype=torch.float32)),
        Check("gradients reach w (the gate is learned)", _gate_grad_check),
        Check("non-contiguous out_a, out_b (heads split from [B, T, H, D])",
              _gate_check(76, 2, 3, 5, 4, non_contiguous=True)),
    ],
)

# ---------------------------------------------------------------- 07.knn_select

KNN_HINTS = {
    "score_order": "Return the selected pairs in store order (oldest first): sort the top-k indices "
                   "(torch.topk returns them best first) before gathering.",
    "abs_scores": "Rank by q . k itself, not by |q . k|: a large negative score means a poor match.",
    "lowest": "Keep the HIGHEST scores: torch.topk(scores, k) (largest=True), not the smallest.",
    "euclidean": "Rank by the dot product q . k, as attention scores do, not by the distance |q - k| "
                 "(they differ when keys have different norms).",
    "newest_first": "Keep the store's order, oldest first: do not reverse or flip the selected pairs.",
    "keys_for_values": "Select the values with the same indices as the keys, from V_store.",
    "wrong_axis": "Take the top-k over the N stored pairs, the last axis of the scores [B, H, 1, N] (dim=-1), "
                  "separately for every batch and head: not over the queries or the heads.",
    "no_error": "top_k larger than the store must raise a ValueError that names top_k and N.",
    "not_pair": "Return a pair (K_selected, V_selected) of tensors.",
    "shape": "Each returned tensor must be [B, H, top_k, D] (values: [B, H, top_k, D_v]).",
    "wrong_values": "Per batch and head: scores = q . K_store^T over the N stored keys, the top_k indices, "
                    "sorted ascending, then the keys and values at those indices.",
}


def _select(x, idx):
    return x.gather(2, idx[..., None].expand(-1, -1, -1, x.shape[-1]))


def _knn_ref(q, K, V, top_k, *, key=lambda s: s, order="store"):
    scores = key(q @ K.transpose(-2, -1))[:, :, 0]  # [B, H, N]
    idx = scores.topk(top_k, dim=-1).indices
    if order == "store":
        idx = idx.sort(dim=-1).values
    elif order == "newest":
        idx = idx.sort(dim=-1, descending=True).values
    return _select(K, idx), _select(V, idx)


def _knn_models(q, K, V, top_k, which):
    dist = lambda s: -((q - K) ** 2).sum(-1)[:, :, None]  # noqa: E731 (nearest by distance)
    models = {
        "score_order": lambda: _knn_ref(q, K, V, top_k, order="score")[which],
        "abs_scores": lambda: _knn_ref(q, K, V, top_k, key=torch.abs)[which],
        "lowest": lambda: _knn_ref(q, K, V, top_k, key=torch.neg)[which],
        "euclidean": lambda: _knn_ref(q, K, V, top_k, key=dist)[which],
        "newest_first": lambda: _knn_ref(q, K, V, top_k, order="newest")[which],
    }
    if which == 1:
        models["keys_for_values"] = lambda: _knn_ref(q, K, V, top_k)[0]
    models["wrong_axis#heads"] = lambda: _knn_shared(q, K, V, top_k, dims=(1,))[which]
    models["wrong_axis#batch_and_heads"] = lambda: _knn_shared(q, K, V, top_k, dims=(0, 1))[which]
    return models


def _knn_shared(q, K, V, top_k, dims):
    """One selection for every head (and batch) along ``dims``: the scores summed over them."""
    scores = (q @ K.transpose(-2, -1))[:, :, 0].sum(dims, keepdim=True)  # [B or 1, H or 1, N]
    idx = scores.topk(top_k, dim=-1).indices.sort(dim=-1).values.expand(K.shape[0], K.shape[1], -1)
    return _select(K, idx), _select(V, idx)


def _pair(out):
    if not isinstance(out, (tuple, list)) or len(out) != 2 or not all(isinstance(x, torch.Tensor) for x in out):
        raise Mistake("not_pair", f"got {type_name(out)}")
    return out


@check_factory
def _knn_check(fn, seed, b, h, n, d, top_k, *, d_v=None, dtype=torch.float64, norms=False, negative=False,
               non_contiguous=False):
    gen = seeded(seed)
    q = randn(gen, b, h, 1, d, dtype=dtype)
    K = heads_view(gen, b, h, n, d, dtype) if non_contiguous else randn(gen, b, h, n, d, dtype=dtype)
    if norms:  # keys of very different lengths: nearest by distance != highest q . k
        K = K * torch.linspace(0.2, 4.0, n, dtype=dtype)[:, None]
    if negative:  # scores of large magnitude and both signs: |q . k| picks the worst matches
        K = K * 3
    V = randn(gen, b, h, n, d_v or d, dtype=dtype)
    got_k, got_v = _pair(call_keeping_inputs(fn, q, K, V, top_k))
    want_k, want_v = _knn_ref(q, K, V, top_k)
    if isinstance(got_k, torch.Tensor) and got_k.dim() == 4 and got_k.shape[2] == n != top_k:
        raise Mistake("wrong_axis", f"it returns all {n} stored pairs, top_k = {top_k}")
    expect_tensor(got_k, tuple(want_k.shape), dtype, shape_text="[B, H, top_k, D]")
    expect_tensor(got_v, tuple(want_v.shape), dtype, shape_text="[B, H, top_k, D_v]")
    expect_close(got_k, want_k, _knn_models(q, K, V, top_k, 0))
    expect_close(got_v, want_v, _knn_models(q, K, V, top_k, 1))


def _knn_too_many(fn):
    gen = seeded(87)
    q, K, V = randn(gen, 1, 2, 1, 4), randn(gen, 1, 2, 5, 4), randn(gen, 1, 2, 5, 4)
    try:
        fn(q, K, V, 6)
    except ValueError:
        return
    except NotImplementedError:
        raise
    except Exception as err:  # torch's own RuntimeError from topk: not a learner-facing error
        raise Mistake("no_error", f"got {error_name(err)}") from None
    raise Mistake("no_error")


KNN_SELECT = code_exercise(
    id="07.knn_select", title="k-NN retrieval: the top-k pairs by q . k",
    hints=KNN_HINTS,
    error_hints={r"selected index k out of range": "wrong_axis"},
    checks=[
        Check("B = 2, H = 3, N = 10 stored pairs, top_k = 3, D = 4", _knn_check(81, 2, 3, 10, 4, 3)),
        Check("top_k = 1: the single best pair", _knn_check(82, 1, 2, 7, 5, 1)),
        Check("top_k = N: every pair, in store order", _knn_check(83, 1, 2, 6, 3, 6)),
        Check("keys of very different norms (nearest by distance is not the highest q . k)",
              _knn_check(84, 2, 2, 12, 4, 4, norms=True)),
        Check("large scores of both signs", _knn_check(85, 2, 2, 9, 3, 3, negative=True)),
        Check("values wider than keys (D_v = 6), float32", _knn_check(86, 1, 3, 8, 4, 2, d_v=6, dtype=torch.float32)),
        Check("top_k = 6 > N = 5 raises ValueError", _knn_too_many),
        Check("a non-contiguous store (heads split from [B, N, H, D])",
              _knn_check(88, 2, 3, 9, 4, 3, non_contiguous=True)),
        Check("called twice on the same store (B = 1, H = 2, N = 8, top_k = 2): the same pairs both times",
              twice(_knn_check(89, 1, 2, 8, 3, 2))),
    ],
)

# ---------------------------------------------------------------- 07.concat_attention

CONCAT_HINTS = {
    "two_softmax_mean": "One softmax over the keys of BOTH memories: concatenate K_a, K_b (and V_a, V_b) "
                        "along dim 2 and attend once; averaging two attentions is a gate with g = 1/2.",
    "two_softmax_sum": "One softmax over the keys of both memories: concatenate them along dim 2; adding "
                       "two separate attentions gives weights that sum to 2.",
    "no_scale": "Divide the scores by sqrt(d), d = q.shape[-1], before the softmax.",
    "scale_by_dv": "The d in 1/sqrt(d) is the width of q and k, not of the values.",
    "scale_by_n": "The d in 1/sqrt(d) is the width of q and k (q.shape[-1]), not the number of slots in the "
                  "memories.",
    "causal": "No mask here: every query reads every slot of both memories (they hold the past), so no "
              "is_causal=True and no triangular mask.",
    "values_order": "Concatenate the values in the same order as the keys: [V_a, V_b] with [K_a, K_b].",
    "values_replaced": "The values are [V_a; V_b]: the second memory's own values V_b, not its keys K_b or V_a "
                       "again in V_b's place.",
    "wrong_axis": "The softmax runs over the keys (the last axis of the scores), not over the queries.",
    "only_a": "Attend over both memories, not only the first.",
    "shape": "Return [B, H, T_q, D_v]: one output row per query, as wide as the values.",
    "wrong_values": "softmax(q [K_a; K_b]^T / sqrt(d)) [V_a; V_b], concatenating along dim 2, no mask.",
}


def _concat_models(q, Ka, Va, Kb, Vb):
    K, V = torch.cat([Ka, Kb], 2), torch.cat([Va, Vb], 2)
    d = q.shape[-1]

    def wrong_axis():
        w = torch.softmax(q @ K.transpose(-2, -1) / math.sqrt(d), dim=-2)
        return w @ V

    return {
        "two_softmax_mean": lambda: (attention_reference(q, Ka, Va) + attention_reference(q, Kb, Vb)) / 2,
        "two_softmax_sum": lambda: attention_reference(q, Ka, Va) + attention_reference(q, Kb, Vb),
        "no_scale": lambda: attention_reference(q, K, V, scale=1.0),
        "scale_by_n": lambda: attention_reference(q, K, V, scale=K.shape[2] ** -0.5),
        "scale_by_dv": lambda: attention_reference(q, K, V, scale=V.shape[-1] ** -0.5),
        "causal": lambda: torch.nn.functional.scaled_dot_product_attention(q, K, V, is_causal=True),
        "values_order": lambda: attention_reference(q, K, torch.cat([Vb, Va], 2)),
        "values_replaced#keys": lambda: attention_reference(q, K, torch.cat([Va, Kb], 2)),
        "values_replaced#va": lambda: attention_reference(q, K, torch.cat([Va, Va[:, :, -Kb.shape[2]:]], 2)),
        "values_replaced#ka": lambda: attention_reference(q, K, torch.cat([Ka, Vb], 2)),
        "wrong_axis": wrong_axis,
        "only_a": lambda: attention_reference(q, Ka, Va),
    }


def _concat_ref(q, Ka, Va, Kb, Vb):
    return attention_reference(q, torch.cat([Ka, Kb], 2), torch.cat([Va, Vb], 2))


@check_factory
def _concat_check(fn, seed, b, h, t_q, n_a, n_b, d, d_v=None, *, dtype=torch.float64, non_contiguous=False):
    gen = seeded(seed)
    d_v_ = d_v or d
    q = heads_view(gen, b, h, t_q, d, dtype) if non_contiguous else randn(gen, b, h, t_q, d, dtype=dtype, scale=2)
    Ka, Kb = randn(gen, b, h, n_a, d, dtype=dtype), randn(gen, b, h, n_b, d, dtype=dtype)
    Va, Vb = randn(gen, b, h, n_a, d_v_, dtype=dtype), randn(gen, b, h, n_b, d_v_, dtype=dtype)
    expect_answer(fn, (q, Ka, Va, Kb, Vb), (b, h, t_q, d_v_), dtype, _concat_ref, _concat_models,
                  shape_text="[B, H, T_q, D_v]")


CONCAT = code_exercise(
    id="07.concat_attention", title="Concatenation: one softmax over two memories",
    hints=CONCAT_HINTS,
    checks=[
        Check("B = 2, H = 2, T_q = 3 queries, |Mem_a| = 5, |Mem_b| = 2, d = 8", _concat_check(91, 2, 2, 3, 5, 2, 8)),
        Check("one query, one slot in Mem_b", _concat_check(92, 1, 1, 1, 4, 1, 4)),
        Check("values wider than keys (D_v = 6 != d = 4)", _concat_check(93, 1, 2, 2, 3, 2, 4, 6)),
        Check("float32 in, float32 out", _concat_check(94, 2, 3, 4, 6, 5, 8, dtype=torch.float32)),
        Check("non-contiguous q (heads split from [B, T, H, D])",
              _concat_check(95, 2, 3, 5, 4, 3, 8, non_contiguous=True)),
    ],
)

# ---------------------------------------------------------------- questions

INTERNAL_EXTERNAL = choice_exercise(
    id="07.internal_external",
    title="Which memory can the seed's chatbot use?",
    options={
        "A": "RAG over a vector database of past messages: each turn retrieves the closest old "
             "messages and puts their text back into the prompt.",
        "B": "A k-NN LM whose datastore holds every past position of the chat: its neighbours' "
             "next tokens are mixed into the output distribution.",
        "C": "A fixed-size memory inside attention, such as a window gated with a linear memory: "
             "the model's own keys and values, read by its own queries.",
        "D": "The full KV cache inside attention, which is internal memory too: it keeps every key "
             "and value, so nothing said early in the chat is lost.",
    },
    correct="C",
    wrong_hints={
        "A": "A vector database is an external knowledge base, which the scenario rules out; and the "
             "retrieved text enters the prompt, adding tokens whose keys and values each step must read.",
        "B": "A k-NN LM's datastore sits outside the network (an external memory) and grows with every "
             "position, so its search and its bytes grow with the conversation.",
        "D": "The full KV cache is internal, but it grows with every token, and each step reads all of it: "
             "the time per message rises, which the scenario forbids.",
    },
)

N_MEM, N_KNN, S_KNN = 6, 2, math.log(6)  # Mem: 6 slots scoring 0; Mem_knn: 2 slots scoring ln 6
CONCAT_WEIGHT = number_exercise(
    id="07.concat_weight",
    title="How much of one softmax goes to Mem_knn?",
    correct=N_KNN * 6 / (N_MEM * 1 + N_KNN * 6),  # 12 / 18
    mistakes={
        "per_slot": 6 / (1 + 6),
        "scores_ignored": N_KNN / (N_MEM + N_KNN),
        "other_memory": N_MEM / (N_MEM + N_KNN * 6),
        "no_exp": 1.0,
        "gate_half": 0.5,
        "percent": 100 * N_KNN * 6 / (N_MEM + N_KNN * 6),
    },
    hints={
        "not_number": "Answer with a number between 0 and 1 (a fraction, such as 0.25).",
        "per_slot": "Count every slot: Mem contributes 6 terms e^0 to the softmax's sum, Mem_knn 2 terms e^{ln 6}.",
        "scores_ignored": "The weights are e^{s_j}, not 1 per slot: the two Mem_knn slots score higher.",
        "other_memory": "That is Mem's share; the question asks for Mem_knn's, 1 - alpha_i.",
        "no_exp": "The softmax weighs each slot by e^{s_j}: a score of 0 gives weight e^0 = 1, not 0.",
        "gate_half": "1/2 is a gate at its start (w_h = 0); one softmax weighs the slots by their scores.",
        "percent": "Answer with a fraction between 0 and 1, not a percentage.",
        "wrong_number": "Z_a = sum over Mem of e^{s_j}, Z_b the same over Mem_knn; Mem_knn gets Z_b / (Z_a + Z_b).",
    },
    unit="fraction",
)

EXERCISES = [GATE, KNN_SELECT, CONCAT, INTERNAL_EXTERNAL, CONCAT_WEIGHT]
