"""What every memory state carries, and the input check every ``forward`` starts with.

A state says what it was made for (``batch``, ``n_heads``, ``head_dim``, ``v_dim``,
``dtype``, ``device``) so that :func:`~course_lib.memory.base.check_state` can refuse a
state that does not fit the input with an error that says which of these differs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

import torch

from .._checks import check_positive_int, describe
from .base import check_state, resolve

__all__ = ["StateMeta", "BufferedStates", "new_meta", "meta_of", "check_input"]


@dataclass
class StateMeta:
    """The sizes, dtype and device a memory state was made for."""

    batch: int
    n_heads: int
    head_dim: int
    v_dim: int
    dtype: torch.dtype
    device: torch.device


_META = tuple(f.name for f in fields(StateMeta))


def new_meta(batch, n_heads, head_dim, *, device=None, dtype=None, v_dim=None) -> dict:
    """Check the arguments of ``init_state`` and return them as keyword arguments of a state."""
    check_positive_int("batch", batch)
    check_positive_int("n_heads", n_heads)
    check_positive_int("head_dim", head_dim)
    v_dim = head_dim if v_dim is None else check_positive_int("v_dim", v_dim)
    device, dtype = resolve(device, dtype)
    return dict(batch=batch, n_heads=n_heads, head_dim=head_dim, v_dim=v_dim, dtype=dtype, device=device)


def meta_of(state) -> dict:
    """The :class:`StateMeta` fields of ``state`` as keyword arguments (to build its successor)."""
    return {name: getattr(state, name) for name in _META}


def check_input(memory, q, k, v, state, state_type) -> None:
    """``q, k, v`` are well formed and fit ``state``, a ``state_type`` made by ``memory.init_state``."""
    name = type(memory).__name__
    if state is not None and type(state) is not state_type:  # exactly: a sink state is no window state
        got = f"a {type(state).__name__} (another memory's state)" if isinstance(state, StateMeta) else describe(state)
        raise TypeError(
            f"state must be a {state_type.__name__} from {name}.init_state() or {name}.forward(), got {got}"
        )
    check_state(name, q, k, v, state)
    if q.shape[2] != k.shape[2] or k.shape[2] < 1:
        raise ValueError(
            f"q and k must hold the same T >= 1 consecutive positions, got q {tuple(q.shape)} and k {tuple(k.shape)}"
        )
    if not memory.supports_gqa and q.shape[1] != k.shape[1]:
        raise ValueError(
            f"q has {q.shape[1]} heads but k has {k.shape[1]}; {name} needs one key/value head per "
            "query head (repeat the key/value heads first, as MemoryLM does)"
        )


class BufferedStates:
    """Reading, reserving and snapshotting states that share one buffer (``state.buffer``,
    ``state.length``, ``state.inplace``): the slot memories' and H2O's.

    The buffer has ``written`` (the length of its newest state), ``clone(length)``, and
    ``overwritten(length)`` / ``restored(length)`` (whether in-place writes since changed it, and
    a copy with them undone; see :mod:`course_lib.memory._slots`).
    """

    def _read(self, state):
        """The buffer that holds what ``state`` holds (``ValueError`` for a stale reserved state)."""
        buf = state.buffer
        if buf.written != state.length:
            if state.inplace:
                raise ValueError(
                    f"this {type(self).__name__} state (after {state.length} tokens) is out of date: a later "
                    f"forward (at {buf.written} tokens) wrote over its buffer in place. States after "
                    "memory.reserve() form one decoding stream and only the newest can be used; keep "
                    "memory.snapshot(state) to branch or inspect later"
                )
            if buf.overwritten(state.length):  # a newer state wrote in place: restore this one's copy once
                buf = state.buffer = buf.restored(state.length)
        return buf

    def reserve(self, state, n_tokens: int = 0):
        """A state that owns its buffer: forwards from it write in place (a decoding stream)."""
        if state.inplace:
            self._read(state)
            return state
        return dataclasses.replace(state, buffer=self._read(state).clone(state.length), inplace=True)

    def snapshot(self, state):
        """A copy of ``state`` that later forwards never write into (keep it, branch from it)."""
        return dataclasses.replace(state, buffer=self._read(state).clone(state.length), inplace=False)
