r"""Key/value slots written in place: the storage of window, sink, segment, compressive and kNN memories.

A :class:`SlotBuffer` is preallocated once: ``k [B, H, P, D]``, ``v [B, H, P, D_v]`` and the
absolute position each slot holds, ``pos [P]`` (``-1`` = empty). Memories use parts of it
as ring buffers: position ``p`` goes to slot ``offset + p % capacity``, so a new pair
overwrites the oldest one in place -- no concatenation per token, no roll-and-copy -- and
the stored positions say which queries may see which slot.

A :class:`SlotMemory` attends to ``[slots held from before the chunk, the chunk]`` in one
softmax (:func:`attend_slots`). Subclasses say which slots each query sees (``slots``) and
how the chunk is written (``update``); :class:`~course_lib.memory.MultiMemory` uses the same
two hooks and the same softmax to concatenate memories. ``spans(state)`` says which
positions each slot stands for (oldest first), ``parts(state)`` how they group
(``sinks``, ``CMem``, ``Mem``), and ``held(state)`` returns the pairs in that order.
A :class:`RingMemory` keeps the last ``n_slots`` pairs in one ring (segment, kNN).

Keeping states. ``forward`` never changes what an input state means: every state can be
kept, inspected and continued from (branched). Without autograd, a forward from the newest
state of a buffer writes the chunk in place and first keeps what it overwrites (the old
pairs of the slots it writes, a few per token: ``SlotBuffer.keep``); an older state, when
read or branched, is a copy of the buffer with those writes undone (``SlotBuffer.restored``),
slot for slot what it held, so a branch computes bit for bit what a fresh replay computes.
The kept pairs are this scheme's slack: once a buffer has kept ``n_slots`` of them, the next
forward writes into a fresh copy instead (one copy of the buffer per ``n_slots`` slots
written, like a Python list's growth: amortised, not per token), so an old state holds at
most about twice the buffer's bytes. With autograd on (training) a forward writes into a copy
and freezes the buffer it read (the graph may have saved it).

A decoding loop that only ever continues from the newest state may call
``state = memory.reserve(state, n_tokens)`` first: the reserved state owns its buffer, and
forwards from it write in place, keeping nothing (no allocation per step;
``state.buffer.k.data_ptr()`` stays the same). Such a stream of states is single-use: only
its newest state can be continued or read, an older one raises ``ValueError``;
``memory.snapshot(state)`` gives a copy that later forwards never touch.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..kv_cache import kv_cache_bytes
from ._state import BufferedStates, StateMeta, check_input, new_meta
from .base import Memory

__all__ = ["SlotBuffer", "SlotState", "SlotMemory", "RingMemory", "ring_ranges", "write_ring", "attend",
           "attend_slots", "causal_chunk_mask"]


class SlotBuffer:
    """Preallocated slots: ``k [B, H, P, D]``, ``v [B, H, P, D_v]``, ``pos [P]`` (``-1`` = empty).

    ``mass [B, H, P]`` (optional) is the attention each slot has received (``most_used``).
    ``written`` is the length of the newest state that wrote into this buffer.

    Undoing in-place writes (see the module docstring): ``undo`` lists, oldest first, what
    each in-place write from an unreserved state overwrote, ``(length written from, d0, d1,
    k, v, pos, mass)`` of slots ``d0:d1`` (``k, v`` ``None`` when only positions and mass
    changed). ``kept`` counts the slots kept (the slack used); ``recording`` is on during such
    a write; ``frozen``: never to be written in place again (an autograd graph may hold it).
    """

    __slots__ = ("k", "v", "pos", "mass", "written", "undo", "kept", "recording", "frozen")

    def __init__(self, k, v, pos, mass=None, written=0):
        self.k, self.v, self.pos, self.mass, self.written = k, v, pos, mass, written
        self.undo, self.kept, self.recording, self.frozen = [], 0, False, False

    @classmethod
    def empty(cls, batch, heads, n_slots, head_dim, v_dim, *, device, dtype, mass=False) -> SlotBuffer:
        # zeros, not garbage: an empty slot is masked out, and 0 * NaN would still be NaN
        k = torch.zeros(batch, heads, n_slots, head_dim, device=device, dtype=dtype)
        v = torch.zeros(batch, heads, n_slots, v_dim, device=device, dtype=dtype)
        pos = torch.full((n_slots,), -1, dtype=torch.long, device=device)
        m = torch.zeros(batch, heads, n_slots, device=device, dtype=dtype) if mass else None
        return cls(k, v, pos, m)

    def __repr__(self) -> str:
        if self.pos is None:  # a cache whose slot j holds position j (FullMemory)
            return f"SlotBuffer(slots={self.k.shape[2]}, written={self.written})"
        held = int((self.pos >= 0).sum()) if self.pos.device.type != "meta" else "?"
        return f"SlotBuffer(slots={self.pos.shape[0]}, held={held}, written={self.written})"

    def clone(self, written: int) -> SlotBuffer:
        mass = None if self.mass is None else self.mass.clone()
        pos = None if self.pos is None else self.pos.clone()
        return SlotBuffer(self.k.clone(), self.v.clone(), pos, mass, written)

    def keep(self, d0: int, d1: int, kv: bool = True) -> None:
        """Before an in-place write into slots ``d0:d1``: keep what they hold (their pairs unless
        ``kv=False``, their positions and mass), so that older states can be restored."""
        if not self.recording:
            return
        k, v = (self.k[:, :, d0:d1].clone(), self.v[:, :, d0:d1].clone()) if kv else (None, None)
        mass = None if self.mass is None else self.mass[:, :, d0:d1].clone()
        self.undo.append((self.written, d0, d1, k, v, self.pos[d0:d1].clone(), mass))
        self.kept += d1 - d0 if kv else 1 + (d1 - d0) // self.k.shape[-1]  # a position/mass row: ~1/D of a pair

    def overwritten(self, length: int) -> bool:
        """Whether a write from a state after ``length`` tokens or later changed this buffer since."""
        return bool(self.undo) and self.undo[-1][0] >= length

    def restored(self, length: int) -> SlotBuffer:
        """A copy holding what the state after ``length`` tokens held: the later writes undone."""
        out = self.clone(length)
        for n, d0, d1, k, v, pos, mass in reversed(self.undo):
            if n < length:
                break
            if k is not None:
                out.k[:, :, d0:d1] = k
                out.v[:, :, d0:d1] = v
            out.pos[d0:d1] = pos
            if mass is not None:
                out.mass[:, :, d0:d1] = mass
        return out


def ring_ranges(offset: int, capacity: int, index: int, t: int):
    """Where ``t <= capacity`` consecutive items starting at ring index ``index`` go.

    Yields ``(dst_start, dst_stop, src_start, src_stop)``: one range, or two when the
    ring wraps around. Slot of ring index ``j`` = ``offset + j % capacity``.

    >>> list(ring_ranges(0, 4, 3, 2))
    [(3, 4, 0, 1), (0, 1, 1, 2)]
    """
    s = index % capacity
    a = min(t, capacity - s)
    yield offset + s, offset + s + a, 0, a
    if a < t:
        yield offset, offset + t - a, a, t


def write_ring(buf: SlotBuffer, offset, capacity, index, k, v, first_pos, pos_step=1) -> None:
    """Write ``k, v [B, H, t, D]`` (``t <= capacity``) at ring index ``index`` of ``buf``'s ring
    ``[offset, offset + capacity)``; item ``a`` stands for position ``first_pos + a * pos_step``."""
    for d0, d1, s0, s1 in ring_ranges(offset, capacity, index, k.shape[2]):
        buf.keep(d0, d1)
        buf.k[:, :, d0:d1].copy_(k[:, :, s0:s1])
        buf.v[:, :, d0:d1].copy_(v[:, :, s0:s1])
        if d1 - d0 == 1:
            buf.pos[d0:d1].fill_(first_pos + s0 * pos_step)
        else:
            torch.arange(first_pos + s0 * pos_step, first_pos + s1 * pos_step, pos_step, out=buf.pos[d0:d1])


def attend(q, keys, values, mask=None):
    """``Softmax(q K^T / sqrt(d) + Mask) V`` through the fused kernel (GQA when K has fewer heads)."""
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=q.shape[1] != keys.shape[1])


def causal_chunk_mask(t: int, device) -> torch.Tensor:
    """``[t, t]``: query ``r`` of the chunk sees the chunk's keys ``0..r``."""
    return torch.ones(t, t, dtype=torch.bool, device=device).tril()


def all_held_and_causal(held: torch.Tensor, t: int) -> torch.Tensor:
    """``[T, P + T]``: every query of the chunk sees the ``held [P]`` slots and the chunk causally."""
    return torch.cat([held[None, :].expand(t, -1), causal_chunk_mask(t, held.device)], dim=1)


def attend_slots(memory, q, k, v, state):
    """One softmax over ``[held slots, chunk]``: ``(out, mass)``.

    The slots and their mask come from ``memory.slots(q, state)``; ``mass [B, H, P + T]`` is the
    attention each slot and chunk key received (``None`` unless ``memory.track_mass``).
    """
    keys, values, mask = memory.slots(q, state)
    # the memory is stored detached; the chunk's own k, v keep their gradients
    keys, values = torch.cat([keys, k], dim=2), torch.cat([values, v], dim=2)
    if not memory.track_mass:
        return attend(q, keys, values, mask), None
    scores = (q @ keys.transpose(-2, -1) * q.shape[-1] ** -0.5).masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # [B, H, T, P + T]
    return weights @ values, weights.detach().sum(2)


@dataclass
class SlotState(StateMeta):
    """``length`` tokens seen; their pairs (as many as the memory keeps) in ``buffer``."""

    buffer: SlotBuffer
    length: int
    inplace: bool = False


def _live(x: torch.Tensor) -> bool:
    return x.requires_grad and torch.is_grad_enabled()


class SlotMemory(BufferedStates, Memory):
    """A memory of key/value slots in one :class:`SlotBuffer` of ``n_slots`` slots.

    Subclasses implement ``n_slots``, ``slots(q, state)`` and ``update(state, k, v, mass=None)``.
    """

    holds_slots = True
    supports_gqa = True
    state_type = SlotState
    track_mass = False  # most_used compression needs the attention each slot received

    @property
    def fused_attention(self) -> bool:
        """Its attention over the slots is one ``scaled_dot_product_attention`` call: true unless it
        needs the attention weights themselves (``track_mass``; kNN's scores of the retrieved pairs)."""
        return not self.track_mass

    @property
    @abc.abstractmethod
    def n_slots(self) -> int:
        """``P``, the slots of the buffer."""

    def init_state(self, batch, n_heads, head_dim, *, device=None, dtype=None, v_dim=None):
        meta = new_meta(batch, n_heads, head_dim, device=device, dtype=dtype, v_dim=v_dim)
        buf = SlotBuffer.empty(batch, n_heads, self.n_slots, head_dim, meta["v_dim"],
                               device=meta["device"], dtype=meta["dtype"], mass=self.track_mass)
        return self.state_type(**meta, buffer=buf, length=0)

    # -- the hooks ------------------------------------------------------------------------
    @abc.abstractmethod
    def slots(self, q, state):
        """``(K [B, H, P, D], V [B, H, P, D_v], mask)`` held from before the chunk of queries ``q``.

        ``mask`` (bool, broadcastable to ``[B, H, T, P + T]``) says which of the ``P`` slots
        and then the ``T`` chunk keys each query sees.
        """

    @abc.abstractmethod
    def update(self, state, k, v, mass=None):
        """``Mem = Update(S_kv, Mem_pre)``: the state after the chunk ``k, v``.

        ``mass [B, H, P + T]``: attention received by each slot and chunk key (if tracked).
        Each memory's rule, written plainly, is in :mod:`course_lib.memory.reference`.
        """

    @abc.abstractmethod
    def spans(self, state) -> list[tuple[int, int]]:
        """The first and last position each held slot stands for, in attention order (the
        inspector draws them; ``parts`` counts them)."""

    # -- protocol ------------------------------------------------------------------------
    def check(self, q, k, v, state) -> None:
        """``q, k, v`` fit ``state``, a state this memory made (its type and its number of slots)."""
        check_input(self, q, k, v, state, self.state_type)
        if state.buffer.k.shape[2] != self.n_slots:
            raise ValueError(
                f"the state holds {state.buffer.k.shape[2]} slots but {self!r} keeps {self.n_slots}: "
                "it was made by another memory; use this memory's init_state()"
            )

    def forward(self, q, k, v, state):
        self.check(q, k, v, state)
        out, mass = attend_slots(self, q, k, v, state)
        return out, self.update(state, k, v, mass)

    def _attend(self, q, k, v, state):
        return attend_slots(self, q, k, v, state)

    def slot_count(self, state) -> int:
        """``P``, the slots that ``slots(q, state)`` returns (held or empty)."""
        return self.n_slots

    def nbytes(self, state) -> int:
        """Bytes of the key/value slots, ``B * H * n_slots * (d_h + d_v) * bytes_per_value`` (plus ``mass``)."""
        buf = state.buffer
        extra = 0 if buf.mass is None else buf.mass.numel() * buf.mass.element_size()
        return buf.k.numel() * buf.k.element_size() + buf.v.numel() * buf.v.element_size() + extra

    def order(self, state) -> torch.Tensor:
        """Buffer indices of the held slots, in the order of ``spans(state)`` (by stored position)."""
        buf = self._read(state)
        return buf.pos.argsort()[int((buf.pos < 0).sum()):]

    def held(self, state):
        """The pairs held, ``(K [B, H, n, D], V [B, H, n, D_v])``, in the order of ``spans(state)``."""
        buf = self._read(state)
        order = self.order(state)
        return buf.k[:, :, order], buf.v[:, :, order]

    def parts(self, state) -> list[tuple[str, int]]:
        """One group, ``[("Mem", n)]``: every held slot is one pair as it was written."""
        n = len(self.spans(state))
        return [("Mem", n)] if n else []

    def slots_after(self, context: int) -> int:
        """Analytic: the slots held after ``context`` tokens (the cost model)."""
        return min(context, self.n_slots)

    def slots_read(self, held: int) -> int:
        """Analytic: the held slots that one query attends to (all of them here)."""
        return held

    def cost_per_token(self, config, context: int) -> dict:
        """``bytes = 2 L n_g d_h P b`` for ``P`` slots held (``n_g`` = ``tau`` unless the memory takes
        fewer key/value heads); ``flops = 4 L tau d_h (P_read + 1)``: ``q K^T`` and ``w V`` over the
        slots read and the new token's own pair."""
        L, tau, d, b = config.n_layers, config.n_heads, config.head_dim, config.bytes_per_value
        heads = config.kv_heads if self.supports_gqa else tau
        held = self.slots_after(context)
        return {"bytes": kv_cache_bytes(L, heads, d, held, bytes_per_value=b),
                "flops": 4 * L * tau * d * (self.slots_read(held) + 1)}

    # -- copy-on-write (reading, reserve and snapshot: BufferedStates) ----------------------
    def _writable(self, state) -> SlotBuffer:
        """The buffer to write the chunk into: in place for a reserved state; in place, keeping what
        is overwritten, for the newest state of its buffer without autograd while the slack lasts;
        else a copy."""
        buf = self._read(state)
        if state.inplace:
            return buf
        if torch.is_grad_enabled():
            buf.frozen = True  # this forward's graph may have saved the slots it read
        elif not buf.frozen and buf.written == state.length and buf.kept < self.n_slots:
            buf.recording = True
            return buf
        return buf.clone(state.length)

    def _successor(self, state, buf: SlotBuffer, length: int, **changes):
        buf.written, buf.recording = length, False
        return dataclasses.replace(state, buffer=buf, length=length, **changes)

    @staticmethod
    def _needs_grad(q, k, v) -> bool:
        return _live(q) or _live(k) or _live(v)


class RingMemory(SlotMemory):
    """The last ``n_slots`` pairs in one ring: position ``p`` lives in slot ``p % n_slots``
    (a FIFO: the newest pair overwrites the oldest). Segment and kNN memories."""

    def update(self, state, k, v, mass=None):
        n, t, cap = state.length, k.shape[2], self.n_slots
        buf = self._writable(state)
        a = max(0, t - cap)  # only the chunk's newest cap pairs can stay
        write_ring(buf, 0, cap, n + a, k[:, :, a:].detach(), v[:, :, a:].detach(), n + a)
        return self._successor(state, buf, n + t)

    def spans(self, state) -> list[tuple[int, int]]:
        """Positions held, oldest first."""
        n = state.length
        return [(p, p) for p in range(max(0, n - self.n_slots), n)]
