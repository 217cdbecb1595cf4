r"""Window and attention-sink memories: the last ``n_c`` pairs, plus the first ``S`` for sinks.

``WindowMemory(window=n_c)``: the query at position ``i`` attends to
``K_{[i-n_c+1, i]}, V_{[i-n_c+1, i]}`` -- exact for recent tokens, blind beyond ``n_c``::

    Mem = (K_{[i-n_c+1, i]}, V_{[i-n_c+1, i]})

``SinkMemory(sinks=S, window=n_c)`` (StreamingLLM) also keeps the first ``S`` pairs, which
soak up attention that has nowhere better to go and keep the softmax stable.

Positions, two ways (``SinkMemory(..., positions=...)``):

* ``"absolute"`` (the default, kept for comparison): keys are stored rotated at their absolute
  position ``j``, so the query at ``i`` sees a sink at distance ``i - j``, as large as the text;
* ``"cache"`` (StreamingLLM's, Xiao et al. 2023 section 3.2: "positions within the cache rather
  than those in the original text"; streaming-llm's ``pos_shift``, ``key_position_ids =
  arange(kv_seq_len)``): keys are stored *unrotated*; when the query at ``i`` reads its cache
  ``[sinks 0..S-1, window in age order]``, the key in slot ``c`` is rotated by ``c`` and the query
  by its own slot ``min(i, S + n_c - 1)``. A sink then sits at distance at most ``S + n_c - 1``,
  a window key at ``i - j`` as before. Before the first ``S + n_c`` tokens the cache *is* the
  text, so the two agree. :func:`course_lib.memory.reference.sink_reference` builds each query's cache;
  the fast form uses ``(R_a q) . (R_b k) = (R_{a+s} q) . (R_{b+s} k)``: window keys rotated by
  ``j`` and read with the query rotated by ``i``, sinks rotated by ``j`` and read with the query
  rotated by its slot, in one softmax (the two rotated queries side by side, each key padded
  with zeros on the other side).

Storage: one :class:`~course_lib.memory._slots.SlotBuffer` of ``S + n_c`` slots. The first
``S`` slots hold positions ``0..S-1``; the other ``n_c`` are a ring: position ``p >= S`` is
written in place into slot ``S + (p - S) % n_c``, with ``p`` stored beside it. A chunk of any
length is exact: its queries see the held slots and the chunk's own keys through a mask on
the stored positions (``causal_mask(window=n_c, sinks=S)`` semantics, whatever the chunking).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import check_positive_int
from ._slots import SlotMemory, SlotState, attend, write_ring
from .base import Rotation

__all__ = ["WindowMemory", "SinkMemory", "WindowState", "SinkState", "POSITIONS"]

POSITIONS = ("absolute", "cache")


class WindowState(SlotState):
    """State of a window memory: ``buffer`` (``n_c`` slots) after ``length`` tokens."""


class SinkState(WindowState):
    """State of a sink memory: ``buffer`` (``S + n_c`` slots) after ``length`` tokens."""


class WindowMemory(SlotMemory):
    """The last ``window`` pairs: the query at ``i`` sees keys ``max(0, i-n_c+1)..i``.

    Args:
        window: ``n_c >= 1``, the number of pairs kept (the current token included).

    >>> mem = WindowMemory(window=4)
    >>> state = mem.init_state(1, 1, 2)
    >>> x = torch.arange(5.0).view(1, 1, 5, 1).expand(1, 1, 5, 2)
    >>> out, state = mem(x, x, x, state)
    >>> mem.spans(state)
    [(1, 1), (2, 2), (3, 3), (4, 4)]
    """

    name = "window"
    title = "window"
    symbols = {"window": "n_c"}
    state_type = WindowState

    def __init__(self, window: int):
        super().__init__()
        self.window = check_positive_int("window", window)
        self.sinks = 0

    @classmethod
    def example_sizes(cls, slots=8, *, n_heads=2):
        return {"window": slots}

    @property
    def n_slots(self) -> int:
        return self.sinks + self.window

    def slots(self, q, state):
        buf = self._read(state)
        n, t, w, s = state.length, q.shape[2], self.window, self.sinks
        chunk = torch.arange(n, n + t, device=q.device)
        i = chunk[:, None]  # [T, 1] query positions
        j = torch.cat([buf.pos, chunk])[None, :]  # [1, P + T] key positions (-1 = empty slot)
        mask = (j >= 0) & (j <= i) & ((j > i - w) | (j < s))  # [T, P + T]
        return buf.k, buf.v, mask

    def update(self, state, k, v, mass=None):
        n, t, w, s = state.length, k.shape[2], self.window, self.sinks
        buf = self._writable(state)
        k, v = k.detach(), v.detach()
        if n < s:  # positions n.. that are sinks go to slots n..S-1, once and for all
            m = min(s - n, t)
            buf.keep(n, n + m)
            buf.k[:, :, n:n + m].copy_(k[:, :, :m])
            buf.v[:, :, n:n + m].copy_(v[:, :, :m])
            torch.arange(n, n + m, out=buf.pos[n:n + m])
        first = max(n, s, n + t - w)  # the newest n_c positions >= S of the chunk go to the ring
        if first < n + t:
            a = first - n
            write_ring(buf, s, w, first - s, k[:, :, a:], v[:, :, a:], first)
        return self._successor(state, buf, n + t)

    def forward(self, q, k, v, state):
        """:func:`course_lib.memory.reference.window_reference` is the rule (with sinks,
        :func:`course_lib.memory.reference.sink_reference`)."""
        if q.shape[2] != 1 or self._needs_grad(q, k, v):
            return super().forward(q, k, v, state)
        # decoding: write the new pair first, then attend to the filled slots -- no mask needed,
        # since slots [0, min(i+1, S+n_c)) hold exactly keys 0..S-1 and i-n_c+1..i
        self.check(q, k, v, state)
        new_state = self.update(state, k, v)
        m = min(new_state.length, self.n_slots)
        buf = new_state.buffer
        return attend(q, buf.k[:, :, :m], buf.v[:, :, :m]), new_state

    def spans(self, state) -> list[tuple[int, int]]:
        """Positions held, oldest first: the sinks ``0..S-1``, then the window."""
        n = state.length
        held = list(range(min(n, self.sinks))) + list(range(max(self.sinks, n - self.window), n))
        return [(p, p) for p in held]

    def parts(self, state) -> list[tuple[str, int]]:
        """``[("sinks", S held), ("Mem", the window's slots held)]`` (empty groups left out)."""
        n = state.length
        groups = [("sinks", min(n, self.sinks)), ("Mem", max(0, n - max(self.sinks, n - self.window)))]
        return [(label, size) for label, size in groups if size]


class SinkMemory(WindowMemory):
    """Attention sinks plus a window: keys ``0..S-1`` and ``max(0, i-n_c+1)..i``.

    Args:
        sinks: ``S >= 0`` first pairs kept for ever (``S = 0`` is a :class:`WindowMemory`).
        window: ``n_c >= 1`` most recent pairs kept.
        positions: ``"absolute"`` (default: keys rotated at their position in the text, by
            ``MemoryLM``) or ``"cache"`` (StreamingLLM: keys stored unrotated and rotated by their
            slot in the cache when read; the memory ``rotates_itself``). See the module docstring.
    """

    name = "sink"
    title = "sinks + window"
    state_type = SinkState
    label_name = "sink"
    symbols = {"sinks": "S", "window": "n_c"}

    def __init__(self, sinks: int, window: int, positions: str = "absolute"):
        super().__init__(window)
        self.sinks = check_positive_int("sinks", sinks, minimum=0)
        if positions not in POSITIONS:
            raise ValueError(f"positions must be 'absolute' (keys rotated at their position in the text) or "
                             f"'cache' (StreamingLLM: rotated by their slot in the cache), got {positions!r}")
        self.positions = positions
        if positions == "cache":
            self.rotates_itself = True  # MemoryLM hands over unrotated q, k and rotary=Rotation(...)

    def label_details(self) -> str:
        """StreamingLLM's positions within the cache, when it uses them."""
        return " (cache positions)" if self.positions == "cache" else ""

    @classmethod
    def example_sizes(cls, slots=8, *, n_heads=2):
        sinks = min(4, max(1, slots // 4))  # StreamingLLM keeps 4
        return {"sinks": sinks, "window": max(1, slots - sinks)}

    def forward(self, q, k, v, state, *, rotary: Rotation | None = None):
        """``rotary``: for ``positions="cache"``, the :class:`Rotation` of the chunk (``MemoryLM``
        passes it); without it the keys and queries are read as given (no positions at all).
        :func:`course_lib.memory.reference.sink_reference` is the rule (``positions`` and ``rotary`` alike)."""
        if rotary is None:
            return super().forward(q, k, v, state)
        if self.positions != "cache":
            raise TypeError(f"rotary is for SinkMemory(positions='cache'); this one has positions="
                            f"{self.positions!r}, whose keys MemoryLM rotates before the call")
        self.check(q, k, v, state)
        return self._attend_cache(q, k, v, state, rotary), self.update(state, k, v)

    def forward_unchecked(self, q, k, v, state, rotary: Rotation | None = None):
        if rotary is None:
            return super().forward_unchecked(q, k, v, state)
        return self._attend_cache(q, k, v, state, rotary), self.update(state, k, v)

    def _attend_cache(self, q, k, v, state, rotary: Rotation):
        """StreamingLLM's read: every key rotated by its position ``j``, sinks (``j < S``) scored with
        the query rotated by its cache slot ``min(i, S + n_c - 1)``, the rest with it rotated by ``i``."""
        buf = self._read(state)
        n, t, s, d = state.length, q.shape[2], self.sinks, q.shape[-1]
        keys, values, mask = self.slots(q, state)  # held slots (unrotated), their mask [T, P + T]
        keys, values = torch.cat([keys, k], 2), torch.cat([values, v], 2)
        i = torch.arange(n, n + t, device=q.device)  # [T] query positions
        j = torch.cat([buf.pos, i])  # [P + T] key positions (-1 = empty, masked)
        keys = rotary.at(keys, j.clamp(min=0))  # R_j k_j
        q_text = rotary.at(q, i)  # R_i q_i: for window keys, distance i - j
        q_cache = rotary.at(q, i.clamp(max=s + self.window - 1))  # R_c q_i, c its cache slot
        sink = (j < s) & (j >= 0)  # [P + T]
        zero = torch.zeros((), dtype=keys.dtype, device=keys.device)
        wide_k = torch.cat([torch.where(sink[:, None], keys, zero), torch.where(sink[:, None], zero, keys)], -1)
        wide_q = torch.cat([q_cache, q_text], -1)  # [B, H, T, 2D]: (q_cache . k) on sinks, (q_text . k) elsewhere
        return F.scaled_dot_product_attention(wide_q, wide_k, values, attn_mask=mask, scale=d ** -0.5,
                                              enable_gqa=q.shape[1] != keys.shape[1])
