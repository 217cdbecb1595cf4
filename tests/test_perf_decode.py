"""The one-token decoding step of MemoryLM: the same numbers as the blocks, in fewer ops.

``MemoryLM.generate`` (and ``forward`` on one token without autograd) takes a fast path:
transposed weights, the rotary rotation as a roll, the residual added inside the GEMM,
memories called without per-step checks. These tests hold it to the plain path, in float64,
for every memory, with GQA, batches and prompts of awkward sizes.
"""

from __future__ import annotations

import pytest
import torch

from course_lib.memory import (
    CompressiveMemory,
    DeltaMemory,
    FullMemory,
    KNNMemory,
    LinearMemory,
    MultiMemory,
    SegmentMemory,
    SinkMemory,
    WindowMemory,
)
from course_lib.models import MemoryLM, Rotary, _apply_rotary_rolled, apply_rotary

MEMORIES = {
    "full": FullMemory,
    "window": lambda: WindowMemory(5),
    "sink": lambda: SinkMemory(sinks=2, window=3),
    "linear": lambda: LinearMemory(chunk_size=4),
    "delta": lambda: DeltaMemory(beta=0.6, chunk_size=4),
    "segment": lambda: SegmentMemory(6),
    "compressive": lambda: CompressiveMemory(6, 3, 3, compress="conv"),
    "knn": lambda: KNNMemory(capacity=9, top_k=3),
    "infini": lambda: MultiMemory([WindowMemory(4), LinearMemory(chunk_size=4)], combine="gate", n_heads=4),
}


def make(memory="full", *, n_kv_heads=None, seed=0, **kwargs):
    torch.manual_seed(seed)
    lm = MemoryLM(vocab_size=23, d_model=24, n_layers=2, n_heads=4, memory=MEMORIES[memory](),
                  n_kv_heads=n_kv_heads, **kwargs)
    return lm.double().eval()


def tokens(batch, t, seed=1):
    return torch.randint(0, 23, (batch, t), generator=torch.Generator().manual_seed(seed))


def plain_step(lm, tok, state):
    """The blocks, as in training: with autograd on, ``forward`` never takes the fast path."""
    with torch.enable_grad():
        logits, new_state = lm(tok, state)
    return logits.detach(), new_state


def test_rotating_by_a_roll_gives_bitwise_the_same_numbers():
    rotary = Rotary(head_dim=6)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    cos, sin = rotary.tables(9, x.device, x.dtype)
    _, signed_sin = rotary.rolled_tables(9, x.device, x.dtype)
    # (x0, x1, x2 | x3, x4, x5) -> rotate_half = (-x3, -x4, -x5 | x0, x1, x2)
    assert torch.equal(_apply_rotary_rolled(x, cos[4:9], signed_sin[4:9]), apply_rotary(x, cos[4:9], sin[4:9]))
    assert signed_sin[1].tolist() == [-s for s in sin[1, :3].tolist()] + sin[1, 3:].tolist()


# (memory, n_kv_heads, batch, prompt length): every memory, with MHA, GQA and MQA in turn
CASES = [(name, (None, 2, 1)[i % 3], (1, 3, 2)[i % 3], (1, 7, 4)[i % 3]) for i, name in enumerate(MEMORIES)]
CASES += [("full", 2, 2, 1), ("full", None, 3, 5), ("window", 1, 1, 9)]


@pytest.mark.parametrize("memory,n_kv_heads,batch,prompt", CASES)
def test_the_one_token_step_equals_the_blocks(memory, n_kv_heads, batch, prompt):
    lm = make(memory, n_kv_heads=n_kv_heads)
    x = tokens(batch, prompt + 6)
    with torch.no_grad():
        _, state = lm(x[:, :prompt])
        for i in range(prompt, prompt + 6):
            tok = x[:, i:i + 1]
            expected, _ = plain_step(lm, tok, state)
            logits, state = lm(tok, state)  # the fast path
            torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-12)
    assert state.pos == prompt + 6


def test_generate_takes_the_fast_path_once_per_new_token(monkeypatch):
    lm = make()
    calls = []
    step = MemoryLM._step
    monkeypatch.setattr(MemoryLM, "_step", lambda self, idx, st, **kw: calls.append(idx) or step(self, idx, st, **kw))
    out = lm.generate(tokens(2, 5), 4)
    assert out.shape == (2, 9) and len(calls) == 3  # the prompt's forward, then 3 single tokens


def test_greedy_tokens_are_the_same_as_a_loop_over_the_blocks():
    lm = make("window", n_kv_heads=2)
    prompt = tokens(2, 5)
    seq, state = prompt, None
    logits, state = plain_step(lm, prompt, state)
    for _ in range(10):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
        logits, state = plain_step(lm, nxt, state)
    assert torch.equal(lm.generate(prompt, 10), seq)


def test_decoding_weights_follow_every_change_of_the_parameters():
    lm = make()
    x = tokens(1, 6)
    lm.generate(x, 2)  # builds the transposed weights
    with torch.no_grad():
        lm.blocks[0].mlp[0].weight.mul_(3.0)  # in place: same storage, new version
        lm.head.weight.add_(0.5)
    with torch.no_grad():
        _, state = lm(x[:, :5])
        fast, _ = lm(x[:, 5:], state)
    expected, _ = plain_step(lm, x[:, 5:], state)
    torch.testing.assert_close(fast, expected, rtol=1e-12, atol=1e-12)

    lm.blocks[1].attn.out.weight = torch.nn.Parameter(torch.randn(24, 24, dtype=torch.float64))  # a new object
    with torch.no_grad():
        _, state = lm(x[:, :5])
        fast, _ = lm(x[:, 5:], state)
    expected, _ = plain_step(lm, x[:, 5:], state)
    torch.testing.assert_close(fast, expected, rtol=1e-12, atol=1e-12)

    lm.float()  # new storage, new dtype
    with torch.no_grad():
        _, state = lm(x[:, :5])
        fast, _ = lm(x[:, 5:], state)
    expected, _ = plain_step(lm, x[:, 5:], state)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, expected)


def test_a_training_step_after_generate_still_works():
    """generate runs under inference mode; nothing it leaves behind may be an inference tensor."""
    lm = make()
    out = lm.generate(tokens(2, 3), 40)  # also grows the rotary tables
    assert not out.is_inference()
    assert not lm.rotary._cos.is_inference() and not lm.rotary._signed_sin.is_inference()
    lm.train()
    logits, _ = lm(out)  # the generated tokens as training input
    logits.sum().backward()
    assert lm.embed.weight.grad is not None


def test_a_returned_state_can_be_continued_token_by_token():
    lm = make("full")
    seq, state = lm.generate(tokens(1, 4), 3, return_state=True)  # the state holds all 7 tokens
    nxt = tokens(1, 1, seed=2)
    with torch.no_grad():
        logits, state = lm(nxt, state)  # writes into the returned state's buffer
    assert state.pos == 8
    expected, _ = plain_step(lm, torch.cat([seq, nxt], dim=1), None)
    torch.testing.assert_close(logits[:, -1], expected[:, -1], rtol=1e-12, atol=1e-12)


def test_dropout_in_training_mode_keeps_the_plain_path():
    lm = make(dropout=0.5).train()
    x = tokens(1, 4)
    with torch.no_grad():
        _, state = lm(x[:, :3])
        torch.manual_seed(0)
        a, _ = lm(x[:, 3:], state)
        b, _ = lm(x[:, 3:], state)
        assert not torch.allclose(a, b)  # dropout is active: the fast path would ignore it
        lm.eval()
        c, _ = lm(x[:, 3:], state)
        d, _ = lm(x[:, 3:], state)
    assert torch.equal(c, d)


def test_the_step_gives_back_the_onednn_switch_even_when_a_memory_fails(monkeypatch):
    """The CPU step runs GELU on the native kernel by switching oneDNN off for its duration."""
    lm = make("window")
    before = torch.backends.mkldnn.enabled
    lm.generate(tokens(1, 3), 4)
    assert torch.backends.mkldnn.enabled == before

    def broken(*args, **kwargs):
        assert not torch.backends.mkldnn.enabled  # switched off inside the step
        raise RuntimeError("memory failed")

    monkeypatch.setattr(lm.blocks[1].attn.memory, "forward", broken)
    with torch.no_grad(), pytest.raises(RuntimeError, match="memory failed"):
        lm(tokens(1, 1), lm.init_state(1))
    assert torch.backends.mkldnn.enabled == before
