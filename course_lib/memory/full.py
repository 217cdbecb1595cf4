r"""``FullMemory``: the plain KV cache, ``Mem = (K_{<=i}, V_{<=i})``.

The query at position ``i`` attends to keys ``0..i``: exactly causal attention. The cache
lives in a preallocated buffer written in place (capacity doubles when full, so decoding
allocates ``O(log m)`` times in all). A state is a view ``buffer[:length]``: writing
positions ``>= length`` never changes an older state's meaning, and continuing from an
older state (branching) first copies the buffer, so every kept state stays valid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._checks import check_positive_int
from ..attention import causal_mask
from .base import Memory, check_state, resolve

__all__ = ["FullMemory", "FullState"]


class _Buffer:
    """Shared storage of the cache; ``length`` is how far the newest state has written."""

    __slots__ = ("k", "v", "length")

    def __init__(self, k: torch.Tensor, v: torch.Tensor, length: int):
        self.k, self.v, self.length = k, v, length

    def grown(self, length: int, capacity: int) -> _Buffer:
        b, h, _, d = self.k.shape
        k = self.k.new_empty(b, h, capacity, d)
        v = self.v.new_empty(b, h, capacity, self.v.shape[-1])
        k[:, :, :length].copy_(self.k[:, :, :length])
        v[:, :, :length].copy_(self.v[:, :, :length])
        return _Buffer(k, v, length)


@dataclass
class FullState:
    buffer: _Buffer
    length: int
    batch: int
    n_heads: int
    head_dim: int
    v_dim: int
    dtype: torch.dtype
    device: torch.device

    @property
    def keys(self) -> torch.Tensor:
        """``K_{<=i}``: ``[B, H, m, D]`` view of the cached keys."""
        return self.buffer.k[:, :, : self.length]

    @property
    def values(self) -> torch.Tensor:
        return self.buffer.v[:, :, : self.length]


class FullMemory(Memory):
    """The full KV cache: equals causal attention; grows by one pair per token.

    Args:
        initial_capacity: slots preallocated by ``init_state`` (grows by doubling).
    """

    holds_slots = True
    supports_gqa = True

    def __init__(self, initial_capacity: int = 256):
        super().__init__()
        self.initial_capacity = check_positive_int("initial_capacity", initial_capacity)

    def init_state(self, batch, n_heads, head_dim, *, device=None, dtype=None, v_dim=None) -> FullState:
        check_positive_int("batch", batch)
        check_positive_int("n_heads", n_heads)
        check_positive_int("head_dim", head_dim)
        device, dtype = resolve(device, dtype)
        v_dim = head_dim if v_dim is None else v_dim
        k = torch.empty(batch, n_heads, self.initial_capacity, head_dim, device=device, dtype=dtype)
        v = torch.empty(batch, n_heads, self.initial_capacity, v_dim, device=device, dtype=dtype)
        return FullState(_Buffer(k, v, 0), 0, batch, n_heads, head_dim, v_dim, dtype, device)

    def reserve(self, state: FullState, n_tokens: int) -> FullState:
        """Make room for ``n_tokens`` more tokens now, so decoding them allocates nothing."""
        need = state.length + n_tokens
        buf = state.buffer
        if buf.length != state.length or buf.k.shape[2] < need:
            buf = buf.grown(state.length, max(need, buf.k.shape[2]))
            return FullState(buf, state.length, *_meta(state))
        return state

    def append(self, state: FullState, k: torch.Tensor, v: torch.Tensor) -> FullState:
        """``Mem = Update(S_kv, Mem_pre)``: write the chunk's pairs after the cached ones."""
        t, n = k.shape[2], state.length
        buf = state.buffer
        if buf.length != n or buf.k.shape[2] < n + t:  # branching, or full: copy into a new buffer
            capacity = buf.k.shape[2]
            while capacity < n + t:
                capacity *= 2
            buf = buf.grown(n, capacity)
        buf.k[:, :, n:n + t].copy_(k.detach() if k.requires_grad else k)
        buf.v[:, :, n:n + t].copy_(v.detach() if v.requires_grad else v)
        buf.length = n + t
        return FullState(buf, n + t, *_meta(state))

    def forward(self, q, k, v, state: FullState):
        check_state("FullMemory", q, k, v, state)
        return self.forward_unchecked(q, k, v, state)

    def forward_unchecked(self, q, k, v, state: FullState):
        """:meth:`forward` without the argument checks (``MemoryLM``'s decoding step checks once)."""
        new_state = self.append(state, k, v)
        t = q.shape[2]
        keys, values = new_state.keys, new_state.values
        if k.requires_grad or v.requires_grad:  # training: let gradients reach the chunk's own k, v
            keys = torch.cat([state.keys, k], dim=2)
            values = torch.cat([state.values, v], dim=2)
        gqa = q.shape[1] != keys.shape[1]  # the kernel reads each key/value head for its group: no copies
        if t == 1:
            out = F.scaled_dot_product_attention(q, keys, values, enable_gqa=gqa)
        elif state.length == 0:
            out = F.scaled_dot_product_attention(q, keys, values, is_causal=True, enable_gqa=gqa)
        else:
            mask = causal_mask(t, new_state.length, device=q.device)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=gqa)
        return out, new_state

    def nbytes(self, state: FullState) -> int:
        """Bytes of the cached pairs: ``2 * B * H * m * d_h * bytes_per_value`` (one layer)."""
        itemsize = state.buffer.k.element_size()
        return state.batch * state.n_heads * state.length * (state.head_dim + state.v_dim) * itemsize

    def spans(self, state: FullState) -> list[tuple[int, int]]:
        return [(j, j) for j in range(state.length)]


def _meta(state: FullState):
    return (state.batch, state.n_heads, state.head_dim, state.v_dim, state.dtype, state.device)
