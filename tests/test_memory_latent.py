"""LatentMemory (multi-head latent attention's cache): what it promises beyond the protocol tests.

Scenarios: a cache of latents read token by token gives what one chunk gives; the fast form (absorbed
or decoded) equals its plain rule; its bytes are latent_cache_bytes, (r + d_R) / (2 n_g d_h) of the
KV cache; it trains inside MemoryLM; bad input names the argument.
"""

from __future__ import annotations

import io

import pytest
import torch
from memory_helpers import qkv, run

from course_lib.cost import ModelConfig
from course_lib.kv_cache import kv_cache_bytes, latent_cache_bytes
from course_lib.memory import LatentMemory, make_memory
from course_lib.memory import reference as ref
from course_lib.models import MemoryLM

B, H, D, DV = 2, 3, 6, 5  # awkward on purpose: d_v != d_h, 3 heads
ROPE = [0, 4]  # keys rotated after decoding; DeepSeek-V2's decoupled rotary key (absorbed form)


def memory(rank=5, rope_dim=4, seed=0):
    """A latent memory with its projections made for H = 3 heads, d_h = 6, d_v = 5 (drawn from ``seed``)."""
    torch.manual_seed(seed)
    m = LatentMemory(rank, rope_dim=rope_dim).double()
    m.init_state(B, H, D, dtype=torch.float64, v_dim=DV)
    return m


@pytest.mark.parametrize("rope_dim", ROPE)
@pytest.mark.parametrize("sizes", [[13], [1] * 13, [4, 1, 7, 1], [2, 11]])
def test_decoding_token_by_token_equals_one_chunk_forward(rope_dim, sizes):
    m = memory(rope_dim=rope_dim)
    q, k, v = qkv(3, B, H, 13, D, dv=DV)
    whole, state = run(m, q, k, v, [13])
    cut, cut_state = run(m, q, k, v, sizes, reserve=True)  # written in place, as generate decodes
    torch.testing.assert_close(cut, whole)
    torch.testing.assert_close(cut_state.latents, state.latents)
    assert cut_state.length == 13


@pytest.mark.parametrize("rope_dim", ROPE)
@pytest.mark.parametrize("rank,t", [(1, 3), (5, 9), (40, 7)])  # a rank above H (d_h + d_v) = 33 too
def test_the_fast_form_equals_its_plain_rule(rope_dim, rank, t):
    m = memory(rank, rope_dim)
    q, k, v = qkv(rank + t, B, H, t, D, dv=DV)
    out, state = run(m, q, k, v, [max(1, t // 2), t - max(1, t // 2)] if t > 1 else [1])
    want, (latents, rope_keys) = ref.latent_reference(q, k, v, **m.projections(), return_memory=True)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(state.latents, latents)
    if rope_dim:
        torch.testing.assert_close(state.rope_keys, rope_keys)
    held_k, held_v = m.held(state)  # every head's pairs, rebuilt from the latents
    torch.testing.assert_close(held_v, torch.einsum("hvr,btr->bhtv", m.up_v, latents))
    assert held_k.shape == (B, H, t, D)


def test_the_comparison_is_sharp():
    """The rule rotates by position and scales by sqrt(d_h + d_R): another base or no rotary key differs."""
    m = memory(rope_dim=4)
    q, k, v = qkv(1, B, H, 9, D, dv=DV)
    out, _ = run(m, q, k, v, [9])
    p = m.projections()
    assert not torch.allclose(out, ref.latent_reference(q, k, v, **p, rope_base=500.0))
    assert not torch.allclose(out, ref.latent_reference(q, k, v, p["down"], p["up_k"], p["up_v"]))


@pytest.mark.parametrize("rope_dim", ROPE)
def test_bytes_are_latent_cache_bytes_a_fraction_of_the_kv_cache(rope_dim):
    rank = 8
    q, k, v = (x.float() for x in qkv(2, B, H, 37, D))
    m = LatentMemory(rank, rope_dim=rope_dim, n_heads=H, head_dim=D)
    _, state = run(m, q, k, v, [30, 7], reserve=False)
    assert m.nbytes(state) == latent_cache_bytes(1, rank, 37, B, 4, rope_dim) == B * 37 * (rank + rope_dim) * 4
    full = make_memory("full")
    _, full_state = run(full, q, k, v, [37])
    assert m.nbytes(state) / full.nbytes(full_state) == (rank + rope_dim) / (2 * H * D)  # MHA: n_g = H
    config = ModelConfig(4, 8, 16, n_kv_heads=2, bytes_per_value=2)
    cost = m.cost_per_token(config, 1000)
    assert cost["bytes"] == latent_cache_bytes(4, rank, 1000, 1, 2, rope_dim)
    assert cost["bytes"] / kv_cache_bytes(4, 2, 16, 1000) == (rank + rope_dim) / (2 * 2 * 16)  # GQA: n_g = 2
    assert m.nbytes(m.reserve(state, 1000)) == m.nbytes(state)  # reserved room is not held


def test_latent_cache_bytes_is_one_formula():
    assert latent_cache_bytes(60, 512, 4096, rope_dim=64) == 60 * 576 * 4096 * 2
    assert latent_cache_bytes(2, 8, 0) == 0
    assert latent_cache_bytes(3, 4, 5, batch=2, bytes_per_value=4, rope_dim=2) == 3 * 6 * 5 * 2 * 4


# -- in the model ----------------------------------------------------------------------------------
def lm(rope_dim=4, n_kv_heads=None, seed=0, rank=6):
    torch.manual_seed(seed)
    return MemoryLM(vocab_size=10, d_model=24, n_layers=2, n_heads=H, n_kv_heads=n_kv_heads,
                    memory=LatentMemory(rank, rope_dim=rope_dim))


def copy_batch(gen, batch=16, n=6):
    """``a b c d e f 9 a b c d e f``: the second half copies the first (9 separates)."""
    first = torch.randint(0, 9, (batch, n), generator=gen)
    x = torch.cat([first, torch.full((batch, 1), 9), first], dim=1)
    return x[:, :-1], x[:, 1:]


@pytest.mark.parametrize("rope_dim", ROPE)
def test_it_trains_in_memory_lm_on_a_copy_task(rope_dim):
    model, gen = lm(rope_dim, rank=16), torch.Generator().manual_seed(0)  # 16 numbers a token, MHA's 48
    model.reset_linear_default()  # the recall experiments' start
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        x, y = copy_batch(gen)
        logits, _ = model(x)
        loss = torch.nn.functional.cross_entropy(logits[:, 6:].flatten(0, 1), y[:, 6:].flatten())  # the copy
        opt.zero_grad()
        loss.backward()
        names = ["down", "up_k", "up_v"] + (["w_kr", "w_qr"] if rope_dim else [])
        for mem in model.memories:  # gradients reach every projection of every layer
            for name in names:
                g = getattr(mem, name).grad
                assert g is not None and bool(torch.isfinite(g).all()) and g.abs().sum() > 0, name
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses  # from chance (ln 9 = 2.2) to below 1.3


@pytest.mark.parametrize("n_kv_heads", [None, 1])
@pytest.mark.parametrize("rope_dim", ROPE)
def test_memory_lm_decodes_as_it_reads_a_chunk(rope_dim, n_kv_heads):
    model = lm(rope_dim, n_kv_heads).double().eval()
    idx = torch.randint(0, 10, (2, 11), generator=torch.Generator().manual_seed(1))
    whole, _ = model(idx)
    with torch.no_grad():  # the decoding step (decode.py), one token at a time after a prompt
        logits, state = model(idx[:, :4])
        steps = [logits]
        for i in range(4, 11):
            logits, state = model(idx[:, i:i + 1], state)
            steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), whole.detach())
    out = model.generate(idx[:, :3], 5)
    assert out.shape == (2, 8) and torch.equal(out[:, :3], idx[:, :3])
    assert model.state_nbytes(state) == latent_cache_bytes(2, 6, 11, 2, 8, rope_dim)


def test_each_layer_has_its_own_projections_made_with_the_model_and_a_state_dict_round_trips():
    model, other = lm(seed=0), lm(seed=5)
    first, second = model.memories
    assert first.down is not second.down and not torch.equal(first.down, second.down)
    assert tuple(first.down.shape) == (6, H * 2 * 8) and tuple(first.w_qr.shape) == (H, 4, 8)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    idx = torch.randint(0, 10, (1, 7))
    assert not torch.equal(model(idx)[0], other(idx)[0])
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(model(idx)[0], other(idx)[0])
    lazy = LatentMemory(6, rope_dim=4)  # not yet made: loading makes it at the saved sizes
    lazy.load_state_dict({k.removeprefix("blocks.0.attn.memory."): t for k, t in model.state_dict().items()
                          if k.startswith("blocks.0.attn.memory.")})
    assert torch.equal(lazy.up_k, first.up_k) and lazy.head_dim == 8


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,error,match", [
    ({"rank": 0}, ValueError, "rank must be >= 1, got 0"),
    ({"rank": 2.5}, TypeError, "rank must be an int"),
    ({"rank": 4, "rope_dim": 3}, ValueError, "rope_dim must be even"),
    ({"rank": 4, "rope_dim": -2}, ValueError, "rope_dim must be >= 0, got -2"),
    ({"rank": 4, "rope_base": 1}, ValueError, "rope_base must be a number > 1"),
    ({"rank": 4, "n_heads": 2}, ValueError, "n_heads and head_dim come together"),
    ({"rank": 4, "n_heads": 2, "head_dim": 0}, ValueError, "head_dim must be >= 1"),
])
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        LatentMemory(**kwargs)


def test_a_state_for_other_sizes_than_the_projections_is_refused():
    m = LatentMemory(4, n_heads=2, head_dim=4).double()
    q, k, v = qkv(0, 1, 3, 5, 4)
    with pytest.raises(ValueError, match="k has 3 heads of 4 .* made for n_heads=2, head_dim=4"):
        m(q, k, v, m.init_state(1, 3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="has no projections yet"):
        LatentMemory(4).projections()


@pytest.mark.parametrize("args,match", [
    ((0, 8, 10), "n_layers must be >= 1"), ((2, 0, 10), "rank must be >= 1"), ((2, 8, -1), "context must be >= 0"),
    ((2, 8, 10, 0), "batch must be >= 1"), ((2, 8, 10, 1, 2, -1), "rope_dim must be >= 0"),
])
def test_latent_cache_bytes_names_a_bad_argument(args, match):
    with pytest.raises(ValueError, match=match):
        latent_cache_bytes(*args)
