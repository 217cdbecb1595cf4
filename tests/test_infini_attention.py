"""Infini-attention as a MultiMemory: local attention plus a linear memory, mixed by a learned gate per head.

    out_i = g * Att(q_i, window) + (1 - g) * phi(q_i) S_i / (phi(q_i) . z_i)        g = sigmoid(w_h)

The task: the first token of a sequence is a key (one of 4); every position must predict it.
The text comes in segments of 8 tokens with the state carried between them, so beyond the
first segment the key is far outside the window of 4: only the linear memory can carry it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from course_lib.memory import LinearMemory, MultiMemory, WindowMemory
from course_lib.models import MemoryLM

LENGTH, SEGMENT, KEYS, VOCAB, HEADS = 24, 8, 4, 16, 2


def infini_lm(window=4):
    memory = MultiMemory([WindowMemory(window), LinearMemory()], combine="gate", n_heads=HEADS)
    return MemoryLM(VOCAB, 32, 1, HEADS, memory=memory)


def recall_batch(g, batch=16):
    """Tokens ``[key, noise, noise, ...]`` and the target ``key`` at every position."""
    key = torch.randint(0, KEYS, (batch, 1), generator=g)
    noise = torch.randint(KEYS, VOCAB, (batch, LENGTH), generator=g)
    return torch.cat([key, noise[:, 1:]], dim=1), key.expand(batch, LENGTH)


def segments(lm, x):
    """Logits over the whole text, segment by segment, carrying the (detached) state."""
    state, outs = None, []
    for p in range(0, x.shape[1], SEGMENT):
        logits, state = lm(x[:, p:p + SEGMENT], state)
        outs.append(logits)
    return torch.cat(outs, dim=1)


def far_accuracy(lm, g):
    """Accuracy after the first segment, where the key is beyond the window."""
    x, y = recall_batch(g, batch=64)
    with torch.no_grad():
        pred = segments(lm, x).argmax(-1)
    return (pred[:, SEGMENT:] == y[:, SEGMENT:]).float().mean().item()


def test_a_gate_at_1_is_the_local_attention_alone():
    torch.manual_seed(0)
    infini = infini_lm().double()
    local = MemoryLM(VOCAB, 32, 1, HEADS, memory=WindowMemory(4)).double()
    missing = local.load_state_dict(infini.state_dict(), strict=False)
    assert missing.unexpected_keys == ["blocks.0.attn.memory.gate_logit"] and not missing.missing_keys
    with torch.no_grad():
        infini.memories[0].gate_logit.fill_(float("inf"))
    x, _ = recall_batch(torch.Generator().manual_seed(1))
    torch.testing.assert_close(segments(infini, x), segments(local, x))


def test_infini_attention_learns_its_gate_and_recalls_beyond_the_window():
    torch.manual_seed(3)
    lm = infini_lm()
    gate = lm.memories[0].gate_logit
    assert gate.tolist() == [0.0, 0.0]  # g = 1/2 for every head at first
    opt = torch.optim.Adam(lm.parameters(), lr=0.02)
    g = torch.Generator().manual_seed(3)
    first = None
    for _ in range(60):
        x, y = recall_batch(g)
        state = None
        for p in range(0, LENGTH, SEGMENT):  # train segment by segment, the state carried
            logits, state = lm(x[:, p:p + SEGMENT], state)
            loss = F.cross_entropy(logits.flatten(0, 1), y[:, p:p + SEGMENT].flatten())
            opt.zero_grad()
            loss.backward()
            assert gate.grad is not None and gate.grad.abs().sum() > 0
            opt.step()
            first = loss.item() if first is None else first
    assert loss.item() < first / 2
    # the gate learned to lean on the linear memory, the only one that can still see the key
    assert (lm.memories[0].gate < 0.45).all()
    assert far_accuracy(lm, g) > 0.6
    with torch.no_grad():
        gate.fill_(float("inf"))  # local attention alone: back to guessing one key in 4
    assert far_accuracy(lm, g) < 0.4
