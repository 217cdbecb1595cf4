r"""Lesson 03: sparse attention patterns, and which cached keys a decoder may drop.

A pattern is a boolean mask ``[t_q, t_k]`` (``True`` = may attend) whose ``t_q`` queries are
the last ``t_q`` of the ``t_k`` positions, as :func:`course_lib.causal_mask`. The patterns:

* window ``n_c``: ``j <= i`` and ``i - j < n_c`` (``causal_mask(window=n_c)``);
* strided (the Sparse Transformer's, stride ``l``): ``j <= i`` and (``i - j < l`` or
  ``(i - j) % l == 0``);
* the Sparse Transformer's *fixed* pattern (block ``l``, ``c`` summary positions): ``j <= i``
  and (``j`` in the query's own block of ``l`` positions, or ``j`` one of the last ``c`` positions
  of its block, a *summary* position every later query reads);
* dilated window (``n_c`` keys every ``r``-th position back): ``j <= i``, ``(i - j) % r == 0`` and
  ``i - j < n_c r``;
* global tokens (Longformer, BigBird): a window, plus every ``g``-th position is global
  (in the papers they are task-chosen tokens, CLS or the question; a stride here only to draw
  them): every later query attends to it, and, with ``reads_all``, it attends to every earlier
  key.

A key ``j`` may leave the KV cache after step ``t - 1`` when no query at a position
``i >= t`` attends to it (:func:`evictable`): a pattern has a bounded cache exactly when the set
of keys that any future query may read is bounded. Over an endless stream the window and the
dilated window let all old keys go; the fixed pattern keeps only the summary positions (``m c / l
+ l`` keys); a strided query at ``j + k l`` and the next global token that reads all still read
key ``j``.

>>> strided_mask(4, 4, 2).int().tolist()
[[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1]]
>>> evictable(window_mask(6, 2), 4)
[0, 1, 2]
>>> evictable(strided_mask(6, 6, 2), 4)
[]
"""

from __future__ import annotations

import torch

from .._checks import check_positive_int, check_tensor
from ..attention import causal_mask

__all__ = ["window_mask", "strided_mask", "fixed_mask", "dilated_mask", "global_mask", "evictable", "kept_keys",
           "PATTERNS", "pattern_mask"]


def _positions(t_q: int, t_k: int):
    check_positive_int("t_q", t_q)
    check_positive_int("t_k", t_k)
    if t_q > t_k:
        raise ValueError(f"t_q={t_q} queries cannot be the last positions of t_k={t_k} keys; expected t_q <= t_k")
    i = torch.arange(t_k - t_q, t_k)[:, None]  # [t_q, 1] query positions
    j = torch.arange(t_k)[None, :]  # [1, t_k] key positions
    return i, j


def window_mask(t: int, window: int) -> torch.Tensor:
    """``[t, t]``: ``j <= i`` and ``i - j < n_c`` (the window of ``n_c`` pairs, the current one included)."""
    return causal_mask(t, t, window=check_positive_int("window", window))


def strided_mask(t_q: int, t_k: int, stride: int) -> torch.Tensor:
    """``[t_q, t_k]``: ``j <= i`` and (``i - j < stride`` or ``(i - j) % stride == 0``)."""
    check_positive_int("stride", stride)
    i, j = _positions(t_q, t_k)
    d = i - j
    return (d >= 0) & ((d < stride) | (d % stride == 0))


def fixed_mask(t: int, block: int, summary: int = 1) -> torch.Tensor:
    """``[t, t]``: the Sparse Transformer's fixed pattern (Child et al. 2019, §4.2): ``j <= i`` and
    (``j // l == i // l``, the query's own block, or ``j % l >= l - c``, a summary position)."""
    check_positive_int("block", block)
    check_positive_int("summary", summary)
    if summary > block:
        raise ValueError(f"summary={summary} positions cannot exceed the block of {block}; expected c <= l")
    i, j = _positions(t, t)
    return (j <= i) & ((j // block == i // block) | (j % block >= block - summary))


def dilated_mask(t: int, window: int, dilation: int) -> torch.Tensor:
    """``[t, t]``: ``j <= i``, ``(i - j) % r == 0`` and ``i - j < n_c r``: ``n_c`` keys, every ``r``-th."""
    check_positive_int("window", window)
    check_positive_int("dilation", dilation)
    i, j = _positions(t, t)
    d = i - j
    return (d >= 0) & (d % dilation == 0) & (d < window * dilation)


def global_mask(t: int, window: int, every: int, *, reads_all: bool = True) -> torch.Tensor:
    """``[t, t]``: a window of ``n_c``, and positions ``0, g, 2g, ...`` global: every later query reads
    them and, with ``reads_all`` (Longformer's and BigBird's global attention), they read every earlier
    key; ``reads_all=False``: their queries keep to the window (keys read by all, as sinks are)."""
    check_positive_int("window", window)
    check_positive_int("every", every)
    i, j = _positions(t, t)
    is_global = torch.arange(t) % every == 0
    reads = is_global[:, None] if reads_all else torch.zeros(t, 1, dtype=torch.bool)
    return (j <= i) & ((i - j < window) | is_global[None, :] | reads)


PATTERNS = ("window", "strided", "global")


def pattern_mask(pattern: str, t: int, size: int) -> torch.Tensor:
    """The ``[t, t]`` mask of ``pattern`` with its one size (window ``n_c``, stride, or both for global)."""
    if pattern == "window":
        return window_mask(t, size)
    if pattern == "strided":
        return strided_mask(t, t, size)
    if pattern == "global":
        return global_mask(t, size, size)
    raise ValueError(f"pattern={pattern!r}; expected one of {PATTERNS}")


def evictable(mask: torch.Tensor, t: int) -> list[int]:
    """Key positions ``j < t`` that no query at a position ``i >= t`` attends (sorted).

    ``mask`` is a bool ``[T, T]`` pattern (row ``i`` is the query at position ``i``); these
    are the pairs a decoder could drop from its cache after step ``t - 1``.
    """
    check_tensor("mask", mask, ndim=2)
    if mask.dtype != torch.bool or mask.shape[0] != mask.shape[1]:
        raise ValueError(f"mask must be a square bool [T, T] pattern, got {mask.dtype} {tuple(mask.shape)}")
    if not 0 <= t <= mask.shape[0]:
        raise ValueError(f"t must be in 0..T={mask.shape[0]}, got {t}")
    read_later = mask[t:, :t].any(0)  # [t]: key j is read by some query i >= t
    return (~read_later).nonzero().flatten().tolist()


def kept_keys(pattern: str, m: int, size: int, horizon: int | None = None) -> int:
    """How many of the ``m`` keys cached after step ``m - 1`` some later query still reads.

    The future is the next ``horizon`` positions (default ``2 * size``, enough for a strided
    query or a global token to come)."""
    horizon = 2 * size if horizon is None else horizon
    mask = pattern_mask(pattern, m + horizon, size)
    return m - len(evictable(mask, m))
