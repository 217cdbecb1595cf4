"""Memory models behind one protocol (see :mod:`course_lib.memory.base`).

Pick one by class or by name:

>>> make_memory("window", window=4)
WindowMemory(window=4)
>>> sorted(FIXED_SIZE_MEMORIES)[:3]
['compressive', 'cumulative_average', 'decay']
"""

from .average import CumulativeAverageMemory, CumulativeAverageState, MovingAverageMemory, MovingAverageState
from .base import Memory, check_state, state_nbytes
from .compressive import COMPRESSIONS, CompressiveMemory, CompressiveState, attention_reconstruction_loss
from .full import FullMemory, FullState
from .gated import (
    DecayMemory,
    DecayState,
    GatedDeltaMemory,
    GatedDeltaState,
    decay_chunked,
    decay_parallel,
    decay_recurrent,
    gated_delta_chunked,
    gated_delta_recurrent,
)
from .heavy_hitter import HeavyHitterMemory, HeavyHitterState, heavy_hitters
from .knn import KNNMemory, KNNState
from .latent import LatentMemory, LatentState
from .linear import (
    DeltaMemory,
    DeltaState,
    LinearMemory,
    LinearState,
    delta_rule_chunked,
    delta_rule_recurrent,
    linear_attention_chunked,
    linear_attention_parallel,
    linear_attention_recurrent,
)
from .multi import MultiMemory, MultiState
from .quantized import QuantizedKVMemory, QuantizedState, dequantize_kv, quantize_kv
from .reference import (
    compressive_reference,
    cumulative_average_reference,
    decay_reference,
    delta_rule_reference,
    full_reference,
    gated_delta_reference,
    heavy_hitter_reference,
    knn_reference,
    latent_reference,
    linear_attention_reference,
    moving_average_reference,
    quantized_reference,
    segment_reference,
    sink_reference,
    window_reference,
)
from .segment import SegmentMemory, SegmentState
from .window import SinkMemory, SinkState, WindowMemory, WindowState

#: The registry: one line per memory class, in menu order. Everything that lists memories
#: (cost model, widget menus, benchmarks, tests) reads it and each class's metadata
#: (``name``, ``title``, ``fixed_size``, ``example()``, ``cost_per_token()``).
REGISTERED: tuple[type[Memory], ...] = (
    FullMemory,
    WindowMemory,
    SinkMemory,
    MovingAverageMemory,
    CumulativeAverageMemory,
    LinearMemory,
    DeltaMemory,
    DecayMemory,
    GatedDeltaMemory,
    SegmentMemory,
    CompressiveMemory,
    KNNMemory,
    QuantizedKVMemory,
    HeavyHitterMemory,
    LatentMemory,
    MultiMemory,
)


def _registry(classes) -> dict[str, type[Memory]]:
    registry = {}
    for cls in classes:
        if not cls.name or cls.name in registry:
            raise ValueError(f"{cls.__name__}.name must be a new registry name, got {cls.name!r}")
        registry[cls.name] = cls
    return registry


MEMORIES: dict[str, type[Memory]] = _registry(REGISTERED)

#: names of the memories whose ``nbytes`` stays bounded however long the text
#: (a ``multi`` memory is fixed-size when all its memories are)
FIXED_SIZE_MEMORIES: frozenset[str] = frozenset(name for name, cls in MEMORIES.items() if cls.fixed_size)


def memory_class(name: str) -> type[Memory]:
    """The class registered as ``name`` (a key of :data:`MEMORIES`)."""
    if name not in MEMORIES:
        raise ValueError(f"unknown memory {name!r}; expected one of: {', '.join(MEMORIES)}")
    return MEMORIES[name]


def make_memory(name: str, **kwargs) -> Memory:
    """The memory called ``name`` (a key of :data:`MEMORIES`), built with ``kwargs``."""
    return memory_class(name)(**kwargs)


__all__ = [
    "Memory", "check_state", "state_nbytes", "REGISTERED", "MEMORIES", "FIXED_SIZE_MEMORIES", "make_memory",
    "memory_class",
    "FullMemory", "FullState", "WindowMemory", "SinkMemory", "WindowState", "SinkState",
    "MovingAverageMemory", "MovingAverageState", "CumulativeAverageMemory", "CumulativeAverageState",
    "LinearMemory", "LinearState", "DeltaMemory", "DeltaState",
    "linear_attention_recurrent", "linear_attention_parallel", "linear_attention_chunked",
    "delta_rule_recurrent", "delta_rule_chunked",
    "DecayMemory", "DecayState", "GatedDeltaMemory", "GatedDeltaState",
    "decay_recurrent", "decay_chunked", "decay_parallel", "gated_delta_recurrent", "gated_delta_chunked",
    "SegmentMemory", "SegmentState", "CompressiveMemory", "CompressiveState", "COMPRESSIONS",
    "attention_reconstruction_loss", "KNNMemory", "KNNState", "MultiMemory", "MultiState",
    "full_reference", "window_reference", "sink_reference", "segment_reference", "knn_reference",
    "compressive_reference", "moving_average_reference", "cumulative_average_reference",
    "linear_attention_reference", "delta_rule_reference", "decay_reference", "gated_delta_reference",
    "LatentMemory", "LatentState", "latent_reference",
    "HeavyHitterMemory", "HeavyHitterState", "heavy_hitters", "heavy_hitter_reference",
    "QuantizedKVMemory", "QuantizedState", "quantize_kv", "dequantize_kv", "quantized_reference",
]
