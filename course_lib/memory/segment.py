r"""Segment-level recurrence (Transformer-XL): the last ``n_m`` pairs from before the chunk.

The text is processed segment by segment. Each segment's queries attend to the memory of
the previous segments' last ``n_m`` pairs (stored with a stop-gradient) and to their own
segment causally; then the memory moves on::

    Mem = FIFO(S_kv^k, Mem_pre)          keep the newest n_m pairs

Unlike a window, what a query sees depends on where the segments start: the first query
of a segment sees ``n_m + 1`` keys, the last one ``n_m + n_s``. Decoding one token at a time
it equals a window of ``n_m + 1``.

Storage: a ring of ``n_m`` slots; position ``p`` lives in slot ``p % n_m``.
"""

from __future__ import annotations

import torch

from .._checks import check_positive_int
from ._slots import RingMemory, SlotState, all_held_and_causal, attend

__all__ = ["SegmentMemory", "SegmentState"]


class SegmentState(SlotState):
    """State of a :class:`SegmentMemory`: a ring of ``n_m`` slots after ``length`` tokens."""


class SegmentMemory(RingMemory):
    """Transformer-XL memory: each chunk sees the last ``mem_len`` pairs before it, plus itself causally.

    Args:
        mem_len: ``n_m >= 1`` pairs carried from one segment to the next.
    """

    name = "segment"
    reads_segment = True  # queries see their whole segment beside the carried state: peak_nbytes
    title = "segment (Transformer-XL)"
    label_name = "segment"
    symbols = {"mem_len": "n_m"}
    state_type = SegmentState

    @classmethod
    def example_sizes(cls, slots=8, *, n_heads=2):
        """All ``slots`` carried: ``n_m = slots``."""
        return {"mem_len": slots}

    def __init__(self, mem_len: int):
        super().__init__()
        self.mem_len = check_positive_int("mem_len", mem_len)

    @property
    def n_slots(self) -> int:
        return self.mem_len

    def slots(self, q, state):
        buf = self._read(state)
        return buf.k, buf.v, all_held_and_causal(buf.pos >= 0, q.shape[2])  # every held pair is visible

    def forward(self, q, k, v, state):
        """:func:`course_lib.memory.reference.segment_reference` is the rule (the chunks fed are its segments)."""
        if q.shape[2] != 1 or self._needs_grad(q, k, v):
            return super().forward(q, k, v, state)
        # decoding: slots [0, min(i, n_m)) hold the last n_m keys before position i -- no mask needed
        self.check(q, k, v, state)
        m = min(state.length, self.mem_len)
        buf = self._read(state)
        keys = torch.cat([buf.k[:, :, :m], k], dim=2)
        values = torch.cat([buf.v[:, :, :m], v], dim=2)
        return attend(q, keys, values), self.update(state, k, v)
