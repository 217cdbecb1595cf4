"""MultiMemory: a learned per-head gate between two memories, or one softmax over their slots."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from memory_helpers import SETTINGS, chunkings, qkv, run

from course_lib import CompressiveMemory, CumulativeAverageMemory, FullMemory, KNNMemory, SegmentMemory, SinkMemory
from course_lib.attention import attention_reference
from course_lib.memory import DeltaMemory, LinearMemory, MultiMemory, WindowMemory


def pair():
    return [WindowMemory(3), LinearMemory(chunk_size=4)]


@SETTINGS
@given(sizes=chunkings(max_len=30), seed=st.integers(0, 2**16), h=st.integers(1, 3))
def test_a_gate_at_1_is_the_first_memory_alone_and_at_0_the_second(sizes, seed, h):
    q, k, v = qkv(seed, 2, h, sum(sizes), 4)
    multi = MultiMemory(pair(), combine="gate", n_heads=h).double()
    alone = [run(m, q, k, v, sizes)[0] for m in pair()]
    with torch.no_grad():
        multi.gate_logit.fill_(float("inf"))  # g = sigmoid(+inf) = 1
    torch.testing.assert_close(run(multi, q, k, v, sizes)[0], alone[0])
    with torch.no_grad():
        multi.gate_logit.fill_(float("-inf"))  # g = 0
    torch.testing.assert_close(run(multi, q, k, v, sizes)[0], alone[1])


def test_the_gate_starts_at_one_half_per_head_and_learns():
    q, k, v = (x.requires_grad_() for x in qkv(1, 1, 2, 9, 4))
    multi = MultiMemory(pair(), combine="gate", n_heads=2).double()
    assert multi.gate.tolist() == [0.5, 0.5]
    out, state = run(multi, q, k, v, [4, 5])
    a, b = (run(m, q, k, v, [4, 5])[0] for m in pair())
    torch.testing.assert_close(out, (a + b) / 2)
    (out[:, 0] * a[:, 0].detach()).sum().backward()  # only head 0 matters: only its gate gets a gradient
    grad = multi.gate_logit.grad
    assert grad[0] != 0 and grad[1] == 0
    assert multi.nbytes(state) == sum(m.nbytes(s) for m, s in zip(multi.memories, state.states))


@SETTINGS
@given(prefix=st.integers(0, 20), t=st.integers(1, 12), window=st.integers(1, 6), mem_len=st.integers(1, 6),
       seed=st.integers(0, 2**16))
def test_concat_is_one_softmax_over_both_memories_and_the_chunk(prefix, t, window, mem_len, seed):
    q, k, v = qkv(seed, 2, 2, prefix + t, 3)
    multi = MultiMemory([WindowMemory(window), SegmentMemory(mem_len)], combine="concat")
    out, state = run(multi, q, k, v, [prefix, t] if prefix else [t])
    win = list(range(max(0, prefix - window), prefix))  # the window's ring before the chunk
    seg = list(range(max(0, prefix - mem_len), prefix))  # the segment memory before the chunk
    chunk = list(range(prefix, prefix + t))
    keys, values = (torch.cat([x[:, :, win], x[:, :, seg], x[:, :, chunk]], 2) for x in (k, v))
    i = torch.tensor(chunk)[:, None]
    mask = torch.cat([torch.tensor(win)[None, :] > i - window,  # the window hides what left it
                      torch.ones(t, len(seg), dtype=torch.bool),
                      torch.tensor(chunk)[None, :] <= i], dim=1)  # the chunk once, causally
    torch.testing.assert_close(out[:, :, prefix:], attention_reference(q[:, :, chunk], keys, values, mask))
    assert multi.spans(state) == multi.memories[0].spans(state.states[0]) + multi.memories[1].spans(state.states[1])


@SETTINGS
@given(sizes=chunkings(max_len=30), seed=st.integers(0, 2**16))
def test_concat_passes_attention_mass_to_a_most_used_compressor(sizes, seed):
    # a window of 1 adds one slot that no query of a later chunk may see: the same as the compressor alone
    q, k, v = qkv(seed, 1, 2, sum(sizes), 3)
    alone, s_alone = run(CompressiveMemory(3, 2, 2, "most_used"), q, k, v, sizes)
    multi = MultiMemory([CompressiveMemory(3, 2, 2, "most_used"), WindowMemory(1)], combine="concat")
    out, s_multi = run(multi, q, k, v, sizes)
    torch.testing.assert_close(out, alone)
    for x, y in zip(multi.memories[0].held(s_multi.states[0]), CompressiveMemory(3, 2, 2).held(s_alone)):
        torch.testing.assert_close(x, y)


def test_concat_with_a_full_cache_and_a_knn_memory_runs_and_decodes():
    q, k, v = qkv(2, 1, 2, 12, 4)
    multi = MultiMemory([FullMemory(), KNNMemory(8, 2)], combine="concat")
    out, state = run(multi, q, k, v, [5, 1, 1, 5])
    assert out.shape == q.shape and torch.isfinite(out).all()
    assert len(multi.spans(state)) == 12 + 8


def test_bad_combinations_are_refused():
    with pytest.raises(ValueError, match=r"memories\[1\] \(LinearMemory\) holds no slots"):
        MultiMemory([WindowMemory(4), LinearMemory()], combine="concat")
    with pytest.raises(ValueError, match="holds no slots"):
        MultiMemory([CumulativeAverageMemory(), SegmentMemory(4)], combine="concat")
    with pytest.raises(ValueError, match="needs n_heads"):
        MultiMemory(pair(), combine="gate")
    with pytest.raises(ValueError, match="mixes two memories"):
        MultiMemory([*pair(), WindowMemory(2)], combine="gate", n_heads=2)
    with pytest.raises(ValueError, match="combine must be 'gate' or 'concat'"):
        MultiMemory(pair(), combine="sum", n_heads=2)
    with pytest.raises(TypeError, match=r"memories\[0\] must be a course_lib.memory.Memory"):
        MultiMemory(["window", LinearMemory()], n_heads=2)
    multi = MultiMemory(pair(), n_heads=2)
    q = torch.zeros(1, 3, 2, 4)
    with pytest.raises(ValueError, match="q has 3 heads.*n_heads=2"):
        multi(q, q, q, multi.init_state(1, 3, 4))


# -- positions and write strengths asked of each memory --------------------------------------------
def lm_with(memory, seed=0):
    from course_lib.models import MemoryLM

    torch.manual_seed(seed)
    return MemoryLM(vocab_size=17, d_model=16, n_layers=2, n_heads=2, memory=memory).double()


def captured_inputs(lm, layer, part, idx, state=None):
    """The ``(q, k)`` that part ``part`` of layer ``layer``'s MultiMemory received, and the layer's input."""
    seen = {}
    multi = lm.blocks[layer].attn.memory
    hooks = [multi.memories[part].register_forward_hook(lambda mod, args, kw, out: seen.update(qk=args[:2]),
                                                        with_kwargs=True),
             lm.blocks[layer].ln1.register_forward_hook(lambda mod, args, out: seen.update(x=out))]
    try:
        _, state = lm(idx, state)
    finally:
        for h in hooks:
            h.remove()
    return seen["qk"], seen["x"], state


def by_hand(attn, x):
    """q, k of a MemoryAttention for its normalised input x, computed as the book writes them (unrotated)."""
    b, t, _ = x.shape
    h, d = attn.n_heads, attn.head_dim
    qkv = (x @ attn.qkv.weight.T).view(b, t, 3 * h, d).transpose(1, 2)
    return qkv[:, :h], qkv[:, h:2 * h]


@pytest.mark.parametrize("delta", [DeltaMemory(), DeltaMemory(beta="learned", chunk_size=4)])
def test_in_a_memory_lm_the_delta_part_gets_unrotated_keys_and_the_window_part_rotated_ones(delta):
    multi = MultiMemory([WindowMemory(4), delta], combine="gate", n_heads=2)
    assert multi.rotates_itself and multi.learns_beta == delta.learns_beta
    lm = lm_with(multi)
    idx = torch.randint(0, 17, (2, 11), generator=torch.Generator().manual_seed(1))
    _, state = lm(idx[:, :6])
    for layer in (0, 1):  # a second chunk, at positions 6..10: the rotation starts at 6
        (q_d, k_d), x, _ = captured_inputs(lm, layer, 1, idx[:, 6:], state)
        (q_w, k_w), _, _ = captured_inputs(lm, layer, 0, idx[:, 6:], state)
        q, k = by_hand(lm.blocks[layer].attn, x)
        torch.testing.assert_close(q_d, q, rtol=0, atol=1e-15)  # the delta part: unrotated
        torch.testing.assert_close(k_d, k, rtol=0, atol=1e-15)
        cos, sin = lm.rotary.tables(11, x.device, x.dtype)
        for got, y in ((q_w, q), (k_w, k)):  # the window part: rotated at 6..10, x cos + rotate_half(x) sin
            half = y.shape[-1] // 2
            rotated = y * cos[6:11] + torch.cat([-y[..., half:], y[..., :half]], -1) * sin[6:11]
            torch.testing.assert_close(got, rotated, rtol=0, atol=1e-14)
        assert (k_w - k_d).abs().max() > 1e-3  # the two really differ


def test_parts_rotated_alike_keep_memory_lm_rotating_once():
    assert MultiMemory([WindowMemory(3), SegmentMemory(4)], combine="gate", n_heads=2).uses_rotary
    two = MultiMemory([LinearMemory(), DeltaMemory()], combine="gate", n_heads=2)
    assert not two.uses_rotary and not two.rotates_itself
    concat = MultiMemory([SegmentMemory(4), KNNMemory(8, 2)], combine="concat")
    assert concat.uses_rotary and not concat.rotates_itself


def test_a_learned_write_strength_is_passed_to_the_delta_part():
    q, k, v = qkv(4, 2, 2, 9, 4)
    beta = torch.rand(2, 2, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    delta = DeltaMemory(beta="learned", chunk_size=4)
    multi = MultiMemory([WindowMemory(3), delta], combine="gate", n_heads=2).double()
    assert multi.learns_beta
    out, _ = multi(q, k, v, multi.init_state(2, 2, 4, dtype=torch.float64), beta=beta)
    win, _ = WindowMemory(3)(q, k, v, WindowMemory(3).init_state(2, 2, 4, dtype=torch.float64))
    dlt, _ = delta(q, k, v, delta.init_state(2, 2, 4, dtype=torch.float64), beta=beta)
    torch.testing.assert_close(out, (win + dlt) / 2)
    with pytest.raises(ValueError, match="beta must be given"):
        multi(q, k, v, multi.init_state(2, 2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="none of .* does"):
        plain = MultiMemory(pair(), n_heads=2).double()
        plain(q, k, v, plain.init_state(2, 2, 4, dtype=torch.float64), beta=beta)


def test_a_learned_beta_in_a_gated_memory_lm_trains_w_beta():
    lm = lm_with(MultiMemory([WindowMemory(4), DeltaMemory(beta="learned")], combine="gate", n_heads=2))
    assert lm.blocks[0].attn.w_beta is not None
    logits, _ = lm(torch.randint(0, 17, (2, 9), generator=torch.Generator().manual_seed(2)))
    logits.square().mean().backward()
    assert lm.blocks[0].attn.w_beta.weight.grad.abs().sum() > 0


def test_concat_over_memories_rotated_differently_is_refused():
    with pytest.raises(ValueError, match="rotated the same way.*SinkMemory\\): itself"):
        MultiMemory([SinkMemory(1, 3, positions="cache"), KNNMemory(8, 2)], combine="concat")
    with pytest.raises(ValueError, match="rotates its keys itself"):
        MultiMemory([SinkMemory(1, 3, positions="cache"), SinkMemory(2, 3, positions="cache")], combine="concat")


def test_a_gate_passes_the_rotation_down_to_a_part_that_rotates_itself():
    """A cache-position sink inside a gate gets the Rotation: its output is the sink's alone."""
    from course_lib.memory.base import Rotation
    from course_lib.models import Rotary

    q, k, v = qkv(7, 1, 2, 13, 4)
    cos, sin = Rotary(4).rolled_tables(13, "cpu", torch.float64)
    sink = SinkMemory(1, 3, positions="cache")
    multi = MultiMemory([sink, LinearMemory()], combine="gate", n_heads=2).double()
    with torch.no_grad():
        multi.gate_logit.fill_(float("inf"))
    out, _ = multi(q, k, v, multi.init_state(1, 2, 4, dtype=torch.float64), rotary=Rotation(cos, sin, 0))
    alone, _ = sink(q, k, v, sink.init_state(1, 2, 4, dtype=torch.float64), rotary=Rotation(cos, sin, 0))
    torch.testing.assert_close(out, alone)
