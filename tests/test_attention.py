"""Attention: the teaching version, the fused version and the formula agree; masks say
exactly which keys each query sees."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib import MultiHeadAttention, attention, attention_reference, causal_mask


def direct_softmax_attention(q, k, v, mask):
    """The formula with no tensor tricks: one query row at a time, exp / sum."""
    B, H, Tq, D = q.shape
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            hk = h // (H // k.shape[1])
            for r in range(Tq):
                scores = [
                    (q[b, h, r] @ k[b, hk, j]).item() / math.sqrt(D) if mask[r, j] else -math.inf
                    for j in range(k.shape[2])
                ]
                top = max(scores)
                w = torch.tensor([math.exp(s - top) for s in scores], dtype=q.dtype)
                out[b, h, r] = (w / w.sum()) @ v[b, hk]
    return out


MASKS = {
    "causal": {},
    "window": {"window": 3},
    "sinks": {"window": 2, "sinks": 2},
    "none": None,
}


@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(1, 2), heads=st.sampled_from([(1, 1), (2, 2), (4, 2), (4, 1)]),
    t_k=st.integers(1, 9), extra_q=st.integers(0, 8), d=st.sampled_from([1, 3, 8]),
    kind=st.sampled_from(sorted(MASKS)), seed=st.integers(0, 2**16),
)
def test_reference_fused_and_formula_agree(batch, heads, t_k, extra_q, d, kind, seed):
    """Every mask kind, fewer queries than keys, GQA head counts, awkward sizes."""
    g = torch.Generator().manual_seed(seed)
    h_q, h_kv = heads
    t_q = max(1, t_k - extra_q)
    q = torch.randn(batch, h_q, t_q, d, generator=g, dtype=torch.float64)
    k = torch.randn(batch, h_kv, t_k, d, generator=g, dtype=torch.float64)
    v = torch.randn(batch, h_kv, t_k, d, generator=g, dtype=torch.float64)
    spec = MASKS[kind]
    mask = torch.ones(t_q, t_k, dtype=torch.bool) if spec is None else causal_mask(t_q, t_k, **spec)
    ref = attention_reference(q, k, v, mask)
    fused = attention(q, k, v, mask)
    direct = direct_softmax_attention(q, k, v, mask)
    torch.testing.assert_close(ref, direct)
    torch.testing.assert_close(fused, direct)


def test_causal_flag_equals_explicit_mask_when_queries_are_the_last_positions():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 4, 8, generator=g, dtype=torch.float64)
    k = torch.randn(2, 3, 7, 8, generator=g, dtype=torch.float64)
    v = torch.randn(2, 3, 7, 8, generator=g, dtype=torch.float64)
    torch.testing.assert_close(attention(q, k, v, causal=True), attention_reference(q, k, v, causal_mask(4, 7)))


def test_causal_mask_of_four_tokens_is_lower_triangular():
    assert causal_mask(4, 4).int().tolist() == [
        [1, 0, 0, 0],
        [1, 1, 0, 0],
        [1, 1, 1, 0],
        [1, 1, 1, 1],
    ]


def test_two_queries_are_the_last_two_of_five_positions():
    # rows are positions i = 3 and i = 4
    assert causal_mask(2, 5).int().tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]


def test_window_of_two_sees_only_the_current_and_previous_token():
    assert causal_mask(4, 4, window=2).int().tolist() == [
        [1, 0, 0, 0],
        [1, 1, 0, 0],
        [0, 1, 1, 0],
        [0, 0, 1, 1],
    ]


def test_one_sink_stays_visible_beyond_the_window():
    assert causal_mask(5, 5, window=2, sinks=1).int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 0, 1, 1, 0],
        [1, 0, 0, 1, 1],
    ]


def test_weights_rows_sum_to_one_and_respect_the_mask():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    mask = causal_mask(5, 5, window=3)
    _, w = attention_reference(q, k, v, mask, return_weights=True)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 2, 5, dtype=torch.float64))
    assert (w[..., ~mask] == 0).all()


def test_scale_argument_is_used_by_both_versions():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 1, 3, 4, generator=g, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(attention_reference(q, k, v, scale=0.1), attention(q, k, v, scale=0.1))
    assert not torch.allclose(attention_reference(q, k, v, scale=0.1), attention_reference(q, k, v))


def test_multi_head_attention_is_causal_and_splits_heads():
    torch.manual_seed(0)
    mha = MultiHeadAttention(d_model=16, n_heads=4, n_kv_heads=2).double()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    full = mha(x)
    # causality: the first 3 outputs do not depend on later tokens
    torch.testing.assert_close(mha(x[:, :3]), full[:, :3])
    q, k, v = mha.split(x)
    assert q.shape == (2, 4, 6, 4) and k.shape == (2, 2, 6, 4)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: attention(torch.zeros(2, 3, 4), torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3, 4)), "q must have 4"),
        (lambda: attention(torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3, 5), torch.zeros(1, 1, 3, 5)), "head_dim"),
        (lambda: attention(torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3, 4, dtype=torch.float64),
                           torch.zeros(1, 1, 3, 4)), "dtype"),
        (lambda: attention(torch.zeros(1, 3, 3, 4), torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4)), "multiple"),
        (lambda: attention(torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 2, 4)), "k and v"),
        (lambda: attention(torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3, 4),
                           torch.ones(3, 3)), "bool"),
        (lambda: attention(torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3, 4),
                           torch.ones(2, 3, dtype=torch.bool)), "broadcast"),
        (lambda: attention(torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3, 4, device="meta"),
                           torch.zeros(1, 1, 3, 4, device="meta")), "device"),
        (lambda: attention_reference(torch.zeros(1, 1, 3, 4, dtype=torch.long), torch.zeros(1, 1, 3, 4),
                                     torch.zeros(1, 1, 3, 4)), "floating"),
        (lambda: causal_mask(5, 3), "t_q <= t_k"),
        (lambda: causal_mask(3, 3, window=0), "window must be >= 1"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


# ---- where the formula is silent: both versions give one defined result (issue 11 E) -----------

BOTH = {"attention": attention, "reference": attention_reference}


def repro():
    return torch.randn(3, 1, 1, 4, 8, generator=torch.Generator().manual_seed(0)).unbind(0)  # q, k, v [1, 1, 4, 8]


@pytest.mark.parametrize("causal", [False, True])
def test_a_nan_in_a_query_gives_nan_in_that_row_in_both_versions(causal):
    q, k, v = repro()
    q[0, 0, 2, 3] = float("nan")
    mask = causal_mask(4, 4) if causal else None
    fused = attention(q, k, v, causal=causal)
    reference = attention_reference(q, k, v, mask)
    assert fused[0, 0, 2].isnan().all() and reference[0, 0, 2].isnan().all()
    torch.testing.assert_close(fused, reference, equal_nan=True)


@pytest.mark.parametrize("name", BOTH)
def test_a_query_that_sees_no_key_gets_zeros(name):
    q, k, v = repro()
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[1] = False  # query 1 may see nothing
    out = BOTH[name](q, k, v, mask)
    assert torch.equal(out[0, 0, 1], torch.zeros(8))
    assert not out.isnan().any()
    torch.testing.assert_close(out[0, 0, [0, 2, 3]], attention_reference(q, k, v, torch.ones(4, 4, dtype=torch.bool))
                               [0, 0, [0, 2, 3]])
    if name == "reference":
        _, weights = attention_reference(q, k, v, mask, return_weights=True)
        assert weights[0, 0, 1].tolist() == [0.0] * 4 and weights[0, 0, 0].sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("name", BOTH)
@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda q, k, v: dict(scale=float("nan")), ValueError, r"scale must be a finite number.*nan"),
        (lambda q, k, v: dict(scale=float("inf")), ValueError, r"scale must be a finite number"),
        (lambda q, k, v: dict(scale="x"), TypeError, r"scale must be a number.*'x'"),
        (lambda q, k, v: dict(k=k[:, :, :0], v=v[:, :, :0]), ValueError, r"k holds no keys"),
        (lambda q, k, v: dict(mask=torch.ones(4, 4, dtype=torch.bool, device="meta")), ValueError,
         r"mask is on meta but q is on cpu"),
        (lambda q, k, v: dict(mask=torch.ones(5, 1, 4, 4, dtype=torch.bool)), ValueError,
         r"mask must broadcast to \[B=1, H=1, T_q=4, T_k=4\].*\(5, 1, 4, 4\)"),
        (lambda q, k, v: dict(mask=torch.ones(1, 1, 1, 4, 4, dtype=torch.bool)), ValueError, r"mask must broadcast"),
    ],
)
def test_bad_arguments_are_refused_by_both_versions(name, change, error, match):
    q, k, v = repro()
    args = {"q": q, "k": k, "v": v, **change(q, k, v)}
    with pytest.raises(error, match=match):
        BOTH[name](**args)


def test_a_mask_with_batch_and_heads_of_q_is_accepted():
    q, k, v = (x.expand(2, 3, 4, 8).contiguous() for x in repro())
    mask = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(1)) > 0.3
    mask[..., 0] = True
    torch.testing.assert_close(attention(q, k, v, mask), attention_reference(q, k, v, mask))
