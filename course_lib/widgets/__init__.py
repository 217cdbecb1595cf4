r"""Explorers: move a slider, watch attention and memory change.

Each explorer is three layers, so every piece can be tested without a browser:

1. a frozen *state* dataclass (what the controls say) and a pure ``update_*`` function
   that checks a change and returns the new state;
2. a pure *view* function (state -> numbers: weights, spans, bytes) and a figure built
   from it with :mod:`course_lib.viz`;
3. the widget: ipywidgets controls wired to ``set(...)``, a PNG of the figure and a
   readout in words.

Layers 1 and 2 live in the ``*_state`` modules and import no ipywidgets; layer 3 is one
module per explorer over the small base in :mod:`.base`. The explorers are loaded when first
named, so ``import course_lib.widgets`` and its state/view functions work without ipywidgets.

Displaying an explorer in JupyterLab shows the live widget. A frontend without widgets
(``nbconvert``, GitHub, a terminal) gets the static picture of the current state and a
line saying so; ``explorer.show()`` does the same outside a kernel by returning the figure.

* :class:`AttentionExplorer`: a query position ``i`` and a mask (causal, window ``n_c``,
  attention sinks) -> the weights and which keys ``q_i`` sees.
* :class:`CostExplorer`: ``L``, ``tau``, ``d_h``, ``n_g``, dtype and a memory -> bytes and
  FLOPs per token against the context length ``m``; "measure" times the real model.
* :class:`MemoryInspector`: a memory model stepping through a text: what each slot holds,
  what is evicted or compressed, and the chunk's attention over ``[CMem | Mem | chunk]``.
* :class:`CompressionPlayground`: ``f_c`` and ``c`` -> how far attention over the
  compressed pairs is from attention over the originals.
* :class:`RetrievalExplorer`: a delta, gated delta or decay memory and its gates ``alpha``,
  ``beta`` -> how well each past key ``k_j`` still reads its value ``v_j`` from ``S_t``.
"""

from __future__ import annotations

import importlib

from .attention_state import AttentionState, attention_view, toy_qk, update_attention
from .common import FRONTEND_NOTE, has_widget_frontend
from .compression_state import CompressionState, compression_view, playground_data, update_compression
from .cost_state import COST_MEMORIES, CostState, build_cost_model, cost_view, measure_cost, update_cost
from .inspector_state import (
    INSPECT_MEMORIES,
    INSPECTOR_SIZES,
    InspectorState,
    frame_changes,
    make_inspected_memory,
    memory_frames,
    slot_layout,
    update_inspector,
)
from .retrieval_state import (
    RETRIEVAL_MEMORIES,
    RetrievalState,
    memory_states,
    retrieval_data,
    retrieval_heatmaps,
    retrieval_map,
    retrieval_view,
    update_retrieval,
    write_strengths,
)

#: the names that need ipywidgets, and their modules (imported when first named)
_EXPLORERS = {
    "Explorer": ".base",
    "AttentionExplorer": ".attention",
    "CostExplorer": ".cost",
    "MemoryInspector": ".inspector",
    "CompressionPlayground": ".compression",
    "RetrievalExplorer": ".retrieval",
}

__all__ = [
    "has_widget_frontend", "FRONTEND_NOTE", "Explorer",
    "AttentionState", "update_attention", "attention_view", "toy_qk", "AttentionExplorer",
    "CostState", "update_cost", "cost_view", "measure_cost", "build_cost_model", "COST_MEMORIES", "CostExplorer",
    "InspectorState", "update_inspector", "memory_frames", "frame_changes", "slot_layout", "make_inspected_memory",
    "INSPECT_MEMORIES", "INSPECTOR_SIZES", "MemoryInspector",
    "CompressionState", "update_compression", "compression_view", "playground_data", "CompressionPlayground",
    "RetrievalState", "update_retrieval", "retrieval_data", "memory_states", "write_strengths", "retrieval_map",
    "retrieval_view", "retrieval_heatmaps", "RETRIEVAL_MEMORIES", "RetrievalExplorer",
]


def __getattr__(name: str):
    if name in _EXPLORERS:
        value = getattr(importlib.import_module(_EXPLORERS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPLORERS))
