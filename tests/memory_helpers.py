"""What the memory tests share: the memories to test (every registered one, from the registry,
plus variants that take other code paths), random chunkings, random ``q, k, v`` and a run of a
memory over a chunking.

The test modules import it as ``from memory_helpers import ...``: ``tests/`` has no ``__init__.py``,
so pytest puts this folder on ``sys.path`` when it imports a test module from it.
"""

from __future__ import annotations

from functools import partial

import torch
from hypothesis import settings
from hypothesis import strategies as st

from course_lib.memory import (
    MEMORIES,
    CompressiveMemory,
    KNNMemory,
    LinearMemory,
    MovingAverageMemory,
    MultiMemory,
    QuantizedKVMemory,
    SegmentMemory,
    SinkMemory,
    WindowMemory,
)

SETTINGS = settings(max_examples=25, deadline=None)
H = 2  # query heads of the memories below (a gate learns one weight per head)

#: name -> () -> Memory: every registered memory at its ``example()`` configuration (a new
#: memory joins by its registry line), then variants that take other code paths
MEMORY_CASES = {name: partial(cls.example, n_heads=H) for name, cls in MEMORIES.items()}
MEMORY_CASES.update({
    "moving_average_weighted": lambda: MovingAverageMemory(4, weights=[1.0, 2.0, 3.0, 4.0]),
    "compressive_conv": lambda: CompressiveMemory(6, 3, 3, compress="conv"),
    "compressive_dilated": lambda: CompressiveMemory(8, 2, 4, compress="dilated_conv"),
    "compressive_max": lambda: CompressiveMemory(6, 3, 2, compress="max"),
    "compressive_most_used": lambda: CompressiveMemory(4, 2, 2, compress="most_used"),
    "infini": lambda: MultiMemory([WindowMemory(4), LinearMemory(chunk_size=4)], combine="gate", n_heads=H),
    "concat": lambda: MultiMemory([SegmentMemory(4), KNNMemory(8, 2)], combine="concat"),
    "concat_sink_knn": lambda: MultiMemory([SinkMemory(1, 3), KNNMemory(8, 2)], combine="concat"),
    # KIVI over a window: fixed-size (the registry's example grows), 2-bit codes, a window not a multiple of G
    "quantized_window": lambda: QuantizedKVMemory(2, group=4, residual=4, window=13),
})


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


def run(memory, q, k, v, sizes, *, state=None, reserve=False, beta=None, alpha=None):
    """Stream ``q, k, v`` through ``memory`` in chunks of ``sizes``; the outputs concatenated and the last state.

    ``state``: start from it (default: a fresh ``init_state``). ``reserve``: call ``memory.reserve``
    first, so that the chunks are written in place as in a decoding stream. ``beta``: a ``[B, H, T]``
    write strength, cut into chunks along with ``q, k, v`` (:class:`DeltaMemory`); ``alpha`` likewise, a
    ``[B, H, T]`` or ``[B, H, T, D]`` decay (:class:`DecayMemory`, :class:`GatedDeltaMemory`).
    """
    if state is None:
        state = memory.init_state(k.shape[0], k.shape[1], k.shape[3], dtype=k.dtype, v_dim=v.shape[3])
    if reserve:
        state = memory.reserve(state, sum(sizes))
    outs, p = [], 0
    for c in sizes:
        kw = {name: gate[:, :, p:p + c] for name, gate in (("beta", beta), ("alpha", alpha)) if gate is not None}
        out, state = memory(q[:, :, p:p + c], k[:, :, p:p + c], v[:, :, p:p + c], state, **kw)
        outs.append(out)
        p += c
    return torch.cat(outs, dim=2), state


def assert_same_gradients(fast, slow, leaves):
    """The gradients of ``sum |x|^2`` over the outputs ``fast`` and ``slow`` (tuples of tensors) with
    respect to ``leaves`` agree (a leaf neither uses gets none from both)."""
    grads = [torch.autograd.grad(sum((x * x).sum() for x in r), leaves, allow_unused=True) for r in (fast, slow)]
    for g_fast, g_slow in zip(*grads):
        if g_slow is None:
            assert g_fast is None
        else:
            torch.testing.assert_close(g_fast, g_slow)
