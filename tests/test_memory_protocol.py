"""Every memory behind one protocol: registry, clear errors, kept states, in-place decoding, constant bytes."""

from __future__ import annotations

import os

import pytest
import torch
from memory_helpers import qkv as random_qkv
from memory_helpers import run

import course_lib
from course_lib.memory import (
    FIXED_SIZE_MEMORIES,
    MEMORIES,
    CompressiveMemory,
    CumulativeAverageMemory,
    DeltaMemory,
    FullMemory,
    KNNMemory,
    LinearMemory,
    MovingAverageMemory,
    MultiMemory,
    SegmentMemory,
    SinkMemory,
    WindowMemory,
    make_memory,
)
from course_lib.memory.base import state_tensors

H = 2  # heads in these tests

FACTORIES = {
    "full": FullMemory,
    "window": lambda: WindowMemory(4),
    "sink": lambda: SinkMemory(sinks=2, window=4),
    "moving_average": lambda: MovingAverageMemory(4, weights=[1.0, 2.0, 3.0, 4.0]),
    "cumulative_average": CumulativeAverageMemory,
    "linear": lambda: LinearMemory(chunk_size=16),
    "delta": lambda: DeltaMemory(beta=0.5, chunk_size=16),
    "segment": lambda: SegmentMemory(6),
    "compressive": lambda: CompressiveMemory(6, 3, 2),
    "compressive_conv": lambda: CompressiveMemory(6, 3, 3, compress="conv"),
    "compressive_dilated": lambda: CompressiveMemory(8, 2, 4, compress="dilated_conv"),
    "compressive_max": lambda: CompressiveMemory(6, 3, 2, compress="max"),
    "compressive_most_used": lambda: CompressiveMemory(6, 3, 2, compress="most_used"),
    "knn": lambda: KNNMemory(capacity=16, top_k=3),
    "multi_gate": lambda: MultiMemory([WindowMemory(4), LinearMemory()], combine="gate", n_heads=H),
    "multi_concat": lambda: MultiMemory([SinkMemory(1, 3), KNNMemory(8, 2)], combine="concat"),
}
FIXED = [name for name in FACTORIES if name not in ("full", "compressive_max", "compressive_dilated")]
SLOTS = ["full", "window", "sink", "segment", "compressive", "compressive_most_used", "knn", "multi_concat"]
RINGS = ["window", "sink", "segment", "compressive", "compressive_most_used", "knn"]


def make(name):
    return FACTORIES[name]().double()


def qkv(seed, t, b=1, d=4):
    return random_qkv(seed, b, H, t, d)


def test_registry_names_every_memory():
    assert list(MEMORIES) == ["full", "window", "sink", "moving_average", "cumulative_average", "linear",
                              "delta", "segment", "compressive", "knn", "multi"]
    assert FIXED_SIZE_MEMORIES <= set(MEMORIES) and "full" not in FIXED_SIZE_MEMORIES
    assert isinstance(make_memory("sink", sinks=1, window=3), SinkMemory)
    assert make_memory("compressive", mem_len=4, cmem_len=2, ratio=2).ratio == 2
    with pytest.raises(ValueError, match="unknown memory 'xl'; expected one of: full, window, sink, .*multi"):
        make_memory("xl")
    for cls in MEMORIES.values():
        assert getattr(course_lib, cls.__name__) is cls


@pytest.mark.parametrize("name", FACTORIES)
def test_a_state_that_does_not_fit_the_input_is_refused(name):
    memory = make(name)
    q, k, v = qkv(0, 3, b=2)
    with pytest.raises(ValueError, match="batch 2 .* batch 1"):
        memory(q, k, v, memory.init_state(1, H, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="2 heads .* 4 heads"):
        memory(q, k, v, memory.init_state(2, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="head dims 4/4 .* 8/8"):
        memory(q, k, v, memory.init_state(2, H, 8, dtype=torch.float64))
    with pytest.raises(TypeError, match="dtype torch.float64 .* holds torch.float32"):
        memory(q, k, v, memory.init_state(2, H, 4, dtype=torch.float32))
    meta = [x.to("meta") for x in (q, k, v)]
    with pytest.raises(ValueError, match="k is on meta but the .* state lives on cpu"):
        memory(*meta, memory.init_state(2, H, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="state is None"):
        memory(q, k, v, None)
    if name == "full":
        return  # FullMemory (foundation) does not check the state's type
    with pytest.raises(ValueError, match="same T >= 1"):
        memory(q[:, :, :0], k[:, :, :0], v[:, :, :0], memory.init_state(2, H, 4, dtype=torch.float64))
    other = make("cumulative_average" if name != "cumulative_average" else "linear")
    with pytest.raises(TypeError, match="state must be a"):
        memory(q, k, v, other.init_state(2, H, 4, dtype=torch.float64))


@pytest.mark.parametrize("name", FACTORIES)
def test_a_kept_state_keeps_its_meaning(name):
    memory = make(name)
    q, k, v = qkv(1, 20)
    _, kept = run(memory, q[:, :, :9], k[:, :, :9], v[:, :, :9], [4, 5])
    first, later = run(memory, q[:, :, 9:], k[:, :, 9:], v[:, :, 9:], [3, 1, 7], state=kept)
    run(memory, q, k, v, [20], state=later)  # more forwards from the newer state
    again, _ = run(memory, q[:, :, 9:], k[:, :, 9:], v[:, :, 9:], [3, 1, 7], state=kept)
    torch.testing.assert_close(again, first)


@pytest.mark.parametrize("name", FACTORIES)
def test_decoding_after_reserve_gives_the_same_numbers(name):
    memory = make(name)
    q, k, v = qkv(2, 16)
    plain, _ = run(memory, q, k, v, [5] + [1] * 11)
    _, state = run(memory, q[:, :, :5], k[:, :, :5], v[:, :, :5], [5])
    reserved, _ = run(memory, q[:, :, 5:], k[:, :, 5:], v[:, :, 5:], [1] * 11, state=memory.reserve(state, 11))
    torch.testing.assert_close(reserved, plain[:, :, 5:])


@pytest.mark.parametrize("name", RINGS)
def test_ring_buffers_keep_their_storage_while_decoding(name):
    memory = make(name)
    q, k, v = qkv(3, 40)
    state = memory.reserve(memory.init_state(1, H, 4, dtype=torch.float64), 40)
    buf = state.buffer
    pointers = (buf.k.data_ptr(), buf.v.data_ptr(), buf.pos.data_ptr())
    for i in range(40):
        _, state = memory(q[:, :, i:i + 1], k[:, :, i:i + 1], v[:, :, i:i + 1], state)
        assert (state.buffer.k.data_ptr(), state.buffer.v.data_ptr(), state.buffer.pos.data_ptr()) == pointers


@pytest.mark.parametrize("name", FACTORIES)
def test_states_hold_no_autograd_graph(name):
    memory = make(name)
    q, k, v = (x.requires_grad_() for x in qkv(4, 11))
    out, state = run(memory, q, k, v, [1, 6, 4])
    assert out.requires_grad
    tensors = list(state_tensors(state))  # slot buffers and sub-states included
    assert tensors and not any(t.requires_grad for t in tensors)


@pytest.mark.parametrize("name", SLOTS)
def test_spans_list_the_positions_each_slot_stands_for(name):
    memory = make(name)
    q, k, v = qkv(5, 13)
    _, state = run(memory, q, k, v, [6, 7])
    spans = memory.spans(state)
    assert spans and all(0 <= a <= b < 13 for a, b in spans)


@pytest.mark.parametrize("name", ["window", "sink", "segment", "compressive", "knn"])
def test_held_pairs_come_in_the_order_of_spans(name):
    memory = make(name)
    x = torch.arange(13.0, dtype=torch.float64).view(1, 1, 13, 1).expand(1, H, 13, 4)  # k_j = v_j = j
    _, state = run(memory, x, x, x, [6, 7])
    held = memory.held(state)[1][0, 0, :, 0].tolist()
    assert held == [(a + b) / 2 for a, b in memory.spans(state)]  # a compressed slot: the mean of its group


@pytest.mark.parametrize("name", ["moving_average", "cumulative_average", "linear", "delta", "multi_gate"])
def test_memories_without_slots_have_no_spans(name):
    memory = make(name)
    with pytest.raises(TypeError, match="holds no key/value slots"):
        memory.spans(memory.init_state(1, H, 4))


def _rss() -> int:
    """Resident memory of this process in bytes (Linux), else the peak so far."""
    if os.path.exists("/proc/self/statm"):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def stream(memory, n_chunks, chunk=199, d=16):
    """Stream ``n_chunks`` chunks (not a multiple of any chunk, window or ratio here) without grad."""
    q, k, v = (x.float() for x in qkv(6, chunk, d=d))
    state = memory.init_state(1, H, d, dtype=torch.float32)
    with torch.no_grad():
        for _ in range(n_chunks):
            _, state = memory(q, k, v, state)
            yield state


@pytest.mark.parametrize("name", FIXED)
def test_fixed_size_memories_keep_constant_bytes_over_100k_tokens(name):
    memory = make(name).float()
    states = stream(memory, 10 + 503)
    for _ in range(10):  # warm up: fill every buffer
        state = next(states)
    size, rss = memory.nbytes(state), _rss()
    for state in states:  # 503 chunks of 199: 100,097 more tokens
        assert memory.nbytes(state) == size
    assert _rss() - rss < 8 * 2**20, "the process grew while streaming through a fixed-size memory"
    q, k, v = (x.float() for x in qkv(7, 50, d=16))
    state = memory.reserve(state, 50)
    with torch.no_grad():
        for i in range(50):  # and token by token
            _, state = memory(q[:, :, i:i + 1], k[:, :, i:i + 1], v[:, :, i:i + 1], state)
    assert memory.nbytes(state) == size


def test_the_full_cache_grows_with_every_token_and_the_check_sees_it():
    memory = FullMemory()
    _, k, v = (x.float() for x in qkv(6, 199, d=16))
    state = memory.init_state(1, H, 16, dtype=torch.float32)
    rss = _rss()
    for _ in range(503):  # append only: the cache's growth without the cost of attending to it
        state = memory.append(state, k, v)
    assert memory.nbytes(state) == 503 * 199 * H * (16 + 16) * 4  # keys and values, float32
    assert _rss() - rss > 8 * 2**20  # 25 MB of pairs: the bound above would catch a leak of this size
