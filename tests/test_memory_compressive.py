"""CompressiveMemory: the FIFO rules by hand, against the plain rule of course_lib.memory.reference, and the
compressor's loss."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from memory_helpers import SETTINGS, chunkings, qkv, run

from course_lib.attention import attention_reference, causal_mask
from course_lib.memory import COMPRESSIONS, CompressiveMemory, attention_reconstruction_loss, compressive_reference
from course_lib.models import MemoryLM


@SETTINGS
@given(sizes=chunkings(), mem_len=st.integers(1, 8), cmem_len=st.integers(1, 4), ratio=st.integers(1, 4),
       compress=st.sampled_from(["mean", "max", "most_used"]), seed=st.integers(0, 2**16))
def test_compressive_memory_follows_the_fifo_rules(sizes, mem_len, cmem_len, ratio, compress, seed):
    mem_len = max(mem_len, ratio)
    q, k, v = qkv(seed, 2, 2, sum(sizes), 3)
    out, _ = run(CompressiveMemory(mem_len, cmem_len, ratio, compress), q, k, v, sizes)
    torch.testing.assert_close(out, compressive_reference(q, k, v, mem_len, cmem_len, ratio, compress, sizes))


@SETTINGS
@given(sizes=chunkings(), extra=st.integers(0, 3), compress=st.sampled_from(COMPRESSIONS), seed=st.integers(0, 2**16))
def test_ratio_1_with_room_for_everything_is_full_attention(sizes, extra, compress, seed):
    t = sum(sizes)
    q, k, v = qkv(seed, 1, 2, t, 4)
    out, _ = run(CompressiveMemory(t + extra, 1, 1, compress).double(), q, k, v, sizes)
    torch.testing.assert_close(out, attention_reference(q, k, v, causal_mask(t, t)))


def test_spans_with_M4_C2_c2_written_out_by_hand():
    memory = CompressiveMemory(mem_len=4, cmem_len=2, ratio=2)
    x = torch.zeros(1, 1, 11, 2)
    state = memory.init_state(1, 1, 2)
    spans = {}
    for i in range(11):
        _, state = memory(x[:, :, i:i + 1], x[:, :, i:i + 1], x[:, :, i:i + 1], state)
        spans[i + 1] = memory.spans(state)
    assert spans[3] == [(0, 0), (1, 1), (2, 2)]
    # token 4 made Mem 5 > 4 long: pairs 0, 1 were popped and compressed into CMem slot (0, 1)
    assert spans[6] == [(0, 1), (2, 2), (3, 3), (4, 4), (5, 5)]
    # later pops gave (2, 3), (4, 5), (6, 7); CMem keeps the newest 2
    assert spans[11] == [(4, 5), (6, 7), (8, 8), (9, 9), (10, 10)]
    _, state = run(memory, x, x, x, [3, 3, 5])  # the same slots in chunks
    assert memory.spans(state) == spans[11]


def test_compressed_slots_hold_the_mean_or_max_of_their_group():
    x = torch.tensor([1.0, 3.0, 2.0, 8.0, 0.0, 0.0], dtype=torch.float64).view(1, 1, 6, 1)
    for compress, expected in (("mean", [2.0, 5.0]), ("max", [3.0, 8.0])):
        memory = CompressiveMemory(mem_len=2, cmem_len=2, ratio=2, compress=compress)
        _, state = run(memory, x, x, x, [6])
        assert memory.spans(state) == [(0, 1), (2, 3), (4, 4), (5, 5)]
        assert memory.held(state)[1].flatten().tolist() == expected + [0.0, 0.0]


def test_most_used_keeps_the_pair_that_received_the_most_attention():
    memory = CompressiveMemory(mem_len=2, cmem_len=1, ratio=2, compress="most_used")
    k = torch.tensor([0.0, 8.0, 0.0, 0.0], dtype=torch.float64).view(1, 1, 4, 1)
    v = torch.tensor([10.0, 20.0, 30.0, 40.0], dtype=torch.float64).view(1, 1, 4, 1)
    q = torch.ones_like(k)  # q . k: the key 8 at position 1 draws the attention of queries 1, 2, 3
    _, state = run(memory, q, k, v, [2, 2])
    assert memory.spans(state) == [(0, 1), (2, 2), (3, 3)]
    assert memory.held(state)[1].flatten().tolist() == [20.0, 30.0, 40.0]  # mean would give 15


@pytest.mark.parametrize("compress", ["conv", "dilated_conv"])
def test_learned_compressors_start_as_mean_pooling(compress):
    q, k, v = qkv(5, 1, 2, 23, 3)
    out_mean, _ = run(CompressiveMemory(4, 3, 4, "mean"), q, k, v, [5, 9, 9])
    out_conv, _ = run(CompressiveMemory(4, 3, 4, compress).double(), q, k, v, [5, 9, 9])
    torch.testing.assert_close(out_conv, out_mean)


@pytest.mark.parametrize("compress", ["conv", "dilated_conv"])
def test_reconstruction_loss_trains_the_compressor_and_nothing_else(compress):
    memory = CompressiveMemory(4, 2, 3, compress).double()
    q, old_k, old_v = (x.requires_grad_() for x in qkv(9, 2, 2, 6, 4))
    loss = attention_reconstruction_loss(q, old_k, old_v, memory)
    loss.backward()
    assert q.grad is None and old_k.grad is None and old_v.grad is None
    grads = {name: p.grad for name, p in memory.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert all(g.abs().sum() > 0 for name, g in grads.items() if name != "k_bias")
    # a bias added to every compressed key adds q . b to every score alike: softmax ignores it
    assert grads["k_bias"].abs().max() < 1e-12
    # and a few steps of Adam make the compressed pairs stand in better for the popped ones
    opt = torch.optim.Adam(memory.parameters(), lr=0.05)
    first = loss.item()
    for _ in range(30):
        opt.zero_grad()
        loss = attention_reconstruction_loss(q, old_k, old_v, memory)
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_in_a_model_only_the_reconstruction_loss_reaches_the_compressor():
    torch.manual_seed(0)
    lm = MemoryLM(32, 16, 2, 2, memory=CompressiveMemory(4, 2, 2, "conv"))
    idx = torch.randint(0, 32, (2, 8))
    logits, state = lm(idx)
    _, state = lm(idx, state)  # the second segment pops pairs
    compressors = {id(p) for m in lm.memories for p in m.parameters()}
    lm.zero_grad()
    lm(idx, state)[0].logsumexp(-1).mean().backward()
    assert all(p.grad is None for p in lm.parameters() if id(p) in compressors)  # memories are detached
    lm.zero_grad()
    _, state = lm(idx, state)
    assert sorted(state.extra_losses) == [f"blocks.{i}.attn.memory.reconstruction" for i in range(2)]
    sum(state.extra_losses.values()).backward()
    assert all((p.grad is not None) == (id(p) in compressors) for p in lm.parameters())


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="ratio must be >= 1, got 0"):
        CompressiveMemory(4, 2, 0)
    with pytest.raises(ValueError, match="mem_len=2 must be >= ratio=3"):
        CompressiveMemory(2, 2, 3)
    with pytest.raises(ValueError, match="compress must be one of"):
        CompressiveMemory(4, 2, 2, compress="zip")
    with pytest.raises(ValueError, match="multiple of ratio=2"):
        CompressiveMemory(4, 2, 2).compress_pairs(torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 2))


# ---------------------------------------------------------------- the learned compressors, fast against plain

from course_lib.memory import compressive as cm  # noqa: E402


@pytest.mark.parametrize("ratio", [1, 2, 3, 4, 5, 7])
def test_fast_compressors_agree_with_their_plain_references_in_float64(ratio):
    g = torch.Generator().manual_seed(ratio)
    x = torch.randn(2, 3, 5 * ratio, 6, generator=g, dtype=torch.float64)  # 5 groups, d = 6
    depth = math.ceil(math.log2(ratio)) if ratio > 1 else 0
    cases = {
        cm._conv: (torch.randn(6, 6, ratio, generator=g, dtype=torch.float64),
                   torch.randn(6, generator=g, dtype=torch.float64)),
        cm._conv_shared: (torch.randn(ratio, generator=g, dtype=torch.float64), torch.randn((), dtype=torch.float64)),
        cm._dilated: (torch.randn(depth, 6, 6, 2, generator=g, dtype=torch.float64),
                      torch.randn(depth, 6, generator=g, dtype=torch.float64)),
    }
    for fast, (weight, bias) in cases.items():
        plain = cm.REFERENCES[fast](x, weight, bias, ratio)
        torch.testing.assert_close(fast(x, weight, bias, ratio), plain, rtol=0, atol=1e-12)
    usage = torch.rand(2, 3, 5 * ratio, generator=g, dtype=torch.float64)
    usage[0, 0, :3] = 0.5  # ties: the older pair wins
    for fast, plain in zip(cm._most_used(x, 2 * x, usage, 5), cm._most_used_reference(x, 2 * x, usage, 5)):
        torch.testing.assert_close(fast, plain, rtol=0, atol=0)


def test_conv_is_a_full_channel_map_per_layer_for_keys_and_for_values():
    lm = MemoryLM(16, 16, 2, 2, memory=CompressiveMemory(4, 2, 2, "conv"))  # d_h = 8, made on first use
    lm(torch.zeros(1, 4, dtype=torch.long))
    first, second = lm.memories
    assert first.k_weight.shape == first.v_weight.shape == (8, 8, 2) and first.k_bias.shape == (8,)
    assert first.k_weight is not second.k_weight and first.k_weight is not first.v_weight
    # it is torch.nn.Conv1d(d_h, d_h, c, stride=c): same numbers, PyTorch's layout
    conv = torch.nn.Conv1d(8, 8, 2, stride=2).double()
    torch.nn.init.normal_(conv.weight)
    memory = CompressiveMemory(4, 2, 2, "conv", head_dim=8).double()
    with torch.no_grad():
        memory.k_weight.copy_(conv.weight)
        memory.k_bias.copy_(conv.bias)
    x = torch.randn(1, 2, 6, 8, dtype=torch.float64)
    want = conv(x.flatten(0, 1).transpose(1, 2)).transpose(1, 2).unflatten(0, (1, 2))
    torch.testing.assert_close(memory.compress_pairs(x, x)[0], want)
    assert [p.numel() for p in memory.parameters()] == [8 * 8 * 2, 8 * 8 * 2, 8, 8]
    dilated = CompressiveMemory(8, 2, 4, "dilated_conv", head_dim=8)  # 2 layers for c = 4
    assert [p.numel() for p in dilated.parameters()] == [2 * 8 * 8 * 2] * 2 + [2 * 8] * 2
    assert [p.numel() for p in CompressiveMemory(8, 2, 4, "conv_shared").parameters()] == [4, 4, 1, 1]


@pytest.mark.parametrize("compress", ["conv", "dilated_conv"])
def test_made_now_or_on_first_use_the_same_compressor(compress):
    q, k, v = qkv(3, 1, 2, 23, 4)
    lazy = CompressiveMemory(4, 3, 4, compress).double()
    opt = torch.optim.Adam(lazy.parameters())  # before the parameters are made: it still holds them
    out_lazy, _ = run(lazy, q, k, v, [5, 9, 9])
    out_now, _ = run(CompressiveMemory(4, 3, 4, compress, head_dim=4).double(), q, k, v, [5, 9, 9])
    torch.testing.assert_close(out_lazy, out_now)
    assert {id(p) for p in lazy.parameters()} == {id(p) for g in opt.param_groups for p in g["params"]}
    fresh = CompressiveMemory(4, 3, 4, compress)
    assert fresh.state_dict() == {}  # nothing to save before it is made
    fresh.load_state_dict(lazy.state_dict())  # loading makes it
    assert fresh.head_dim == 4 and torch.equal(fresh.v_weight, lazy.v_weight)
    with pytest.raises(ValueError, match="made for head_dim=4"):
        lazy.compress_pairs(torch.zeros(1, 1, 4, 6), torch.zeros(1, 1, 4, 6))


def test_most_used_keeps_the_highest_average_not_the_highest_total():
    # usage = attention received / queries that saw it. Position 0 is seen by 4 queries, 1 by 3:
    # with ratio 2 and no attention at all after its chunk, the averages decide
    memory = CompressiveMemory(mem_len=2, cmem_len=1, ratio=2, compress="most_used")
    usage = torch.tensor([[[0.30, 0.35]]], dtype=torch.float64)  # totals would be 1.2 and 1.05
    x = torch.tensor([1.0, 2.0], dtype=torch.float64).view(1, 1, 2, 1)
    assert memory.compress_pairs(x, x, usage)[1].flatten().tolist() == [2.0]
    # in the memory: 4 pairs, ratio 2, keep the 2 of highest average attention, in time order, per head
    memory = CompressiveMemory(mem_len=4, cmem_len=2, ratio=2, compress="most_used")
    k = torch.tensor([0.0, 0.0, 6.0, 0.0, 6.0, 0.0, 0.0, 0.0], dtype=torch.float64).view(1, 1, 8, 1)
    v = torch.arange(8, dtype=torch.float64).view(1, 1, 8, 1)
    _, state = run(memory, torch.ones_like(k), k, v, [4, 4])
    # position 2 (the sharp key, attended by 6 queries) and position 0 (all of query 0's attention), in time order
    assert memory.held(state)[1].flatten().tolist()[:2] == [0.0, 2.0]


def test_conv_shared_is_the_scalar_tap_filter():
    memory = CompressiveMemory(4, 2, 2, "conv_shared")
    with torch.no_grad():
        memory.k_weight.copy_(torch.tensor([0.25, 0.75]))
        memory.k_bias.fill_(1.0)
    x = torch.tensor([1.0, 3.0, 2.0, 6.0]).view(1, 1, 4, 1).expand(1, 1, 4, 3)
    assert memory.compress_pairs(x, x)[0][0, 0, :, 0].tolist() == [1 + 0.25 + 2.25, 1 + 0.5 + 4.5]
