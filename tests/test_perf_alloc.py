"""Decoding allocates no cache storage per step, and attention over slots uses the fused kernel.

* ``StaticKVCache`` writes in place; the ring buffers of window, sink, segment and
  compressive memories and ``FullMemory`` after ``reserve`` keep their storage while a
  ``MemoryLM`` decodes token by token (``data_ptr`` never changes).
* Every attention over key/value slots goes through
  ``torch.nn.functional.scaled_dot_product_attention``, never an explicit softmax.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from memory_helpers import MEMORY_CASES

from course_lib import StaticKVCache, decode
from course_lib.memory import SinkMemory
from course_lib.memory._slots import SlotMemory
from course_lib.models import MemoryLM

#: every memory case that keeps key/value slots in a buffer of its own (registered ones and variants,
#: from the shared list: a new slot memory is tested here by being registered), and StreamingLLM's
#: cache positions, which take their own path through the decoding step
SLOT_MEMORIES = {name: make for name, make in MEMORY_CASES.items() if isinstance(make(), SlotMemory)}
SLOT_MEMORIES["sink_cache"] = lambda: SinkMemory(sinks=2, window=3, positions="cache")


def model(name, n_layers=2):
    torch.manual_seed(0)
    return MemoryLM(vocab_size=11, d_model=16, n_layers=n_layers, n_heads=2, memory=SLOT_MEMORIES[name]()).eval()


def storage(layer_state):
    buf = layer_state.buffer
    return buf.k.data_ptr(), buf.v.data_ptr()


def test_a_static_cache_keeps_both_buffers_across_decoding_steps():
    cache = StaticKVCache(1, 2, 12, 4)
    pointers = (cache.k_buf.data_ptr(), cache.v_buf.data_ptr())
    for step in range(12):
        K, V = cache.update(torch.full((1, 2, 1, 4), float(step)), torch.zeros(1, 2, 1, 4))
        assert (K.data_ptr(), V.data_ptr()) == pointers == (cache.k_buf.data_ptr(), cache.v_buf.data_ptr())
    assert K[0, 0, :, 0].tolist() == [float(s) for s in range(12)]


@pytest.mark.parametrize("name", list(SLOT_MEMORIES))
def test_decoding_writes_every_layers_memory_in_place(name):
    lm = model(name)
    x = torch.randint(0, 11, (1, 30), generator=torch.Generator().manual_seed(1))
    state = lm.init_state(1)
    state.layers = [m.reserve(s, 30) for m, s in zip(lm.memories, state.layers)]
    with torch.no_grad():
        _, state = lm(x[:, :3], state)  # a prompt, then 27 single tokens (the rings wrap many times)
        pointers = [storage(s) for s in state.layers]
        for i in range(3, 30):
            _, state = lm(x[:, i:i + 1], state)
            assert [storage(s) for s in state.layers] == pointers, f"a layer reallocated at token {i}"
    assert state.pos == 30


def test_full_memory_reserved_by_generate_never_grows_while_decoding(monkeypatch):
    lm = model("full")
    seen = []
    step = decode.step

    def spy(plan, idx, state):
        seen.append([storage(s) for s in state.layers])
        return step(plan, idx, state)

    monkeypatch.setattr(decode, "step", spy)
    lm.generate(torch.zeros(1, 2, dtype=torch.long), 300)  # far past the initial 256 slots
    assert len(seen) == 299 and all(pointers == seen[0] for pointers in seen)


@pytest.mark.parametrize("name", [name for name, make in SLOT_MEMORIES.items() if make().fused_attention])
def test_attention_over_slots_goes_through_the_fused_kernel(name, monkeypatch):
    calls = {"sdpa": 0, "softmax": 0}
    sdpa = F.scaled_dot_product_attention

    def counted_sdpa(*args, **kwargs):
        calls["sdpa"] += 1
        return sdpa(*args, **kwargs)

    def no_softmax(*args, **kwargs):  # an explicit softmax would mean the unfused path
        calls["softmax"] += 1
        raise AssertionError("attention over slots must not build the softmax itself")

    lm = model(name, n_layers=3)
    monkeypatch.setattr(F, "scaled_dot_product_attention", counted_sdpa)
    monkeypatch.setattr(torch, "softmax", no_softmax)
    monkeypatch.setattr(F, "softmax", no_softmax)
    with torch.no_grad():
        lm.generate(torch.zeros(1, 4, dtype=torch.long), 9)  # a prompt, then 8 single-token steps
    assert calls == {"sdpa": 3 * 9, "softmax": 0}


@pytest.mark.parametrize("name", ["full", "window", "sink", "segment"])
def test_a_memory_rotated_by_memory_lm_gets_no_rotation_object_per_step(name, monkeypatch):
    """The hook for memories that rotate themselves costs the others nothing: their step builds no
    Rotation and takes no keyword arguments (the rotation stays one roll on q and k together)."""
    lm = model(name)

    def refused(*args, **kwargs):
        raise AssertionError("a memory that MemoryLM rotates got a Rotation")

    monkeypatch.setattr(decode, "Rotation", refused)
    with torch.no_grad():
        out = lm.generate(torch.zeros(1, 3, dtype=torch.long), 6)
    assert out.shape == (1, 9)
