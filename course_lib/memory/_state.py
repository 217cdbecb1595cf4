"""What every memory state carries, and the input check every ``forward`` starts with.

A state says what it was made for (``batch``, ``n_heads``, ``head_dim``, ``v_dim``,
``dtype``, ``device``) so that :func:`~course_lib.memory.base.check_state` can refuse a
state that does not fit the input with an error that says which of these differs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .._checks import check_positive_int, describe
from .base import check_state, resolve

__all__ = ["StateMeta", "new_meta", "meta_of", "check_input"]


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
