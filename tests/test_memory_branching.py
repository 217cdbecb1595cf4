"""Unreserved states written in place, and branched: every kept state reads what it held.

Without autograd a forward from the newest state of a slot buffer writes in place and keeps what
it overwrote (``SlotBuffer.keep``); an older state read or continued later is restored from that
(``SlotBuffer.restored``), and once the slack is spent the newest state moves to a fresh copy. These
tests branch old states after the newest has gone past the slack several times, at sizes that are
no multiple of each other, and hold every branch to a fresh replay of the same tokens bit for bit
(``torch.equal``: the same slots in the same order, so the same sums), through the memories
themselves and through ``MemoryLM``'s decoding step; and they count how often the buffer's storage
changes in an unreserved decoding loop (once per slack, not once per token).
"""

from __future__ import annotations

import pytest
import torch
from memory_helpers import MEMORY_CASES, H, qkv

from course_lib.memory import (
    MEMORIES,
    CompressiveMemory,
    HeavyHitterMemory,
    KNNMemory,
    SegmentMemory,
    SinkMemory,
    WindowMemory,
)
from course_lib.memory._slots import SlotMemory
from course_lib.models import MemoryLM

#: awkward sizes: windows, rings and ratios that divide nothing
CASES = {
    "window": lambda: WindowMemory(window=5),
    "sink": lambda: SinkMemory(sinks=2, window=5),
    "sink_cache": lambda: SinkMemory(sinks=3, window=4, positions="cache"),
    "compressive": lambda: CompressiveMemory(mem_len=5, cmem_len=3, ratio=2),
    "compressive_most_used": lambda: CompressiveMemory(mem_len=5, cmem_len=2, ratio=3, compress="most_used"),
    "heavy_hitter": lambda: HeavyHitterMemory(budget=5, recent=2),
    "segment": lambda: SegmentMemory(mem_len=7),
    "knn": lambda: KNNMemory(capacity=7, top_k=3),
}
# and every other registered memory that holds key/value slots, at its example() sizes: a new one is branched here
# too, with no line of its own
CASES.update({name: MEMORY_CASES[name] for name in MEMORIES
              if name not in CASES and MEMORY_CASES[name]().holds_slots})
MEMORY_ONLY = [name for name in CASES if name != "sink_cache"]  # cache positions need MemoryLM's rotary
RINGS = [name for name in MEMORY_ONLY if isinstance(CASES[name](), SlotMemory)]  # SlotBuffer memories
N = 40  # tokens decoded: past the slack (n_slots kept pairs) several times for every case


def decode(memory, q, k, v, sizes, state=None):
    """Feed the chunks ``sizes`` under ``torch.no_grad()``; the outputs and every state on the way."""
    if state is None:
        state = memory.init_state(1, H, q.shape[-1], dtype=q.dtype)
    outs, states, p = [], [state], 0
    with torch.no_grad():
        for c in sizes:
            out, state = memory(q[:, :, p:p + c], k[:, :, p:p + c], v[:, :, p:p + c], state)
            outs.append(out)
            states.append(state)
            p += c
    return (torch.cat(outs, 2) if outs else None), states


def held(memory, state):
    return memory.held(state)


@pytest.mark.parametrize("name", MEMORY_ONLY)
@pytest.mark.parametrize("at", [0, 3, 6, 13, 22])
def test_an_old_state_branched_after_the_newest_moved_on_equals_a_fresh_replay(name, at):
    memory = CASES[name]().double()
    q, k, v = qkv(0, 1, H, N, 4)
    bq, bk, bv = qkv(1, 1, H, 9, 4)  # the branch's own tokens
    _, states = decode(memory, q, k, v, [1] * N)  # the newest state is N tokens on; states[at] is old
    branch, _ = decode(memory, bq, bk, bv, [2, 1, 1, 4, 1], state=states[at])
    _, replayed = decode(memory, q[:, :, :at], k[:, :, :at], v[:, :, :at], [1] * at)
    fresh, _ = decode(memory, bq, bk, bv, [2, 1, 1, 4, 1], state=replayed[-1])
    assert torch.equal(branch, fresh)
    for a, b in zip(held(memory, states[at]), held(memory, replayed[-1])):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", MEMORY_ONLY)
def test_every_kept_state_still_reads_what_it_held_and_the_newest_goes_on(name):
    memory = CASES[name]().double()
    q, k, v = qkv(2, 1, H, N + 6, 4)
    _, states = decode(memory, q[:, :, :N], k[:, :, :N], v[:, :, :N], [1] * N)
    before = [tuple(x.clone() for x in held(memory, memory.snapshot(s))) for s in states[::-1]]
    # branch every fifth state, newest first, then read them all again
    for s in states[::5]:
        decode(memory, q[:, :, N:], k[:, :, N:], v[:, :, N:], [3, 3], state=s)
    after = [held(memory, s) for s in states[::-1]]
    for x, y in zip(before, after):
        assert all(torch.equal(a, b) for a, b in zip(x, y))
    straight, _ = decode(memory, q, k, v, [1] * (N + 6))
    newest, _ = decode(memory, q[:, :, N:], k[:, :, N:], v[:, :, N:], [1] * 6, state=states[-1])
    assert torch.equal(newest, straight[:, :, N:])


#: slots kept per token (the slack spent): a window's new pair overwrites one slot; a compressive
#: token also pops a position and writes a compressed slot every c tokens, and most_used keeps the
#: mass of its Mem slots (about 1/D of a pair each) at every token
#: (a ring memory not listed: one slot per token)
KEPT_PER_TOKEN = {"window": 1, "sink": 1, "segment": 1, "knn": 1, "compressive": 2, "compressive_most_used": 4}


@pytest.mark.parametrize("name", RINGS)
def test_an_unreserved_decoding_loop_copies_its_buffer_once_per_slack_not_per_token(name):
    memory = CASES[name]().double()
    tokens = 12 * memory.n_slots
    q, k, v = qkv(3, 1, H, tokens, 4)
    _, states = decode(memory, q, k, v, [1] * tokens)
    storages = [s.buffer.k.data_ptr() for s in states]
    copies = sum(a != b for a, b in zip(storages, storages[1:]))
    # copy-on-write would copy at every token
    assert copies <= KEPT_PER_TOKEN.get(name, 1) * tokens // memory.n_slots + 1, (copies, tokens)


@pytest.mark.parametrize("name", RINGS)
def test_with_autograd_on_the_buffer_read_is_never_written_again(name):
    memory = CASES[name]().double()
    q, k, v = qkv(4, 1, H, 6, 4)
    _, states = decode(memory, q[:, :, :3], k[:, :, :3], v[:, :, :3], [3])
    kept = states[-1]
    pointer = kept.buffer.k.data_ptr()
    snapshot = tuple(x.clone() for x in memory.held(kept))
    memory(q[:, :, 3:4], k[:, :, 3:4], v[:, :, 3:4], kept)  # grad mode on: a copy, and the buffer frozen
    _, later = decode(memory, q[:, :, 3:], k[:, :, 3:], v[:, :, 3:], [1, 1, 1], state=kept)
    assert later[-1].buffer.k.data_ptr() != pointer and kept.buffer.k.data_ptr() == pointer
    assert all(torch.equal(a, b) for a, b in zip(memory.held(kept), snapshot))


def lm(name):
    torch.manual_seed(0)
    return MemoryLM(vocab_size=13, d_model=16, n_layers=2, n_heads=H, memory=CASES[name]()).double().eval()


@pytest.mark.parametrize("name", ["window", "sink", "sink_cache", "compressive", "heavy_hitter"])
def test_a_hand_written_loop_branches_old_states_exactly(name):
    """``model(tok, state)`` under inference mode (the decoding step, ``forward_unchecked``): a state
    kept from early on and continued after the loop went on far past the slack gives the logits a
    fresh loop over the same tokens gives."""
    model = lm(name)
    tokens = torch.randint(0, 13, (1, 4 * N), generator=torch.Generator().manual_seed(5))
    other = torch.randint(0, 13, (1, 7), generator=torch.Generator().manual_seed(6))

    def loop(ids, state):
        logits = []
        for i in range(ids.shape[1]):
            out, state = model(ids[:, i:i + 1], state)
            logits.append(out)
        return torch.cat(logits, 1), state

    with torch.inference_mode():
        kept = {}
        state = model.init_state(1)
        for i in range(tokens.shape[1]):
            if i in (2, 9, 31):
                kept[i] = state
            _, state = model(tokens[:, i:i + 1], state)
        for at, old in kept.items():
            branch, _ = loop(other, old)
            _, replayed = loop(tokens[:, :at], model.init_state(1))
            fresh, _ = loop(other, replayed)
            assert torch.equal(branch, fresh), at
