"""Lesson 07's mutants (known-wrong answers, as learners write them) and reference answers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from course_lib import MultiMemory, WindowMemory, attention_reference

from . import choice_mutants, mutant, right, right_value, value_mutant


def _gate_through_multimemory(out_a, out_b, w):
    """course_lib's gate: MultiMemory's sigmoid(gate_logit) per head."""
    multi = MultiMemory([WindowMemory(1), WindowMemory(1)], combine="gate", n_heads=w.shape[0])
    g = torch.sigmoid(w)  # what multi.gate computes from its gate_logit
    assert multi.gate.shape == g.shape
    g = g.to(out_a.dtype)[None, :, None, None]
    return g * out_a + (1 - g) * out_b


def _knn_by_sorting(q, K_store, V_store, top_k):
    n = K_store.shape[2]
    if top_k > n:
        raise ValueError(f"top_k={top_k} is larger than the store, N={n}")
    scores = (q @ K_store.transpose(-2, -1))[:, :, 0]  # [B, H, N]
    keep = scores.argsort(dim=-1, descending=True)[..., :top_k].sort(dim=-1).values
    return (torch.stack([K_store[b, h, keep[b, h]] for b in range(q.shape[0]) for h in range(q.shape[1])])
            .reshape(q.shape[0], q.shape[1], top_k, -1),
            torch.stack([V_store[b, h, keep[b, h]] for b in range(q.shape[0]) for h in range(q.shape[1])])
            .reshape(q.shape[0], q.shape[1], top_k, -1))


REFERENCES = {
    "07.gate": _gate_through_multimemory,
    "07.knn_select": _knn_by_sorting,
    "07.concat_attention": lambda q, K_a, V_a, K_b, V_b: F.scaled_dot_product_attention(
        q, torch.cat([K_a, K_b], 2), torch.cat([V_a, V_b], 2)),
    "07.internal_external": lambda: "c",
    "07.concat_weight": 2 / 3,
}

# ---------------------------------------------------------------- 07.gate


@mutant("07.gate", hint="no_sigmoid")
def gate_without_sigmoid(out_a, out_b, w):
    g = w.view(1, -1, 1, 1)
    return g * out_a + (1 - g) * out_b


@mutant("07.gate", hint="swapped")
def gate_swapped(out_a, out_b, w):
    g = torch.sigmoid(w).view(1, -1, 1, 1)
    return (1 - g) * out_a + g * out_b


@mutant("07.gate", hint="not_per_head")
def gate_on_last_axis(out_a, out_b, w):
    g = torch.sigmoid(w)  # [H] lines up with D, not with the heads
    return g * out_a + (1 - g) * out_b


@mutant("07.gate", hint="one_gate")
def gate_one_for_all_heads(out_a, out_b, w):
    g = torch.sigmoid(w.mean())
    return g * out_a + (1 - g) * out_b


@mutant("07.gate", hint="one_gate")
def gate_as_item(out_a, out_b, w):
    g = torch.sigmoid(w).item()
    return g * out_a + (1 - g) * out_b


@mutant("07.gate", hint="softmax")
def gate_softmax_over_heads(out_a, out_b, w):
    g = torch.softmax(w, dim=0)[None, :, None, None]
    return g * out_a + (1 - g) * out_b


@mutant("07.gate", hint="detached")
def gate_from_a_list(out_a, out_b, w):
    g = torch.tensor([1 / (1 + math.exp(-x)) for x in w.tolist()], dtype=out_a.dtype)[None, :, None, None]
    return g * out_a + (1 - g) * out_b


# ---------------------------------------------------------------- 07.knn_select


def _gather(x, idx):
    return torch.gather(x, 2, idx.unsqueeze(-1).expand(-1, -1, -1, x.shape[-1]))


def _checked(top_k, n):
    if top_k > n:
        raise ValueError(f"top_k={top_k} > N={n}")


@mutant("07.knn_select", hint="score_order")
def knn_in_score_order(q, K_store, V_store, top_k):
    _checked(top_k, K_store.shape[2])
    scores = (q @ K_store.transpose(-2, -1)).squeeze(2)
    idx = torch.topk(scores, top_k, dim=-1).indices  # best first
    return _gather(K_store, idx), _gather(V_store, idx)


@mutant("07.knn_select", hint="abs_scores")
def knn_abs_scores(q, K_store, V_store, top_k):
    _checked(top_k, K_store.shape[2])
    scores = (q @ K_store.transpose(-2, -1)).squeeze(2).abs()
    idx = torch.topk(scores, top_k, dim=-1).indices.sort(dim=-1).values
    return _gather(K_store, idx), _gather(V_store, idx)


@mutant("07.knn_select", hint="euclidean")
def knn_nearest_by_distance(q, K_store, V_store, top_k):
    _checked(top_k, K_store.shape[2])
    dist = torch.cdist(q, K_store).squeeze(2)  # [B, H, N]
    idx = torch.topk(dist, top_k, dim=-1, largest=False).indices.sort(dim=-1).values
    return _gather(K_store, idx), _gather(V_store, idx)


@mutant("07.knn_select", hint="lowest")
def knn_smallest_scores(q, K_store, V_store, top_k):
    _checked(top_k, K_store.shape[2])
    scores = (q @ K_store.transpose(-2, -1)).squeeze(2)
    idx = torch.topk(scores, top_k, dim=-1, largest=False).indices.sort(dim=-1).values
    return _gather(K_store, idx), _gather(V_store, idx)


@mutant("07.knn_select", hint="no_error")
def knn_clamps_top_k(q, K_store, V_store, top_k):
    top_k = min(top_k, K_store.shape[2])  # silently returns fewer pairs
    scores = (q @ K_store.transpose(-2, -1)).squeeze(2)
    idx = torch.topk(scores, top_k, dim=-1).indices.sort(dim=-1).values
    return _gather(K_store, idx), _gather(V_store, idx)


@mutant("07.knn_select", hint="keys_for_values")
def knn_values_from_keys(q, K_store, V_store, top_k):
    _checked(top_k, K_store.shape[2])
    scores = (q @ K_store.transpose(-2, -1)).squeeze(2)
    idx = torch.topk(scores, top_k, dim=-1).indices.sort(dim=-1).values
    k = _gather(K_store, idx)
    return k, k


# ---------------------------------------------------------------- 07.concat_attention


@mutant("07.concat_attention", hint="two_softmax_mean")
def concat_two_softmaxes(q, K_a, V_a, K_b, V_b):
    return 0.5 * attention_reference(q, K_a, V_a) + 0.5 * attention_reference(q, K_b, V_b)


@mutant("07.concat_attention", hint="two_softmax_sum")
def concat_added(q, K_a, V_a, K_b, V_b):
    return attention_reference(q, K_a, V_a) + attention_reference(q, K_b, V_b)


@mutant("07.concat_attention", hint="no_scale")
def concat_without_scale(q, K_a, V_a, K_b, V_b):
    K, V = torch.cat([K_a, K_b], dim=2), torch.cat([V_a, V_b], dim=2)
    return torch.softmax(q @ K.transpose(-2, -1), dim=-1) @ V


@mutant("07.concat_attention", hint="scale_by_dv")
def concat_scaled_by_value_width(q, K_a, V_a, K_b, V_b):
    K, V = torch.cat([K_a, K_b], dim=2), torch.cat([V_a, V_b], dim=2)
    return torch.softmax(q @ K.transpose(-2, -1) / math.sqrt(V.shape[-1]), dim=-1) @ V


@mutant("07.concat_attention", hint="values_order")
def concat_values_reversed(q, K_a, V_a, K_b, V_b):
    K, V = torch.cat([K_a, K_b], dim=2), torch.cat([V_b, V_a], dim=2)
    return torch.softmax(q @ K.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ V


@mutant("07.concat_attention", hint="wrong_axis")
def concat_softmax_over_queries(q, K_a, V_a, K_b, V_b):
    K, V = torch.cat([K_a, K_b], dim=2), torch.cat([V_a, V_b], dim=2)
    return torch.softmax(q @ K.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=2) @ V


# ---------------------------------------------------------------- questions

choice_mutants("07.internal_external", rag="A")
value_mutant("07.internal_external", "knn_lm", "chose_B", lambda: "B")
value_mutant("07.internal_external", "full_cache", "chose_D", "d")
value_mutant("07.internal_external", "two_letters", "invalid_choice", "C or A")

value_mutant("07.concat_weight", "per_slot", "per_slot", 6 / 7)
value_mutant("07.concat_weight", "count_of_slots", "scores_ignored", lambda: 2 / 8)
value_mutant("07.concat_weight", "mem_share", "other_memory", 1 / 3)
value_mutant("07.concat_weight", "percent", "percent", 66.66666666666667)
value_mutant("07.concat_weight", "as_text", "not_number", "2/3")


# ---------------------------------------------------------------- the review's cases (A.1.3, A.3)


@mutant("07.gate", hint="batch_axis")
def gate_on_the_batch_axis(out_a, out_b, w):
    g = torch.sigmoid(w).view(-1, 1, 1, 1)
    return g * out_a + (1 - g) * out_b


@mutant("07.concat_attention", hint="scale_by_n")
def concat_scaled_by_slots(q, K_a, V_a, K_b, V_b):
    K, V = torch.cat([K_a, K_b], 2), torch.cat([V_a, V_b], 2)
    return torch.softmax(q @ K.transpose(-2, -1) / math.sqrt(K.shape[2]), -1) @ V


@mutant("07.concat_attention", hint="causal")
def concat_is_causal(q, K_a, V_a, K_b, V_b):
    return F.scaled_dot_product_attention(q, torch.cat([K_a, K_b], 2), torch.cat([V_a, V_b], 2), is_causal=True)


@right("07.concat_attention")
def concat_log_sum_exp(q, K_a, V_a, K_b, V_b):
    """Two partial softmaxes merged by their log-sum-exp (accepted in the review)."""
    s_a = q @ K_a.transpose(-2, -1) / math.sqrt(q.shape[-1])
    s_b = q @ K_b.transpose(-2, -1) / math.sqrt(q.shape[-1])
    l_a, l_b = s_a.logsumexp(-1, keepdim=True), s_b.logsumexp(-1, keepdim=True)
    total = torch.logaddexp(l_a, l_b)
    return (l_a - total).exp() * (s_a.softmax(-1) @ V_a) + (l_b - total).exp() * (s_b.softmax(-1) @ V_b)


@mutant("07.knn_select", hint="wrong_axis")
def knn_one_selection_for_all_heads(q, K_store, V_store, top_k):
    if top_k > K_store.shape[2]:
        raise ValueError(f"top_k={top_k} must be at most N={K_store.shape[2]}")
    scores = (q @ K_store.transpose(-2, -1)).mean(1, keepdim=True)  # [B, 1, 1, N]: the heads averaged
    idx = scores.topk(top_k, -1).indices.sort(-1).values[:, :, 0].expand(-1, K_store.shape[1], -1)
    gather = lambda x: x.gather(2, idx[..., None].expand(-1, -1, -1, x.shape[-1]))  # noqa: E731
    return gather(K_store), gather(V_store)


value_mutant("07.concat_weight", "rounded", "rounded", 0.667)
right_value("07.concat_weight", "as_a_fraction", lambda: 12 / 18)


_STORE: dict = {}


@mutant("07.knn_select", hint="stateful")
def knn_store_kept_between_calls(q, K_store, V_store, top_k):
    """Appends every store it is given to its own (while the shapes stay the same), as a datastore would."""
    key = (tuple(K_store.shape), tuple(V_store.shape), K_store.dtype)
    if top_k > K_store.shape[2]:
        raise ValueError(f"top_k={top_k} must be at most N={K_store.shape[2]}")
    if _STORE.get("key") != key:
        _STORE.clear()
        _STORE.update(key=key, K=K_store[:, :, :0], V=V_store[:, :, :0])
    _STORE["K"], _STORE["V"] = torch.cat([_STORE["K"], K_store], 2), torch.cat([_STORE["V"], V_store], 2)
    K, V = _STORE["K"], _STORE["V"]
    idx = (q @ K.transpose(-2, -1))[:, :, 0].topk(top_k, -1).indices.sort(-1).values
    gather = lambda x: x.gather(2, idx[..., None].expand(-1, -1, -1, x.shape[-1]))  # noqa: E731
    return gather(K), gather(V)


# ---------------------------------------------------------------- A.3: mistakes the feedback now names


@mutant("07.gate", hint="tanh")
def gate_tanh(out_a, out_b, w):
    g = torch.tanh(w).view(1, -1, 1, 1)
    return g * out_a + (1 - g) * out_b


@mutant("07.knn_select", hint="wrong_axis", name="knn_topk_over_queries")
def knn_topk_over_queries(q, K_store, V_store, top_k):
    """top-k along dim 2 of the scores [B, H, 1, N], the single query, instead of the N stored pairs."""
    if top_k > K_store.shape[2]:
        raise ValueError(f"top_k={top_k} must be at most N={K_store.shape[2]}")
    scores = q @ K_store.transpose(-2, -1)  # [B, H, 1, N]
    idx = scores.topk(top_k, dim=2).indices.squeeze(2).sort(dim=-1).values
    pick = lambda x: x.gather(2, idx[..., None].expand(-1, -1, -1, x.shape[-1]))  # noqa: E731
    return pick(K_store), pick(V_store)


@mutant("07.concat_attention", hint="values_replaced")
def concat_keys_as_values(q, K_a, V_a, K_b, V_b):
    """K_b where V_b belongs (a copy-paste slip)."""
    K, V = torch.cat([K_a, K_b], dim=2), torch.cat([V_a, K_b], dim=2)
    return torch.softmax(q @ K.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1) @ V


value_mutant("07.concat_weight", "percent_rounded", "percent", 66.7)
