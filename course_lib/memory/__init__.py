"""Memory models behind one protocol (see :mod:`course_lib.memory.base`).

Pick one by class or by name:

>>> make_memory("window", window=4)
WindowMemory(window=4)
>>> sorted(FIXED_SIZE_MEMORIES)[:3]
['compressive', 'cumulative_average', 'delta']
"""

from .average import CumulativeAverageMemory, CumulativeAverageState, MovingAverageMemory, MovingAverageState
from .base import Memory, check_state, state_nbytes
from .compressive import COMPRESSIONS, CompressiveMemory, CompressiveState, attention_reconstruction_loss
from .full import FullMemory, FullState
from .knn import KNNMemory, KNNState
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
from .segment import SegmentMemory, SegmentState
from .window import SinkMemory, WindowMemory, WindowState

MEMORIES: dict[str, type[Memory]] = {
    "full": FullMemory,
    "window": WindowMemory,
    "sink": SinkMemory,
    "moving_average": MovingAverageMemory,
    "cumulative_average": CumulativeAverageMemory,
    "linear": LinearMemory,
    "delta": DeltaMemory,
    "segment": SegmentMemory,
    "compressive": CompressiveMemory,
    "knn": KNNMemory,
    "multi": MultiMemory,
}

#: names of the memories whose ``nbytes`` stays bounded however long the text
#: (a ``multi`` memory is fixed-size when all its memories are)
FIXED_SIZE_MEMORIES: frozenset[str] = frozenset(
    {"window", "sink", "moving_average", "cumulative_average", "linear", "delta", "segment", "compressive", "knn"}
)


def make_memory(name: str, **kwargs) -> Memory:
    """The memory called ``name`` (a key of :data:`MEMORIES`), built with ``kwargs``."""
    if name not in MEMORIES:
        raise ValueError(f"unknown memory {name!r}; expected one of: {', '.join(MEMORIES)}")
    return MEMORIES[name](**kwargs)


__all__ = [
    "Memory", "check_state", "state_nbytes", "MEMORIES", "FIXED_SIZE_MEMORIES", "make_memory",
    "FullMemory", "FullState", "WindowMemory", "SinkMemory", "WindowState",
    "MovingAverageMemory", "MovingAverageState", "CumulativeAverageMemory", "CumulativeAverageState",
    "LinearMemory", "LinearState", "DeltaMemory", "DeltaState",
    "linear_attention_recurrent", "linear_attention_parallel", "linear_attention_chunked",
    "delta_rule_recurrent", "delta_rule_chunked",
    "SegmentMemory", "SegmentState", "CompressiveMemory", "CompressiveState", "COMPRESSIONS",
    "attention_reconstruction_loss", "KNNMemory", "KNNState", "MultiMemory", "MultiState",
]
