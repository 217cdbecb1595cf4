"""What the memory tests share: random chunkings, random ``q, k, v`` and a run of a memory over a chunking.

The test modules import it as ``from memory_helpers import ...``: ``tests/`` has no ``__init__.py``,
so pytest puts this folder on ``sys.path`` when it imports a test module from it.
"""

from __future__ import annotations

import torch
from hypothesis import settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=25, deadline=None)


@st.composite
def chunkings(draw, max_len=40):
    """Chunk sizes of a random sequence, e.g. [3, 1, 7]."""
    left, sizes = draw(st.integers(1, max_len)), []
    while left:
        sizes.append(draw(st.integers(1, left)))
        left -= sizes[-1]
    return sizes


def qkv(seed, b, h, t, d, *, h_kv=None, dv=None):
    """Random float64 ``q [B, H, T, D]``, ``k [B, H_kv, T, D]``, ``v [B, H_kv, T, D_v]``, drawn in that order.

    ``H_kv`` defaults to ``H`` and ``D_v`` to ``D``.
    """
    g = torch.Generator().manual_seed(seed)
    h_kv, dv = h_kv or h, dv or d
    q = torch.randn(b, h, t, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, h_kv, t, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, h_kv, t, dv, generator=g, dtype=torch.float64)
    return q, k, v


def run(memory, q, k, v, sizes, *, state=None, reserve=False, beta=None):
    """Stream ``q, k, v`` through ``memory`` in chunks of ``sizes``; the outputs concatenated and the last state.

    ``state``: start from it (default: a fresh ``init_state``). ``reserve``: call ``memory.reserve``
    first, so that the chunks are written in place as in a decoding stream. ``beta``: a ``[B, H, T]``
    write strength, cut into chunks along with ``q, k, v`` (:class:`DeltaMemory`).
    """
    if state is None:
        state = memory.init_state(k.shape[0], k.shape[1], k.shape[3], dtype=k.dtype, v_dim=v.shape[3])
    if reserve:
        state = memory.reserve(state, sum(sizes))
    outs, p = [], 0
    for c in sizes:
        kw = {} if beta is None else {"beta": beta[:, :, p:p + c]}
        out, state = memory(q[:, :, p:p + c], k[:, :, p:p + c], v[:, :, p:p + c], state, **kw)
        outs.append(out)
        p += c
    return torch.cat(outs, dim=2), state
