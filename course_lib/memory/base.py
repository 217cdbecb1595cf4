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
* ``nbytes(state) -> int``: bytes of the tensors the state holds (the memory's size).
* ``spans(state) -> list[(first, last)]`` for memories that hold key/value slots: the token
  positions each slot stands for, in attention order.

States are plain dataclasses of detached tensors: a state never holds an autograd graph.
"""

from __future__ import annotations

import abc
import dataclasses

import torch
from torch import nn

from .._checks import check_qkv, describe

__all__ = ["Memory", "state_nbytes", "check_state"]


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


class Memory(nn.Module, abc.ABC):
    """Base class of the memory models. Subclasses implement ``init_state`` and ``forward``.

    Class attributes:
        holds_slots: the memory keeps key/value slots (``spans`` works; ``concat`` can use it).
        supports_gqa: the memory accepts fewer key/value heads than query heads.
        uses_rotary: ``MemoryLM`` rotates the queries and keys it gives this memory by their
            positions (rotary embeddings). Matrix memories (linear, delta) say ``False``.
    """

    holds_slots: bool = False
    supports_gqa: bool = False
    uses_rotary: bool = True

    @abc.abstractmethod
    def init_state(self, batch, n_heads, head_dim, *, device=None, dtype=None):
        """The empty memory for ``batch`` sequences of ``n_heads`` heads of ``head_dim``."""

    def forward_unchecked(self, q, k, v, state):
        """:meth:`forward` without the argument checks, for a caller that checked once (a
        decoding loop); by default the same as ``forward``."""
        return self(q, k, v, state)

    def extra_losses(self, state) -> dict:
        """Training losses that the forward which returned ``state`` computed besides its output,
        by name (a learned compressor's ``{"reconstruction": loss}``); ``MemoryLM`` gathers them
        and ``train()`` adds them to the loss. By default none."""
        return {}

    def nbytes(self, state) -> int:
        """Bytes of the tensors that ``state`` holds."""
        return state_nbytes(state)

    def spans(self, state) -> list[tuple[int, int]]:
        raise TypeError(
            f"{type(self).__name__} holds no key/value slots, so it has no spans; "
            "spans exist for Full, Window, Sink, Segment, Compressive and kNN memories"
        )

    def reserve(self, state, n_tokens: int):
        """Hint that ``n_tokens`` more tokens will follow (a cache may preallocate). Returns a state."""
        return state


def resolve(device, dtype):
    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = dtype if dtype is not None else torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {describe(dtype)}")
    return device, dtype
