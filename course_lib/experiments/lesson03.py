r"""Lesson 03: sparse attention patterns, and which cached keys a decoder may drop.

A pattern is a boolean mask ``[t_q, t_k]`` (``True`` = may attend) whose ``t_q`` queries are
the last ``t_q`` of the ``t_k`` positions, as :func:`course_lib.causal_mask`. The patterns:

* window ``n_c``: ``j <= i`` and ``i - j < n_c`` (``causal_mask(window=n_c)``);
* strided (the Sparse Transformer's, stride ``l``): ``j <= i`` and (``i - j < l`` or
  ``(i - j) % l == 0``);
* global tokens (Longformer, BigBird): a window, plus every ``g``-th position is global:
  it attends to every earlier key and every later query attends to it.

A key ``j`` may leave the KV cache after step ``t - 1`` when no query at a position
``i >= t`` attends to it (:func:`evictable`). Over an endless stream, only the window lets
keys go: a strided query at ``j + k l`` and the next global token still read key ``j``.

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

__all__ = ["window_mask", "strided_mask", "global_mask", "evictable", "kept_keys", "PATTERNS", "pattern_mask"]


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


def global_mask(t: int, window: int, every: int) -> torch.Tensor:
    """``[t, t]``: a window of ``n_c``, and positions ``0, g, 2g, ...`` global (they read and are read by all)."""
    check_positive_int("window", window)
    check_positive_int("every", every)
    i, j = _positions(t, t)
    is_global = torch.arange(t) % every == 0
    return (j <= i) & ((i - j < window) | is_global[None, :] | is_global[:, None])


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
