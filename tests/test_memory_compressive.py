"""CompressiveMemory: the FIFO rules by hand, against a plain-list reference, and the compressor's loss."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from memory_helpers import SETTINGS, chunkings, qkv, run

from course_lib.attention import attention_reference, causal_mask
from course_lib.memory import COMPRESSIONS, CompressiveMemory, attention_reconstruction_loss
from course_lib.models import MemoryLM


def compressive_reference(q, k, v, sizes, mem_len, cmem_len, ratio, compress):
    """The rules of DESIGN.md with Python lists of pairs: attend, append, pop, compress, keep newest C."""
    mem, cmem, outs, s = [], [], [], 0  # items: dicts of k [B, H, D], v [B, H, D], mass [B, H]
    for t in sizes:
        qc, kc, vc = (x[:, :, s:s + t] for x in (q, k, v))
        held = cmem + mem
        keys = torch.cat([torch.stack([x["k"] for x in held], 2), kc], 2) if held else kc
        values = torch.cat([torch.stack([x["v"] for x in held], 2), vc], 2) if held else vc
        mask = torch.ones(t, len(held) + t, dtype=torch.bool)
        mask[:, len(held):] = causal_mask(t, t)
        out, weights = attention_reference(qc, keys, values, mask, return_weights=True)
        outs.append(out)
        mass = weights.sum(2)  # [B, H, P + T]: attention each key received
        for j, item in enumerate(mem):
            item["mass"] = item["mass"] + mass[:, :, len(cmem) + j]
        mem += [{"k": kc[:, :, r], "v": vc[:, :, r], "mass": mass[:, :, len(held) + r]} for r in range(t)]
        if len(mem) > mem_len:
            n_pop = math.ceil((len(mem) - mem_len) / ratio) * ratio
            popped, mem = mem[:n_pop], mem[n_pop:]
            for g in range(0, n_pop, ratio):
                group = popped[g:g + ratio]
                gk, gv = torch.stack([x["k"] for x in group], 2), torch.stack([x["v"] for x in group], 2)
                if compress == "mean":
                    cmem.append({"k": gk.mean(2), "v": gv.mean(2)})
                elif compress == "max":
                    cmem.append({"k": gk.amax(2), "v": gv.amax(2)})
                else:  # most_used: per batch and head, the pair that received the most attention
                    best = torch.stack([x["mass"] for x in group], 2).argmax(2)[..., None, None]
                    pick = best.expand(-1, -1, 1, gk.shape[-1])
                    cmem.append({"k": gk.gather(2, pick)[:, :, 0], "v": gv.gather(2, pick)[:, :, 0]})
            cmem = cmem[-cmem_len:]
        s += t
    return torch.cat(outs, dim=2)


@SETTINGS
@given(sizes=chunkings(), mem_len=st.integers(1, 8), cmem_len=st.integers(1, 4), ratio=st.integers(1, 4),
       compress=st.sampled_from(["mean", "max", "most_used"]), seed=st.integers(0, 2**16))
def test_compressive_memory_follows_the_fifo_rules(sizes, mem_len, cmem_len, ratio, compress, seed):
    mem_len = max(mem_len, ratio)
    q, k, v = qkv(seed, 2, 2, sum(sizes), 3)
    out, _ = run(CompressiveMemory(mem_len, cmem_len, ratio, compress), q, k, v, sizes)
    torch.testing.assert_close(out, compressive_reference(q, k, v, sizes, mem_len, cmem_len, ratio, compress))


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
