r"""The retrieval explorer's state and view: pure functions, no ipywidgets.

A matrix memory ``S`` (``d x d_v``) is written one pair at a time. Whether it still holds the
pair written at position ``j`` once it has read up to position ``t >= j`` is a read with that
pair's own key: ``k^_j S_t`` should be ``v_j``. :func:`retrieval_map` measures it for every
``(t, j)``, as the cosine similarity ``cos(k^_j S_t, v_j)``, for three memories with unit keys:

* ``delta``:        ``S_t = S_{t-1} + beta_t k^_t^T (v_t - k^_t S_{t-1})``  (no decay);
* ``gated_delta``:  ``S_t = alpha (I - beta_t k^_t^T k^_t) S_{t-1} + beta_t k^_t^T v_t``;
* ``decay``:        ``S_t = alpha S_{t-1} + beta_t k^_t^T v_t``.

The decay memory of :class:`~course_lib.memory.DecayMemory` writes every pair at strength 1; here
its write is scaled by ``beta_t``, as Mamba-2 scales its input by the step ``Delta_t``, so that the
same control says "write this pair weakly" for all three. Every ``fact_every``-th position (from 0)
is a **fact**, written with ``beta``; the positions between, the **filler**, are written with
``filler_beta``: equal strengths are a data-independent write, a small ``filler_beta`` is the
data-dependent write that DeltaNet's ``beta_t = sigma(W_beta x_t)`` can learn.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .. import viz
from .common import check_choice

__all__ = ["RETRIEVAL_MEMORIES", "RETRIEVAL_LABELS", "KEPT", "RetrievalState", "update_retrieval",
           "retrieval_data", "write_strengths", "memory_states", "retrieval_map", "retrieval_view",
           "retrieval_heatmaps"]

RETRIEVAL_MEMORIES = ("delta", "gated_delta", "decay")
RETRIEVAL_LABELS = {"delta": "delta", "gated_delta": "gated delta", "decay": "decay"}
#: a pair counts as still held when its key reads its value back at a cosine of at least this
KEPT = 0.5


@dataclass(frozen=True)
class RetrievalState:
    """The memory, the position ``t`` it has read up to, its decay ``alpha`` (unused by ``delta``),
    the write strength ``beta`` of the facts and ``filler_beta`` of the tokens between them."""

    memory: str = "gated_delta"
    t: int = 127
    alpha: float = 0.97
    beta: float = 1.0
    filler_beta: float = 1.0


def _check_gate(name, value, lo, hi, *, open_low=False):
    ok = (lo < value <= hi) if open_low else (lo <= value <= hi)
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and ok):
        left = "(" if open_low else "["
        raise ValueError(f"{name}={value!r}; expected a number in {left}{lo}, {hi}]")


def update_retrieval(state: RetrievalState, changes: dict, length: int) -> RetrievalState:
    """The new state after ``changes`` for a text of ``length`` tokens (``ValueError`` on a bad value)."""
    new = dataclasses.replace(state, **changes)
    check_choice("memory", new.memory, RETRIEVAL_MEMORIES)
    if not (isinstance(new.t, int) and 0 <= new.t < length):
        raise ValueError(f"t={new.t!r}; expected a position in 0..{length - 1} of the {length} tokens")
    _check_gate("alpha", new.alpha, 0, 1, open_low=True)
    _check_gate("beta", new.beta, 0, 2)
    _check_gate("filler_beta", new.filler_beta, 0, 2)
    return new


def retrieval_data(length: int = 128, d: int = 16, d_v: int | None = None, seed: int = 0):
    """Random unit keys ``k [T, d]`` and unit values ``v [T, d_v]`` (float64): the worst case of lesson 09,
    where every filler key overlaps every fact's a little."""
    for name, value in (("length", length), ("d", d)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{name}={value!r}; expected an int >= 1")
    gen = torch.Generator().manual_seed(seed)
    k = torch.nn.functional.normalize(torch.randn(length, d, generator=gen, dtype=torch.float64), dim=-1)
    v = torch.nn.functional.normalize(torch.randn(length, d_v or d, generator=gen, dtype=torch.float64), dim=-1)
    return k, v


def write_strengths(length: int, fact_every: int, beta: float, filler_beta: float) -> torch.Tensor:
    """``beta_t [T]``: ``beta`` at the facts (positions ``0, fact_every, 2 fact_every, ...``), ``filler_beta``
    elsewhere."""
    if not (isinstance(fact_every, int) and fact_every >= 1):
        raise ValueError(f"fact_every={fact_every!r}; expected an int >= 1")
    out = torch.full((length,), float(filler_beta), dtype=torch.float64)
    out[::fact_every] = float(beta)
    return out


def _check_pairs(k, v):
    if k.dim() != 2 or v.dim() != 2 or k.shape[0] != v.shape[0]:
        raise ValueError(f"k and v must be [T, d] and [T, d_v] with the same T, got k {tuple(k.shape)} "
                         f"and v {tuple(v.shape)}")


def memory_states(memory: str, k, v, alpha: float, beta) -> torch.Tensor:
    """``S_t`` after each token, ``[T, d, d_v]``, of ``memory`` (one of :data:`RETRIEVAL_MEMORIES`) written
    with the unit keys ``k^ = k / |k|``, ``v``, a decay ``alpha`` (ignored by ``delta``) and ``beta``
    (a float or ``[T]``)."""
    check_choice("memory", memory, RETRIEVAL_MEMORIES)
    _check_pairs(k, v)
    t_len = k.shape[0]
    kn = torch.nn.functional.normalize(k, dim=-1)
    b = beta if isinstance(beta, torch.Tensor) else torch.full((t_len,), float(beta), dtype=k.dtype)
    if b.shape != (t_len,):
        raise ValueError(f"beta must be a number or a [T] = [{t_len}] tensor, got shape {tuple(b.shape)}")
    a = 1.0 if memory == "delta" else float(alpha)
    S = k.new_zeros(k.shape[1], v.shape[1])
    states = []
    for i in range(t_len):
        ki = kn[i, None]  # [1, d]
        if memory == "decay":
            S = a * S + b[i] * ki.T @ v[i, None]
        else:  # alpha (S - beta k^T (k S)) + beta k^T v = alpha (I - beta k^T k) S + beta k^T v
            S = a * (S - b[i] * ki.T @ (ki @ S)) + b[i] * ki.T @ v[i, None]
        states.append(S)
    return torch.stack(states)


def retrieval_map(memory: str, k, v, alpha: float, beta) -> torch.Tensor:
    """``[T, T]``: row ``t``, column ``j`` is ``cos(k^_j S_t, v_j)`` for ``j <= t``, NaN for ``j > t``
    (not written yet). A read that is exactly zero (a pair written with strength 0 into an empty
    memory) counts as cosine 0."""
    states = memory_states(memory, k, v, alpha, beta)
    kn = torch.nn.functional.normalize(k, dim=-1)
    reads = torch.einsum("jd,tde->tje", kn, states)  # [t, j, d_v]: k^_j S_t
    cos = torch.nn.functional.cosine_similarity(reads, v[None].expand_as(reads), dim=-1, eps=1e-30)
    t_len = k.shape[0]
    written = torch.ones(t_len, t_len, dtype=torch.bool).tril()
    return torch.where(written, cos, torch.full_like(cos, float("nan")))


def retrieval_view(state: RetrievalState, k, v, fact_every: int = 16, maps: Mapping | None = None) -> dict:
    """The numbers behind the explorer's picture: ``map`` (the chosen memory's :func:`retrieval_map`),
    ``rows`` (row ``t`` of every memory's map), ``facts`` (positions ``<= t``), ``kept`` (how many of
    the ``t + 1`` pairs read back at cosine >= :data:`KEPT`), ``facts_kept``, ``oldest_fact_kept``
    (its position or ``None``) and ``fact_quality`` (mean cosine over the facts written so far).
    ``maps``: memory -> map, already computed for this state's gates (computed when ``None``)."""
    beta = write_strengths(k.shape[0], fact_every, state.beta, state.filler_beta)
    if maps is None:
        maps = {name: retrieval_map(name, k, v, state.alpha, beta) for name in RETRIEVAL_MEMORIES}
    t = state.t
    rows = {name: m[t, : t + 1] for name, m in maps.items()}
    row = rows[state.memory]
    facts = list(range(0, t + 1, fact_every))
    facts_kept = [j for j in facts if row[j] >= KEPT]
    return {"map": maps[state.memory], "rows": rows, "facts": facts, "kept": int((row >= KEPT).sum()),
            "facts_kept": len(facts_kept), "oldest_fact_kept": facts_kept[0] if facts_kept else None,
            "fact_quality": float(row[facts].mean())}


def retrieval_heatmaps(maps: Mapping[str, torch.Tensor], *, t: int | None = None, facts=(), ax=None,
                       figsize=None, colorbar: bool = True) -> viz.Figure:
    """One heat map per entry of ``maps`` (title -> ``[T, T]`` :func:`retrieval_map`): position written
    ``j`` across, position read ``t`` down, colour the cosine (grey: not written yet); the facts'
    columns marked with ticks on top, the row ``t`` with a line."""
    names = list(maps)
    if ax is None:
        fig = viz.new_figure(figsize or (3.6 * len(names) + 0.8, 3.6))
        axes = fig.subplots(1, len(names), sharey=True, squeeze=False)[0]
    else:
        axes = ax if isinstance(ax, (list, tuple)) else [ax]
        fig = axes[0].figure
    image = None
    for ax_, name in zip(axes, names):
        m = maps[name].detach().cpu().double().numpy()
        n = m.shape[0]
        image = ax_.imshow(m, cmap=viz.DIVERGING_CMAP, vmin=-1, vmax=1, origin="upper", aspect="auto",
                           interpolation="nearest", extent=(-0.5, n - 0.5, n - 0.5, -0.5))
        ax_.set_facecolor(viz.MASKED_GREY)
        ax_.set_title(name, fontsize=10, loc="left")
        ax_.set_xlabel("position written, j")
        for j in facts:
            ax_.plot([j], [-0.5], marker="v", color="k", ms=4, clip_on=False)
        if t is not None:
            ax_.axhline(t, color="k", lw=0.8, ls="--")
    axes[0].set_ylabel("position read up to, t")
    if colorbar and image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.9, label="cos($\\hat{k}_j S_t$, $v_j$)")
    return fig
