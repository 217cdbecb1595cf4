"""MemoryLM with every memory: segments carrying the state, generation, training, one copy per layer."""

from __future__ import annotations

import pytest
import torch
from memory_helpers import MEMORY_CASES
from memory_helpers import H as HEADS

from course_lib.memory import MEMORIES, DeltaMemory, LinearMemory, WindowMemory
from course_lib.models import MemoryLM

# every registered memory, and the variants that take other paths through MemoryLM
FACTORIES = {name: MEMORY_CASES[name] for name in [*MEMORIES, "compressive_conv", "compressive_most_used",
                                                   "infini", "concat"]}
# memories whose result does not depend on where the chunks start
CHUNK_FREE = ["full", "window", "sink", "moving_average", "cumulative_average", "linear", "delta", "multi", "infini"]


def model(name, n_kv_heads=None):
    torch.manual_seed(0)
    return MemoryLM(vocab_size=19, d_model=16, n_layers=2, n_heads=HEADS, memory=FACTORIES[name](),
                    n_kv_heads=n_kv_heads).double()


def tokens(t, batch=2, seed=0):
    return torch.randint(0, 19, (batch, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", CHUNK_FREE)
def test_segments_carrying_the_state_equal_one_pass(name):
    lm, idx = model(name), tokens(17)
    whole, _ = lm(idx)
    parts, state, p = [], None, 0
    for c in (5, 1, 8, 3):
        logits, state = lm(idx[:, p:p + c], state)
        parts.append(logits)
        p += c
    torch.testing.assert_close(torch.cat(parts, dim=1), whole)
    assert state.pos == 17


@pytest.mark.parametrize("name", FACTORIES)
def test_generate_equals_a_plain_greedy_loop_and_keeps_the_prompt_state(name):
    lm, prompt = model(name), tokens(7)
    _, state = lm(prompt)
    out1 = lm.generate(prompt[:, -1:], 6, state=state)
    out2 = lm.generate(prompt[:, -1:], 6, state=state)  # the kept state still means "after the prompt"
    assert torch.equal(out1, out2)
    # the same greedy decoding by hand, one forward per token (no reserve: copy-on-write states)
    with torch.no_grad():
        logits, s = lm(prompt[:, -1:], state)
        expected = [prompt[:, -1:]]
        for _ in range(6):
            expected.append(logits[:, -1].argmax(-1, keepdim=True))
            logits, s = lm(expected[-1], s)
    assert torch.equal(out1, torch.cat(expected, dim=1))


@pytest.mark.parametrize("name", FACTORIES)
def test_training_segment_by_segment_with_a_detached_state(name):
    lm, idx = model(name), tokens(21, seed=1)
    opt = torch.optim.SGD(lm.parameters(), lr=0.1)
    state = None
    for p in range(0, 20, 5):  # four segments of five tokens, the state carried
        logits, state = lm(idx[:, p:p + 5], state)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, p + 1:p + 6].flatten())
        opt.zero_grad()
        loss.backward()  # would fail on a second pass through an old graph if the state held one
        assert torch.isfinite(loss)
        assert all(torch.isfinite(q.grad).all() for q in lm.parameters() if q.grad is not None)
        opt.step()
    assert lm.state_nbytes(state) > 0


def test_every_layer_has_its_own_memory():
    lm = model("compressive_conv")
    first, second = lm.memories
    assert first is not second
    assert first.k_weight is not second.k_weight


@pytest.mark.parametrize("name", ["window", "sink", "segment", "full", "linear", "infini"])
def test_grouped_query_attention_in_the_model(name):
    lm = model(name, n_kv_heads=1)
    idx = tokens(9)
    whole, _ = lm(idx)
    _, state = lm(idx[:, :4])
    logits, _ = lm(idx[:, 4:], state)
    if name != "segment":
        torch.testing.assert_close(logits, whole[:, 4:])
    assert lm.generate(idx[:, :3], 4).shape == (2, 7)



@pytest.mark.parametrize("make", [lambda: LinearMemory(chunk_size=4), lambda: DeltaMemory(chunk_size=4)],
                         ids=["linear", "delta"])
def test_matrix_memories_get_keys_not_rotated_by_position(make):
    """Linear and delta memories are read by content: MemoryLM hands them the projected queries
    and keys as they are, in a forward over a chunk and in the one-token decoding step alike.
    The control, a window memory, gets them rotated."""
    torch.manual_seed(0)
    for memory, rotated in ((make(), False), (WindowMemory(8), True)):
        lm = MemoryLM(vocab_size=16, d_model=16, n_layers=1, n_heads=HEADS, memory=memory).double().eval()
        attn, seen = lm.blocks[0].attn, []
        inner = attn.memory.forward

        def spy(q, k, v, state, _inner=inner, _seen=seen):
            _seen.append(k.detach().clone())
            return _inner(q, k, v, state)

        attn.memory.forward = spy
        idx = torch.randint(0, 16, (1, 6))
        with torch.no_grad():
            out = lm.generate(idx, 3)  # a forward over the 6 prompt tokens, then two one-token steps
            x = lm.blocks[0].ln1(lm.embed(out[:, :8]))
            keys = attn.qkv(x).view(1, 8, 3 * HEADS, 8).transpose(1, 2)[:, HEADS:2 * HEADS]  # unrotated
        assert [k.shape[2] for k in seen] == [6, 1, 1]
        for got, want in zip(seen, (keys[:, :, :6], keys[:, :, 6:7], keys[:, :, 7:8])):
            assert torch.allclose(got, want) != rotated
