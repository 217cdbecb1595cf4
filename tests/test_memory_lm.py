"""MemoryLM with every memory: segments carrying the state, generation, training, one copy per layer."""

from __future__ import annotations

import io

import pytest
import torch
from memory_helpers import MEMORY_CASES
from memory_helpers import H as HEADS

from course_lib.memory import MEMORIES, DeltaMemory, LinearMemory, WindowMemory
from course_lib.models import MemoryLM

# every registered memory, and the variants that take other paths through MemoryLM
FACTORIES = {name: MEMORY_CASES[name] for name in [*MEMORIES, "compressive_conv", "compressive_most_used",
                                                   "infini", "concat"]}
FACTORIES["delta_learned"] = lambda: DeltaMemory(beta="learned", chunk_size=4)  # beta_t = sigma(W_beta x_t)
# memories whose result does not depend on where the chunks start (each says so: Memory.chunk_invariant)
CHUNK_FREE = [name for name, make in FACTORIES.items() if make().chunk_invariant]


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


# -- DeltaNet's learned write strength in the model ------------------------------------------------
def learned(seed=0, *, d_model=18, n_heads=3, n_kv_heads=None, n_layers=2, chunk_size=4):
    torch.manual_seed(seed)
    return MemoryLM(vocab_size=19, d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                    memory=DeltaMemory(beta="learned", chunk_size=chunk_size)).double()


def spy_betas(lm):
    """Record the beta each layer's memory is given."""
    seen = {i: [] for i in range(lm.n_layers)}
    for i, block in enumerate(lm.blocks):
        inner = block.attn.memory.forward

        def spy(q, k, v, state, beta=None, _inner=inner, _seen=seen[i]):
            _seen.append(beta)
            return _inner(q, k, v, state, beta=beta)

        block.attn.memory.forward = spy
    return seen


@pytest.mark.parametrize("n_kv_heads", [None, 1])
def test_a_learned_beta_is_sigma_of_w_beta_x_per_head_and_token_in_0_1(n_kv_heads):
    lm, idx = learned(n_kv_heads=n_kv_heads), tokens(7, batch=3)
    attn = lm.blocks[0].attn
    assert tuple(attn.w_beta.weight.shape) == (3, 18) and tuple(attn.w_beta.bias.shape) == (3,)
    assert torch.equal(attn.w_beta.bias, torch.zeros(3, dtype=torch.float64))  # beta starts near 0.5
    seen = spy_betas(lm)
    lm(idx)
    beta = seen[0][0]
    assert tuple(beta.shape) == (3, 3, 7)  # [B, H, T]: one per head (the query heads: delta repeats k, v)
    assert bool(((beta > 0) & (beta < 1)).all())
    assert (beta - 0.5).abs().max() < 0.1  # W_beta ~ N(0, 0.02^2), bias 0: |W_beta x| ~ 0.1, near sigma(0)
    x = lm.blocks[0].ln1(lm.embed(idx))
    torch.testing.assert_close(beta, torch.sigmoid(x @ attn.w_beta.weight.T + attn.w_beta.bias).transpose(1, 2))
    with torch.no_grad():  # a large bias drives beta towards 1, then towards 0: always inside (0, 1)
        for bias in (30.0, -30.0):
            attn.w_beta.bias.fill_(bias)
            lm(idx)
            assert bool(((seen[0][-1] > 0) & (seen[0][-1] < 1)).all())


def test_gradients_reach_w_beta_and_its_bias_in_every_layer():
    lm, idx = learned(), tokens(11)
    logits, _ = lm(idx[:, :-1])
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten()).backward()
    for block in lm.blocks:
        for p in (block.attn.w_beta.weight, block.attn.w_beta.bias):
            assert p.grad is not None and bool(torch.isfinite(p.grad).all()) and p.grad.abs().sum() > 0


def test_the_gradient_of_the_beta_bias_is_the_finite_difference():
    lm, idx = learned(n_layers=1, d_model=4, n_heads=2, chunk_size=3), tokens(8, batch=1, seed=2)
    bias = lm.blocks[0].attn.w_beta.bias

    def loss(b):
        with torch.no_grad():
            bias.copy_(b)
        return lm(idx)[0].pow(2).sum()

    b0 = torch.tensor([0.3, -0.4], dtype=torch.float64)
    loss(b0).backward()
    grad = bias.grad.clone()
    eps = 1e-6
    for j in range(2):
        e = torch.zeros(2, dtype=torch.float64)
        e[j] = eps
        fd = (loss(b0 + e).item() - loss(b0 - e).item()) / (2 * eps)
        assert grad[j].item() == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_a_learned_beta_model_state_dict_round_trips():
    lm, other, idx = learned(seed=0), learned(seed=5), tokens(9)
    buffer = io.BytesIO()
    torch.save(lm.state_dict(), buffer)
    buffer.seek(0)
    assert not torch.equal(lm(idx)[0], other(idx)[0])
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(lm(idx)[0], other(idx)[0])
    assert [n for n in lm.state_dict() if "w_beta" in n] == [
        f"blocks.{i}.attn.w_beta.{p}" for i in range(2) for p in ("weight", "bias")]
    fixed = MemoryLM(vocab_size=19, d_model=18, n_layers=2, n_heads=3, memory=DeltaMemory(chunk_size=4)).double()
    with pytest.raises(RuntimeError, match="Unexpected key.*w_beta"):  # a fixed-beta model has no W_beta
        fixed.load_state_dict(lm.state_dict())


# outputs recorded with the library before DeltaMemory(beta="learned") existed (commit f1fbcf7)
FIXED_REFERENCE = {"sum": 4.367297460701751, "sum_sq": 4.715036007355676,
                   "last": [0.08997219958342491, -0.08074751468489225, -0.051949163872559316, 0.2837048518246272,
                            -0.08593151095086682],
                   "generated": [[13, 11, 16, 12, 12, 12, 12, 12, 12], [15, 0, 4, 7, 7, 7, 7, 7, 7]]}


def test_a_fixed_beta_model_is_unchanged():
    torch.manual_seed(0)
    lm = MemoryLM(vocab_size=19, d_model=16, n_layers=2, n_heads=2, memory=DeltaMemory(beta=0.6, chunk_size=4)).double()
    idx = torch.randint(0, 19, (2, 11), generator=torch.Generator().manual_seed(3))
    logits, _ = lm(idx)
    assert logits.sum().item() == pytest.approx(FIXED_REFERENCE["sum"], rel=1e-12)
    assert (logits ** 2).sum().item() == pytest.approx(FIXED_REFERENCE["sum_sq"], rel=1e-12)
    assert logits[1, -1, :5].tolist() == pytest.approx(FIXED_REFERENCE["last"], rel=1e-12, abs=1e-14)
    assert lm.generate(idx[:, :4], 5).tolist() == FIXED_REFERENCE["generated"]
    # the same parameters as a model whose memory has none (no W_beta), in the same order
    torch.manual_seed(0)
    plain = MemoryLM(vocab_size=19, d_model=16, n_layers=2, n_heads=2, memory=LinearMemory()).double()
    assert list(lm.state_dict()) == list(plain.state_dict())
    assert all(block.attn.w_beta is None for block in lm.blocks)
    assert all(torch.equal(a, b) for a, b in zip(lm.parameters(), plain.parameters()))  # same init draws
