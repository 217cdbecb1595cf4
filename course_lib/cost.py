r"""What a memory costs: analytic bytes and FLOPs per token, and measured ms/token.

Analytic model (per sequence, attention part only), with ``L`` layers, ``tau`` query
heads, ``n_g`` key/value heads, head dim ``d_h`` and ``m`` tokens of context:

* full KV cache: ``bytes = 2 L n_g d_h m b`` (``b`` bytes per value); reading it costs
  ``4 L tau d_h m`` FLOPs per new token (``q K^T`` and ``w V``): both grow with ``m``.
* a window of ``n_c``: the same with ``min(m, n_c)`` slots: flat once ``m >= n_c``.
* a linear / delta memory: a ``d_h x d_h`` matrix per head: ``L tau (d_h^2 + d_h) b`` bytes,
  ``~4 L tau d_h^2`` FLOPs per token, whatever ``m`` is.

Each memory class states its own formula (``Memory.cost_per_token``); this module looks the
memory up in the registry (:data:`course_lib.memory.MEMORIES`), so a new memory is in the
cost model as soon as it is registered.

:func:`measure_decode` times a real :class:`~course_lib.models.MemoryLM` on the current
device: prefill ``m`` tokens, then time single-token decoding steps.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from ._checks import check_positive_int
from .memory import MEMORIES, Memory, memory_class
from .train import quiet

__all__ = ["ModelConfig", "memory_slots", "cost_per_token", "cost_curve", "measure_decode", "quiet", "sync",
           "COST_SLOTS"]

#: the budget of key/value slots per head that a memory named without sizes gets (``example(COST_SLOTS)``)
COST_SLOTS = 256
SLOT_MEMORIES = tuple(name for name, cls in MEMORIES.items() if cls.holds_slots)
STATE_MEMORIES = tuple(name for name, cls in MEMORIES.items() if not cls.holds_slots)


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


def _memory(memory, sizes: dict) -> Memory:
    """``memory`` itself, or the registered memory of that name at ``COST_SLOTS`` slots with ``sizes``."""
    if isinstance(memory, Memory):
        if sizes:
            raise TypeError(f"sizes {sorted(sizes)} are for a memory given by name; {memory!r} has its own")
        return memory
    return memory_class(memory).example(COST_SLOTS, **sizes)


def memory_slots(memory: str | Memory, context: int, **sizes) -> int:
    """Key/value slots a slot memory holds after ``context`` tokens (``sizes``: its constructor
    arguments; those not given come from ``example(COST_SLOTS)``)."""
    check_positive_int("context", context, minimum=0)
    mem = _memory(memory, sizes)
    if not mem.holds_slots:
        raise ValueError(f"memory={memory!r} holds no key/value slots; slot memories are {SLOT_MEMORIES}")
    return mem.slots_after(context)


def cost_per_token(config: ModelConfig, context: int, memory: str | Memory = "full", **sizes) -> dict:
    """Analytic ``{"bytes", "flops"}`` of the attention memory when decoding the token after
    ``context`` tokens (per sequence, all layers). ``memory``: a registered name (its sizes as
    keywords, ``window=512``; the others from ``example(COST_SLOTS)``) or a memory object."""
    check_positive_int("context", context, minimum=0)
    return _memory(memory, sizes).cost_per_token(config, context)


def cost_curve(config: ModelConfig, contexts, memory: str = "full", **sizes) -> dict:
    """:func:`cost_per_token` over several context lengths: ``{"context", "bytes", "flops"}`` lists."""
    rows = [cost_per_token(config, int(m), memory, **sizes) for m in contexts]
    return {"context": [int(m) for m in contexts], "bytes": [r["bytes"] for r in rows],
            "flops": [r["flops"] for r in rows]}


def _fill_slots(model, state, m: int, gen: torch.Generator):
    """Write ``m`` random pairs into every layer's slots at once, as if ``m`` tokens had been read."""
    layers = []
    for mem, s in zip(model.memories, state.layers):
        shape = (s.batch, s.n_heads, m, s.head_dim)
        k = torch.randn(shape, generator=gen).to(s.device, s.dtype)
        v = torch.randn(shape, generator=gen).to(s.device, s.dtype)
        layers.append(mem.update(s, k, v))
    return dataclasses.replace(state, pos=state.pos + m, layers=layers)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously): call it before reading a clock."""
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
    ``synthetic_prefill`` (default) a model whose layers all hold key/value slots (full KV
    cache, window, compressive, ...) gets ``m`` random unit-scale pairs written into them
    directly (``memory.update``), and its position set to ``m``; a model with any other memory
    is prefilled by running it.
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
        state = dataclasses.replace(state, layers=[mem.reserve(s, m + warmup + steps)
                                                   for mem, s in zip(model.memories, state.layers)])
        if synthetic_prefill and all(mem.holds_slots for mem in model.memories):
            state = _fill_slots(model, state, m, gen)
        else:
            for start in range(0, m, prefill_chunk):
                _, state = model(tokens[:, start:min(m, start + prefill_chunk)], state)
        nbytes = model.state_nbytes(state)
        for j in range(warmup):
            _, state = model(tokens[:, m + j:m + j + 1], state)
        sync(device)
        t0 = time.perf_counter()
        for j in range(warmup, warmup + steps):
            _, state = model(tokens[:, m + j:m + j + 1], state)
        sync(device)
        rows.append({"context": m, "ms_per_token": (time.perf_counter() - t0) * 1000 / steps, "nbytes": nbytes})
    return rows
