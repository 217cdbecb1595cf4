r"""Plain, slow, obviously-correct versions of every memory's rule, the fast ones are tested against.

Beside each fast memory (ring buffers written in place, masks, fused attention, chunked
scans) this module states its rule the way the book does: query by query (or token by token),
with Python loops over positions, a plain softmax and Python lists of the positions a query
sees. Nothing here uses ``scaled_dot_product_attention`` or the slot buffers, and nothing is
fast. ``tests/test_memory_reference.py`` checks every memory against its rule in float64.

Every function reads a whole text from its start (positions ``0..T-1``): ``q, k, v
[B, H, T, D]`` (``v`` may have its own last dimension ``D_v``), the same number of heads for
queries and keys, and returns ``out [B, H, T, D_v]``. A slot memory's rule takes
``return_memory=True`` to return ``(out, (K, V))`` as well: the pairs it holds after the text,
``[B, H, n, D]``, in the order of the memory's ``spans`` (what ``memory.held(state)`` returns).

The rules (book notation: ``n_c`` window, ``S`` sinks, ``n_m`` memory, ``n_cm`` compressed
memory, ``c`` ratio, ``N`` store, ``k`` retrieved pairs):

* :func:`full_reference`: :class:`~course_lib.memory.FullMemory`, keys ``0..i``;
* :func:`window_reference`: :class:`~course_lib.memory.WindowMemory`, the last ``n_c`` keys;
* :func:`sink_reference`: :class:`~course_lib.memory.SinkMemory`, keys ``0..S-1`` and the last
  ``n_c``, rotated at their positions in the text or in the cache (StreamingLLM);
* :func:`heavy_hitter_reference`: :class:`~course_lib.memory.HeavyHitterMemory` (H2O), token by token:
  each token's eviction by accumulated attention, then its softmax;
* :func:`quantized_reference`: :class:`~course_lib.memory.QuantizedKVMemory` (KIVI), each key read
  through its quantisation once the cache had quantised it;
* :func:`moving_average_reference`, :func:`cumulative_average_reference`: the averages;
* :func:`linear_attention_reference`, :func:`delta_rule_reference`:
  :class:`~course_lib.memory.LinearMemory` and :class:`~course_lib.memory.DeltaMemory`. (The
  token loops :func:`~course_lib.memory.linear_attention_recurrent` and
  :func:`~course_lib.memory.delta_rule_recurrent` stay in :mod:`course_lib.memory.linear`: they
  are also the decoding step of those memories, a fast path, and are tested against these.)
* :func:`decay_reference`, :func:`gated_delta_reference`: :class:`~course_lib.memory.DecayMemory`
  and :class:`~course_lib.memory.GatedDeltaMemory`, the decayed matrix memories (their token loops
  stay in :mod:`course_lib.memory.gated` for the same reason).
* :func:`latent_reference`: :class:`~course_lib.memory.LatentMemory` (multi-head latent attention):
  every key and value rebuilt from the stored latents, a plain causal softmax.

Memories whose output depends on where the segments start (``reads_segment``: segment,
compressive, kNN) take the segmentation, ``segment_len``: an int ``n_s`` (segments of ``n_s``
tokens, the last one shorter when ``n_s`` does not divide ``T``) or the list of segment lengths
(``[3, 1, 7]``, summing to ``T``), the chunks the fast memory is fed:

* :func:`segment_reference`: :class:`~course_lib.memory.SegmentMemory` (Transformer-XL);
* :func:`knn_reference`: :class:`~course_lib.memory.KNNMemory` (after Memorizing Transformers);
* :func:`compressive_reference`: :class:`~course_lib.memory.CompressiveMemory` (the Compressive
  Transformer).

Only ``torch`` and :mod:`course_lib.memory.base` are imported: a rule never leans on the code
it checks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .base import Rotation

__all__ = [
    "full_reference", "window_reference", "sink_reference", "segment_reference", "knn_reference",
    "compressive_reference", "moving_average_reference", "cumulative_average_reference",
    "linear_attention_reference", "delta_rule_reference", "decay_reference", "gated_delta_reference",
    "heavy_hitter_reference", "quantized_reference",
    "latent_reference", "REFERENCES",
]


# -- helpers ---------------------------------------------------------------------------------------
def _attend(q, keys, values):
    """One query ``q [B, H, D]`` over ``keys [B, H, n, D]``, ``values [B, H, n, D_v]``:
    ``softmax(q K^T / sqrt(d_h)) V``. Returns ``(out [B, H, D_v], weights [B, H, n])``."""
    scores = torch.einsum("bhd,bhnd->bhn", q, keys) / math.sqrt(q.shape[-1])
    weights = torch.softmax(scores, dim=-1)
    return torch.einsum("bhn,bhnd->bhd", weights, values), weights


def _by_query(q, k, v, seen):
    """``out_i = Att(q_i, K_seen(i), V_seen(i))`` for every ``i``; ``seen(i)``: the list of positions."""
    outs = []
    for i in range(q.shape[2]):
        idx = seen(i)
        outs.append(_attend(q[:, :, i], k[:, :, idx], v[:, :, idx])[0])
    return torch.stack(outs, dim=2)


def _with_memory(out, k, v, held, return_memory):
    """``out``, or ``(out, (K, V))`` of the positions ``held`` (oldest first) with ``return_memory``."""
    if not return_memory:
        return out
    return out, (k[:, :, held], v[:, :, held])


def _segments(segment_len, t: int) -> list[int]:
    """The segment lengths: ``n_s`` repeated (the last one shorter), or the list given."""
    if isinstance(segment_len, int) and not isinstance(segment_len, bool):
        if segment_len < 1:
            raise ValueError(f"segment_len must be >= 1, got {segment_len}")
        return [min(segment_len, t - s) for s in range(0, t, segment_len)]
    if not isinstance(segment_len, Sequence) or not all(isinstance(x, int) and x >= 1 for x in segment_len):
        raise TypeError(f"segment_len must be an int n_s >= 1 or a list of segment lengths >= 1, got {segment_len!r}")
    if sum(segment_len) != t:
        raise ValueError(f"segment_len must add up to T={t} tokens, got {list(segment_len)} (sum {sum(segment_len)})")
    return list(segment_len)


def _starts(sizes):
    """``(start, length)`` of each segment."""
    s = 0
    for n in sizes:
        yield s, n
        s += n


# -- slot memories ---------------------------------------------------------------------------------
def full_reference(q, k, v, *, return_memory=False):
    """Causal attention, the rule of :class:`~course_lib.memory.FullMemory`: ``q_i`` sees keys ``0..i``."""
    t = q.shape[2]
    out = _by_query(q, k, v, lambda i: list(range(i + 1)))
    return _with_memory(out, k, v, list(range(t)), return_memory)


def window_reference(q, k, v, window: int, *, return_memory=False):
    """The rule of :class:`~course_lib.memory.WindowMemory`: ``q_i`` sees its last ``n_c`` keys,
    itself included, ``max(0, i - n_c + 1) .. i``. Held after ``T`` tokens: the last ``n_c``."""
    t = q.shape[2]
    out = _by_query(q, k, v, lambda i: list(range(max(0, i - window + 1), i + 1)))
    return _with_memory(out, k, v, list(range(max(0, t - window), t)), return_memory)


def _sink_cache(i: int, sinks: int, window: int) -> list[int]:
    """StreamingLLM's cache when token ``i`` is read: the sinks ``0..S-1``, then the last ``n_c``
    tokens, in age order (as many as exist: before ``S + n_c`` tokens the cache is the text)."""
    return sorted(set(range(min(sinks, i + 1))) | set(range(max(0, i - window + 1), i + 1)))


def sink_reference(q, k, v, sinks: int, window: int, positions: str = "absolute", rotary: Rotation | None = None,
                   *, return_memory=False):
    """The rule of :class:`~course_lib.memory.SinkMemory`: ``q_i`` sees its cache, the keys
    ``0..S-1`` and its last ``n_c`` keys ``max(0, i - n_c + 1) .. i`` (each once).

    ``rotary`` (a :class:`~course_lib.memory.base.Rotation` whose tables cover positions ``< T``;
    its ``start`` is not read, the text starts at 0): how keys and queries are placed, given
    *unrotated* ``q, k``:

    * ``positions="absolute"``: key ``j`` rotated by ``j``, the query by ``i`` (their positions in
      the text, what ``MemoryLM`` does before calling a memory with ``uses_rotary``);
    * ``positions="cache"`` (StreamingLLM, Xiao et al. 2023, section 3.2): the cache in order
      ``[sinks, window in age order]``, the key in cache slot ``c`` rotated by ``c`` and the query by
      its own slot, the last one, ``min(i, S + n_c - 1)``.

    Without ``rotary`` nothing is rotated (``positions`` then makes no difference). Held after the
    text: the sinks and the last ``n_c``, unrotated.
    """
    if positions not in ("absolute", "cache"):
        raise ValueError(f"positions must be 'absolute' or 'cache', got {positions!r}")
    t = q.shape[2]
    outs = []
    for i in range(t):
        cache = _sink_cache(i, sinks, window)
        keys, query = k[:, :, cache], q[:, :, i]
        if rotary is not None:
            at = torch.tensor(cache if positions == "absolute" else list(range(len(cache))), dtype=torch.long,
                              device=q.device)
            keys = rotary.at(keys, at)  # the key in slot c at position cache[c] (absolute) or c (cache)
            query = rotary.at(query, at[-1:])  # the query in the newest slot: at i, or at min(i, S + n_c - 1)
        outs.append(_attend(query, keys, v[:, :, cache])[0])
    held = _sink_cache(t - 1, sinks, window) if t else []
    return _with_memory(torch.stack(outs, dim=2), k, v, held, return_memory)


def segment_reference(q, k, v, mem_len: int, segment_len, *, return_memory=False):
    """Transformer-XL, the rule of :class:`~course_lib.memory.SegmentMemory`: the queries of the
    segment starting at ``s`` see ``[SG(Mem), the segment up to themselves]``, where ``Mem`` is the
    last ``n_m`` keys of the past, ``max(0, s - n_m) .. s - 1`` (whatever segments they came from).

    ``segment_len``: ``n_s``, or the list of segment lengths (see the module docstring). Held after
    the text: the last ``n_m`` pairs.
    """
    t = q.shape[2]
    outs = []
    for s, n in _starts(_segments(segment_len, t)):
        mem = list(range(max(0, s - mem_len), s))
        for i in range(s, s + n):
            seen = mem + list(range(s, i + 1))
            outs.append(_attend(q[:, :, i], k[:, :, seen], v[:, :, seen])[0])
    return _with_memory(torch.stack(outs, dim=2), k, v, list(range(max(0, t - mem_len), t)), return_memory)


def knn_reference(q, k, v, capacity: int, top_k: int, segment_len, *, return_memory=False):
    """k-nearest-neighbour retrieval, the rule of :class:`~course_lib.memory.KNNMemory`.

    The store of the segment starting at ``s`` holds the last ``N`` pairs before it,
    ``max(0, s - N) .. s - 1``. Query ``i`` retrieves the ``k`` stored pairs of highest ``q_i . k_j``
    (all of them while fewer are stored), separately for each sequence and head, and attends in
    *one* softmax to them and to its segment ``s .. i`` (no gate, unlike Memorizing Transformers'
    two softmaxes). ``segment_len``: ``n_s`` or the list of segment lengths. Held after the text:
    the last ``N`` pairs.
    """
    b, h, t, _ = q.shape
    out = v.new_zeros(b, h, t, v.shape[-1])
    for s, n in _starts(_segments(segment_len, t)):
        store = list(range(max(0, s - capacity), s))
        for i in range(s, s + n):
            for bi in range(b):
                for hi in range(h):
                    scores = [float(q[bi, hi, i] @ k[bi, hi, j]) for j in store]
                    best = sorted(range(len(store)), key=lambda a: -scores[a])[:top_k]
                    seen = sorted(store[a] for a in best) + list(range(s, i + 1))
                    o, _ = _attend(q[bi:bi + 1, hi:hi + 1, i], k[bi:bi + 1, hi:hi + 1, seen],
                                   v[bi:bi + 1, hi:hi + 1, seen])
                    out[bi, hi, i] = o[0, 0]
    return _with_memory(out, k, v, list(range(max(0, t - capacity), t)), return_memory)


def _most_used_of(popped, keep):
    """Of the ``popped`` items, per sequence and head, the ``keep`` of highest average attention
    ``mass / seen``, in time order (ties: the older)."""
    b, h = popped[0]["k"].shape[:2]
    new = [{"k": torch.zeros_like(popped[0]["k"]), "v": torch.zeros_like(popped[0]["v"])} for _ in range(keep)]
    usage = torch.stack([x["mass"] / x["seen"] for x in popped], 2)  # [B, H, n_pop]
    for bi in range(b):
        for hi in range(h):
            u = usage[bi, hi].tolist()
            kept = sorted(sorted(range(len(popped)), key=lambda j: (-u[j], j))[:keep])
            for slot, j in zip(new, kept):
                slot["k"][bi, hi], slot["v"][bi, hi] = popped[j]["k"][bi, hi], popped[j]["v"][bi, hi]
    return new


def compressive_reference(q, k, v, mem_len: int, cmem_len: int, ratio: int, compress, segment_len, *,
                          return_memory=False):
    """The Compressive Transformer's rule (Rae et al., 2020, "Compressive Transformers for
    Long-Range Sequence Modelling", arXiv:1911.05507, section 3 and algorithm 1; labml's annotated
    implementation, ``labml_nn.transformers.compressive``), as
    :class:`~course_lib.memory.CompressiveMemory` follows it, with Python lists of pairs.

    For each segment (``segment_len``: ``n_s`` or the list of segment lengths):

    1. attend: each query sees ``[CMem, Mem]`` and its segment up to itself, in one softmax;
    2. append: ``Mem`` gets the segment's pairs;
    3. evict: if ``|Mem| > n_m``, its oldest ``ceil((|Mem| - n_m) / c) * c`` pairs are popped;
    4. compress: each group of ``c`` popped pairs (in order) becomes one pair ``f_c(group)``,
       appended to ``CMem``, which keeps its newest ``n_cm``.

    ``compress``: ``"mean"`` or ``"max"`` (pooling over the group, keys and values alike),
    ``"most_used"`` (the paper's rule: of the ``n`` popped pairs keep the ``n / c`` of highest
    *average* attention, the attention each received from every query that saw it divided by the
    number of those queries, in time order; ties: the older), or a callable ``f_c(k, v) -> (ck, cv)``
    on ``[B, H, n, D]`` groups of ``c`` (a learned compressor: ``memory.compress_pairs``).

    Held after the text (``return_memory``): ``CMem`` then ``Mem``, oldest first.
    """
    if compress not in ("mean", "max", "most_used") and not callable(compress):
        raise ValueError(f"compress must be 'mean', 'max', 'most_used' or a callable f_c(k, v), got {compress!r}")
    mem, cmem, outs = [], [], []  # Mem items: dicts of k [B, H, D], v [B, H, D_v], pos, mass [B, H]
    for s, n in _starts(_segments(segment_len, q.shape[2])):
        held = cmem + mem
        seg_mass = [0.0] * n  # the attention each of the segment's pairs receives from its queries
        for r in range(n):  # 1. attend
            keys = torch.stack([x["k"] for x in held] + [k[:, :, s + a] for a in range(r + 1)], 2)
            values = torch.stack([x["v"] for x in held] + [v[:, :, s + a] for a in range(r + 1)], 2)
            out, weights = _attend(q[:, :, s + r], keys, values)  # weights [B, H, |held| + r + 1]
            outs.append(out)
            for j, item in enumerate(mem):  # the attention each pair of Mem receives (most_used)
                item["mass"] = item["mass"] + weights[:, :, len(cmem) + j]
            for a in range(r + 1):
                seg_mass[a] = seg_mass[a] + weights[:, :, len(held) + a]
        mem += [{"k": k[:, :, s + a], "v": v[:, :, s + a], "pos": s + a, "mass": seg_mass[a]}
                for a in range(n)]  # 2. append
        if len(mem) > mem_len:  # 3. evict
            n_pop = math.ceil((len(mem) - mem_len) / ratio) * ratio
            popped, mem = mem[:n_pop], mem[n_pop:]
            if compress == "most_used":
                for x in popped:
                    x["seen"] = s + n - x["pos"]  # every query at a position >= its own, so far
                cmem += _most_used_of(popped, n_pop // ratio)
            else:  # 4. compress each group of c, in order
                for g in range(0, n_pop, ratio):
                    gk = torch.stack([x["k"] for x in popped[g:g + ratio]], 2)  # [B, H, c, D]
                    gv = torch.stack([x["v"] for x in popped[g:g + ratio]], 2)
                    if compress == "mean":
                        ck, cv = gk.mean(2), gv.mean(2)
                    elif compress == "max":
                        ck, cv = gk.amax(2), gv.amax(2)
                    else:
                        ck, cv = (x[:, :, 0] for x in compress(gk, gv))
                    cmem.append({"k": ck, "v": cv})
            cmem = cmem[-cmem_len:]
    out = torch.stack(outs, dim=2)
    if not return_memory:
        return out
    kept = cmem + mem
    return out, (torch.stack([x["k"] for x in kept], 2), torch.stack([x["v"] for x in kept], 2))


def heavy_hitter_reference(q, k, v, budget: int, recent: int, *, return_memory=False):
    """H2O (Zhang et al. 2023), the rule of :class:`~course_lib.memory.HeavyHitterMemory`, token by
    token, separately for each sequence and head, with Python lists of positions. For the token at ``i``:

    1. candidates: the positions the query at ``i - 1`` saw, plus ``i`` (accumulated attention ``A_i = 0``);
    2. evict: while there are more than ``budget``, keep the ``recent`` newest candidates and, of the
       others, the ``budget - recent`` with the largest ``A_j`` (ties: the earlier position);
    3. attend: ``q_i`` over the kept candidates in one softmax; each one's ``A_j`` grows by its weight.

    A chunk of any length follows the same rule (the fast memory's output does not depend on the
    chunking). Held after the text: the positions the last query saw, oldest first.
    """
    b, h, t, _ = q.shape
    out = v.new_zeros(b, h, t, v.shape[-1])
    kept_k = k.new_zeros(b, h, min(t, budget), k.shape[-1])
    kept_v = v.new_zeros(b, h, min(t, budget), v.shape[-1])
    for bi in range(b):
        for hi in range(h):
            kept, acc = [], {}
            for i in range(t):
                cand = kept + [i]
                acc[i] = 0.0
                if len(cand) > budget:  # keep the newest `recent`, then the heavy hitters of the rest
                    older, newest = cand[:len(cand) - recent], cand[len(cand) - recent:]
                    hitters = sorted(older, key=lambda j: (-acc[j], j))[:budget - recent]
                    cand = sorted(hitters + newest)
                o, w = _attend(q[bi:bi + 1, hi:hi + 1, i], k[bi:bi + 1, hi:hi + 1, cand], v[bi:bi + 1, hi:hi + 1, cand])
                out[bi, hi, i] = o[0, 0]
                for j, wj in zip(cand, w[0, 0].tolist()):
                    acc[j] += wj
                kept = cand
            kept_k[bi, hi], kept_v[bi, hi] = k[bi, hi, kept], v[bi, hi, kept]
    return (out, (kept_k, kept_v)) if return_memory else out


def _minmax(x, bits: int, axis: int):
    """``x`` through ``bits``-bit asymmetric min-max quantisation over ``axis``: ``round((x - min) / s)``
    in ``0..2^b - 1`` times ``s = (max - min) / (2^b - 1)`` plus ``min`` (``s = 1`` where ``max = min``)."""
    lo, hi = x.amin(axis, keepdim=True), x.amax(axis, keepdim=True)
    top = 2 ** bits - 1
    s = torch.where(hi == lo, torch.ones_like(lo), (hi - lo) / top)
    return ((x - lo) / s).round().clamp(0, top) * s + lo


def quantized_reference(q, k, v, bits: int, group: int, residual: int, window: int | None = None):
    """KIVI (Liu et al. 2024), the rule of :class:`~course_lib.memory.QuantizedKVMemory`, query by query.

    After ``m`` tokens the cache holds the first ``Q(m) = floor(max(0, m - R) / G) * G`` quantised,
    the rest exact. Key ``j`` read through quantisation is key ``j`` of its group ``j // G``
    quantised per channel over the group's ``G`` tokens; value ``j`` is quantised per token over its
    channels. The query at ``i`` sees keys ``0..i`` (the last ``n_c`` with ``window``), key ``j``
    quantised when ``j < Q(i)`` (what the cache held before token ``i``), exact otherwise, in one softmax.
    """
    t = q.shape[2]
    qk, qv = k.clone(), v.clone()  # every key and value as the cache would read it once quantised
    for g in range(t // group):
        span = slice(g * group, (g + 1) * group)
        qk[:, :, span] = _minmax(k[:, :, span], bits, -2)  # per channel, over the group's tokens
    for j in range(t):
        qv[:, :, j] = _minmax(v[:, :, j], bits, -1)  # per token, over its channels
    outs = []
    for i in range(t):
        quantised = max(0, i - residual) // group * group  # Q(i)
        first = 0 if window is None else max(0, i - window + 1)
        keys = [qk[:, :, j] if j < quantised else k[:, :, j] for j in range(first, i + 1)]
        values = [qv[:, :, j] if j < quantised else v[:, :, j] for j in range(first, i + 1)]
        outs.append(_attend(q[:, :, i], torch.stack(keys, 2), torch.stack(values, 2))[0])
    return torch.stack(outs, dim=2)


# -- averages --------------------------------------------------------------------------------------
def moving_average_reference(v, window: int, weights=None):
    """The rule of :class:`~course_lib.memory.MovingAverageMemory`: ``out_i`` is the weighted mean
    of ``v_{i-m+1} .. v_i``, ``m = min(i + 1, n_c)``, with the newest ``m`` of the ``n_c`` weights
    (oldest first; ``None``: all 1) renormalised. ``v [B, H, T, D_v]`` (queries and keys are not read)."""
    w = torch.ones(window, dtype=v.dtype) if weights is None else torch.as_tensor(weights, dtype=v.dtype)
    outs = []
    for i in range(v.shape[2]):
        m = min(i + 1, window)
        wi = w[window - m:].to(v.device)
        outs.append(sum(wi[a] * v[:, :, i - m + 1 + a] for a in range(m)) / wi.sum())
    return torch.stack(outs, dim=2)


def cumulative_average_reference(v):
    """The rule of :class:`~course_lib.memory.CumulativeAverageMemory`: ``out_i`` is the mean of
    ``v_0 .. v_i``. ``v [B, H, T, D_v]``."""
    return torch.stack([sum(v[:, :, j] for j in range(i + 1)) / (i + 1) for i in range(v.shape[2])], dim=2)


# -- matrix memories -------------------------------------------------------------------------------
def _phi(x):
    """``elu(x) + 1``, linear attention's feature map."""
    return torch.nn.functional.elu(x) + 1


def linear_attention_reference(q, k, v, S=None, z=None, *, return_memory=False):
    """Linear attention (Katharopoulos et al., 2020), the rule of
    :class:`~course_lib.memory.LinearMemory`, in its attention form, query by query::

        out_i = (phi(q_i) S_0 + sum_{j <= i} (phi(q_i) . phi(k_j)) v_j)
                / (phi(q_i) . z_0 + sum_{j <= i} phi(q_i) . phi(k_j))

    the same numbers as the recurrence ``S_i = S_{i-1} + phi(k_i)^T v_i``, ``z_i = z_{i-1} +
    phi(k_i)``, ``out_i = phi(q_i) S_i / (phi(q_i) . z_i)``. ``S [B, H, D, D_v]``, ``z [B, H, D]``:
    the memory before the text (default zeros). With ``return_memory``: ``(out, (S, z))`` after it.
    """
    b, h, t, d = q.shape
    S = q.new_zeros(b, h, d, v.shape[-1]) if S is None else S
    z = q.new_zeros(b, h, d) if z is None else z
    fq, fk = _phi(q), _phi(k)
    outs = []
    for i in range(t):
        num = torch.einsum("bhd,bhde->bhe", fq[:, :, i], S)
        den = torch.einsum("bhd,bhd->bh", fq[:, :, i], z)
        for j in range(i + 1):
            sim = torch.einsum("bhd,bhd->bh", fq[:, :, i], fk[:, :, j])  # phi(q_i) . phi(k_j)
            num = num + sim[..., None] * v[:, :, j]
            den = den + sim
        outs.append(num / den[..., None])
    out = torch.stack(outs, dim=2)
    if not return_memory:
        return out
    S_end = S + sum(torch.einsum("bhd,bhe->bhde", fk[:, :, j], v[:, :, j]) for j in range(t))
    return out, (S_end, z + fk.sum(2))


def delta_rule_reference(q, k, v, beta, S=None, *, return_memory=False):
    """The delta rule (DeltaNet), the rule of :class:`~course_lib.memory.DeltaMemory`, token by token,
    with unit keys and queries ``k^_i = k_i / |k_i|``, ``q^_i = q_i / |q_i|``::

        S_i = S_{i-1} + beta_i k^_i^T (v_i - k^_i S_{i-1})        out_i = q^_i S_i

    ``beta``: a float, or ``[B, H, T]`` (one write strength per head and token). ``S [B, H, D, D_v]``:
    the memory before the text (default zeros). With ``return_memory``: ``(out, S)`` after it.
    """
    b, h, t, d = q.shape
    S = q.new_zeros(b, h, d, v.shape[-1]) if S is None else S
    outs = []
    for i in range(t):
        ki = k[:, :, i] / k[:, :, i].norm(dim=-1, keepdim=True)
        qi = q[:, :, i] / q[:, :, i].norm(dim=-1, keepdim=True)
        bi = beta[:, :, i, None, None] if isinstance(beta, torch.Tensor) else beta
        read = torch.einsum("bhd,bhde->bhe", ki, S)  # what S holds for k^_i
        S = S + bi * torch.einsum("bhd,bhe->bhde", ki, v[:, :, i] - read)  # write only the correction
        outs.append(torch.einsum("bhd,bhde->bhe", qi, S))
    out = torch.stack(outs, dim=2)
    return (out, S) if return_memory else out


def _gate_at(gate, i):
    """A gate's value at token ``i``, shaped to multiply ``[B, H, D, D_v]``: a float as it is, ``[B, H, T]``
    per head, ``[B, H, T, D]`` per key channel (the rows of ``S``)."""
    if not isinstance(gate, torch.Tensor):
        return gate
    return gate[:, :, i, :, None] if gate.dim() == 4 else gate[:, :, i, None, None]


def decay_reference(q, k, v, alpha, S=None, *, eps=1e-6, return_memory=False):
    """Linear attention with a decay, the rule of :class:`~course_lib.memory.DecayMemory`, token by token::

        S_t = alpha_t S_{t-1} + k_t^T v_t        o_t = q_t S_t        out_t = o_t / sqrt(mean(o_t^2) + eps)

    ``alpha``: a float (RetNet), ``[B, H, T]`` (Mamba-2: one per head and token) or ``[B, H, T, D]``
    (gated linear attention: ``diag(alpha_t) S_{t-1}``, one per key channel). ``S [B, H, D, D_v]``:
    the memory before the text (default zeros). With ``return_memory``: ``(out, S)`` after it.
    """
    b, h, t, d = q.shape
    S = q.new_zeros(b, h, d, v.shape[-1]) if S is None else S
    outs = []
    for i in range(t):
        S = _gate_at(alpha, i) * S + torch.einsum("bhd,bhe->bhde", k[:, :, i], v[:, :, i])  # forget, then write
        o = torch.einsum("bhd,bhde->bhe", q[:, :, i], S)
        outs.append(o / torch.sqrt((o * o).mean(-1, keepdim=True) + eps))  # RMS-normalised per head
    out = torch.stack(outs, dim=2)
    return (out, S) if return_memory else out


def gated_delta_reference(q, k, v, alpha, beta, S=None, *, return_memory=False):
    """The gated delta rule (Gated DeltaNet), the rule of :class:`~course_lib.memory.GatedDeltaMemory`,
    token by token, with unit keys and queries ``k^_t = k_t / |k_t|``, ``q^_t = q_t / |q_t|``::

        S_t = alpha_t (I - beta_t k^_t^T k^_t) S_{t-1} + beta_t k^_t^T v_t        out_t = q^_t S_t

    ``alpha``, ``beta``: floats or ``[B, H, T]``. ``alpha = 1`` is :func:`delta_rule_reference`.
    ``S [B, H, D, D_v]``: the memory before the text (default zeros). With ``return_memory``:
    ``(out, S)`` after it.
    """
    b, h, t, d = q.shape
    S = q.new_zeros(b, h, d, v.shape[-1]) if S is None else S
    eye = torch.eye(d, dtype=q.dtype, device=q.device)
    outs = []
    for i in range(t):
        ki = k[:, :, i] / k[:, :, i].norm(dim=-1, keepdim=True)
        qi = q[:, :, i] / q[:, :, i].norm(dim=-1, keepdim=True)
        a_i, b_i = _gate_at(alpha, i), _gate_at(beta, i)
        erase = eye - b_i * torch.einsum("bhd,bhe->bhde", ki, ki)  # I - beta_t k^_t^T k^_t
        S = a_i * (erase @ S) + b_i * torch.einsum("bhd,bhe->bhde", ki, v[:, :, i])
        outs.append(torch.einsum("bhd,bhde->bhe", qi, S))
    out = torch.stack(outs, dim=2)
    return (out, S) if return_memory else out


def _rope_at(x, i: int, base: float):
    """``x [..., D]`` turned by position ``i``: pair ``(x_j, x_{j+D/2})`` by the angle ``i base^(-2j/D)``."""
    d = x.shape[-1]
    angle = torch.tensor([i / base ** (2 * j / d) for j in range(d // 2)] * 2, dtype=torch.float64)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def latent_reference(q, k, v, down, up_k, up_v, w_kr=None, w_qr=None, *, rope_base=10000.0, return_memory=False):
    """Multi-head latent attention (DeepSeek-V2), the rule of :class:`~course_lib.memory.LatentMemory`:
    store one latent per token, rebuild every head's keys and values from the stored latents, attend
    with a plain causal softmax::

        c_j = W_down [k_j; v_j]      (k_j, v_j of all heads, head after head)
        K_{j,h} = W_uk,h c_j         V_{j,h} = W_uv,h c_j

    ``down [r, H (d_h + d_v)]``, ``up_k [H, d_h, r]``, ``up_v [H, d_v, r]``. With the decoupled rotary
    key (``w_kr [d_R, H d_h]``, ``w_qr [H, d_R, d_h]``): ``k^R_j = RoPE_j(W_kr k_j)``, shared by the heads,
    ``q^R_{i,h} = RoPE_i(W_qr,h q_{i,h})``, score ``(q_{i,h} . K_{j,h} + q^R_{i,h} . k^R_j) / sqrt(d_h + d_R)``;
    without: score ``RoPE_i(q_{i,h}) . RoPE_j(K_{j,h}) / sqrt(d_h)``. With ``return_memory``:
    ``(out, (c [B, T, r], k^R [B, T, d_R] or None))``, what the cache holds after the text.
    """
    b, h, t, d = q.shape
    latents, rope_keys, outs = [], [], []
    for j in range(t):  # the cache: one latent (and rotary key) per token
        kv = torch.cat([k[:, :, j].reshape(b, -1), v[:, :, j].reshape(b, -1)], dim=-1)  # [B, H (d_h + d_v)]
        latents.append(kv @ down.T)
        if w_kr is not None:
            rope_keys.append(_rope_at(k[:, :, j].reshape(b, -1) @ w_kr.T, j, rope_base))
    for i in range(t):
        scores, values = [], []
        for j in range(i + 1):  # every key so far, rebuilt from its stored latent
            key = torch.einsum("hdr,br->bhd", up_k, latents[j])
            values.append(torch.einsum("hvr,br->bhv", up_v, latents[j]))
            if w_kr is None:
                s = (_rope_at(q[:, :, i], i, rope_base) * _rope_at(key, j, rope_base)).sum(-1) / math.sqrt(d)
            else:
                q_rope = _rope_at(torch.einsum("hed,bhd->bhe", w_qr, q[:, :, i]), i, rope_base)
                s = ((q[:, :, i] * key).sum(-1) + (q_rope * rope_keys[j][:, None]).sum(-1)) / math.sqrt(
                    d + w_kr.shape[0])
            scores.append(s)
        weights = torch.softmax(torch.stack(scores, dim=-1), dim=-1)  # [B, H, i + 1]
        outs.append(torch.einsum("bhn,bhnv->bhv", weights, torch.stack(values, dim=2)))
    out = torch.stack(outs, dim=2)
    if not return_memory:
        return out
    return out, (torch.stack(latents, dim=1), torch.stack(rope_keys, dim=1) if rope_keys else None)


#: registry name -> the reference rule of that memory (every registered memory but ``multi``,
#: which combines others: its parts are checked against theirs)
REFERENCES = {
    "full": full_reference, "window": window_reference, "sink": sink_reference,
    "moving_average": moving_average_reference, "cumulative_average": cumulative_average_reference,
    "linear": linear_attention_reference, "delta": delta_rule_reference, "decay": decay_reference,
    "gated_delta": gated_delta_reference, "segment": segment_reference,
    "compressive": compressive_reference, "knn": knn_reference,
    "heavy_hitter": heavy_hitter_reference, "quantized": quantized_reference,
    "latent": latent_reference,
}
