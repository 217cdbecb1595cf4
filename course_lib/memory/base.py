r"""The Memory protocol: one interface for every memory model of the course.

Memory-based attention replaces the KV cache by a memory model ``Mem`` that is updated
from the newest key/value pairs ``S_kv`` and the previous memory::

    Mem = Update(S_kv, Mem_pre)          out_i = Att(q_i, Mem)

Every memory is a ``torch.nn.Module`` (it may have parameters) with

* ``init_state(batch, n_heads, head_dim, *, device=None, dtype=None) -> state``
* ``forward(q, k, v, state) -> (out, new_state)`` for the next ``T >= 1`` consecutive
  positions, ``[B, H, T, D]`` each. Queries see what the memory held before the chunk
  plus the chunk's own keys up to their position. ``new_state`` includes the chunk; the
  input state keeps its meaning (it can be kept for inspection or branched from).
* ``nbytes(state) -> int``: bytes of the tensors the state holds (the memory's size), and
  ``peak_nbytes(state, segment_len)``: the peak working memory when text is read in segments of
  ``n_s`` tokens: the carried state plus the current segment's pairs for a memory whose queries
  see their whole segment (``reads_segment``: segment, compressive, kNN), the state alone
  otherwise. Designs are compared at equal *peak* bytes.
* ``spans(state) -> list[(first, last)]`` for memories that hold key/value slots: the token
  positions each slot stands for, in attention order; ``parts(state) -> list[(label, n)]``
  the labelled groups of those slots (``("sinks", 4), ("CMem", 8), ("Mem", 6)``).
* ``reserve(state, n_tokens)`` and ``snapshot(state)`` (optional, defaults here): prepare a
  decoding stream, keep a state that later forwards never touch.

Positions. ``MemoryLM`` rotates ``q_i, k_i`` by their absolute position ``i`` (rotary
embeddings) before a memory with ``uses_rotary`` sees them, and leaves them unrotated for one
read by content (linear, delta). A memory that places its keys itself (``rotates_itself``:
StreamingLLM's positions within the cache, ``SinkMemory(positions="cache")``; a
``MultiMemory`` whose parts are rotated differently) gets the *unrotated* ``q, k`` and
``forward(q, k, v, state, rotary=Rotation(...))``: a :class:`Rotation` that rotates a tensor
by any positions, built from the model's rotary tables and the chunk's first position.

Class metadata, read by everything that lists memories (the registry in
:mod:`course_lib.memory`, the cost model, widget menus, benchmarks, tests): ``name``,
``title``, ``symbols`` (its sizes under the book's symbols: labels, the inspector's controls and
design labels come from it), flags such as ``fixed_size`` and ``chunk_invariant``,
``example(slots)`` and ``cost_per_token(config, context)``. A memory is described in one place:
its class.

States are plain dataclasses of detached tensors: a state never holds an autograd graph.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect

import torch
from torch import nn

from .._checks import check_positive_int, check_qkv, describe
from ..kv_cache import kv_cache_bytes

__all__ = ["Memory", "Rotation", "state_nbytes", "check_state"]


def state_tensors(obj):
    """Every tensor reachable from a state (dataclass fields, lists, tuples, dicts, slotted objects).

    Fields marked ``metadata={"extra_loss": True}`` are skipped: they hold training losses (with
    their autograd graph) that a forward returned beside the memory (see ``Memory.extra_losses``).
    """
    if isinstance(obj, torch.Tensor):
        yield obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for field in dataclasses.fields(obj):
            if not field.metadata.get("extra_loss"):
                yield from state_tensors(getattr(obj, field.name))
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from state_tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from state_tensors(item)
    elif hasattr(obj, "__slots__"):
        for name in obj.__slots__:
            yield from state_tensors(getattr(obj, name, None))


def state_nbytes(state) -> int:
    """Bytes of every tensor reachable from ``state`` (see :func:`state_tensors`)."""
    return sum(t.numel() * t.element_size() for t in state_tensors(state))


def check_state(memory_name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state) -> None:
    """Check that ``q, k, v`` are well formed and fit ``state`` (batch, heads, dims, dtype, device).

    ``state`` must expose ``batch``, ``n_heads``, ``head_dim``, ``dtype`` and ``device``.
    """
    check_qkv(q, k, v)
    if state is None:
        raise ValueError(f"state is None; create one with {memory_name}.init_state(batch, n_heads, head_dim)")
    b, h = k.shape[0], k.shape[1]
    if b != state.batch:
        raise ValueError(f"k has batch {b} but the {memory_name} state was made for batch {state.batch}")
    if h != state.n_heads:
        raise ValueError(f"k has {h} heads but the {memory_name} state was made for {state.n_heads} heads")
    if k.shape[-1] != state.head_dim or v.shape[-1] != state.v_dim:
        raise ValueError(
            f"k/v have head dims {k.shape[-1]}/{v.shape[-1]} but the {memory_name} state was made for "
            f"{state.head_dim}/{state.v_dim}"
        )
    if k.dtype != state.dtype:
        raise TypeError(f"k has dtype {k.dtype} but the {memory_name} state holds {state.dtype}")
    if k.device != state.device:
        raise ValueError(f"k is on {k.device} but the {memory_name} state lives on {state.device}")


class Rotation:
    r"""Rotary position embeddings for a memory that ``rotates_itself``: ``R_p x`` for any positions ``p``.

    ``R_p`` turns each pair ``(x_j, x_{j+D/2})`` by the angle ``p theta_j``, so that
    ``(R_i q) . (R_j k)`` depends on ``i - j`` only. Built by ``MemoryLM`` for each chunk from its
    rotary tables (``Rotary.rolled_tables``: ``cos`` and the signed ``sin``, rows by position) and
    the chunk's first position ``start``.

    Args:
        cos, sin: ``[P_max, D]`` tables, row ``p`` for position ``p`` (``sin`` with the first half
            negated, see ``models.apply_rotary_rolled``); they cover every position below
            ``start + T`` (a position within a cache never exceeds the absolute one).
        start: the absolute position of the chunk's first token.

    ``absolute(x)`` rotates ``x [..., T, D]`` by the chunk's own positions ``start .. start + T - 1``
    (what ``MemoryLM`` does for a memory with ``uses_rotary``); ``at(x, positions)`` by the
    positions given, a ``long`` tensor broadcastable to ``x.shape[:-1]`` (``[T]``, ``[P]``...).
    """

    __slots__ = ("cos", "sin", "start")

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor, start: int):
        self.cos, self.sin, self.start = cos, sin, start

    def __repr__(self) -> str:
        return f"Rotation(start={self.start}, positions < {self.cos.shape[0]})"

    @staticmethod
    def _apply(x, cos, sin):
        return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin  # models.apply_rotary_rolled

    def absolute(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., T, D]`` at positions ``start .. start + T - 1``, rotated."""
        end = self.start + x.shape[-2]
        if end > self.cos.shape[0]:
            raise ValueError(f"the rotary tables cover positions < {self.cos.shape[0]}, "
                             f"but x holds positions {self.start}..{end - 1}")
        return self._apply(x, self.cos[self.start:end], self.sin[self.start:end])

    def at(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``x [..., D]`` rotated by ``positions`` (``long``, broadcastable to ``x.shape[:-1]``)."""
        return self._apply(x, self.cos[positions], self.sin[positions])


class Memory(nn.Module, abc.ABC):
    """Base class of the memory models. Subclasses implement ``init_state`` and ``forward``.

    Class attributes (metadata):
        name: the registry name (``"window"``); ``""`` for a memory that is not registered.
        title: how menus list it (``"sinks + window"``); ``label_name``: how :meth:`label` names a
            configured one (default: the title).
        symbols: constructor argument -> the book's symbol, in the order labels list them
            (``{"sinks": "S", "window": "n_c"}``). :meth:`label`, the inspector's size controls
            (:mod:`course_lib.widgets.inspector_state`) and design labels
            (:func:`course_lib.experiments.specs.spec_label`) are built from it.
        fixed_size: ``nbytes`` stays bounded however long the text.
        holds_slots: the memory keeps key/value slots (``spans`` and ``parts`` work; ``concat``
            can use it).
        supports_gqa: the memory accepts fewer key/value heads than query heads.
        uses_rotary: ``MemoryLM`` rotates the queries and keys it gives this memory by their
            absolute positions (rotary embeddings). Matrix memories (linear, delta) say ``False``.
        rotates_itself: the memory gets *unrotated* queries and keys and rotates them itself:
            ``forward(q, k, v, state, rotary=...)`` receives a :class:`Rotation` (``uses_rotary``
            is then not read). ``SinkMemory(positions="cache")`` and a ``MultiMemory`` whose
            parts are rotated differently say ``True``.
        uses_query: the output depends on the query (``False`` for the averages, which
            therefore cannot recall anything: the recall benchmark leaves them out).
        sized_by_head_dim: the state's size is set by ``d_h`` (a ``d_h x d_h`` matrix), not by
            a number of slots: benchmarks sweep the model width for it.
        reads_segment: each query also sees every earlier key of its own segment of ``n_s``
            tokens exactly, beside the carried state (Transformer-XL's ``[SG(Mem) o segment]``):
            reading token by token with the same meaning needs a buffer of up to ``n_s`` pairs,
            which :meth:`peak_nbytes` counts. Memories whose output does not depend on the
            chunking say ``False``.
        learns_beta: the memory takes a learned write strength per head and token,
            ``forward(q, k, v, state, beta=...)`` with ``beta [B, H, T] = sigma(W_beta x)``: the
            attention layer of ``MemoryLM`` then owns ``W_beta`` and computes it
            (``DeltaMemory(beta="learned")``, DeltaNet's ``beta_t``).
        learns_alpha: the memory takes a learned decay per head and token,
            ``forward(q, k, v, state, alpha=...)`` with ``alpha [B, H, T] = exp(-softplus(W_alpha x + b))``
            (Mamba-2's and Gated DeltaNet's ``alpha_t``): the attention layer of ``MemoryLM`` then owns
            ``W_alpha`` and ``b`` (``DecayMemory(alpha="learned")``, ``GatedDeltaMemory(alpha="learned")``).

    ``chunk_invariant`` (a property, from ``reads_segment``): the output does not depend on how the
    text is cut into chunks; tests that feed random chunkings read it.
    """

    name: str = ""
    title: str = ""
    label_name: str = ""  # how label() names it; default: title
    symbols: dict[str, str] = {}  # constructor argument -> book symbol, e.g. {"window": "n_c"}
    fixed_size: bool = True
    holds_slots: bool = False
    supports_gqa: bool = False
    uses_rotary: bool = True
    rotates_itself: bool = False
    uses_query: bool = True
    sized_by_head_dim: bool = False
    reads_segment: bool = False
    learns_beta: bool = False
    learns_alpha: bool = False

    # -- metadata -------------------------------------------------------------------------
    @classmethod
    def example_sizes(cls, slots: int = 8, *, n_heads: int = 2) -> dict:
        """The constructor arguments of a configuration that holds about ``slots`` key/value
        slots per head (ignored by memories that hold none); ``n_heads`` for per-head parameters."""
        return {}

    @classmethod
    def example(cls, slots: int = 8, *, n_heads: int = 2, **sizes):
        """The configuration used by menus, tests and benchmarks: :meth:`example_sizes`, with
        ``sizes`` overriding some of them (``CompressiveMemory.example(64, ratio=4)``)."""
        return cls(**{**cls.example_sizes(slots, n_heads=n_heads), **sizes})

    @property
    def chunk_invariant(self) -> bool:
        """The output is the same however the text is cut into chunks (``forward`` on ``T`` tokens
        equals ``forward`` on any split of them): true unless the memory ``reads_segment``."""
        return not self.reads_segment

    def sizes(self) -> dict:
        """The memory's sizes by the book's symbol, in :attr:`symbols` order (``{"n_c": 8}``); one
        left at its constructor default is left out (``DeltaMemory()`` has none, its beta is 1)."""
        defaults = {p.name: p.default for p in inspect.signature(type(self)).parameters.values()}
        return {symbol: getattr(self, arg) for arg, symbol in self.symbols.items()
                if getattr(self, arg) != defaults.get(arg, inspect.Parameter.empty)}

    def label_details(self) -> str:
        """What :meth:`label` adds after the sizes (``" (cache positions)"``); by default nothing."""
        return ""

    def label(self) -> str:
        """A short description with the sizes, in the book's notation (``"window n_c = 8"``): the
        ``label_name`` (else ``title``), :meth:`sizes` as ``symbol = value``, :meth:`label_details`."""
        sizes = ", ".join(f"{symbol} = {value}" for symbol, value in self.sizes().items())
        name = self.label_name or self.title or type(self).__name__
        return " ".join(x for x in (name, sizes) if x) + self.label_details()

    def extra_repr(self) -> str:
        """The constructor arguments this memory keeps under their own names (``window=4``)."""
        kept = ((p, getattr(self, p, None)) for p in inspect.signature(type(self)).parameters)
        return ", ".join(f"{p}={value!r}" for p, value in kept
                         if value is not None and not isinstance(value, (nn.Module, torch.Tensor, list)))

    @abc.abstractmethod
    def cost_per_token(self, config, context: int) -> dict:
        """Analytic ``{"bytes", "flops"}`` of this memory when decoding the token after ``context``
        tokens, for one sequence and every layer of ``config`` (a :class:`course_lib.cost.ModelConfig`):
        the bytes its state holds and the attention FLOPs of reading it."""

    # -- protocol -------------------------------------------------------------------------
    @abc.abstractmethod
    def init_state(self, batch, n_heads, head_dim, *, device=None, dtype=None):
        """The empty memory for ``batch`` sequences of ``n_heads`` heads of ``head_dim``."""

    def forward_unchecked(self, q, k, v, state, **kwargs):
        """:meth:`forward` without the argument checks, for a caller that checked once (a
        decoding loop); by default the same as ``forward`` (``kwargs``: ``rotary``, ``beta``, ``alpha``)."""
        return self(q, k, v, state, **kwargs)

    def extra_losses(self, state) -> dict:
        """Training losses that the forward which returned ``state`` computed besides its output,
        by name (a learned compressor's ``{"reconstruction": loss}``); ``MemoryLM`` gathers them
        and ``train()`` adds them to the loss. By default none."""
        return {}

    def nbytes(self, state) -> int:
        """Bytes of the tensors that ``state`` holds."""
        return state_nbytes(state)

    def peak_nbytes(self, state, segment_len: int) -> int:
        """Peak working memory reading in segments of ``segment_len`` (``n_s``) tokens: the bytes
        :meth:`nbytes` counts plus, for a memory that ``reads_segment``, the ``n_s`` key/value pairs
        of the current segment its queries attend to (``2 B H n_s d_h`` values in the state's dtype).
        """
        held = self.nbytes(state)
        if not self.reads_segment:
            return held
        check_positive_int("segment_len", segment_len)
        per_value = torch.empty((), dtype=state.dtype).element_size()
        return held + kv_cache_bytes(1, state.n_heads, state.head_dim, segment_len, state.batch, per_value,
                                     v_dim=state.v_dim)

    def spans(self, state) -> list[tuple[int, int]]:
        """The first and last position each key/value slot stands for, in attention order."""
        raise TypeError(
            f"{type(self).__name__} holds no key/value slots, so it has no spans; "
            f"spans exist for memories with holds_slots = True ({_slot_memories()})"
        )

    def parts(self, state) -> list[tuple[str, int]]:
        """The labelled groups of slots in attention order, e.g. ``[("CMem", 8), ("Mem", 6)]``."""
        raise TypeError(
            f"{type(self).__name__} holds no key/value slots, so it has no parts; "
            f"parts exist for memories with holds_slots = True ({_slot_memories()})"
        )

    def reserve(self, state, n_tokens: int = 0):
        """Hint that ``n_tokens`` more tokens will follow (a cache may preallocate). Returns a state."""
        return state

    def snapshot(self, state):
        """A state that later forwards never change (keep it, branch from it). By default the
        state itself: a memory that never writes into its input states needs no copy."""
        return state


def _slot_memories() -> str:
    """The registered memories that hold key/value slots, for error messages (from the registry)."""
    from . import MEMORIES

    return ", ".join(name for name, cls in MEMORIES.items() if cls.holds_slots)


def resolve(device, dtype):
    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = dtype if dtype is not None else torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {describe(dtype)}")
    return device, dtype
