r"""What a memory costs: analytic bytes and FLOPs per token, and measured ms/token.

Analytic model (per sequence, attention part only), with ``L`` layers, ``tau`` query
heads, ``n_g`` key/value heads, head dim ``d_h`` and ``m`` tokens of context:

* full KV cache: ``bytes = 2 L n_g d_h m b`` (``b`` bytes per value); reading it costs
  ``4 L tau d_h m`` FLOPs per new token (``q K^T`` and ``w V``): both grow with ``m``.
* a window of ``n_c``: the same with ``min(m, n_c)`` slots: flat once ``m >= n_c``.
* a linear / delta memory: a ``d_h x d_h`` matrix per head: ``L tau (d_h^2 + d_h) b`` bytes,
  ``~4 L tau d_h^2`` FLOPs per token, whatever ``m`` is.

:func:`measure_decode` times a real :class:`~course_lib.models.MemoryLM` on the current
device: prefill ``m`` tokens, then time single-token decoding steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ._checks import check_positive_int
from .memory import FullMemory
from .train import quiet

__all__ = ["ModelConfig", "memory_slots", "cost_per_token", "cost_curve", "measure_decode", "quiet"]

SLOT_MEMORIES = ("full", "window", "sink", "segment", "compressive", "knn")
STATE_MEMORIES = ("linear", "delta", "cumulative_average", "moving_average")


@dataclass(frozen=True)
class ModelConfig:
    """The sizes that decide a memory's cost. ``n_kv_heads`` is ``n_g`` (GQA); default MHA."""

    n_layers: int
    n_heads: int
    head_dim: int
    n_kv_heads: int | None = None
    bytes_per_value: int = 2

    def __post_init__(self):
        for name in ("n_layers", "n_heads", "head_dim", "bytes_per_value"):
            check_positive_int(name, getattr(self, name))
        if self.n_kv_heads is not None:
            check_positive_int("n_kv_heads", self.n_kv_heads)
            if self.n_heads % self.n_kv_heads:
                raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads


def memory_slots(memory: str, context: int, *, window: int = 256, sinks: int = 4, mem_len: int = 256,
                 cmem_len: int = 64, ratio: int = 4, capacity: int = 4096, top_k: int = 32) -> int:
    """Key/value slots a slot memory holds after ``context`` tokens."""
    check_positive_int("context", context, minimum=0)
    if memory == "full":
        return context
    if memory == "window":
        return min(context, window)
    if memory == "sink":
        return min(context, sinks + window)
    if memory == "segment":
        return min(context, mem_len)
    if memory == "compressive":
        return min(context, mem_len) + min(cmem_len, max(0, context - mem_len) // ratio)
    if memory == "knn":
        return min(context, capacity)
    raise ValueError(f"memory={memory!r} holds no key/value slots; slot memories are {SLOT_MEMORIES}")


def cost_per_token(config: ModelConfig, context: int, memory: str = "full", **sizes) -> dict:
    """Analytic ``{"bytes", "flops"}`` of the attention memory when decoding the token after
    ``context`` tokens (per sequence). ``sizes`` are the memory's sizes (``window``, ...)."""
    L, tau, g, d, b = config.n_layers, config.n_heads, config.kv_heads, config.head_dim, config.bytes_per_value
    if memory in SLOT_MEMORIES:
        slots = memory_slots(memory, context, **sizes)
        read = min(slots, sizes.get("top_k", 32)) + 1 if memory == "knn" else slots + 1
        flops = 4 * L * tau * d * read
        if memory == "knn":  # scoring every stored key to find the top-k
            flops += 2 * L * tau * d * slots
        return {"bytes": 2 * L * g * d * slots * b, "flops": flops}
    if memory in ("linear", "delta"):
        extra = d if memory == "linear" else 0  # the normaliser z
        return {"bytes": L * tau * (d * d + extra) * b, "flops": 4 * L * tau * d * d}
    if memory == "cumulative_average":
        return {"bytes": 2 * L * tau * d * b, "flops": 2 * L * tau * d}
    if memory == "moving_average":
        window = sizes.get("window", 256)
        return {"bytes": 2 * L * tau * d * min(context, window) * b, "flops": 2 * L * tau * d}
    raise ValueError(
        f"memory={memory!r} is not known to the cost model; expected one of {SLOT_MEMORIES + STATE_MEMORIES}"
    )


def cost_curve(config: ModelConfig, contexts, memory: str = "full", **sizes) -> dict:
    """:func:`cost_per_token` over several context lengths: ``{"context", "bytes", "flops"}`` lists."""
    rows = [cost_per_token(config, int(m), memory, **sizes) for m in contexts]
    return {"context": [int(m) for m in contexts], "bytes": [r["bytes"] for r in rows],
            "flops": [r["flops"] for r in rows]}


def _fill_full_memory(model, state, m: int, gen: torch.Generator):
    layers = []
    for mem, s in zip(model.memories, state.layers):
        shape = (s.batch, s.n_heads, m, s.head_dim)
        k = torch.randn(shape, generator=gen).to(s.device, s.dtype)
        v = torch.randn(shape, generator=gen).to(s.device, s.dtype)
        layers.append(mem.append(s, k, v))
    return type(state)(state.pos + m, state.batch, layers)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_decode(model, contexts, *, steps: int = 16, warmup: int = 2, prefill_chunk: int = 1024,
                   batch: int = 1, progress: bool | None = None, seed: int = 0,
                   synthetic_prefill: bool = True) -> list[dict]:
    """Measured decoding cost after ``m`` tokens of context, for each ``m`` in ``contexts``.

    For each ``m``: prefill ``m`` random tokens chunk by chunk, then time ``steps`` single-token
    decoding steps (after ``warmup`` untimed ones). Returns rows
    ``{"context", "ms_per_token", "nbytes"}``; ``nbytes`` is the model's memory after ``m`` tokens.

    Prefilling a full KV cache costs ``O(m^2)``, minutes at 64k tokens on a laptop CPU, yet
    the time of a decoding step does not depend on what the cached vectors hold. With
    ``synthetic_prefill`` (default) a model whose layers all use ``FullMemory`` gets its
    cache filled with ``m`` random unit-scale pairs directly, and its position set to ``m``;
    every other memory is prefilled by running the model.
    """
    from tqdm.auto import tqdm

    check_positive_int("steps", steps)
    check_positive_int("prefill_chunk", prefill_chunk)
    contexts = [int(m) for m in contexts]
    for m in contexts:
        check_positive_int("contexts[...]", m)
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    rows = []
    show = not quiet() if progress is None else progress
    for m in tqdm(contexts, desc="measuring decode", disable=not show, unit="ctx"):
        tokens = torch.randint(0, model.vocab_size, (batch, m + warmup + steps), generator=gen).to(device)
        state = model.init_state(batch)
        state = type(state)(state.pos, state.batch,
                            [mem.reserve(s, m + warmup + steps) for mem, s in zip(model.memories, state.layers)])
        if synthetic_prefill and all(type(mem) is FullMemory for mem in model.memories):
            state = _fill_full_memory(model, state, m, gen)
        else:
            for start in range(0, m, prefill_chunk):
                _, state = model(tokens[:, start:min(m, start + prefill_chunk)], state)
        nbytes = model.state_nbytes(state)
        for j in range(warmup):
            _, state = model(tokens[:, m + j:m + j + 1], state)
        _sync(device)
        t0 = time.perf_counter()
        for j in range(warmup, warmup + steps):
            _, state = model(tokens[:, m + j:m + j + 1], state)
        _sync(device)
        rows.append({"context": m, "ms_per_token": (time.perf_counter() - t0) * 1000 / steps, "nbytes": nbytes})
    return rows
