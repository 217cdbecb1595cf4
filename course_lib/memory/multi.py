r"""Several memories in one layer: local detail plus long reach.

``combine="gate"`` runs both memories and mixes their outputs with a learned gate per
head (the combination of Infini-attention, and of Memorizing Transformers, whose local and
retrieved attention are two separate softmaxes mixed by a learned gate per head)::

    out_i = g * Att(q_i, Mem_a) + (1 - g) * Att(q_i, Mem_b)        g = sigmoid(w_h), w_h = 0 at first

``combine="concat"`` attends once over the slots of every memory together,
``Att(q_i, [Mem_a, Mem_b])``: one softmax over their key/value slots and the current chunk,
counted once (not Memorizing Transformers' combination, which keeps two softmaxes and gates
them; see above). It needs memories that hold key/value slots (window, sink, segment,
compressive, kNN, full) whose keys are rotated the same way; a linear or average memory has none.

Positions: each memory gets the keys it asks for. ``MemoryLM`` hands a gated pair whose parts
differ (a window, rotated by position, beside a linear or delta memory, read by content) the
*unrotated* ``q, k`` with a :class:`~course_lib.memory.base.Rotation` (``rotates_itself``); the
gate rotates them by their absolute position for a part with ``uses_rotary``, leaves them
unrotated for a part without, and passes the rotation down to a part that ``rotates_itself``
(``SinkMemory(positions="cache")``). A part that learns its write strength
(``DeltaMemory(beta="learned")``) gets ``forward(..., beta=...)`` passed through (``learns_beta``),
one that learns its decay ``forward(..., alpha=...)`` (``learns_alpha``: ``GatedDeltaMemory(alpha="learned")``).

An Infini-attention-style layer: ``MultiMemory([WindowMemory(n_c), LinearMemory()], combine="gate",
n_heads=tau)``. It differs from the paper (Munkhdalai et al., 2024) in three ways: the paper's
memory is read with ``M_{s-1}``, the state after the *previous* segments only, while the local
attention covers the whole current segment (the two are disjoint); here the linear memory also
holds the current tokens causally and overlaps the window. The paper's delta variant
normalises by ``sigma(Q) z``; ``DeltaMemory`` is DeltaNet's form (normalised keys, no ``z``).
And the paper has no official code: the public reproduction by Hugging Face's nanotron team ("A
failed experiment: Infini-Attention", 2024) found quality falling as the memory is compressed
more times.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .._checks import check_positive_int, describe
from ._slots import attend_slots
from ._state import StateMeta, check_input, meta_of, new_meta
from .base import Memory, Rotation


def _rotation(memory) -> str:
    """How ``MemoryLM`` positions a memory's keys: ``"absolute"``, ``"none"`` or ``"itself"``."""
    return "itself" if memory.rotates_itself else "absolute" if memory.uses_rotary else "none"

__all__ = ["MultiMemory", "MultiState"]

COMBINES = ("gate", "concat")


@dataclass
class MultiState(StateMeta):
    """One state per memory, in order, after ``length`` tokens."""

    states: list
    length: int


class MultiMemory(Memory):
    """Two or more memories combined by a learned per-head ``gate`` or by ``concat``.

    Args:
        memories: the memories (``gate`` takes exactly two: ``a``, then ``b``).
        combine: ``"gate"`` or ``"concat"``.
        n_heads: query heads ``tau`` (``gate`` learns one ``w_h`` per head).

    ``uses_rotary``/``rotates_itself``: a gate over parts rotated alike takes their setting (two
    windows: ``MemoryLM`` rotates once for both); over parts rotated differently it
    ``rotates_itself`` and gives each part the keys that part asks for (see the module docstring).
    ``learns_beta``: a part learns its write strength; ``forward(..., beta=...)`` hands it over
    (``learns_alpha`` and ``alpha=`` likewise for a learned decay).
    """

    name = "multi"
    title = "multiple memories"  # menus build its example(): a window and a delta memory, gated
    # these depend on the memories it combines, so the class states none of them (None): each
    # instance sets its own in __init__ (fixed-size when all its memories are, ...)
    fixed_size = holds_slots = supports_gqa = learns_beta = learns_alpha = reads_segment = None

    def __init__(self, memories, combine: str = "gate", n_heads: int | None = None):
        super().__init__()
        memories = list(memories)
        for i, m in enumerate(memories):
            if not isinstance(m, Memory):
                raise TypeError(f"memories[{i}] must be a course_lib.memory.Memory, got {describe(m)}")
        if len(memories) < 2:
            raise ValueError(f"memories must hold at least two memories, got {len(memories)}")
        if combine not in COMBINES:
            raise ValueError(f"combine must be 'gate' or 'concat', got {combine!r}")
        self.memories = nn.ModuleList(memories)
        self.combine = combine
        self.n_heads = n_heads
        self.supports_gqa = all(m.supports_gqa for m in memories)
        self.holds_slots = combine == "concat"
        self.fixed_size = all(m.fixed_size for m in memories)
        self.reads_segment = any(m.reads_segment for m in memories)  # then its output depends on the chunking
        self.track_mass = False
        if combine == "gate":
            if len(memories) != 2:
                raise ValueError(
                    f"combine='gate' mixes two memories (g * out_a + (1 - g) * out_b), got {len(memories)}"
                )
            if n_heads is None:
                raise ValueError("combine='gate' needs n_heads (one learned gate w_h per query head)")
            check_positive_int("n_heads", n_heads)
            self.gate_logit = nn.Parameter(torch.zeros(n_heads))  # w_h; g = sigmoid(w_h) = 1/2 at first
        else:
            for i, m in enumerate(memories):
                if not m.holds_slots:
                    raise ValueError(
                        f"combine='concat' attends over key/value slots, but memories[{i}] "
                        f"({type(m).__name__}) holds no slots; use combine='gate' for it"
                    )
            self.track_mass = any(m.track_mass for m in memories)
        rotations = {_rotation(m) for m in memories}
        if combine == "concat" and len(rotations) > 1:
            kinds = ", ".join(f"memories[{i}] ({type(m).__name__}): {_rotation(m)}" for i, m in enumerate(memories))
            raise ValueError(
                "combine='concat' scores every slot with one query in one softmax, so every memory's keys must "
                f"be rotated the same way, got {kinds}; use combine='gate', which rotates each memory's keys "
                "as it asks"
            )
        if combine == "concat" and any(m.rotates_itself for m in memories):
            raise ValueError(
                "combine='concat' reads its memories' slots directly, so it cannot hold a memory that rotates "
                "its keys itself (SinkMemory(positions='cache')); use combine='gate'"
            )
        if len(rotations) == 1 and not any(m.rotates_itself for m in memories):
            self.uses_rotary = memories[0].uses_rotary  # rotated alike: MemoryLM rotates once for all
        else:
            self.rotates_itself = True  # each part gets the keys it asks for (see forward)
        self.learns_beta = any(m.learns_beta for m in memories)
        self.learns_alpha = any(m.learns_alpha for m in memories)

    @classmethod
    def example_sizes(cls, slots=8, *, n_heads=2):
        """Infini-attention's pair: a window of ``slots / 2`` and a delta memory, gated."""
        from .linear import DeltaMemory
        from .window import WindowMemory

        return {"memories": [WindowMemory(max(slots // 2, 2)), DeltaMemory()], "combine": "gate", "n_heads": n_heads}

    def label(self) -> str:
        return " + ".join(m.label() for m in self.memories) + f" ({self.combine})"

    def cost_per_token(self, config, context: int) -> dict:
        """The sum of its memories' costs."""
        costs = [m.cost_per_token(config, context) for m in self.memories]
        return {key: sum(c[key] for c in costs) for key in ("bytes", "flops")}

    @property
    def gate(self) -> torch.Tensor:
        """``g = sigmoid(w_h)`` per head (``combine="gate"``)."""
        return torch.sigmoid(self.gate_logit)

    def init_state(self, batch, n_heads, head_dim, *, device=None, dtype=None, v_dim=None):
        meta = new_meta(batch, n_heads, head_dim, device=device, dtype=dtype, v_dim=v_dim)
        kw = dict(device=meta["device"], dtype=meta["dtype"])
        if v_dim is not None:
            kw["v_dim"] = v_dim
        return MultiState(**meta, states=[m.init_state(batch, n_heads, head_dim, **kw) for m in self.memories],
                          length=0)

    def forward(self, q, k, v, state, *, rotary: Rotation | None = None, beta=None, alpha=None):
        """``rotary``: the chunk's :class:`~course_lib.memory.base.Rotation` for a gate that
        ``rotates_itself`` (``MemoryLM`` passes it with unrotated ``q, k``; without it ``q, k`` go to
        every part as given). ``beta``: the write strength of the part that ``learns_beta``; ``alpha``:
        the decay of the part that ``learns_alpha``."""
        check_input(self, q, k, v, state, MultiState)
        if beta is not None and not self.learns_beta:
            raise ValueError(f"beta is the write strength of a memory that learns it (DeltaMemory(beta='learned')), "
                             f"but none of {self.label()} does; got beta={describe(beta)}")
        if alpha is not None and not self.learns_alpha:
            raise ValueError(f"alpha is the decay of a memory that learns it (GatedDeltaMemory(alpha='learned')), "
                             f"but none of {self.label()} does; got alpha={describe(alpha)}")
        if rotary is not None and not self.rotates_itself:
            raise TypeError(f"rotary is for a MultiMemory that rotates_itself; {self.label()} has its keys "
                            "rotated alike, by MemoryLM before the call")
        if self.combine == "gate":
            if q.shape[1] != self.n_heads:
                raise ValueError(f"q has {q.shape[1]} heads but this gate was made for n_heads={self.n_heads}")
            return self._gate(q, k, v, state, rotary, beta, alpha, checked=False)
        out, mass = attend_slots(self, q, k, v, state)  # one softmax over every memory's slots and the chunk
        return out, self.update(state, k, v, mass)

    def forward_unchecked(self, q, k, v, state, **kwargs):
        """:meth:`forward` for a caller that checked once (the decoding step): each part called
        through its own ``forward_unchecked``."""
        if self.combine != "gate":
            return self(q, k, v, state, **kwargs)
        return self._gate(q, k, v, state, kwargs.get("rotary"), kwargs.get("beta"), kwargs.get("alpha"), checked=True)

    def _gate(self, q, k, v, state, rotary, beta, alpha, checked):
        outs, states, rotated = [], [], None
        for m, s in zip(self.memories, state.states):
            qm, km, kw = q, k, {}
            if rotary is not None:
                if m.rotates_itself:
                    kw["rotary"] = rotary  # it places its keys itself
                elif m.uses_rotary:  # keys rotated by their absolute position, once for every such part
                    rotated = rotated or (rotary.absolute(q), rotary.absolute(k))
                    qm, km = rotated
            if m.learns_beta:
                kw["beta"] = beta
            if m.learns_alpha:
                kw["alpha"] = alpha
            out, s = (m.forward_unchecked if checked else m)(qm, km, v, s, **kw)
            outs.append(out)
            states.append(s)
        g = self.gate.to(outs[0].dtype)[None, :, None, None]  # [1, H, 1, 1]
        return g * outs[0] + (1 - g) * outs[1], self._next(state, states, q.shape[2])

    # -- concat hooks ----------------------------------------------------------------------------
    def slots(self, q, state):
        """All memories' slots, in order, and one mask; a chunk key is visible if any memory shows it."""
        parts = [m.slots(q, s) for m, s in zip(self.memories, state.states)]
        lead = torch.broadcast_shapes(*(mask.shape[:-1] for _, _, mask in parts))
        masks = [mask.expand(*lead, mask.shape[-1]) for _, _, mask in parts]
        sizes = [keys.shape[2] for keys, _, _ in parts]
        chunk = masks[0][..., sizes[0]:]
        for mask, p in zip(masks[1:], sizes[1:]):
            chunk = chunk | mask[..., p:]
        mask = torch.cat([m[..., :p] for m, p in zip(masks, sizes)] + [chunk], dim=-1)
        return torch.cat([p[0] for p in parts], 2), torch.cat([p[1] for p in parts], 2), mask

    def update(self, state, k, v, mass=None):
        new, offset = [], 0
        n_slots = [m.slot_count(s) for m, s in zip(self.memories, state.states)]
        total = sum(n_slots)
        for m, s, p in zip(self.memories, state.states, n_slots):
            mass_m = None if mass is None else torch.cat([mass[..., offset:offset + p], mass[..., total:]], -1)
            new.append(m.update(s, k, v, mass_m))
            offset += p
        return self._next(state, new, k.shape[2])

    def slot_count(self, state) -> int:
        return sum(m.slot_count(s) for m, s in zip(self.memories, state.states))

    def _next(self, state, states, t):
        return MultiState(**meta_of(state), states=states, length=state.length + t)

    # -- protocol ----------------------------------------------------------------------------------
    def extra_losses(self, state) -> dict:
        """The extra losses of the memories inside, by their module name (``"memories.1.reconstruction"``)."""
        return {f"memories.{i}.{name}": loss for i, (m, s) in enumerate(zip(self.memories, state.states))
                for name, loss in m.extra_losses(s).items()}

    def nbytes(self, state) -> int:
        return sum(m.nbytes(s) for m, s in zip(self.memories, state.states))

    def peak_nbytes(self, state, segment_len: int) -> int:
        """The sum of its memories' peaks (a segment buffer each memory that reads one keeps)."""
        return sum(m.peak_nbytes(s, segment_len) for m, s in zip(self.memories, state.states))

    def spans(self, state) -> list[tuple[int, int]]:
        if self.combine != "concat":
            return super().spans(state)
        return [span for m, s in zip(self.memories, state.states) for span in m.spans(s)]

    def parts(self, state) -> list[tuple[str, int]]:
        if self.combine != "concat":
            return super().parts(state)
        return [part for m, s in zip(self.memories, state.states) for part in m.parts(s)]

    def reserve(self, state, n_tokens: int = 0):
        return dataclasses.replace(state, states=[m.reserve(s, n_tokens) for m, s in zip(self.memories, state.states)])

    def snapshot(self, state):
        """A copy that later forwards never write into (see ``SlotMemory.snapshot``)."""
        return dataclasses.replace(state, states=[m.snapshot(s) for m, s in zip(self.memories, state.states)])

