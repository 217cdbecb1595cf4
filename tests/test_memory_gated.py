"""The gated matrix memories: decay (RetNet, Mamba-2, GLA) and the gated delta rule (Gated DeltaNet).

The token loops, the chunked forms and the plain rules agree in float64 over random sizes and
chunkings; ``alpha = 1`` gives linear attention without its normaliser and DeltaMemory; bad gates
are refused by name; in ``MemoryLM`` the learned ``alpha_t = exp(-softplus(W_alpha x_t + b))`` and
``beta_t = sigma(W_beta x_t)`` reach the memory, train, and decode token by token as in one pass.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from memory_helpers import SETTINGS, assert_same_gradients, chunkings, run

from course_lib.memory import (
    DecayMemory,
    DeltaMemory,
    GatedDeltaMemory,
    LinearMemory,
    MultiMemory,
    WindowMemory,
    decay_chunked,
    decay_parallel,
    decay_recurrent,
    decay_reference,
    delta_rule_chunked,
    delta_rule_recurrent,
    gated_delta_chunked,
    gated_delta_recurrent,
    gated_delta_reference,
)
from course_lib.memory.gated import rms_normalize
from course_lib.memory.linear import phi
from course_lib.models import MemoryLM

KINDS = ["float", "head", "channel"]  # RetNet, Mamba-2, gated linear attention


def tensors(seed, b, h, t, d, dv):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, h, t, d, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(b, h, t, dv, generator=g, dtype=torch.float64)
    S = torch.randn(b, h, d, dv, generator=g, dtype=torch.float64)
    return q, k, v, S, g


def gate(kind, g, b, h, t, d, low=0.3):
    """A decay in [low, 1): a float, [B, H, T] or [B, H, T, D]."""
    if kind == "float":
        return 0.85
    shape = (b, h, t) if kind == "head" else (b, h, t, d)
    return low + (1 - low) * torch.rand(shape, generator=g, dtype=torch.float64)


shapes = dict(b=st.integers(1, 2), h=st.integers(1, 3), t=st.integers(1, 40), d=st.integers(1, 6),
              dv=st.integers(1, 5), chunk=st.integers(1, 16), seed=st.integers(0, 2**16))


# -- the forms agree ---------------------------------------------------------------------------------
@SETTINGS
@given(**shapes, kind=st.sampled_from(KINDS))
def test_decay_recurrent_equals_chunked_equals_parallel(b, h, t, d, dv, chunk, seed, kind):
    q, k, v, S, g = tensors(seed, b, h, t, d, dv)
    alpha = gate(kind, g, b, h, t, d)
    want = decay_recurrent(q, k, v, alpha, S)
    for result in (decay_chunked(q, k, v, alpha, S, chunk), decay_parallel(q, k, v, alpha, S)):
        for got, expected in zip(result, want):
            torch.testing.assert_close(got, expected)


@SETTINGS
@given(**shapes, per_token=st.booleans())
def test_gated_delta_recurrent_equals_chunked(b, h, t, d, dv, chunk, seed, per_token):
    q, k, v, S, g = tensors(seed, b, h, t, d, dv)
    alpha = gate("head" if per_token else "float", g, b, h, t, d)
    beta = 2 * torch.rand(b, h, t, generator=g, dtype=torch.float64) if per_token else 0.7
    for got, want in zip(gated_delta_chunked(q, k, v, alpha, beta, S, chunk),
                         gated_delta_recurrent(q, k, v, alpha, beta, S)):
        torch.testing.assert_close(got, want)


@SETTINGS
@given(sizes=chunkings(), chunk=st.integers(1, 9), seed=st.integers(0, 2**16), kind=st.sampled_from(KINDS),
       d=st.integers(1, 6), dv=st.integers(1, 5))
def test_decay_memory_is_its_rule_for_any_chunking(sizes, chunk, seed, kind, d, dv):
    t = sum(sizes)
    q, k, v, _, g = tensors(seed, 2, 3, t, d, dv)
    alpha = gate(kind, g, 2, 3, t, d)
    if kind == "float":
        out, state = run(DecayMemory(alpha, chunk_size=chunk), q, k, v, sizes)
    else:
        out, state = run(DecayMemory("learned", chunk_size=chunk), q, k, v, sizes, alpha=alpha)
    want, S = decay_reference(q, k, v, alpha, return_memory=True)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(state.S, S)
    assert state.length == t


@SETTINGS
@given(sizes=chunkings(), chunk=st.integers(1, 9), seed=st.integers(0, 2**16), per_token=st.booleans(),
       d=st.integers(1, 6), dv=st.integers(1, 5))
def test_gated_delta_memory_is_its_rule_for_any_chunking(sizes, chunk, seed, per_token, d, dv):
    t = sum(sizes)
    q, k, v, _, g = tensors(seed, 2, 3, t, d, dv)
    if per_token:
        alpha = gate("head", g, 2, 3, t, d)
        beta = torch.sigmoid(3 * torch.randn(2, 3, t, generator=g, dtype=torch.float64))
        memory = GatedDeltaMemory("learned", "learned", chunk_size=chunk)
        out, state = run(memory, q, k, v, sizes, alpha=alpha, beta=beta)
    else:
        alpha, beta = 0.9, 1.3
        out, state = run(GatedDeltaMemory(alpha, beta, chunk_size=chunk), q, k, v, sizes)
    want, S = gated_delta_reference(q, k, v, alpha, beta, return_memory=True)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(state.S, S)


def test_the_rules_start_from_a_given_state():
    q, k, v, S0, g = tensors(3, 2, 3, 11, 4, 3)
    alpha, beta = gate("channel", g, 2, 3, 11, 4), gate("head", g, 2, 3, 11, 4)
    o, S = decay_chunked(q, k, v, alpha, S0, 4)
    want, S_want = decay_reference(q, k, v, alpha, S0, return_memory=True)
    torch.testing.assert_close(rms_normalize(o), want)
    torch.testing.assert_close(S, S_want)
    a_head = gate("head", g, 2, 3, 11, 4)
    for got, expected in zip(gated_delta_chunked(q, k, v, a_head, beta, S0, 4),
                             gated_delta_reference(q, k, v, a_head, beta, S0, return_memory=True)):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("form", ["decay_head", "decay_channel", "gated_delta"])
def test_chunked_gradients_equal_the_loop_gradients(form):
    q, k, v, S, g = tensors(7, 1, 2, 19, 4, 3)
    alpha = gate("channel" if form == "decay_channel" else "head", g, 1, 2, 19, 4)
    beta = torch.rand(1, 2, 19, generator=g, dtype=torch.float64)
    leaves = [x.requires_grad_() for x in (q, k, v, alpha, beta)]
    if form == "gated_delta":
        fast, slow = gated_delta_chunked(q, k, v, alpha, beta, S, 5), gated_delta_recurrent(q, k, v, alpha, beta, S)
    else:
        fast, slow = decay_chunked(q, k, v, alpha, S, 5), decay_recurrent(q, k, v, alpha, S)
    assert_same_gradients(fast, slow, leaves)


# -- what alpha = 1 and the decay mask are ------------------------------------------------------------
@SETTINGS
@given(sizes=chunkings(), chunk=st.integers(1, 9), seed=st.integers(0, 2**16), per_token=st.booleans())
def test_gated_delta_with_alpha_1_is_delta_memory_exactly(sizes, chunk, seed, per_token):
    t = sum(sizes)
    q, k, v, _, g = tensors(seed, 1, 3, t, 5, 4)
    beta = 2 * torch.rand(1, 3, t, generator=g, dtype=torch.float64) if per_token else None
    gated, gated_state = run(GatedDeltaMemory(1.0, 0.8, chunk_size=chunk), q, k, v, sizes, beta=beta)
    delta, delta_state = run(DeltaMemory(0.8, chunk_size=chunk), q, k, v, sizes, beta=beta)
    assert torch.equal(gated, delta) and torch.equal(gated_state.S, delta_state.S)
    b = 0.8 if beta is None else beta
    assert all(torch.equal(x, y) for x, y in zip(gated_delta_chunked(q, k, v, 1.0, b, None, chunk),
                                                 delta_rule_chunked(q, k, v, b, None, chunk)))
    assert all(torch.equal(x, y) for x, y in zip(gated_delta_recurrent(q, k, v, 1.0, b),
                                                 delta_rule_recurrent(q, k, v, b)))


def test_decay_with_alpha_1_is_linear_attention_without_its_normaliser():
    """On the features phi(q), phi(k): o_t = phi(q_t) S_t is linear attention's numerator, so it is
    LinearMemory's output times its denominator phi(q_t) . z_t; after the output normalisation the
    (positive) denominator drops out, up to the eps (0 here: the same numbers)."""
    q, k, v, _, _ = tensors(5, 2, 3, 17, 4, 3)
    linear, _ = run(LinearMemory(chunk_size=4), q, k, v, [5, 1, 11])
    den = (phi(q) * phi(k).cumsum(2)).sum(-1, keepdim=True)  # phi(q_t) . z_t
    o, _ = decay_chunked(phi(q), phi(k), v, 1.0, None, 4)
    torch.testing.assert_close(o, linear * den)
    memory = DecayMemory(1.0, chunk_size=4)
    memory.eps = 0.0
    out, _ = run(memory, phi(q), phi(k), v, [5, 1, 11])
    torch.testing.assert_close(out, rms_normalize(linear, 0.0))


def test_the_parallel_form_is_masked_attention_with_the_decay_mask():
    """Mamba-2's state-space duality: out = (Q K^T o L) V with L_ij = prod_{j < s <= i} alpha_s."""
    q, k, v, _, g = tensors(9, 1, 2, 12, 3, 2)
    alpha = gate("head", g, 1, 2, 12, 3)
    L = torch.zeros(1, 2, 12, 12, dtype=torch.float64)
    for i in range(12):
        for j in range(i + 1):
            L[:, :, i, j] = alpha[:, :, j + 1:i + 1].prod(-1)  # 1 on the diagonal
    o, _ = decay_parallel(q, k, v, alpha)
    torch.testing.assert_close(o, ((q @ k.transpose(-2, -1)) * L) @ v)


def test_a_per_channel_decay_equal_over_channels_is_the_per_head_one():
    q, k, v, _, g = tensors(2, 2, 2, 9, 4, 3)
    alpha = gate("head", g, 2, 2, 9, 4)
    for form in (decay_recurrent, lambda *a: decay_chunked(*a, chunk_size=4)):
        for x, y in zip(form(q, k, v, alpha), form(q, k, v, alpha[..., None].expand(-1, -1, -1, 4))):
            torch.testing.assert_close(x, y)


def test_a_decay_forgets_and_the_output_stays_bounded():
    """One fact written, then 200 tokens with nothing written: alpha^200 of it is left in S, and the
    normalised output keeps RMS 1 however large S grows under alpha = 1."""
    q, k, v, _, _ = tensors(4, 1, 1, 201, 4, 3)
    silent = torch.cat([k[:, :, :1], torch.zeros_like(k[:, :, 1:])], 2)
    _, state = run(DecayMemory(0.97), q, silent, v, [201])
    torch.testing.assert_close(state.S[0, 0], 0.97 ** 200 * k[0, 0, 0, :, None] * v[0, 0, 0])
    out, state = run(DecayMemory(1.0), 10 * q, 10 * k, 10 * v, [201])
    assert state.S.abs().max() > 1e3
    torch.testing.assert_close(out.pow(2).mean(-1), torch.ones(1, 1, 201, dtype=torch.float64))


# -- bad input ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [DecayMemory, GatedDeltaMemory])
def test_bad_gates_are_refused_naming_the_argument(cls):
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=f"alpha must be in \\(0, 1\\].*got {bad}"):
            cls(bad)
    with pytest.raises(TypeError, match="alpha must be a float in \\(0, 1\\] or 'learned'.*got float nan"):
        cls(float("nan"))
    with pytest.raises(ValueError, match="alpha must be a float in \\(0, 1\\] or 'learned'.*got str 'learnt'"):
        cls("learnt")
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        cls(0.9, chunk_size=0)
    memory = cls("learned")
    q = torch.zeros(2, 3, 5, 4, dtype=torch.float64)
    state = memory.init_state(2, 3, 4, dtype=torch.float64)
    extra = {"beta": 1.0} if cls is GatedDeltaMemory else {}
    missing = f"alpha must be given to a {cls.__name__}\\(alpha='learned'\\).*got alpha=None"
    with pytest.raises(ValueError, match=missing):
        memory(q, q, q, state, **extra)
    with pytest.raises(ValueError, match="alpha must be given"):
        memory.forward_unchecked(q, q, q, state, **extra)
    for bad in (0.0, 1.01, float("nan")):
        alpha = torch.full((2, 3, 5), 0.5, dtype=torch.float64)
        alpha[1, 2, 3] = bad
        with pytest.raises(ValueError, match="alpha must hold values in \\(0, 1\\].*got a tensor with values from"):
            memory(q, q, q, state, alpha=alpha, **extra)
    alpha = torch.full((2, 3, 5), 0.5, dtype=torch.float64)
    alpha[0, 0, 0] = 1.0  # 1 is allowed: no forgetting
    memory(q, q, q, state, alpha=alpha, **extra)
    with pytest.raises(ValueError, match="alpha must be a float or a \\[B, H, T\\] = \\[2, 3, 5\\]"):
        memory(q, q, q, state, alpha=torch.full((2, 3, 6), 0.5, dtype=torch.float64), **extra)
    with pytest.raises(TypeError, match="alpha must be a floating-point tensor"):
        memory(q, q, q, state, alpha=torch.ones(2, 3, 5, dtype=torch.long), **extra)


def test_a_per_channel_decay_is_for_the_decay_memory_only():
    q = torch.zeros(2, 3, 5, 4, dtype=torch.float64)
    channels = torch.full((2, 3, 5, 4), 0.5, dtype=torch.float64)
    decay = DecayMemory("learned")
    decay(q, q, q, decay.init_state(2, 3, 4, dtype=torch.float64), alpha=channels)
    with pytest.raises(ValueError, match="alpha must be a float or a \\[B, H, T\\] = \\[2, 3, 5\\] or "
                                         "\\[B, H, T, D\\] = \\[2, 3, 5, 4\\] tensor"):
        decay(q, q, q, decay.init_state(2, 3, 4, dtype=torch.float64), alpha=channels[..., :3])
    gated = GatedDeltaMemory("learned")
    with pytest.raises(ValueError, match="alpha must be a float or a \\[B, H, T\\] = \\[2, 3, 5\\] tensor, got"):
        gated(q, q, q, gated.init_state(2, 3, 4, dtype=torch.float64), alpha=channels)


def test_gated_delta_refuses_a_bad_beta():
    with pytest.raises(ValueError, match="beta must be in \\[0, 2\\]"):
        GatedDeltaMemory(0.9, beta=2.5)
    memory = GatedDeltaMemory(0.9, beta="learned")
    q = torch.zeros(1, 2, 3, 4, dtype=torch.float64)
    state = memory.init_state(1, 2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="beta must be given to a GatedDeltaMemory\\(beta='learned'\\)"):
        memory(q, q, q, state)
    with pytest.raises(ValueError, match="beta must hold values in \\[0, 2\\]"):
        memory(q, q, q, state, beta=torch.full((1, 2, 3), -0.5, dtype=torch.float64))


def test_the_classes_state_their_metadata():
    assert DecayMemory(0.97).label() == "decay alpha = 0.97"
    assert GatedDeltaMemory(0.9).label() == "gated delta alpha = 0.9"
    assert GatedDeltaMemory("learned", "learned").label() == "gated delta alpha = learned, beta = learned"
    for memory in (DecayMemory(0.9), GatedDeltaMemory(0.9)):
        assert not memory.uses_rotary and memory.sized_by_head_dim and memory.fixed_size
        assert not memory.learns_alpha and not memory.learns_beta
    assert DecayMemory("learned").learns_alpha and not DecayMemory("learned").learns_beta
    assert GatedDeltaMemory(0.5, "learned").learns_beta and not GatedDeltaMemory(0.5, "learned").learns_alpha


# -- in MemoryLM: learned alpha_t and beta_t ------------------------------------------------------------
def model(memory, seed=0, n_heads=3, n_layers=2):
    torch.manual_seed(seed)
    return MemoryLM(vocab_size=19, d_model=6 * n_heads, n_layers=n_layers, n_heads=n_heads, memory=memory).double()


def tokens(t, batch=2, seed=1):
    return torch.randint(0, 19, (batch, t), generator=torch.Generator().manual_seed(seed))


LEARNED = {
    "decay": lambda: DecayMemory("learned", chunk_size=4),
    "gated_delta": lambda: GatedDeltaMemory("learned", "learned", chunk_size=4),
    "window + gated_delta": lambda: MultiMemory([WindowMemory(4), GatedDeltaMemory("learned", "learned",
                                                                                    chunk_size=4)], n_heads=3),
}


@pytest.mark.parametrize("name", ["decay", "gated_delta"])
def test_a_learned_alpha_is_exp_minus_softplus_of_w_alpha_x_plus_b(name):
    lm, idx = model(LEARNED[name]()), tokens(7, batch=3)
    attn = lm.blocks[0].attn
    assert tuple(attn.w_alpha.weight.shape) == (3, 18) and tuple(attn.w_alpha.bias.shape) == (3,)
    # b starts at softplus^-1 of -log alpha = 1e-3, 1e-2, 1e-1: each head its own rate
    torch.testing.assert_close(F.softplus(attn.w_alpha.bias), torch.tensor([1e-3, 1e-2, 1e-1], dtype=torch.float64))
    assert (attn.w_beta is not None) == (name == "gated_delta")
    seen = []
    inner = attn.memory.forward

    def spy(q, k, v, state, **gates):
        seen.append(gates)
        return inner(q, k, v, state, **gates)

    attn.memory.forward = spy
    lm(idx)
    alpha = seen[0]["alpha"]
    x = lm.blocks[0].ln1(lm.embed(idx))
    torch.testing.assert_close(alpha, torch.exp(-F.softplus(attn.w_alpha(x))).transpose(1, 2))
    assert tuple(alpha.shape) == (3, 3, 7) and bool(((alpha > 0) & (alpha < 1)).all())
    if name == "gated_delta":
        torch.testing.assert_close(seen[0]["beta"], torch.sigmoid(attn.w_beta(x)).transpose(1, 2))


@pytest.mark.parametrize("name", list(LEARNED))
def test_gradients_reach_w_alpha_and_w_beta_in_every_layer(name):
    lm, idx = model(LEARNED[name]()), tokens(11)
    logits, _ = lm(idx[:, :-1])
    F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten()).backward()
    for block in lm.blocks:
        gates = [block.attn.w_alpha] + ([block.attn.w_beta] if name != "decay" else [])
        for p in (x for g in gates for x in (g.weight, g.bias)):
            assert p.grad is not None and bool(torch.isfinite(p.grad).all()) and p.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(LEARNED))
def test_a_learned_model_decodes_token_by_token_as_in_one_pass(name):
    """Segments carrying the state, the one-token decoding step (decode.step, which computes the gates
    from W_alpha^T, W_beta^T) and generate give the numbers of one pass."""
    lm, idx = model(LEARNED[name]()).eval(), tokens(10)
    with torch.no_grad():
        whole, _ = lm(idx)
        parts, state = [], None
        for a, b in ((0, 3), (3, 7), *((i, i + 1) for i in range(7, 10))):  # the last ones by the decoding step
            out, state = lm(idx[:, a:b], state)
            parts.append(out)
    torch.testing.assert_close(torch.cat(parts, 1), whole, rtol=1e-10, atol=1e-12)
    out = lm.generate(idx[:, :4], 5)
    with torch.no_grad():
        greedy = idx[:, :4]
        for _ in range(5):
            greedy = torch.cat([greedy, lm(greedy)[0][:, -1:].argmax(-1)], 1)
    assert torch.equal(out, greedy)


@pytest.mark.parametrize("name", ["decay", "gated_delta"])
def test_a_learned_model_trains(name):
    """A few Adam steps on a fixed batch of a copy task lower the loss, with the gates learning."""
    lm = model(LEARNED[name](), n_layers=1).float()
    g = torch.Generator().manual_seed(0)
    half = torch.randint(1, 19, (8, 12), generator=g)
    idx = torch.cat([half, half], 1)  # the second half repeats the first: recall from the memory
    opt = torch.optim.Adam(lm.parameters(), lr=3e-3)
    w_alpha = lm.blocks[0].attn.w_alpha.weight.detach().clone()
    losses = []
    for _ in range(30):
        logits, _ = lm(idx[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert math.isfinite(losses[-1]) and losses[-1] < 0.8 * losses[0], losses
    assert not torch.equal(lm.blocks[0].attn.w_alpha.weight, w_alpha)
