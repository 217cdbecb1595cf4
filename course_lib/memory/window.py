r"""Window and attention-sink memories: the last ``n_c`` pairs, plus the first ``S`` for sinks.

``WindowMemory(window=n_c)``: the query at position ``i`` attends to
``K_{[i-n_c+1, i]}, V_{[i-n_c+1, i]}`` -- exact for recent tokens, blind beyond ``n_c``::

    Mem = (K_{[i-n_c+1, i]}, V_{[i-n_c+1, i]})

``SinkMemory(sinks=S, window=n_c)`` (StreamingLLM) also keeps the first ``S`` pairs, which
soak up attention that has nowhere better to go and keep the softmax stable.

Storage: one :class:`~course_lib.memory._slots.SlotBuffer` of ``S + n_c`` slots. The first
``S`` slots hold positions ``0..S-1``; the other ``n_c`` are a ring: position ``p >= S`` is
written in place into slot ``S + (p - S) % n_c``, with ``p`` stored beside it. A chunk of any
length is exact: its queries see the held slots and the chunk's own keys through a mask on
the stored positions (``causal_mask(window=n_c, sinks=S)`` semantics, whatever the chunking).
"""

from __future__ import annotations

import torch

from .._checks import check_positive_int
from ._slots import SlotMemory, SlotState, attend, write_ring

__all__ = ["WindowMemory", "SinkMemory", "WindowState", "SinkState"]


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
    label_format = "window n_c = {window}"
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
            buf.k[:, :, n:n + m].copy_(k[:, :, :m])
            buf.v[:, :, n:n + m].copy_(v[:, :, :m])
            torch.arange(n, n + m, out=buf.pos[n:n + m])
        first = max(n, s, n + t - w)  # the newest n_c positions >= S of the chunk go to the ring
        if first < n + t:
            a = first - n
            write_ring(buf, s, w, first - s, k[:, :, a:], v[:, :, a:], first)
        return self._successor(state, buf, n + t)

    def forward(self, q, k, v, state):
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
    """

    name = "sink"
    title = "sinks + window"
    state_type = SinkState
    label_format = "sink S = {sinks}, n_c = {window}"

    def __init__(self, sinks: int, window: int):
        super().__init__(window)
        self.sinks = check_positive_int("sinks", sinks, minimum=0)

    @classmethod
    def example_sizes(cls, slots=8, *, n_heads=2):
        sinks = min(4, max(1, slots // 4))  # StreamingLLM keeps 4
        return {"sinks": sinks, "window": max(1, slots - sinks)}

