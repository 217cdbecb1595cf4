"""course_lib.decode: the one-token step of MemoryLM gives the numbers of the model's blocks.

The blocks (``models.py``, the readable model) run whenever autograd records; the step
(``decode.py``) runs for one token without autograd: in ``generate`` and in a hand-written
loop under ``torch.no_grad()``. These tests hold the two together in float64, for every
memory, with GQA, batches and prompts of awkward sizes, and check that the step notices
every change of the model (and no change of another) and gives back the torch switch it turns.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from course_lib import decode
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
from course_lib.models import MemoryLM

MEMORIES = {
    "full": FullMemory,
    "window": lambda: WindowMemory(5),
    "sink": lambda: SinkMemory(sinks=2, window=3),
    "linear": lambda: LinearMemory(chunk_size=4),
    "delta": lambda: DeltaMemory(beta=0.6, chunk_size=4),
    "delta_learned": lambda: DeltaMemory(beta="learned", chunk_size=4),  # beta_t = sigma(W_beta x_t)
    "segment": lambda: SegmentMemory(6),
    "compressive": lambda: CompressiveMemory(6, 3, 3, compress="conv"),
    "knn": lambda: KNNMemory(capacity=9, top_k=3),
    "infini": lambda: MultiMemory([WindowMemory(4), LinearMemory(chunk_size=4)], combine="gate", n_heads=4),
    # the window part rotated by position, the delta part unrotated, with beta_t = sigma(W_beta x_t)
    "gated_delta_learned": lambda: MultiMemory([WindowMemory(3), DeltaMemory(beta="learned", chunk_size=4)],
                                               combine="gate", n_heads=4),
    "sink_cache": lambda: SinkMemory(sinks=2, window=3, positions="cache"),  # StreamingLLM's positions
}


def make(memory="full", *, n_kv_heads=None, seed=0, **kwargs):
    torch.manual_seed(seed)
    lm = MemoryLM(vocab_size=23, d_model=24, n_layers=2, n_heads=4, memory=MEMORIES[memory](),
                  n_kv_heads=n_kv_heads, **kwargs)
    return lm.double().eval()


def tokens(batch, t, seed=1):
    return torch.randint(0, 23, (batch, t), generator=torch.Generator().manual_seed(seed))


def blocks(lm, tok, state):
    """The readable model: with autograd on, ``forward`` never takes the decoding step."""
    with torch.enable_grad():
        logits, new_state = lm(tok, state)
    return logits.detach(), new_state


# (memory, n_kv_heads, batch, prompt length): every memory, with MHA, GQA and MQA in turn
CASES = [(name, (None, 2, 1)[i % 3], (1, 3, 2)[i % 3], (1, 7, 4)[i % 3]) for i, name in enumerate(MEMORIES)]
CASES += [("full", 2, 2, 1), ("full", None, 3, 5), ("window", 1, 1, 9), ("sink_cache", 2, 2, 1),
          ("sink_cache", None, 1, 9), ("gated_delta_learned", 1, 2, 9)]


def stepped(lm, seq, prompt: int):
    """The prompt in one forward, then every later token through the one-token decoding step:
    ``(logits [B, T - prompt, vocab], the last state)``."""
    with torch.no_grad():
        _, s = lm(seq[:, :prompt])
        steps = []
        for i in range(prompt, seq.shape[1]):
            logits, s = lm(seq[:, i:i + 1], s)  # the decoding step
            steps.append(logits)
    return torch.cat(steps, 1), s


@pytest.mark.parametrize("memory,n_kv_heads,batch,prompt", CASES)
def test_the_step_equals_the_blocks(memory, n_kv_heads, batch, prompt):
    lm = make(memory, n_kv_heads=n_kv_heads)
    x = tokens(batch, prompt + 6)
    with torch.no_grad():
        _, state = lm(x[:, :prompt])
        plan = decode.prepare(lm, prompt + 6)
        for i in range(prompt, prompt + 6):
            tok = x[:, i:i + 1]
            expected, _ = blocks(lm, tok, state)
            logits, state = decode.step(plan, tok, state)
            torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-12)
    assert state.pos == prompt + 6


@pytest.mark.parametrize("memory", ["full", "window", "compressive", "delta", "delta_learned", "sink_cache",
                                    "gated_delta_learned"])
def test_a_one_token_forward_without_grad_is_the_step(memory, monkeypatch):
    lm = make(memory, n_kv_heads=2)
    x = tokens(2, 8)
    calls = []
    step = decode.step
    monkeypatch.setattr(decode, "step", lambda plan, idx, st: calls.append(idx) or step(plan, idx, st))
    with torch.no_grad():
        _, state = lm(x[:, :3])
        for i in range(3, 8):
            expected, _ = blocks(lm, x[:, i:i + 1], state)
            logits, state = lm(x[:, i:i + 1], state)
            torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-12)
    assert len(calls) == 5


def test_the_plan_has_named_fields_one_per_layer():
    lm = make("window", n_kv_heads=2)
    plan = decode.prepare(lm, 10)
    assert dataclasses.is_dataclass(plan) and len(plan.layers) == 2
    layer = plan.layers[0]
    assert (layer.n_heads, layer.n_kv_heads, layer.head_dim) == (4, 2, 6)
    assert layer.qkv_t.shape == (24, (4 + 2 * 2) * 6)  # W^T [in, out]
    assert plan.end >= 10 and plan.cos.shape[0] >= 10


@pytest.mark.parametrize("memory", ["window", "delta_learned", "sink_cache", "gated_delta_learned"])
def test_greedy_tokens_are_the_same_as_a_loop_over_the_blocks(memory):
    lm = make(memory, n_kv_heads=2)
    prompt = tokens(2, 5)
    seq, state = prompt, None
    logits, state = blocks(lm, prompt, state)
    for _ in range(10):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
        logits, state = blocks(lm, nxt, state)
    assert torch.equal(lm.generate(prompt, 10), seq)


def check_step(lm, x):
    """The last token of ``x`` through the step (one token, no grad) gives the blocks' logits."""
    with torch.no_grad():
        _, state = lm(x[:, :-1])
        fast, _ = lm(x[:, -1:], state)
    expected, _ = blocks(lm, x[:, -1:], state)
    torch.testing.assert_close(fast, expected, rtol=1e-12, atol=1e-12)


def test_the_plan_follows_every_change_of_the_weights():
    lm = make()
    x = tokens(1, 6)
    lm.generate(x, 2)  # builds the plan
    with torch.no_grad():
        lm.blocks[0].mlp[0].weight.mul_(3.0)  # in place: same storage, new version
        lm.head.weight.add_(0.5)
    check_step(lm, x)
    lm.blocks[1].attn.out.weight = torch.nn.Parameter(torch.randn(24, 24, dtype=torch.float64))  # a new object
    check_step(lm, x)
    lm.blocks[0].mlp[2] = torch.nn.Linear(96, 24, dtype=torch.float64)  # a new submodule
    check_step(lm, x)
    opt = torch.optim.SGD(lm.parameters(), lr=0.1)  # an optimizer step
    lm(x)[0].sum().backward()
    opt.step()
    check_step(lm, x)
    lm.float()  # new storage, new dtype
    with torch.no_grad():
        _, state = lm(x[:, :5])
        fast, _ = lm(x[:, 5:], state)
    expected, _ = blocks(lm, x[:, 5:], state)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, expected)


def test_the_plan_follows_a_change_anywhere_in_the_tree():
    """Nested submodules, parameter-free ones, the memory, untied weights, a new bias, a loaded
    state dict: each is seen by the next step."""
    lm = make("delta")
    x = tokens(2, 8)
    lm.generate(x, 2)  # builds the plan
    lm.blocks[1].attn.qkv = torch.nn.Linear(24, 72, bias=False, dtype=torch.float64)  # nested two levels down
    check_step(lm, x)
    lm.blocks[0].mlp[1] = torch.nn.ReLU()  # a submodule without parameters
    check_step(lm, x)
    lm.blocks[0].attn.memory = DeltaMemory(beta=0.9, chunk_size=4)  # the memory the step calls
    check_step(lm, x)
    lm.head.weight = torch.nn.Parameter(torch.randn(23, 24, dtype=torch.float64))  # untied from the embedding
    check_step(lm, x)
    lm.head.bias = torch.nn.Parameter(torch.randn(23, dtype=torch.float64))  # a parameter where there was None
    check_step(lm, x)
    lm.blocks[1].attn.out.weight.data = torch.randn(24, 24, dtype=torch.float64)  # new storage, same Parameter
    check_step(lm, x)
    other = make("delta", seed=5)
    other.blocks[0].mlp[1] = torch.nn.ReLU()
    other.blocks[0].attn.memory = DeltaMemory(beta=0.9, chunk_size=4)
    other.head.weight = torch.nn.Parameter(torch.randn(23, 24, dtype=torch.float64))
    other.head.bias = torch.nn.Parameter(torch.randn(23, dtype=torch.float64))
    lm.load_state_dict(other.state_dict())  # copied in place
    check_step(lm, x)
    lm.load_state_dict(make("delta", seed=6).state_dict(), strict=False, assign=True)  # new Parameter objects
    check_step(lm, x)


def test_the_plan_is_rebuilt_exactly_when_the_model_changes(monkeypatch):
    """Registering a parameter anywhere in the model rebuilds the plan; changing another model does not."""
    lm, other = make(), make(seed=3)
    builds = []
    build = decode._build
    monkeypatch.setattr(decode, "_build", lambda model, end: builds.append(model) or build(model, end))
    for model in (lm, other):
        decode.prepare(model, 8)
    other.blocks[0].attn.qkv = torch.nn.Linear(24, 72, dtype=torch.float64)
    other.blocks[0].ln1.register_parameter("extra", torch.nn.Parameter(torch.ones(1, dtype=torch.float64)))
    decode.prepare(lm, 8)
    assert builds == [lm, other]  # lm's plan still holds
    lm.blocks[1].ln2.register_parameter("extra", torch.nn.Parameter(torch.ones(1, dtype=torch.float64)))
    decode.prepare(lm, 8)
    del lm.blocks[1].ln2.extra
    decode.prepare(lm, 8)
    assert builds == [lm, other, lm, lm]


def test_a_cached_plan_does_not_keep_its_model_alive():
    import gc
    import weakref

    lm = make()
    lm.generate(tokens(1, 3), 4)
    alive = weakref.ref(lm)
    del lm
    gc.collect()
    assert alive() is None


def test_a_training_step_after_generate_still_works():
    """generate runs under inference mode; nothing it leaves behind may be an inference tensor."""
    lm = make()
    out = lm.generate(tokens(2, 3), 40)  # also grows the rotary tables
    assert not out.is_inference()
    assert not lm.rotary._cos.is_inference() and not lm.rotary._signed_sin.is_inference()
    assert not decode.prepare(lm, 1).layers[0].qkv_t.is_inference()
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
    expected, _ = blocks(lm, torch.cat([seq, nxt], dim=1), None)
    torch.testing.assert_close(logits[:, -1], expected[:, -1], rtol=1e-12, atol=1e-12)


def test_dropout_in_training_mode_keeps_the_blocks():
    lm = make(dropout=0.5).train()
    x = tokens(1, 4)
    with torch.no_grad():
        _, state = lm(x[:, :3])
        torch.manual_seed(0)
        a, _ = lm(x[:, 3:], state)
        b, _ = lm(x[:, 3:], state)
        assert not torch.allclose(a, b)  # dropout is active: the step would ignore it
        lm.eval()
        c, _ = lm(x[:, 3:], state)
        d, _ = lm(x[:, 3:], state)
    assert torch.equal(c, d)


@pytest.mark.parametrize("before", [True, False])
def test_native_cpu_kernels_gives_the_switch_back(before):
    torch.backends.mkldnn.enabled = before
    try:
        with decode.native_cpu_kernels():
            assert not torch.backends.mkldnn.enabled
        assert torch.backends.mkldnn.enabled == before
        with pytest.raises(KeyError), decode.native_cpu_kernels():
            raise KeyError("inside")
        assert torch.backends.mkldnn.enabled == before
    finally:
        torch.backends.mkldnn.enabled = True


def test_the_step_gives_back_the_onednn_switch_even_when_a_memory_fails(monkeypatch):
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


# -- DeltaNet's learned write strength in the step -------------------------------------------------
def test_the_plan_holds_w_beta_transposed_for_a_learned_beta_only():
    lm = make("delta_learned", n_kv_heads=2)
    for layer, block in zip(decode.prepare(lm, 10).layers, lm.blocks):
        assert layer.beta_t.shape == (24, 4)  # W_beta^T [C, H]: one write strength per (query) head
        assert torch.equal(layer.beta_t, block.attn.w_beta.weight.T) and layer.beta_b is block.attn.w_beta.bias
    assert all(layer.beta_t is None and layer.beta_b is None for layer in decode.prepare(make("delta"), 10).layers)


@pytest.mark.parametrize("batch,prompt", [(1, 1), (3, 5), (2, 9)])
def test_generate_with_a_learned_beta_equals_the_full_forward(batch, prompt):
    """The generated tokens, fed back through one forward over the whole sequence (the chunked
    form, with beta from the blocks), give the logits the step chose them by, to float64 round-off."""
    lm = make("delta_learned", n_kv_heads=(None, 2, 1)[batch % 3])
    seq, state = lm.generate(tokens(batch, prompt), 7, return_state=True)
    whole, _ = blocks(lm, seq, None)
    assert torch.equal(whole[:, prompt - 1:-1].argmax(-1), seq[:, prompt:])
    steps, s = stepped(lm, seq, prompt)
    torch.testing.assert_close(steps, whole[:, prompt:], rtol=1e-12, atol=1e-12)
    for got, want in zip(s.layers, state.layers):
        torch.testing.assert_close(got.S, want.S, rtol=0, atol=0)


def test_the_plan_follows_a_change_of_w_beta():
    lm = make("delta_learned")
    x = tokens(2, 8)
    lm.generate(x, 2)
    with torch.no_grad():
        lm.blocks[0].attn.w_beta.bias.add_(2.0)  # in place
        lm.blocks[1].attn.w_beta.weight.mul_(-5.0)
    check_step(lm, x)
    lm.blocks[1].attn.w_beta = torch.nn.Linear(24, 4, dtype=torch.float64)  # a new submodule
    check_step(lm, x)


class Allocations(TorchDispatchMode):
    """The tensors each op makes with storage of its own (not a view or an in-place result)."""

    def __init__(self):
        super().__init__()
        self.made = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        self.made += [(func.__name__, tuple(t.shape)) for t in pytree.tree_leaves(out)
                      if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs]
        return out


@pytest.mark.parametrize("batch", [1, 3])
def test_a_learned_beta_step_allocates_no_more_than_a_fixed_beta_step(batch):
    """Per step, a learned beta costs one new [B, H] tensor (addmm, then sigmoid in place), where a
    fixed beta fills one [B, H, 1]: as many allocations, and no copy of W_beta."""
    counts = {}
    for memory in ("delta", "delta_learned"):
        lm, x = make(memory), tokens(batch, 6)
        with torch.no_grad():
            _, state = lm(x[:, :5])
            plan = decode.prepare(lm, 6)
            with Allocations() as seen:
                decode.step(plan, x[:, 5:], state)
        counts[memory] = seen.made
    assert len(counts["delta_learned"]) == len(counts["delta"]), counts
    assert sorted(counts["delta_learned"]).count(("addmm.default", (batch, 4))) == 2  # one beta per layer
    assert not any(shape in ((24, 4), (4, 24)) for _, shape in counts["delta_learned"])


# -- memories that rotate their keys themselves ----------------------------------------------------
@pytest.mark.parametrize("memory", ["sink_cache", "gated_delta_learned"])
@pytest.mark.parametrize("batch,prompt", [(1, 1), (3, 6), (2, 11)])
def test_generate_with_a_self_rotating_memory_equals_the_full_forward(memory, batch, prompt):
    """Past S + n_c tokens the cache-position sinks really differ from absolute ones: the steps,
    fed back through one forward over the whole sequence, give the same logits."""
    lm = make(memory, n_kv_heads=(None, 2, 1)[batch % 3])
    seq = lm.generate(tokens(batch, prompt), 9)
    whole, _ = blocks(lm, seq, None)
    steps, s = stepped(lm, seq, prompt)
    torch.testing.assert_close(steps, whole[:, prompt:], rtol=1e-12, atol=1e-12)


def test_the_plan_says_which_layers_rotate_and_which_rotate_themselves():
    for memory, rotate, itself in [("window", True, False), ("delta", False, False), ("sink_cache", False, True),
                                   ("gated_delta_learned", False, True), ("infini", False, True)]:
        layer = decode.prepare(make(memory), 10).layers[0]
        assert (layer.rotate, layer.rotates_itself) == (rotate, itself), memory
    assert decode.prepare(make("gated_delta_learned"), 10).layers[0].beta_t.shape == (24, 4)
