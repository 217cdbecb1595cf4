r"""Lesson 05's experiments: what a fixed matrix memory can hold, and MQAR at equal bytes.

* :func:`read_back`: write ``n`` associations ``(k_j, v_j)`` into a ``d x d_v`` matrix memory
  and read every one back with its own key. Three memories:

  - ``"sum"``: the plain outer-product memory ``S = sum_j k^_j^T v_j`` with unit keys,
    read as ``k^ S`` (fast weights without a feature map);
  - ``"linear"``: :class:`~course_lib.memory.LinearMemory`'s state, ``S = sum phi(k_j)^T v_j``,
    ``z = sum phi(k_j)``, read as ``phi(k) S / (phi(k) . z)`` with ``phi = elu + 1``;
  - ``"delta"``: :class:`~course_lib.memory.DeltaMemory`'s state after the delta rule
    ``S_j = S_{j-1} + beta k^_j^T (v_j - k^_j S_{j-1})``, read as ``k^ S``.

* :func:`capacity` sweeps ``n`` for random or orthogonal keys and reports the mean cosine
  similarity between what is read and what was written: over all pairs, over the newest
  ones and over the oldest ones.

* :func:`mqar_reach`: window, Transformer-XL and Compressive memories of the same bytes
  trained on MQAR (the recall benchmark's task), accuracy per answer with its gap.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

__all__ = ["read_back", "capacity", "orthogonal_keys", "MqarSetup", "mqar_reach", "accuracy_by_gap"]

KINDS = ("sum", "linear", "delta")


def read_back(kind: str, K: torch.Tensor, V: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Write the rows of ``K [B, n, d]``, ``V [B, n, d_v]`` in order, then read with every key:
    returns ``[B, n, d_v]`` (row ``j`` is what the memory returns for ``k_j``)."""
    from ..memory import delta_rule_chunked, linear_attention_parallel
    from ..memory.linear import phi

    if kind == "sum":
        kn = F.normalize(K, dim=-1)
        return kn @ (kn.transpose(-2, -1) @ V)
    k, v = K[:, None], V[:, None]  # [B, 1, n, d]: one head
    if kind == "linear":
        _, S, z = linear_attention_parallel(k, k, v)
        f = phi(K)
        return (f @ S[:, 0]) / (f @ z[:, 0, :, None])
    if kind == "delta":
        _, S = delta_rule_chunked(k, k, v, beta)
        return F.normalize(K, dim=-1) @ S[:, 0]
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def orthogonal_keys(batch: int, n: int, d: int, *, generator=None, dtype=torch.float64) -> torch.Tensor:
    """``[batch, n, d]`` keys: the first ``min(n, d)`` orthonormal, the rest random unit vectors."""
    a = torch.randn(batch, d, d, generator=generator, dtype=dtype)
    q, _ = torch.linalg.qr(a)  # columns orthonormal
    keys = q.transpose(-2, -1)[:, : min(n, d)]
    if n > d:
        extra = F.normalize(torch.randn(batch, n - d, d, generator=generator, dtype=dtype), dim=-1)
        keys = torch.cat([keys, extra], 1)
    return keys


def capacity(d: int, ns, *, kinds=KINDS, keys: str = "random", reps: int = 32, recent: int = 8,
             seed: int = 0) -> dict:
    """Mean cosine(read, written) against ``n`` for each memory: ``{kind: {"all", "newest", "oldest"}}``,
    each a list over ``ns`` (``newest``/``oldest``: the ``recent`` newest / oldest pairs)."""
    gen = torch.Generator().manual_seed(seed)
    out = {kind: {"all": [], "newest": [], "oldest": []} for kind in kinds}
    for n in ns:
        if keys == "random":
            K = torch.randn(reps, n, d, generator=gen, dtype=torch.float64)
        elif keys == "orthogonal":
            K = orthogonal_keys(reps, n, d, generator=gen)
        else:
            raise ValueError(f"keys must be 'random' or 'orthogonal', got {keys!r}")
        V = torch.randn(reps, n, d, generator=gen, dtype=torch.float64)
        for kind in kinds:
            cos = F.cosine_similarity(read_back(kind, K, V), V, dim=-1)  # [reps, n]
            out[kind]["all"].append(cos.mean().item())
            out[kind]["newest"].append(cos[:, -recent:].mean().item())
            out[kind]["oldest"].append(cos[:, :recent].mean().item())
    return out


# ------------------------------------------------------------------------------ MQAR


@dataclass(frozen=True)
class MqarSetup:
    """The recall benchmark's MQAR task (4 pairs in 32 tokens, segments of ``n_s = 16``) with
    ``slots`` key/value slots per head in the memory layer, for every design."""

    steps: int = 300
    slots: int = 8
    ratio: int = 2  # c of the compressive design (n_m = n_cm = slots / 2)


def mqar_reach(s: MqarSetup = MqarSetup(), designs=("window", "xl", "compressive"), *, device="cpu",
               progress=False) -> dict:
    """Train each design (its memory in the second layer; the first is a 4-token window, as in
    ``bench recall``) on MQAR; returns the gap of every test answer (tokens back to the asked
    value, ``[n_answers]``) and, per design, its label, state bytes and which answers it got right.
    ``device``: where to train (the lessons pass ``pick_device()``)."""
    from ..bench.recall import FULL, Design, build_model, query_gaps, task_data
    from ..data import IGNORE
    from ..device import seed_everything
    from ..memory import CompressiveMemory, SegmentMemory, WindowMemory
    from ..train import forward_segments, predict, train

    setup = replace(FULL, steps=s.steps, window=s.slots)
    half = s.slots // 2
    makers = {
        "window": Design(f"window n_c = {s.slots}", "Window", lambda: WindowMemory(s.slots)),
        "xl": Design(f"Transformer-XL n_m = {s.slots}", "Segment", lambda: SegmentMemory(s.slots)),
        "compressive": Design(f"compressive n_m = {half}, n_cm = {half}, c = {s.ratio}", "Compressive",
                              lambda: CompressiveMemory(half, half, s.ratio, "mean")),
    }
    data, (x, y) = task_data(setup)
    out = {"gaps": query_gaps(x, y, setup.n_pairs), "segment_len": setup.segment_len, "steps": s.steps,
           "designs": {}}
    for name in designs:
        design = makers[name]
        seed_everything(setup.seed)
        model = build_model(setup, design)
        train(model, data, setup.steps, batch_size=setup.batch_size, lr=setup.lr,
              warmup=min(50, setup.steps // 10), schedule=setup.schedule, segment_len=setup.segment_len,
              device=device, seed=setup.seed, progress=progress, desc=name)
        pred = predict(model, x, segment_len=setup.segment_len, device=device)
        with torch.no_grad():
            _, state = forward_segments(model.eval(), x[:1].to(device), setup.segment_len)
        out["designs"][name] = {"label": design.label, "nbytes": model.state_nbytes(state),
                                "right": (pred == y)[y != IGNORE]}
    return out


def accuracy_by_gap(gaps: torch.Tensor, right: torch.Tensor, edges) -> list[float]:
    """Accuracy of the answers whose gap lies in ``[edges[i], edges[i+1])``, for each bin (NaN if empty)."""
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (gaps >= lo) & (gaps < hi)
        out.append(right[sel].float().mean().item() if sel.any() else float("nan"))
    return out
