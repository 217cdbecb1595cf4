r"""``FullMemory``: the plain KV cache, ``Mem = (K_{<=i}, V_{<=i})``.

The query at position ``i`` attends to keys ``0..i``: exactly causal attention. A slot
memory like the others, whose slot ``j`` holds position ``j``: the cache lives in a
preallocated :class:`~course_lib.memory._slots.SlotBuffer` written in place (capacity
doubles when full, so decoding allocates ``O(log m)`` times in all). A state is a view
``buffer[:length]``: writing positions ``>= length`` never changes an older state's meaning,
and continuing from an older state (branching) first copies the buffer, so every kept state
stays valid without :meth:`~SlotMemory.snapshot`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import check_positive_int
from ..attention import causal_mask
from ..kv_cache import kv_cache_bytes
from ._slots import SlotBuffer, SlotMemory, SlotState, all_held_and_causal
from ._state import check_input, new_meta

__all__ = ["FullMemory", "FullState"]


class FullState(SlotState):
    """The first ``length`` slots of ``buffer`` hold the pairs of positions ``0..length-1``."""

    @property
    def keys(self) -> torch.Tensor:
        """``K_{<=i}``: ``[B, H, m, D]`` view of the cached keys."""
        return self.buffer.k[:, :, : self.length]

    @property
    def values(self) -> torch.Tensor:
        return self.buffer.v[:, :, : self.length]


def _grown(buf: SlotBuffer, length: int, capacity: int) -> SlotBuffer:
    """A new buffer of ``capacity`` slots holding the first ``length`` pairs of ``buf``."""
    b, h, _, d = buf.k.shape
    k = buf.k.new_empty(b, h, capacity, d)
    v = buf.v.new_empty(b, h, capacity, buf.v.shape[-1])
    k[:, :, :length].copy_(buf.k[:, :, :length])
    v[:, :, :length].copy_(buf.v[:, :, :length])
    return SlotBuffer(k, v, None, written=length)


class FullMemory(SlotMemory):
    """The full KV cache: equals causal attention; grows by one pair per token.

    Args:
        initial_capacity: slots preallocated by ``init_state`` (grows by doubling).
    """

    name = "full"
    title = "full KV cache"
    fixed_size = False
    state_type = FullState

    def __init__(self, initial_capacity: int = 256):
        super().__init__()
        self.initial_capacity = check_positive_int("initial_capacity", initial_capacity)

    @property
    def n_slots(self) -> int:
        """Slots preallocated by ``init_state``; the buffer doubles whenever it is full."""
        return self.initial_capacity

    def init_state(self, batch, n_heads, head_dim, *, device=None, dtype=None, v_dim=None) -> FullState:
        meta = new_meta(batch, n_heads, head_dim, device=device, dtype=dtype, v_dim=v_dim)
        kw = dict(device=meta["device"], dtype=meta["dtype"])
        k = torch.empty(batch, n_heads, self.initial_capacity, head_dim, **kw)
        v = torch.empty(batch, n_heads, self.initial_capacity, meta["v_dim"], **kw)
        return FullState(**meta, buffer=SlotBuffer(k, v, None), length=0)

    def check(self, q, k, v, state) -> None:
        check_input(self, q, k, v, state, FullState)  # any capacity: the buffer grows

    def reserve(self, state: FullState, n_tokens: int = 0) -> FullState:
        """Make room for ``n_tokens`` more tokens now, so decoding them allocates nothing."""
        need = state.length + n_tokens
        buf = state.buffer
        if buf.written != state.length or buf.k.shape[2] < need:
            return self._with(state, _grown(buf, state.length, max(need, buf.k.shape[2])), state.length)
        return state

    def snapshot(self, state: FullState) -> FullState:
        """The state itself: later forwards never write into the first ``length`` slots."""
        return state

    # -- the two hooks ---------------------------------------------------------------------
    def slots(self, q, state: FullState):
        """Every cached pair, visible to every query of the chunk."""
        held = torch.ones(state.length, dtype=torch.bool, device=q.device)
        return state.keys, state.values, all_held_and_causal(held, q.shape[2])

    def update(self, state: FullState, k, v, mass=None) -> FullState:
        """``Mem = Update(S_kv, Mem_pre)``: write the chunk's pairs after the cached ones."""
        t, n = k.shape[2], state.length
        buf = state.buffer
        if buf.written != n or buf.k.shape[2] < n + t:  # branching, or full: copy into a new buffer
            capacity = buf.k.shape[2]
            while capacity < n + t:
                capacity *= 2
            buf = _grown(buf, n, capacity)
        buf.k[:, :, n:n + t].copy_(k.detach() if k.requires_grad else k)
        buf.v[:, :, n:n + t].copy_(v.detach() if v.requires_grad else v)
        buf.written = n + t
        return self._with(state, buf, n + t)

    def append(self, state: FullState, k, v) -> FullState:
        """:meth:`update` (the name a KV cache usually gives it)."""
        return self.update(state, k, v)

    @staticmethod
    def _with(state: FullState, buf: SlotBuffer, length: int) -> FullState:
        # positional: the decoding step builds one per token, and dataclasses.replace costs more
        return FullState(state.batch, state.n_heads, state.head_dim, state.v_dim, state.dtype, state.device,
                         buf, length)

    # -- protocol ----------------------------------------------------------------------------
    def forward(self, q, k, v, state: FullState):
        """:func:`course_lib.memory.reference.full_reference` is the rule (causal attention)."""
        self.check(q, k, v, state)
        return self.forward_unchecked(q, k, v, state)

    def forward_unchecked(self, q, k, v, state: FullState):
        """:meth:`forward` without the argument checks (``MemoryLM``'s decoding step checks once)."""
        new_state = self.update(state, k, v)
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

    def slot_count(self, state: FullState) -> int:
        return state.length

    def nbytes(self, state: FullState) -> int:
        """Bytes of the ``m`` cached pairs, :func:`~course_lib.kv_cache.kv_cache_bytes` of one layer (not
        the slots reserved beyond them)."""
        return kv_cache_bytes(1, state.n_heads, state.head_dim, state.length, state.batch,
                              state.buffer.k.element_size(), v_dim=state.v_dim)

    def order(self, state: FullState) -> torch.Tensor:
        return torch.arange(state.length, device=state.device)

    def held(self, state: FullState):
        return state.keys, state.values

    def spans(self, state: FullState) -> list[tuple[int, int]]:
        return [(j, j) for j in range(state.length)]

    def slots_after(self, context: int) -> int:
        return context
