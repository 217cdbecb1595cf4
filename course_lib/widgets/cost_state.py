"""The cost explorer's state and view: pure functions, no ipywidgets.

The memory menu is the registry (:data:`course_lib.memory.REGISTERED`, listed by ``title``);
the ``size`` control is the budget of key/value slots handed to ``example(size)`` and ``ratio``
overrides a memory's ``ratio`` where it has one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..cost import ModelConfig, cost_curve
from ..memory import REGISTERED, memory_class
from .common import check_at_least, check_choice

__all__ = ["DTYPES", "COST_MEMORIES", "CostState", "update_cost", "cost_view", "cost_memory", "sizes_used",
           "build_cost_model", "measure_cost"]

DTYPES = {"float32": 4, "bfloat16": 2, "float16": 2, "int8 (quantised cache)": 1}
#: menu label -> registry name, in registry order
COST_MEMORIES = {cls.title: cls.name for cls in REGISTERED}
MAX_MEASURED_PARAMETERS = 300_000_000  # bigger models are for the analytic curves only


@dataclass(frozen=True)
class CostState:
    """A model configuration (``L``, ``tau``, ``d_h``, ``n_g``, dtype) and a memory choice."""

    n_layers: int = 4
    n_heads: int = 8
    head_dim: int = 64
    n_kv_heads: int = 8
    dtype: str = "float32"  # what the CPU computes fast; try float16 or bfloat16 (GPU) for half the bytes
    memory: str = "window"
    size: int = 1024
    ratio: int = 4
    max_context: int = 65536


def update_cost(state: CostState, changes: dict) -> CostState:
    """Check ``changes`` and return the new state; ``n_kv_heads`` snaps to a divisor of ``n_heads``."""
    new = dataclasses.replace(state, **changes)
    ModelConfig(new.n_layers, new.n_heads, new.head_dim)  # validates the sizes
    check_choice("dtype", new.dtype, list(DTYPES))
    check_choice("memory", new.memory, list(COST_MEMORIES))
    check_at_least(new, ("size", "ratio", "max_context"), 1)
    if new.n_heads % new.n_kv_heads:  # n_g must divide tau: take the largest divisor not above the request
        g = max(d for d in range(1, new.n_heads + 1) if new.n_heads % d == 0 and d <= max(1, new.n_kv_heads))
        new = dataclasses.replace(new, n_kv_heads=g)
    cost_memory(new)  # the memory must accept these sizes (its own error says which does not fit)
    return new


def _config(state: CostState) -> ModelConfig:
    return ModelConfig(state.n_layers, state.n_heads, state.head_dim, n_kv_heads=state.n_kv_heads,
                       bytes_per_value=DTYPES[state.dtype])


def sizes_used(state: CostState) -> set:
    """Which of the controls ``size`` and ``ratio`` change the chosen memory."""
    cls = memory_class(COST_MEMORIES[state.memory])
    sizes = cls.example_sizes(state.size, n_heads=state.n_heads)
    return ({"size"} if sizes != cls.example_sizes(2 * state.size, n_heads=state.n_heads) else set()) | (
        {"ratio"} if "ratio" in sizes else set())


def cost_memory(state: CostState):
    """The memory the state describes: ``example(size)`` of the chosen class, with ``ratio``."""
    cls = memory_class(COST_MEMORIES[state.memory])
    extra = {"ratio": state.ratio} if "ratio" in sizes_used(state) else {}
    return cls.example(state.size, n_heads=state.n_heads, **extra)


def cost_view(state: CostState) -> dict:
    """Analytic curves for the full KV cache and the chosen memory, contexts ``256..max_context``.

    Returns ``{"contexts", "analytic": {label: cost_curve}, "at_max": {label: {"bytes", "flops"}}}``.
    """
    config = _config(state)
    top = max(256, state.max_context)
    contexts = [2**p for p in range(8, int(math.log2(top)) + 1)]
    curves = {"full KV cache": cost_curve(config, contexts, "full")}
    if COST_MEMORIES[state.memory] != "full":
        memory = cost_memory(state)
        curves[memory.label()] = cost_curve(config, contexts, memory)
    at_max = {label: {"bytes": c["bytes"][-1], "flops": c["flops"][-1]} for label, c in curves.items()}
    return {"contexts": contexts, "analytic": curves, "at_max": at_max, "config": config}


def build_cost_model(state: CostState, *, vocab_size: int = 256, device=None):
    """The :class:`~course_lib.models.MemoryLM` that the state describes, on ``device``."""
    from ..device import pick_device
    from ..models import MemoryLM

    device = pick_device() if device is None else torch.device(device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(state.dtype)
    if dtype is None:
        raise ValueError(f"dtype={state.dtype!r} is analytic only (no int8 model); measure with float32/16 or bfloat16")
    d_model = state.n_heads * state.head_dim
    params = state.n_layers * 12 * d_model**2  # attention 4 d^2 (at most) + MLP 8 d^2 per layer
    if params > MAX_MEASURED_PARAMETERS:
        raise ValueError(
            f"this model has about {params / 1e6:,.0f}M parameters (L = {state.n_layers}, d_model = {d_model}); "
            f"measuring it here would take too long: keep it under {MAX_MEASURED_PARAMETERS / 1e6:,.0f}M "
            "(fewer layers, heads or a smaller d_h) -- the analytic curves hold for any size")
    memory = cost_memory(state)
    model = MemoryLM(vocab_size, state.n_heads * state.head_dim, state.n_layers, state.n_heads, memory,
                     n_kv_heads=state.n_kv_heads)
    return model.to(device=device, dtype=dtype)


def measure_cost(state: CostState, contexts, *, steps: int = 8, device=None, on_progress=None) -> list[dict]:
    """Time the real model of ``state`` after each context length (``cost.measure_decode``).

    On the CPU the timing runs on one thread (steadier, and what one decoding step can use).
    ``on_progress(done, total)`` is called after each context (the widget's progress bar).
    """
    from ..cost import measure_decode

    model = build_cost_model(state, device=device)
    rows = []
    contexts = [int(m) for m in contexts]
    threads = torch.get_num_threads()
    on_cpu = next(model.parameters()).device.type == "cpu"
    if on_cpu:  # one decoding step is small work: a second thread adds waiting, a lot on a busy machine
        torch.set_num_threads(1)
    try:
        for n, m in enumerate(contexts):
            rows += measure_decode(model, [m], steps=steps, progress=False)
            if on_progress is not None:
                on_progress(n + 1, len(contexts))
    finally:
        torch.set_num_threads(threads)
    return rows
