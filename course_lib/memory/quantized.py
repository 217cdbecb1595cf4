r"""``QuantizedKVMemory``: the KV cache in low-bit integers, KIVI's way (Liu et al. 2024, "KIVI: A
Tuning-Free Asymmetric 2bit Quantization for KV Cache", arXiv:2402.02750).

Softmax attention is kept; what shrinks is the number of bits per cached value. Asymmetric
min-max quantisation to ``b`` bits (:func:`quantize_kv`): over a set of numbers ``x``,
``scale = (max - min) / (2^b - 1)``, ``zero = min``, ``q = round((x - zero) / scale)`` in
``0 .. 2^b - 1``, read back as ``x^ = q scale + zero`` (:func:`dequantize_kv`). KIVI's finding: keys
have outlier *channels*, values do not, so

* keys are quantised **per channel**: statistics over a group of ``group`` consecutive tokens, one
  scale and zero per channel and group (``axis=-2`` over the group's tokens);
* values are quantised **per token**: statistics over the channels of each token (``axis=-1``);
* the newest tokens stay in full precision: a token is quantised once its whole group of ``group``
  tokens is older than the newest ``residual``. After ``m`` tokens the first
  ``Q(m) = floor(max(0, m - residual) / group) * group`` are quantised, the rest (between
  ``residual`` and ``residual + group - 1`` of them) are exact.

The rule (:func:`course_lib.memory.reference.quantized_reference`): the query at ``i`` attends in one
softmax to keys ``0..i`` (``max(0, i - n_c + 1)..i`` with ``window=n_c``), key ``j`` read through its
quantisation when ``j < Q(i)`` -- what the cache held before token ``i`` -- and exactly otherwise.
The output does not depend on the chunking: inside a long chunk, a query sees the groups that
became quantised before it dequantised, as if the text had been read token by token.

Attention dequantises and runs ``scaled_dot_product_attention`` over ``[dequantised groups, exact
residual, groups quantised in this chunk, chunk]`` with a mask by position. The quantised copies
carry no gradient (the memory is stored detached); the chunk's exact keys and values do.

Storage and ``nbytes``. Codes are *packed*: ``8 / b`` codes of one channel and consecutive tokens
of a group share a byte (``b`` = 8, 4 or 2, so ``group`` must be a multiple of ``8 / b``), so a code
costs ``b / 8`` bytes, counted as stored. Per group: key codes ``group d_h b / 8``, key scale and zero
``2 d_h``, value codes ``group d_v b / 8``, value scales and zeros ``2 group`` (in the state's dtype);
plus the exact residual, ``(d_h + d_v)`` values per token. ``window=None`` keeps every group (the
cache still grows linearly, only slower: ``fixed_size = False``; ``nbytes`` counts what is held);
``window=n_c`` keeps a ring of ``ceil((n_c - residual) / group)`` groups and ``residual + group - 1``
exact slots (fixed-size; ``nbytes`` counts the rings, full or not). The positions stored beside the
rings are bookkeeping and not counted.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._checks import check_positive_int, describe
from ._state import StateMeta, check_input, new_meta
from .base import Memory

__all__ = ["QuantizedKVMemory", "QuantizedState", "quantize_kv", "dequantize_kv", "BITS"]

BITS = (8, 4, 2)  # the bit widths the memory packs (8 / b codes per byte)


def quantize_kv(x: torch.Tensor, bits: int, axis: int):
    """Asymmetric min-max quantisation of ``x`` to ``bits`` bits, statistics over dimension ``axis``.

    ``min`` and ``max`` over ``axis`` (``keepdim=True``); ``scale = (max - min) / (2**bits - 1)``,
    ``zero = min`` (``x``'s dtype); ``q = round((x - zero) / scale)`` clamped to ``[0, 2**bits - 1]``,
    ``torch.uint8``. Where ``max == min`` the scale is 1 (so ``q = 0`` and :func:`dequantize_kv`
    returns ``min`` exactly). Keys: ``axis=-2`` (per channel, over tokens); values: ``axis=-1``
    (per token). Returns ``(q, scale, zero)``. Errors (``ValueError``) name ``x`` (a floating-point
    tensor), ``bits`` (an int in 1..8) and ``axis`` (a dimension of ``x``).

    >>> q, scale, zero = quantize_kv(torch.tensor([[0.0, 1.0, 3.0]]), bits=2, axis=-1)
    >>> q.tolist(), scale.tolist(), zero.tolist()
    ([[0, 1, 3]], [[1.0]], [[0.0]])
    >>> dequantize_kv(q, scale, zero)
    tensor([[0., 1., 3.]])
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {describe(x)}")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an int in 1..8, got {describe(bits)}")
    if isinstance(axis, bool) or not isinstance(axis, int) or not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis must be a dimension of x (an int in {-x.dim()}..{x.dim() - 1}), got {describe(axis)} "
                         f"for x of shape {tuple(x.shape)}")
    if x.shape[axis] == 0:
        raise ValueError(f"x must hold at least one number along axis={axis}, got shape {tuple(x.shape)}")
    lo, hi = x.amin(axis, keepdim=True), x.amax(axis, keepdim=True)
    top = 2 ** bits - 1
    scale = torch.where(hi == lo, torch.ones_like(lo), (hi - lo) / top)
    q = ((x - lo) / scale).round().clamp(0, top).to(torch.uint8)
    return q, scale, lo


def dequantize_kv(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """``q.to(scale.dtype) * scale + zero``: the numbers :func:`quantize_kv` stands for."""
    for name, x in (("q", q), ("scale", scale), ("zero", zero)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a tensor, got {describe(x)}")
    if not scale.is_floating_point():
        raise ValueError(f"scale must be a floating-point tensor, got {describe(scale)}")
    return q.to(scale.dtype) * scale + zero


def _pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``[..., group, D]`` uint8 codes -> ``[..., group * bits / 8, D]``: codes of ``8 / bits``
    consecutive tokens in one byte, the earliest in the lowest bits."""
    per = 8 // bits
    if per == 1:
        return codes
    c = codes.unflatten(-2, (codes.shape[-2] // per, per))
    out = c[..., 0, :].clone()
    for j in range(1, per):
        out |= c[..., j, :] << (bits * j)
    return out


def _unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`_pack`."""
    per = 8 // bits
    if per == 1:
        return packed
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)[:, None]  # [per, 1]
    return ((packed[..., :, None, :] >> shifts) & (2 ** bits - 1)).flatten(-3, -2)


class _Groups:
    """Quantised groups: key codes ``kc [B, H, G, group b/8, D]``, ``ks, kz [B, H, G, 1, D]``, value
    codes ``vc [B, H, G, group b/8, D_v]``, ``vs, vz [B, H, G, group, 1]``; ``index [G]`` the group held
    in each slot (``-1`` empty); ``written``: the length of the newest state that wrote here."""

    __slots__ = ("kc", "ks", "kz", "vc", "vs", "vz", "index", "written")

    def __init__(self, kc, ks, kz, vc, vs, vz, index, written=0):
        self.kc, self.ks, self.kz, self.vc, self.vs, self.vz, self.index = kc, ks, kz, vc, vs, vz, index
        self.written = written

    def tensors(self):
        return self.kc, self.ks, self.kz, self.vc, self.vs, self.vz

    def resized(self, keep: int, capacity: int, written: int) -> _Groups:
        """A copy holding the first ``keep`` slots, with room for ``capacity``."""
        new = []
        for x in (*self.tensors(), self.index):
            y = x.new_full((*x.shape[:2], capacity, *x.shape[3:]) if x.dim() > 1 else (capacity,),
                           -1 if x.dim() == 1 else 0)
            if x.dim() > 1:
                y[:, :, :keep].copy_(x[:, :, :keep])
            else:
                y[:keep].copy_(x[:keep])
            new.append(y)
        return _Groups(*new, written=written)

    def __repr__(self):
        return f"QuantizedGroups(slots={self.index.shape[0]}, written={self.written})"


class _Exact:
    """Full-precision ring: ``k [B, H, E, D]``, ``v [B, H, E, D_v]``, ``pos [E]`` (``-1`` empty)."""

    __slots__ = ("k", "v", "pos")

    def __init__(self, k, v, pos):
        self.k, self.v, self.pos = k, v, pos

    def clone(self):
        return _Exact(self.k.clone(), self.v.clone(), self.pos.clone())

    def __repr__(self):
        return f"QuantizedResidual(slots={self.pos.shape[0]})"


@dataclass
class QuantizedState(StateMeta):
    """``length`` tokens seen: the first ``Q(length)`` quantised in ``groups``, the newest in ``exact``."""

    groups: _Groups
    exact: _Exact
    length: int
    inplace: bool = False


class QuantizedKVMemory(Memory):
    """A KV cache of ``bits``-bit integers (KIVI): keys per channel over groups of ``group`` tokens,
    values per token, the newest ``residual`` tokens exact (see the module docstring).

    Args:
        bits: ``b`` in (8, 4, 2), bits per cached value.
        group: ``G >= 1`` tokens per key-quantisation group (a multiple of ``8 / b``: packed codes).
        residual: ``R >= 0`` newest tokens always kept in full precision.
        window: ``None`` (keep every token: the cache grows, ``b / 8`` bytes per value) or ``n_c >= 1``
            (keep the last ``n_c`` tokens: fixed-size).
        initial_groups: group slots preallocated by ``init_state`` when ``window=None`` (doubles when full).

    >>> mem = QuantizedKVMemory(bits=4, group=4, residual=4)
    >>> x = torch.randn(1, 2, 19, 8)
    >>> out, state = mem(x, x, x, mem.init_state(1, 2, 8))
    >>> mem.quantized_tokens(state), mem.nbytes(state)  # 12 tokens in 4-bit codes, 7 exact: 1,664 bytes, not 2,432
    (12, 1664)
    """

    name = "quantized"
    title = "quantised KV cache (KIVI)"
    label_name = "quantised"
    symbols = {"bits": "b", "group": "G", "residual": "R", "window": "n_c"}
    fixed_size = None  # window=None grows, a window is fixed-size: each instance says
    state_type = QuantizedState

    def __init__(self, bits: int = 4, group: int = 32, residual: int = 32, window: int | None = None,
                 initial_groups: int = 8):
        super().__init__()
        if isinstance(bits, bool) or bits not in BITS:
            raise ValueError(f"bits must be one of {BITS} (codes packed 8 / bits to a byte), got {describe(bits)}")
        self.bits = bits
        self.group = check_positive_int("group", group)
        if group % (8 // bits):
            raise ValueError(f"group must be a multiple of 8 / bits = {8 // bits} (that many {bits}-bit codes share "
                             f"a byte), got group={group}")
        self.residual = check_positive_int("residual", residual, minimum=0)
        self.window = None if window is None else check_positive_int("window", window)
        self.initial_groups = check_positive_int("initial_groups", initial_groups)
        self.fixed_size = window is not None
        if window is None:
            self.ring_groups, self.exact_slots = None, max(1, residual + group - 1)
        else:
            self.ring_groups = math.ceil(max(0, window - residual) / group)
            self.exact_slots = max(1, residual + group - 1) if self.ring_groups else window

    @classmethod
    def example_sizes(cls, slots=8, *, n_heads=2):
        g = min(32, max(2, slots // 4 * 2))
        return {"bits": 4, "group": g, "residual": g}

    # -- sizes ---------------------------------------------------------------------------------
    def quantized_count(self, m: int) -> int:
        """``Q(m)``: how many of the first ``m`` tokens are quantised (whole groups older than the newest ``R``)."""
        return max(0, m - self.residual) // self.group * self.group

    def quantized_tokens(self, state) -> int:
        """``Q(length)`` of ``state``."""
        return self.quantized_count(state.length)

    def _bytes(self, m: int, heads: int, d: int, dv: int, per_value: int) -> int:
        """Bytes of one sequence's cache after ``m`` tokens (see the module docstring)."""
        per_group = self.group * (d + dv) * self.bits // 8 + (2 * d + 2 * self.group) * per_value
        if self.window is None:
            q = self.quantized_count(m)
            return heads * (q // self.group * per_group + (m - q) * (d + dv) * per_value)
        return heads * (self.ring_groups * per_group + self.exact_slots * (d + dv) * per_value)

    def nbytes(self, state) -> int:
        """Packed codes (``b / 8`` bytes each), scales and zeros, and the exact residual (module docstring)."""
        return state.batch * self._bytes(state.length, state.n_heads, state.head_dim, state.v_dim,
                                         state.exact.k.element_size())

    def cost_per_token(self, config, context: int) -> dict:
        """``bytes``: :meth:`nbytes`'s count for ``context`` tokens, every layer (scales and the residual
        at ``bytes_per_value``); ``flops = 4 L tau d_h (held + 1)``, ``held`` the tokens attended to."""
        L, tau, d, b = config.n_layers, config.n_heads, config.head_dim, config.bytes_per_value
        held = context if self.window is None else min(context, self.window)
        return {"bytes": L * self._bytes(context, tau, d, d, b), "flops": 4 * L * tau * d * (held + 1)}

    # -- states --------------------------------------------------------------------------------
    def init_state(self, batch, n_heads, head_dim, *, device=None, dtype=None, v_dim=None):
        meta = new_meta(batch, n_heads, head_dim, device=device, dtype=dtype, v_dim=v_dim)
        dev, dt, dv = meta["device"], meta["dtype"], meta["v_dim"]
        n = self.initial_groups if self.window is None else self.ring_groups
        gp, g = self.group * self.bits // 8, self.group
        u8 = dict(dtype=torch.uint8, device=dev)
        fl = dict(dtype=dt, device=dev)
        b, h = batch, n_heads
        groups = _Groups(torch.zeros(b, h, n, gp, head_dim, **u8), torch.ones(b, h, n, 1, head_dim, **fl),
                         torch.zeros(b, h, n, 1, head_dim, **fl), torch.zeros(b, h, n, gp, dv, **u8),
                         torch.ones(b, h, n, g, 1, **fl), torch.zeros(b, h, n, g, 1, **fl),
                         torch.full((n,), -1, dtype=torch.long, device=dev))
        e = self.exact_slots
        exact = _Exact(torch.zeros(batch, n_heads, e, head_dim, **fl), torch.zeros(batch, n_heads, e, dv, **fl),
                       torch.full((e,), -1, dtype=torch.long, device=dev))
        return QuantizedState(**meta, groups=groups, exact=exact, length=0)

    def _check_fresh(self, state) -> None:
        if state.inplace and state.groups.written != state.length:
            raise ValueError(
                f"this QuantizedKVMemory state (after {state.length} tokens) is out of date: a later forward "
                f"(at {state.groups.written} tokens) wrote over its buffers in place. States after "
                "memory.reserve() form one decoding stream and only the newest can be used; keep "
                "memory.snapshot(state) to branch")

    def _copy(self, state, capacity=None) -> QuantizedState:
        groups = state.groups
        n = groups.index.shape[0] if self.window is not None else self.quantized_tokens(state) // self.group
        cap = groups.index.shape[0] if capacity is None else max(capacity, groups.index.shape[0])
        return dataclasses.replace(state, groups=groups.resized(n, cap, state.length), exact=state.exact.clone())

    def reserve(self, state, n_tokens: int = 0):
        """A state that owns its buffers, with room for ``n_tokens`` more: forwards write in place."""
        self._check_fresh(state)
        need = None if self.window is not None else self.quantized_count(state.length + n_tokens) // self.group
        if state.inplace and (need is None or need <= state.groups.index.shape[0]):
            return state
        return dataclasses.replace(self._copy(state, need), inplace=True)

    def snapshot(self, state):
        """A copy that later forwards never write into."""
        self._check_fresh(state)
        return dataclasses.replace(self._copy(state), inplace=False)

    # -- reading -------------------------------------------------------------------------------
    def _dequantized(self, groups: _Groups, n: int):
        """Keys, values ``[B, H, n group, D]`` of the first ``n`` group slots, and their positions."""
        kc, ks, kz, vc, vs, vz = (x[:, :, :n] for x in groups.tensors())
        keys = dequantize_kv(_unpack(kc, self.bits), ks, kz).flatten(2, 3)
        values = dequantize_kv(_unpack(vc, self.bits), vs, vz).flatten(2, 3)
        idx = groups.index[:n]
        pos = idx[:, None] * self.group + torch.arange(self.group, device=idx.device)
        pos = pos.masked_fill(idx[:, None] < 0, -1)
        return keys, values, pos.flatten()

    def _quantize(self, k, v):
        """Whole groups ``k [B, H, m, D]``, ``v`` (``m`` a multiple of ``group``): packed codes, scales,
        zeros (the ``_Groups`` layout), and their dequantised keys and values."""
        kg, vg = k.unflatten(2, (-1, self.group)), v.unflatten(2, (-1, self.group))  # [B, H, n, group, D]
        kq, ks, kz = quantize_kv(kg, self.bits, -2)  # per channel over the group's tokens
        vq, vs, vz = quantize_kv(vg, self.bits, -1)  # per token over its channels
        deq = dequantize_kv(kq, ks, kz).flatten(2, 3), dequantize_kv(vq, vs, vz).flatten(2, 3)
        return (_pack(kq, self.bits), ks, kz, _pack(vq, self.bits), vs, vz), deq

    def forward(self, q, k, v, state):
        """:func:`course_lib.memory.reference.quantized_reference` is the rule."""
        check_input(self, q, k, v, state, QuantizedState)
        return self.forward_unchecked(q, k, v, state)

    def forward_unchecked(self, q, k, v, state):
        self._check_fresh(state)
        n, t, g = state.length, q.shape[2], self.group
        q_before, q_after = self.quantized_count(n), self.quantized_count(n + t)
        ex = state.exact
        held = q_before // g if self.window is None else self.ring_groups
        gk, gv, gpos = self._dequantized(state.groups, held)
        k_det, v_det = k.detach(), v.detach()
        new_codes, ck, cv = None, k.new_zeros(*k.shape[:2], 0, k.shape[3]), v.new_zeros(*v.shape[:2], 0, v.shape[3])
        if q_after > q_before and (self.window is None or self.ring_groups):  # groups quantised in this chunk
            old = torch.arange(q_before, min(n, q_after), device=k.device)  # in the residual ring
            src_k = torch.cat([ex.k[:, :, old % ex.pos.shape[0]], k_det[:, :, :max(0, q_after - n)]], 2)
            src_v = torch.cat([ex.v[:, :, old % ex.pos.shape[0]], v_det[:, :, :max(0, q_after - n)]], 2)
            new_codes, (ck, cv) = self._quantize(src_k, src_v)
        dev = q.device
        cpos = torch.arange(q_before, q_before + ck.shape[2], device=dev)
        chunk = torch.arange(n, n + t, device=dev)
        pos = torch.cat([gpos, ex.pos, cpos, chunk])  # [P]
        quant = torch.cat([torch.ones_like(gpos, dtype=torch.bool), torch.zeros_like(ex.pos, dtype=torch.bool),
                           torch.ones_like(cpos, dtype=torch.bool), torch.zeros_like(chunk, dtype=torch.bool)])
        i = chunk[:, None]  # [T, 1]
        qi = (i - self.residual).clamp(min=0) // g * g  # Q(i): what the cache held quantised before token i
        mask = (pos >= 0) & (pos <= i) & torch.where(quant, pos < qi, pos >= qi)
        if self.window is not None:
            mask &= pos > i - self.window
        keys = torch.cat([gk, ex.k, ck, k], 2)
        values = torch.cat([gv, ex.v, cv, v], 2)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return out, self._write(state, k_det, v_det, new_codes, q_before, q_after)

    def _write(self, state, k, v, codes, q_before, q_after):
        n, t, g = state.length, k.shape[2], self.group
        groups, exact = state.groups, state.exact
        if self.window is None:
            need = q_after // g
            if not state.inplace or groups.index.shape[0] < need:
                if groups.written != n or groups.index.shape[0] < need:  # branching, or full: copy
                    cap = groups.index.shape[0]
                    while cap < need:
                        cap *= 2
                    groups = groups.resized(q_before // g, cap, n)
        elif not state.inplace:
            groups = groups.resized(groups.index.shape[0], groups.index.shape[0], n)
        if not state.inplace:
            exact = exact.clone()
        if codes is not None:
            first, last = q_before // g, q_after // g
            if self.window is None:
                for dst, src in zip(groups.tensors(), codes):
                    dst[:, :, first:last].copy_(src)
                torch.arange(first, last, out=groups.index[first:last])
            elif self.ring_groups:
                skip = max(0, last - first - self.ring_groups)  # only the newest ring_groups can stay
                slots = torch.arange(first + skip, last, device=k.device) % self.ring_groups
                for dst, src in zip(groups.tensors(), codes):
                    dst.index_copy_(2, slots, src[:, :, skip:])
                groups.index.index_copy_(0, slots, torch.arange(first + skip, last, device=k.device))
        e = exact.pos.shape[0]
        a = max(0, t - e)  # only the chunk's newest e tokens can stay
        slots = torch.arange(n + a, n + t, device=k.device) % e
        exact.k.index_copy_(2, slots, k[:, :, a:])
        exact.v.index_copy_(2, slots, v[:, :, a:])
        exact.pos.index_copy_(0, slots, torch.arange(n + a, n + t, device=k.device))
        groups.written = n + t
        return dataclasses.replace(state, groups=groups, exact=exact, length=n + t)
