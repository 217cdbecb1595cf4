"""course_lib: memory-based attention, from the KV cache to fixed-size memories.

The companion package of the course: tested, fast PyTorch implementations that the
notebooks import. Runs on CUDA when there is a GPU and on the CPU otherwise.
"""

__version__ = "0.1.0"

from .attention import MultiHeadAttention, attention, attention_reference, causal_mask
from .device import pick_device, seed_everything
from .kv_cache import KVCache, StaticKVCache, kv_cache_bytes
from .memory import (
    FIXED_SIZE_MEMORIES,
    MEMORIES,
    CompressiveMemory,
    CumulativeAverageMemory,
    DecayMemory,
    DeltaMemory,
    FullMemory,
    GatedDeltaMemory,
    KNNMemory,
    LinearMemory,
    Memory,
    MovingAverageMemory,
    MultiMemory,
    SegmentMemory,
    SinkMemory,
    WindowMemory,
    attention_reconstruction_loss,
    make_memory,
)
from .models import LMState, MemoryLM

__all__ = [
    "__version__", "attention", "attention_reference", "causal_mask", "MultiHeadAttention",
    "pick_device", "seed_everything", "KVCache", "StaticKVCache", "kv_cache_bytes",
    "Memory", "FullMemory", "MemoryLM", "LMState",
    "WindowMemory", "SinkMemory", "MovingAverageMemory", "CumulativeAverageMemory", "LinearMemory",
    "DeltaMemory", "DecayMemory", "GatedDeltaMemory", "SegmentMemory", "CompressiveMemory",
    "attention_reconstruction_loss", "KNNMemory",
    "MultiMemory", "MEMORIES", "FIXED_SIZE_MEMORIES", "make_memory",
]
