"""Every memory behind one protocol: registry, clear errors, kept states, in-place decoding, constant bytes."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from memory_helpers import MEMORY_CASES, H, run
from memory_helpers import qkv as random_qkv

import course_lib
from course_lib.cost import ModelConfig
from course_lib.memory import FIXED_SIZE_MEMORIES, MEMORIES, REGISTERED, SinkMemory, make_memory
from course_lib.memory._slots import SlotMemory
from course_lib.memory.base import state_tensors

INSTANCES = {name: factory() for name, factory in MEMORY_CASES.items()}
# the 100k-token stream is slow: two compressive variants whose storage equals compressive's stay out
FIXED = [n for n, m in INSTANCES.items() if m.fixed_size and n not in ("compressive_max", "compressive_dilated")]
SLOTS = [n for n, m in INSTANCES.items() if m.holds_slots]
NO_SLOTS = [n for n, m in INSTANCES.items() if not m.holds_slots]
RINGS = [n for n in SLOTS if INSTANCES[n].fixed_size and isinstance(INSTANCES[n], SlotMemory)]


def make(name):
    return MEMORY_CASES[name]().double()


def qkv(seed, t, b=1, d=4):
    return random_qkv(seed, b, H, t, d)


def test_registry_names_every_memory():
    course = ["full", "window", "sink", "moving_average", "cumulative_average", "linear", "delta", "segment",
              "compressive", "knn", "multi"]
    assert [name for name in MEMORIES if name in course] == course  # in menu order (a new memory may join)
    assert FIXED_SIZE_MEMORIES <= set(MEMORIES) and "full" not in FIXED_SIZE_MEMORIES
    assert isinstance(make_memory("sink", sinks=1, window=3), SinkMemory)
    assert make_memory("compressive", mem_len=4, cmem_len=2, ratio=2).ratio == 2
    with pytest.raises(ValueError, match="unknown memory 'xl'; expected one of: full, window, sink, .*multi"):
        make_memory("xl")
    for name in course:  # the course's memories are also at the top level
        assert getattr(course_lib, MEMORIES[name].__name__) is MEMORIES[name]


@pytest.mark.parametrize("cls", REGISTERED, ids=lambda cls: cls.name)
def test_every_registered_class_carries_its_metadata(cls):
    assert MEMORIES[cls.name] is cls and cls.title
    memory, bigger = cls.example(n_heads=H), cls.example(64, n_heads=H)
    assert type(memory) is cls is type(bigger) and memory.label()
    assert (cls.name in FIXED_SIZE_MEMORIES) == (cls.fixed_size is True)  # None: it depends on the parts
    assert set(cls.symbols) <= set(inspect.signature(cls).parameters), "symbols name constructor arguments"
    assert all(f"{symbol} = " in memory.label() for symbol in memory.sizes()), "the label shows every size"
    for optional in ("reserve", "snapshot", "forward_unchecked", "cost_per_token"):
        assert callable(getattr(memory, optional))


@pytest.mark.parametrize("name", list(MEMORIES))
def test_analytic_bytes_are_what_the_state_holds(name):
    """cost_per_token's bytes (one layer, one sequence) = nbytes of the state once the memory is full."""
    memory = make(name).float()
    for t in (3, 70):  # before and after every example's slots fill up
        q, k, v = (x.float() for x in qkv(8, t, d=8))
        with torch.no_grad():
            _, state = run(memory, q, k, v, [t])
        cost = memory.cost_per_token(ModelConfig(1, H, 8, bytes_per_value=4), t)
        if t == 70 or not memory.fixed_size:  # before: fixed-size memories preallocate their slots
            assert cost["bytes"] == memory.nbytes(state), (t, cost, memory.nbytes(state))
        assert cost["flops"] > 0


def test_no_module_asks_which_class_a_memory_is():
    """viz, widgets, cost, benchmarks and multi use the protocol (parts, spans, metadata), never
    ``isinstance(m, SomeMemory)`` or ``type(m) is``: only a memory's own file names its class."""
    root = Path(course_lib.__file__).parent
    names = "|".join(cls.__name__ for cls in REGISTERED)
    asks = re.compile(rf"isinstance\([^)]*\b({names})\b|type\([^)]*\) is ({names})\b")
    found = []
    for path in root.rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for match in asks.finditer(line):
                cls = match.group(1) or match.group(2)
                own = path.parent.name == "memory" and f"class {cls}(" in path.read_text()
                if not own:
                    found.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("name", MEMORY_CASES)
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
    with pytest.raises(ValueError, match="same T >= 1"):
        memory(q[:, :, :0], k[:, :, :0], v[:, :, :0], memory.init_state(2, H, 4, dtype=torch.float64))


@pytest.mark.parametrize("name", MEMORY_CASES)
def test_another_memorys_state_is_a_type_error_naming_both(name):
    memory = make(name)
    q, k, v = qkv(0, 3)
    expected = type(memory.init_state(1, H, 4, dtype=torch.float64)).__name__
    for other in ("full", "window", "linear", "multi"):
        state = make(other).init_state(1, H, 4, dtype=torch.float64)
        if type(state).__name__ == expected:
            continue
        with pytest.raises(TypeError, match=f"state must be a {expected} from .* got a {type(state).__name__} "
                                            "\\(another memory's state\\)"):
            memory(q, k, v, state)


def test_a_sink_state_is_no_window_state_even_with_as_many_slots():
    window, sink = make_memory("window", window=6).double(), make_memory("sink", sinks=2, window=4).double()
    q, k, v = qkv(0, 3)
    with pytest.raises(TypeError, match="state must be a WindowState .* got a SinkState"):
        window(q, k, v, sink.init_state(1, H, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="state must be a SinkState .* got a WindowState"):
        sink(q, k, v, window.init_state(1, H, 4, dtype=torch.float64))


@pytest.mark.parametrize("name", RINGS)
def test_a_state_of_another_size_is_refused(name):
    memory = make(name)
    state = memory.init_state(1, H, 4, dtype=torch.float64)
    state.buffer = type(state.buffer).empty(1, H, memory.n_slots + 1, 4, 4, device="cpu", dtype=torch.float64)
    with pytest.raises(ValueError, match=f"the state holds {memory.n_slots + 1} slots but .* keeps {memory.n_slots}"):
        memory(*qkv(0, 3), state)


@pytest.mark.parametrize("name", MEMORY_CASES)
def test_a_kept_state_keeps_its_meaning(name):
    memory = make(name)
    q, k, v = qkv(1, 20)
    _, kept = run(memory, q[:, :, :9], k[:, :, :9], v[:, :, :9], [4, 5])
    first, later = run(memory, q[:, :, 9:], k[:, :, 9:], v[:, :, 9:], [3, 1, 7], state=kept)
    run(memory, q, k, v, [20], state=later)  # more forwards from the newer state
    again, _ = run(memory, q[:, :, 9:], k[:, :, 9:], v[:, :, 9:], [3, 1, 7], state=kept)
    torch.testing.assert_close(again, first)


@pytest.mark.parametrize("name", MEMORY_CASES)
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


@pytest.mark.parametrize("name", MEMORY_CASES)
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


@pytest.mark.parametrize("name", [n for n in SLOTS if n in MEMORIES])
def test_held_pairs_come_in_the_order_of_spans(name):
    memory = make(name)
    x = torch.arange(13.0, dtype=torch.float64).view(1, 1, 13, 1).expand(1, H, 13, 4)  # k_j = v_j = j
    _, state = run(memory, x, x, x, [6, 7])
    held = memory.held(state)[1][0, 0, :, 0].tolist()
    assert held == [(a + b) / 2 for a, b in memory.spans(state)]  # a compressed slot: the mean of its group


@pytest.mark.parametrize("name", SLOTS)
def test_parts_group_the_spans_in_attention_order(name):
    memory = make(name)
    q, k, v = qkv(5, 23)
    for sizes in ([1], [6, 7], [6, 7, 10]):
        _, state = run(memory, q[:, :, :sum(sizes)], k[:, :, :sum(sizes)], v[:, :, :sum(sizes)], sizes)
        parts, spans = memory.parts(state), memory.spans(state)
        assert sum(n for _, n in parts) == len(spans) and all(n > 0 for _, n in parts)
        labels = [label for label, n in parts for _ in range(n)]
        for label, (a, b) in zip(labels, spans):
            assert label in ("sinks", "CMem", "Mem")
            assert (b > a) == (label == "CMem")  # only a compressed slot stands for several positions
            if label == "sinks":
                assert b < memory_sinks(memory)


def memory_sinks(memory):
    return max(getattr(m, "sinks", 0) for m in getattr(memory, "memories", [memory]))


@pytest.mark.parametrize("name", NO_SLOTS)
def test_memories_without_slots_have_no_spans(name):
    memory = make(name)
    with pytest.raises(TypeError, match="holds no key/value slots"):
        memory.spans(memory.init_state(1, H, 4))
    with pytest.raises(TypeError, match="holds no key/value slots"):
        memory.parts(memory.init_state(1, H, 4))


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
    # in a fresh process: here, memory freed by earlier tests is reused, and the growth may not show in the RSS
    script = """
import os, torch
from course_lib.memory import FullMemory
H = int(os.environ["HEADS"])
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
k, v = torch.randn(2, 1, H, 199, 16).unbind(0)
memory = FullMemory()
state = memory.init_state(1, H, 16, dtype=torch.float32)
before = rss()
for _ in range(503):  # append only: the cache's growth without the cost of attending to it
    state = memory.append(state, k, v)
assert memory.nbytes(state) == 503 * 199 * H * (16 + 16) * 4, memory.nbytes(state)  # keys and values, float32
print(rss() - before)
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "HEADS": str(H)}
    done = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) > 8 * 2**20  # 25 MB of pairs: the bound above would catch a leak this size


# -- peak working memory ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(__import__("course_lib.memory").memory.MEMORIES))
def test_peak_bytes_add_the_segment_only_for_memories_that_read_it(name):
    """A memory whose queries see their whole segment (segment, compressive, kNN) holds that
    segment's pairs beside its state: peak = nbytes + 2 B H n_s d_h values; the others' peak is nbytes."""
    from course_lib.memory import MEMORIES

    memory = MEMORIES[name].example(8, n_heads=2)
    state = memory.init_state(1, 2, 6, dtype=torch.float64)
    x = torch.randn(1, 2, 13, 6, dtype=torch.float64)
    _, state = memory(x, x, x, state)
    extra = memory.peak_nbytes(state, 16) - memory.nbytes(state)
    readers = [m for m in getattr(memory, "memories", [memory]) if m.reads_segment]
    assert extra == len(readers) * 16 * 2 * 6 * 2 * 8
    assert (name in ("segment", "compressive", "knn")) == memory.reads_segment


def test_a_memory_class_owns_its_symbols_label_and_flags():
    """What is said about a memory lives on its class: the label, the design label and the test
    flags are derived from ``symbols`` and ``reads_segment``, not from lists elsewhere."""
    from course_lib.experiments.specs import spec_label
    from course_lib.memory import CompressiveMemory, DeltaMemory, MultiMemory, WindowMemory

    assert CompressiveMemory(8, 4, 2).label() == "compressive n_m = 8, n_cm = 4, c = 2"
    assert CompressiveMemory(8, 4, 2, compress="conv").label().endswith(", f_c = conv")
    assert SinkMemory(4, 12, positions="cache").label() == "sink S = 4, n_c = 12 (cache positions)"
    assert DeltaMemory().label() == "delta" and DeltaMemory(beta="learned").label() == "delta beta = learned"
    assert spec_label({"name": "segment", "mem_len": 16}) == "segment n_m=16"
    gated = MultiMemory([WindowMemory(4), DeltaMemory()], n_heads=2)
    assert gated.fixed_size is True and MultiMemory([WindowMemory(4), make_memory("full")], n_heads=2).fixed_size \
        is False
    assert [n for n, cls in MEMORIES.items() if cls.example(n_heads=2).chunk_invariant] == [
        n for n, cls in MEMORIES.items() if not cls.reads_segment]
    assert not CompressiveMemory(8, 4, 2).chunk_invariant and WindowMemory(4).chunk_invariant
