r"""Scaled dot-product attention in the book's notation.

For a query row ``q_i`` and the keys/values it may see, ``K`` and ``V``::

    Att_qkv(q_i, K, V) = Softmax(q_i K^T / sqrt(d) + Mask) V

Positions count from 0. With causal masking the query at position ``i`` sees
``K_{<=i}, V_{<=i}``; a window of ``n_c`` tokens sees ``K_{[i-n_c+1, i]}``.

Two implementations give the same numbers:

* :func:`attention_reference` spells the formula out (the teaching version);
* :func:`attention` calls ``torch.nn.functional.scaled_dot_product_attention``, which
  picks a fused kernel (flash / memory-efficient on a GPU).

They also agree where the formula is silent: a NaN in a query gives NaN in that query's
output; a query that the mask lets see no key at all gets zeros (a softmax over no keys is
undefined; zero is what the fused kernels return, and the sum over no values). Bad
arguments (no keys, a ``scale`` that is not a finite number, a mask on another device or one
that would broadcast the batch or heads beyond ``q``'s) raise an error that names them.

Layout everywhere: ``[B, H, T, D]`` (batch, heads, time, head dim).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_positive_int, check_qkv, check_tensor, describe

__all__ = ["attention_reference", "attention", "causal_mask", "MultiHeadAttention", "repeat_kv"]


def causal_mask(
    t_q: int,
    t_k: int,
    *,
    window: int | None = None,
    sinks: int = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Boolean ``[t_q, t_k]`` mask, ``True`` = may attend.

    The ``t_q`` queries are the *last* ``t_q`` of the ``t_k`` positions, so query row ``r``
    sits at absolute position ``i = t_k - t_q + r`` and sees key ``j`` when ``j <= i``
    and, with a window ``n_c``, ``j >= i - n_c + 1`` -- or ``j < sinks`` (attention sinks).

    >>> causal_mask(2, 4).int().tolist()
    [[1, 1, 1, 0], [1, 1, 1, 1]]
    """
    check_positive_int("t_q", t_q)
    check_positive_int("t_k", t_k)
    if t_q > t_k:
        raise ValueError(f"t_q={t_q} queries cannot be the last of t_k={t_k} keys; expected t_q <= t_k")
    if window is not None:
        check_positive_int("window", window)
    check_positive_int("sinks", sinks, minimum=0)
    i = torch.arange(t_k - t_q, t_k, device=device).unsqueeze(1)  # [t_q, 1] absolute query positions
    j = torch.arange(t_k, device=device).unsqueeze(0)  # [1, t_k]
    mask = j <= i
    if window is not None:
        mask = mask & ((j > i - window) | (j < sinks))
    return mask


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Repeat each key/value head ``n_rep`` times: ``[B, n_g, T, D] -> [B, n_g*n_rep, T, D]``."""
    if n_rep == 1:
        return x
    b, g, t, d = x.shape
    return x[:, :, None].expand(b, g, n_rep, t, d).reshape(b, g * n_rep, t, d)


def _check_arguments(q, k, v, mask, scale) -> None:
    """What both implementations accept: see the module docstring."""
    check_qkv(q, k, v)
    b, h, t_q, t_k = q.shape[0], q.shape[1], q.shape[-2], k.shape[-2]
    if t_k == 0:
        raise ValueError(f"k holds no keys ({describe(k)}); attention needs at least one key per query")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise TypeError(f"scale must be a number (default 1/sqrt(d)), got {describe(scale)}")
        if not math.isfinite(scale):
            raise ValueError(f"scale must be a finite number (default 1/sqrt(d)), got {scale!r}")
    if mask is None:
        return
    check_tensor("mask", mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = may attend), got {describe(mask)}")
    if mask.device != q.device:
        raise ValueError(f"mask is on {mask.device} but q is on {q.device}; move the mask to q's device")
    lead = mask.shape[:-2]
    if (mask.dim() < 2 or mask.dim() > 4 or mask.shape[-2:] not in ((t_q, t_k), (1, t_k), (t_q, 1), (1, 1))
            or any(m not in (1, n) for m, n in zip(reversed(lead), (h, b)))):
        raise ValueError(
            f"mask must broadcast to [B={b}, H={h}, T_q={t_q}, T_k={t_k}] (q's batch and heads, not more), "
            f"got shape {tuple(mask.shape)}"
        )


def _no_key_rows(mask) -> torch.Tensor:
    """``[..., T_q, 1]``: True for the queries that may see no key at all."""
    return ~mask.any(dim=-1, keepdim=True)


def attention_reference(q, k, v, mask=None, scale=None, return_weights=False):
    """``Softmax(q K^T * scale + Mask) V``, written out; ``scale`` defaults to ``1/sqrt(d)``.

    ``mask`` is boolean, ``True`` = may attend, broadcastable to ``[B, H, T_q, T_k]``.
    With ``return_weights=True`` returns ``(out, weights)``, weights ``[B, H, T_q, T_k]``.
    """
    _check_arguments(q, k, v, mask, scale)
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale  # [B, H, T_q, T_k]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:  # a row of -inf only: softmax gives NaN; such a query sees nothing
        weights = weights.masked_fill(_no_key_rows(mask), 0.0)
    out = weights @ v  # [B, H, T_q, D]
    return (out, weights) if return_weights else out


def attention(q, k, v, mask=None, *, causal=False, scale=None):
    """Same result as :func:`attention_reference`, through the fused SDPA kernel.

    ``causal=True`` applies :func:`causal_mask` (queries are the last ``T_q`` positions),
    combined with ``mask`` if both are given.
    """
    _check_arguments(q, k, v, mask, scale)
    t_q, t_k = q.shape[-2], k.shape[-2]
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1:
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    if causal and t_q == t_k and mask is None:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    else:
        if causal:
            cm = causal_mask(t_q, t_k, device=q.device)
            mask = cm if mask is None else mask & cm
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    # the fused CPU kernel returns 0 for a query holding NaN where the formula gives NaN: keep the NaN
    out = out + q.sum(dim=-1, keepdim=True) * 0
    if mask is not None:  # a query that sees no key gets zeros, whichever kernel ran
        out = out.masked_fill(_no_key_rows(mask), 0.0)
    return out


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention: project, split into ``tau`` heads, attend, merge.

    ``n_kv_heads`` (``n_g`` in the book) < ``n_heads`` gives grouped-query attention;
    ``n_kv_heads=1`` is multi-query attention.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, bias: bool = False):
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("n_heads", n_heads)
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        check_positive_int("n_kv_heads", n_kv_heads)
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={n_kv_heads}")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.kv_proj = nn.Linear(d_model, 2 * n_kv_heads * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def split(self, x: torch.Tensor):
        """``[B, T, d_model] -> q [B, tau, T, d_h], k, v [B, n_g, T, d_h]``."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        kv = self.kv_proj(x).view(b, t, 2, self.n_kv_heads, self.head_dim)
        k, v = kv.unbind(2)
        return q, k.transpose(1, 2), v.transpose(1, 2)

    def merge(self, out: torch.Tensor) -> torch.Tensor:
        """``[B, tau, T, d_h] -> [B, T, d_model]`` and the output projection."""
        b, h, t, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, h * d))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor("x", x, ndim=3, floating=True)
        q, k, v = self.split(x)
        return self.merge(attention(q, k, v, mask, causal=mask is None))
