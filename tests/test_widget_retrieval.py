"""The retrieval explorer: its map against plain loops and the course's own rules, then the widget headless."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import course_lib.widgets as w
from course_lib.memory.reference import decay_reference, gated_delta_reference

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def plain_map(memory, k, v, alpha, beta):
    """The map with Python lists and scalars: every state written out, every read done alone."""
    t_len, d = k.shape
    d_v = v.shape[1]
    kn = [[float(x) for x in row / row.norm()] for row in k]
    vs = [[float(x) for x in row] for row in v]
    betas = [float(b) for b in beta] if isinstance(beta, torch.Tensor) else [float(beta)] * t_len
    a = 1.0 if memory == "delta" else alpha
    S = [[0.0] * d_v for _ in range(d)]
    out = [[math.nan] * t_len for _ in range(t_len)]
    for t in range(t_len):
        key, b = kn[t], betas[t]
        if memory == "decay":
            S = [[a * S[r][c] + b * key[r] * vs[t][c] for c in range(d_v)] for r in range(d)]
        else:
            erase = [[(r == s) - b * key[r] * key[s] for s in range(d)] for r in range(d)]  # I - beta k^T k
            ES = [[sum(erase[r][s] * S[s][c] for s in range(d)) for c in range(d_v)] for r in range(d)]
            S = [[a * ES[r][c] + b * key[r] * vs[t][c] for c in range(d_v)] for r in range(d)]
        for j in range(t + 1):
            read = [sum(kn[j][r] * S[r][c] for r in range(d)) for c in range(d_v)]
            norm = math.sqrt(sum(x * x for x in read)) * math.sqrt(sum(x * x for x in vs[j]))
            out[t][j] = sum(x * y for x, y in zip(read, vs[j])) / norm if norm > 0 else 0.0
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("memory", w.RETRIEVAL_MEMORIES)
@pytest.mark.parametrize("beta_kind", ["float", "per_token"])
def test_the_map_equals_plain_loops_on_awkward_sizes(memory, beta_kind):
    k, v = w.retrieval_data(length=7, d=3, d_v=5, seed=3)
    k = k * torch.linspace(0.5, 2.0, 7, dtype=torch.float64)[:, None]  # not unit: the map normalises the keys
    beta = 0.7 if beta_kind == "float" else w.write_strengths(7, 3, 1.3, 0.2)
    ours = w.retrieval_map(memory, k, v, 0.83, beta)
    torch.testing.assert_close(ours, plain_map(memory, k, v, 0.83, beta), equal_nan=True)
    assert torch.isnan(ours.triu(1)[torch.ones(7, 7, dtype=torch.bool).triu(1)]).all()  # not written yet


def _reads_by_rule(memory, k, v, alpha, beta):
    """``k^_j S_t`` for every ``(t, j)`` from the course's plain rules: batch ``j`` asks ``k_j`` at every ``t``."""
    t_len = k.shape[0]
    keys = k.expand(t_len, t_len, -1)[:, None]  # [B = T, 1, T, d], the same text in every row
    values = v.expand(t_len, t_len, -1)[:, None]
    queries = k[:, None, None].expand(t_len, 1, t_len, k.shape[1])  # row j asks k_j at every t
    b = beta.expand(t_len, 1, t_len) if isinstance(beta, torch.Tensor) else beta
    if memory == "decay":  # the write scaled by beta: k^T (beta v); the unit keys are the explorer's
        scaled = values * (b[..., None] if isinstance(b, torch.Tensor) else b)
        out = decay_reference(F.normalize(queries, dim=-1), F.normalize(keys, dim=-1), scaled, alpha)
    else:
        out = gated_delta_reference(queries, keys, values, 1.0 if memory == "delta" else alpha, b)
    return out[:, 0].transpose(0, 1)  # [t, j, d_v]


@pytest.mark.parametrize("memory", w.RETRIEVAL_MEMORIES)
def test_the_map_reads_what_the_course_rules_hold(memory):
    """The explorer's states are the memories of course_lib.memory.reference (decay's RMS norm keeps the cosine)."""
    k, v = w.retrieval_data(length=9, d=4, seed=1)
    beta = w.write_strengths(9, 4, 1.0, 0.3)
    reads = _reads_by_rule(memory, k, v, 0.9, beta)
    cos = F.cosine_similarity(reads, v[None].expand_as(reads), dim=-1)
    lower = torch.ones(9, 9, dtype=torch.bool).tril()
    torch.testing.assert_close(w.retrieval_map(memory, k, v, 0.9, beta)[lower], cos[lower])


def test_delta_is_gated_delta_without_decay_and_ignores_alpha():
    k, v = w.retrieval_data(length=12, d=4, seed=2)
    delta = w.retrieval_map("delta", k, v, 0.5, 1.0)
    torch.testing.assert_close(delta, w.retrieval_map("gated_delta", k, v, 1.0, 1.0), equal_nan=True)
    torch.testing.assert_close(delta, w.retrieval_map("delta", k, v, 0.9, 1.0), equal_nan=True)


def test_a_pair_is_read_back_right_after_its_delta_write_and_fades_with_filler():
    k, v = w.retrieval_data(length=128, d=16, seed=0)
    m = w.retrieval_map("delta", k, v, 1.0, 1.0)
    torch.testing.assert_close(m.diagonal(), torch.ones(128, dtype=torch.float64))  # beta = 1: exact at once
    assert abs(m[127, :32].mean()) < 0.15 and m[127, -4:].mean() > 0.8  # old pairs faded to noise, recent ones held


def test_weak_filler_writes_keep_the_facts_longer():
    k, v = w.retrieval_data()
    uniform = w.retrieval_view(w.RetrievalState(memory="delta", t=127), k, v)
    selective = w.retrieval_view(w.RetrievalState(memory="delta", t=127, filler_beta=0.1), k, v)
    assert selective["facts_kept"] > uniform["facts_kept"]
    assert selective["fact_quality"] > uniform["fact_quality"] + 0.3
    assert selective["oldest_fact_kept"] < 127 - 32


def test_bad_settings_name_the_argument_and_what_was_expected():
    with pytest.raises(ValueError, match=r"memory='window'; expected one of \('delta', 'gated_delta', 'decay'\)"):
        w.update_retrieval(w.RetrievalState(), {"memory": "window"}, 16)
    with pytest.raises(ValueError, match=r"t=16; expected a position in 0\.\.15 of the 16 tokens"):
        w.update_retrieval(w.RetrievalState(), {"t": 16}, 16)
    with pytest.raises(ValueError, match=r"alpha=0; expected a number in \(0, 1\]"):
        w.update_retrieval(w.RetrievalState(t=3), {"alpha": 0}, 16)
    with pytest.raises(ValueError, match=r"beta=2\.5; expected a number in \[0, 2\]"):
        w.update_retrieval(w.RetrievalState(t=3), {"beta": 2.5}, 16)
    with pytest.raises(ValueError, match=r"filler_beta=-0\.1; expected a number in \[0, 2\]"):
        w.update_retrieval(w.RetrievalState(t=3), {"filler_beta": -0.1}, 16)
    k, v = w.retrieval_data(length=5, d=3)
    with pytest.raises(ValueError, match=r"beta must be a number or a \[T\] = \[5\] tensor, got shape \(4,\)"):
        w.memory_states("delta", k, v, 1.0, torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"k and v must be \[T, d\] and \[T, d_v\] with the same T"):
        w.memory_states("delta", k, v[:4], 1.0, 1.0)
    with pytest.raises(ValueError, match=r"fact_every=0; expected an int >= 1"):
        w.write_strengths(5, 0, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"length=0; expected an int >= 1"):
        w.retrieval_data(length=0)


def test_the_static_heatmaps_draw_one_panel_per_map():
    k, v = w.retrieval_data(length=10, d=4)
    maps = {name: w.retrieval_map(name, k, v, 0.9, 1.0) for name in w.RETRIEVAL_MEMORIES}
    fig = w.retrieval_heatmaps(maps, t=5, facts=[0, 4, 8])
    assert [ax.get_title(loc="left") for ax in fig.axes[:3]] == list(w.RETRIEVAL_MEMORIES)
    assert fig._repr_png_().startswith(b"\x89PNG")


def test_the_explorer_builds_and_follows_its_controls():
    ex = w.RetrievalExplorer(length=32, d=8, fact_every=8).go_live()
    assert ex.state.t == 31 and ex.controls["t"].max == 31
    png, readout = ex.image.value, ex.readout_text()
    assert "after reading positions 0..31" in readout and "of the 4 facts (every 8th position)" in readout
    ex.controls["t"].value = 10
    assert ex.state.t == 10 and ex.image.value != png and "0..10" in ex.readout_text()
    maps = ex.maps
    ex.set(t=20)
    assert ex.maps is maps  # moving t reuses the maps
    ex.controls["filler_beta"].value = 0.1
    assert ex.state.filler_beta == 0.1 and ex.maps is not maps and "beta 1.00/0.10" in ex.readout_text()
    assert not ex.controls["alpha"].disabled
    ex.controls["memory"].value = "delta"
    assert ex.state.memory == "delta" and ex.controls["alpha"].disabled and "alpha" not in ex.readout_text()
    with pytest.raises(ValueError, match="t=32; expected a position in 0..31"):
        ex.set(t=32)
    with pytest.raises(TypeError, match="unknown settings"):
        ex.set(gamma=1)
    bundle = ex._repr_mimebundle_()
    assert bundle["image/png"] and WIDGET_VIEW in bundle and bundle["text/plain"].startswith("RetrievalExplorer")
