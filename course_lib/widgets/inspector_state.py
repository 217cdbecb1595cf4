"""The memory inspector's state and view: pure functions, no ipywidgets.

The memory menu is every registered memory that holds key/value slots; each one's sizes are
the fields of :class:`InspectorState` that its constructor takes (the others come from its
``example()``), and each size control is labelled by the argument and the book's symbol its
class declares (``Memory.symbols``: ``mem_len n_m``), so a memory describes itself in one place.
What a slot holds and which group it belongs to come from the protocol
(``spans``, ``parts``, ``order``, ``slots``), never from the memory's class.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass

import torch

from ..attention import attention_reference
from ..memory import COMPRESSIONS, REGISTERED, memory_class
from .common import check_at_least, check_choice

__all__ = ["STORY", "INSPECT_MEMORIES", "INSPECTOR_SIZES", "SIZE_LABELS", "InspectorState", "update_inspector",
           "make_inspected_memory", "slot_layout", "memory_frames", "frame_changes"]

STORY = ("the keeper wrote the password : blue whale . then the storm came , ships passed , the lamp "
         "burned and years went by . one night a child asked : what was the password ?")


@dataclass(frozen=True)
class InspectorState:
    """A memory model, its sizes, the chunk length ``n_s`` and the step (chunk) being looked at."""

    memory: str = "compressive"
    window: int = 6  # n_c (window, sink)
    sinks: int = 2  # S (sink)
    mem_len: int = 6  # n_m (segment, compressive)
    cmem_len: int = 8  # n_cm (compressive)
    ratio: int = 3  # c (compressive)
    compress: str = "mean"  # f_c (compressive)
    capacity: int = 16  # N (knn)
    top_k: int = 3  # k (knn)
    chunk: int = 4  # n_s
    step: int = 0


INSPECT_MEMORIES = tuple(cls.name for cls in REGISTERED if cls.holds_slots)
_FIELDS = [f.name for f in dataclasses.fields(InspectorState)]
#: which sizes each memory uses, in the order its controls appear (its constructor's arguments)
INSPECTOR_SIZES = {
    name: tuple(p for p in inspect.signature(memory_class(name)).parameters if p in _FIELDS)
    for name in INSPECT_MEMORIES
}
#: size -> how its control is labelled: the argument and the symbol its memory's class gives it
SIZE_LABELS = {arg: f"{arg} {cls.symbols[arg]}" if arg in cls.symbols else arg
               for cls in map(memory_class, INSPECT_MEMORIES) for arg in INSPECTOR_SIZES[cls.name]}
SIZE_LABELS["compress"] = "f_c"  # the compression function (a choice, not a size)
#: the sizes that may be 0 (no sinks is a plain window); every other size is at least 1
MAY_BE_ZERO = ("sinks",)


def update_inspector(state: InspectorState, changes: dict, n_tokens: int) -> InspectorState:
    """Check ``changes``; the step is clamped to the chunks that ``n_tokens`` make."""
    new = dataclasses.replace(state, **changes)
    if new.memory not in INSPECT_MEMORIES:
        raise ValueError(f"memory={new.memory!r}; the inspector shows slot memories {INSPECT_MEMORIES}")
    sizes = [f.name for f in dataclasses.fields(new) if f.type in (int, "int") and f.name != "step"]
    check_at_least(new, [n for n in sizes if n not in MAY_BE_ZERO], 1)
    check_at_least(new, MAY_BE_ZERO, 0)
    check_choice("compress", new.compress, COMPRESSIONS)
    used = INSPECTOR_SIZES[new.memory]
    if "mem_len" in used and "ratio" in used and new.mem_len < new.ratio:
        new = dataclasses.replace(new, mem_len=new.ratio)  # M >= c: evictions pop whole groups
    if "top_k" in used and "capacity" in used and new.top_k > new.capacity:
        new = dataclasses.replace(new, top_k=new.capacity)  # a query retrieves at most what is stored
    n_steps = math.ceil(n_tokens / new.chunk)
    if not 0 <= new.step < n_steps:
        if "step" in changes:
            raise ValueError(f"step={new.step} is not one of the {n_steps} chunks; expected 0 <= step < {n_steps}")
        new = dataclasses.replace(new, step=min(new.step, n_steps - 1))
    return new


def make_inspected_memory(state: InspectorState):
    """The :class:`~course_lib.memory.Memory` that ``state`` describes."""
    sizes = {name: getattr(state, name) for name in INSPECTOR_SIZES[state.memory]}
    return memory_class(state.memory).example(**sizes)


def slot_layout(memory, state) -> tuple[list[int], list[tuple[int, int, str]]]:
    """Where ``Mem``'s slots sit in its buffer and what they hold, in attention order.

    Returns ``(order, slots)``: ``order[n]`` is the buffer index of the ``n``-th held slot and
    ``slots[n] = (first, last, part)``, ``part`` a label of ``memory.parts(state)`` (``"sinks"``,
    ``"CMem"``, ``"Mem"``); ``(first, last)`` are ``memory.spans(state)``.
    """
    labels = [label for label, n in memory.parts(state) for _ in range(n)]
    slots = [(first, last, label) for (first, last), label in zip(memory.spans(state), labels)]
    return memory.order(state).tolist(), slots


def _held_pairs(memory, state, q):
    """Keys, values ``[B, H, P, D]`` of the held slots in attention order, and the mask ``[T, P + T]``."""
    t = q.shape[2]
    keys, values, mask = memory.slots(q, state)
    mask = mask.expand(*mask.shape[:-2], t, mask.shape[-1])
    mask = mask[0, 0] if mask.dim() == 4 else mask  # [T, P + T] (one batch element and head)
    idx = memory.order(state).cpu()
    cols = torch.cat([idx, keys.shape[2] + torch.arange(t)])
    return keys[:, :, idx], values[:, :, idx], mask[:, cols]


def memory_frames(memory, q, k, v, chunk: int) -> list[dict]:
    """Run ``memory`` over ``q, k, v [1, 1, N, d]`` chunk by chunk (``n_s = chunk``), keeping every step.

    Frame ``k`` holds what the chunk's queries see: ``slots`` (first, last, part) of ``Mem``
    before the chunk, ``segments`` for the heatmap, the ``weights [T, P + T]`` of one softmax
    over ``[slots, chunk]`` and its ``mask``, ``out`` (what ``memory.forward`` returned) and
    ``out_from_weights`` (``weights @ values``: they agree, so the picture is the real thing),
    plus ``slots_after``, ``nbytes_before / nbytes_after`` and ``peak_nbytes``: the most the
    chunk's step held at once, the carried state plus the chunk's pairs for a memory whose
    queries see their whole chunk (``Memory.peak_nbytes``), and at least what it kept after.
    """
    n, d = q.shape[2], q.shape[3]
    state = memory.init_state(1, k.shape[1], d, dtype=q.dtype)
    frames = []
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        qc, kc, vc = q[:, :, start:stop], k[:, :, start:stop], v[:, :, start:stop]
        keys, values, mask = _held_pairs(memory, state, qc)
        _, slots = slot_layout(memory, state)
        _, weights = attention_reference(qc, torch.cat([keys, kc], 2), torch.cat([values, vc], 2), mask=mask,
                                         return_weights=True)
        out_from_weights = weights @ torch.cat([values, vc], 2)
        with torch.no_grad():
            out, new_state = memory(qc, kc, vc, state)
        frames.append({
            "step": len(frames), "chunk": (start, stop - 1), "slots": slots,
            "segments": [*memory.parts(state), ("chunk", stop - start)],
            "weights": weights[0, 0], "mask": mask, "out": out, "out_from_weights": out_from_weights,
            "slots_after": slot_layout(memory, new_state)[1],
            "nbytes_before": memory.nbytes(state), "nbytes_after": memory.nbytes(new_state),
            "peak_nbytes": max(memory.peak_nbytes(state, stop - start), memory.nbytes(new_state)),
        })
        state = new_state
    return frames


def frame_changes(frame: dict) -> dict:
    """What the update after this chunk did: ``evicted`` positions that left ``Mem``, of them the
    ``compressed`` ones (now inside a new ``CMem`` slot), the ``new_cmem`` slots and the
    ``dropped_cmem`` slots that fell out of ``CMem``."""
    before_mem = {a for a, _, part in frame["slots"] if part == "Mem"}
    before_mem |= set(range(frame["chunk"][0], frame["chunk"][1] + 1))
    after_mem = {a for a, _, part in frame["slots_after"] if part in ("Mem", "sinks")}
    evicted = sorted(before_mem - after_mem)
    cmem_before = {(a, b) for a, b, part in frame["slots"] if part == "CMem"}
    cmem_after = {(a, b) for a, b, part in frame["slots_after"] if part == "CMem"}
    new_cmem = sorted(cmem_after - cmem_before)
    compressed = [p for p in evicted if any(a <= p <= b for a, b in new_cmem)]
    return {"evicted": evicted, "compressed": compressed, "new_cmem": new_cmem,
            "dropped_cmem": sorted(cmem_before - cmem_after)}
