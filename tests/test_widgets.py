"""Explorers headless: move a control, check that the state, the picture and the readout follow."""

from __future__ import annotations

import base64
import dataclasses

import pytest
import torch

from course_lib import viz
from course_lib.attention import attention_reference, causal_mask
from course_lib.memory import make_memory
from course_lib.widgets import (
    AttentionExplorer,
    AttentionState,
    CompressionPlayground,
    CompressionState,
    CostExplorer,
    CostState,
    InspectorState,
    MemoryInspector,
    attention_view,
    compression_view,
    cost_view,
    frame_changes,
    memory_frames,
    playground_data,
    slot_layout,
    update_attention,
    update_cost,
    update_inspector,
)

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tensors here are tiny: a second thread only adds waiting (a lot of it on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ============================================================================ attention

def test_attention_state_updates_are_checked():
    s = AttentionState(i=3, length=5)
    assert update_attention(s, {"i": 4}).i == 4
    with pytest.raises(ValueError, match="i=5 is not a position of the 5 tokens"):
        update_attention(s, {"i": 5})
    with pytest.raises(ValueError, match=r"window \(n_c\) must be >= 1, got 0"):
        update_attention(s, {"window": 0})
    with pytest.raises(ValueError, match="mask='banded'"):
        update_attention(s, {"mask": "banded"})


def test_attention_view_shows_what_a_window_with_a_sink_lets_q_i_see():
    q = k = torch.randn(10, 4, dtype=torch.float64)
    view = attention_view(q, k, AttentionState(i=9, mask="sinks", window=3, sinks=1, length=10))
    assert view["visible"] == [0, 7, 8, 9]
    row = view["row"]
    assert torch.all(row[[1, 2, 3, 4, 5, 6]] == 0)
    torch.testing.assert_close(row.sum(), torch.tensor(1.0, dtype=torch.float64))
    # the same numbers as the reference attention with causal_mask(window=3, sinks=1)
    _, expect = attention_reference(q[None, None], k[None, None], k[None, None],
                                    mask=causal_mask(10, 10, window=3, sinks=1), return_weights=True)
    torch.testing.assert_close(view["weights"], expect[0, 0])


def test_moving_the_query_slider_changes_state_picture_and_readout():
    ex = AttentionExplorer("the cat sat on the mat", i=5).go_live()  # as when displayed
    png, readout = ex.image.value, ex.readout.value
    ex.controls["i"].value = 2  # what dragging the slider does
    assert ex.state.i == 2
    assert ex.image.value != png
    assert ex.readout.value != readout
    assert "q_2 ('sat') sees 3 of the 3 keys 0..2" in ex.readout_text()


def test_switching_to_a_window_mask_hides_old_keys_and_enables_n_c():
    ex = AttentionExplorer("a b c d e f", i=5, window=2)
    assert ex.controls["window"].disabled and ex.controls["sinks"].disabled
    ex.controls["mask"].value = "window"
    assert ex.state.mask == "window"
    assert not ex.controls["window"].disabled
    assert ex.view["visible"] == [4, 5]
    assert "hidden from q_5: 0..3" in ex.readout_text()
    ex.set(mask="sinks", sinks=2)
    assert ex.controls["sinks"].value == 2  # set() moves the controls too
    assert ex.view["visible"] == [0, 1, 4, 5]


def test_explorer_settings_are_checked():
    ex = AttentionExplorer("a b c")
    with pytest.raises(TypeError, match=r"unknown settings \['query'\]"):
        ex.set(query=1)
    with pytest.raises(ValueError, match="pass both q and k"):
        AttentionExplorer("a b", q=torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"q must be a \[T, d\] tensor with T = 2"):
        AttentionExplorer("a b", q=torch.zeros(3, 4), k=torch.zeros(3, 4))


def test_the_picture_is_drawn_once_the_explorer_is_displayed():
    ex = AttentionExplorer("a b c")
    assert ex.image.value == b""  # nothing drawn for an explorer nobody has looked at
    ex.set(i=1)
    assert ex.image.value == b""
    ex._repr_mimebundle_()  # displaying it
    first = ex.image.value
    assert first[:4] == b"\x89PNG"
    ex.set(i=2)
    assert ex.image.value not in (b"", first)  # from now on every change redraws


def test_display_offers_the_live_widget_and_a_static_fallback_that_says_so():
    ex = AttentionExplorer("a b c")
    bundle = ex._repr_mimebundle_()
    assert WIDGET_VIEW in bundle  # JupyterLab draws the live widget
    assert set(bundle) == {WIDGET_VIEW, "image/png", "text/plain"}  # no text/html: nbval would compare PNG bytes
    assert "static picture" in bundle["text/plain"]
    assert ex.readout_text() in bundle["text/plain"]  # what nbval compares: the readout, the same on every machine
    # nbconvert, GitHub: the picture of the current state, titled as static
    assert base64.b64decode(bundle["image/png"])[:4] == b"\x89PNG"
    assert "static picture" in ex.static_figure().get_suptitle()
    assert ex.image.value  # and the live image is drawn


def test_show_outside_a_kernel_returns_the_static_figure_and_says_so(capsys):
    fig = AttentionExplorer("a b c").show()
    assert isinstance(fig, viz.Figure) and "static picture" in fig.get_suptitle()
    assert "no Jupyter kernel here" in capsys.readouterr().out


# ============================================================================ cost

def test_cost_state_snaps_kv_groups_to_a_divisor_of_the_heads():
    s = CostState(n_heads=8, n_kv_heads=8)
    assert update_cost(s, {"n_kv_heads": 3}).n_kv_heads == 2
    assert update_cost(s, {"n_heads": 12}).n_kv_heads == 6
    with pytest.raises(ValueError, match="memory='lru'"):
        update_cost(s, {"memory": "lru"})


def test_cost_view_full_cache_grows_and_window_stays_flat():
    view = cost_view(CostState(n_layers=2, n_heads=4, head_dim=8, n_kv_heads=4, dtype="float16",
                               memory="window", size=512, max_context=4096))
    assert view["contexts"] == [256, 512, 1024, 2048, 4096]
    full = view["analytic"]["full KV cache"]["bytes"]
    assert full == [2 * 2 * 4 * 8 * m * 2 for m in view["contexts"]]  # 2 L n_g d_h m b
    window = view["analytic"]["window n_c = 512"]["bytes"]
    assert window[1:] == [window[1]] * 4


def test_fewer_kv_groups_shrink_the_cache_in_the_picture_and_the_readout():
    ex = CostExplorer(n_layers=2, n_heads=8, head_dim=16, n_kv_heads=8, dtype="float16", memory="full KV cache",
                      max_context=4096).go_live()
    png, readout = ex.image.value, ex.readout_text()
    ex.controls["n_kv_heads"].value = 2  # GQA: n_g = 2
    assert ex.state.n_kv_heads == 2
    assert ex.view["at_max"]["full KV cache"]["bytes"] == 2 * 2 * 2 * 16 * 4096 * 2
    assert ex.image.value != png
    assert ex.readout_text() != readout and "n_g = 2" in ex.readout_text()
    line = [ln for ln in ex.figure().axes[0].get_lines() if ln.get_label() == "full KV cache"][0]
    assert line.get_ydata()[-1] == 2 * 2 * 2 * 16 * 4096 * 2


def test_only_the_sizes_that_matter_are_enabled():
    ex = CostExplorer(memory="linear")
    assert ex.controls["size"].disabled and ex.controls["ratio"].disabled
    ex.controls["memory"].value = "compressive"
    assert not ex.controls["size"].disabled and not ex.controls["ratio"].disabled


def test_measure_button_times_the_real_model_with_a_progress_bar():
    ex = CostExplorer(n_layers=1, n_heads=2, head_dim=8, n_kv_heads=1, dtype="float32", memory="full KV cache",
                      steps=1, device="cpu")
    seen = []
    ex.progress.observe(lambda change: seen.append(change["new"]), names="value")
    measured = ex.measure(contexts=[8, 16])
    assert seen[-2:] == [1, 2] and ex.progress.max == 2 and ex.progress.bar_style == "success"
    assert ex.progress.description == "measured"
    rows = measured["full KV cache"]
    assert [r["context"] for r in rows] == [8, 16]
    assert [r["nbytes"] for r in rows] == [2 * 1 * 1 * 8 * m * 4 for m in (8, 16)]  # the analytic formula, measured
    (ms,) = [a for a in ex.figure().axes[2].get_lines() if a.get_gid() == "measured-ms"]
    assert list(ms.get_xdata()) == [8, 16]
    assert "measured full KV cache" in ex.readout_text()
    ex.set(n_layers=2)  # a new configuration: the old measurement no longer applies
    assert ex.measured == {} and "measured" not in ex.readout_text()


def test_a_fixed_size_memory_is_measured_beside_the_full_cache():
    ex = CostExplorer(n_layers=1, n_heads=2, head_dim=8, n_kv_heads=2, dtype="float32", memory="window", size=8,
                      steps=1, device="cpu")
    measured = ex.measure(contexts=[8, 32])
    assert list(measured) == ["window n_c = 8", "full KV cache"] and ex.progress.value == ex.progress.max == 4
    # the window's ring buffer holds n_c = 8 pairs however long the context; the cache grows
    assert [r["nbytes"] for r in measured["window n_c = 8"]] == [2 * 2 * 8 * 8 * 4] * 2
    assert [r["nbytes"] for r in measured["full KV cache"]] == [2 * 2 * 8 * m * 4 for m in (8, 32)]
    assert len([a for a in ex.figure().axes[2].get_lines() if a.get_gid() == "measured-ms"]) == 2


def test_a_model_too_big_to_measure_here_is_refused_with_a_reason():
    ex = CostExplorer(n_layers=32, n_heads=32, head_dim=128, n_kv_heads=8, dtype="bfloat16")
    assert ex.measure(contexts=[8]) == {}
    assert "parameters" in ex.readout_text() and "analytic curves hold for any size" in ex.readout_text()


@pytest.mark.parametrize("memory", ["window", "sinks + window", "segment (Transformer-XL)", "compressive", "k-NN",
                                    "linear", "delta"])
def test_every_memory_of_the_cost_explorer_builds_a_real_model(memory):
    from course_lib.widgets import build_cost_model

    model = build_cost_model(CostState(n_layers=1, n_heads=2, head_dim=8, n_kv_heads=2, dtype="float32",
                                       memory=memory, size=16), device="cpu")
    logits, _ = model(torch.zeros(1, 20, dtype=torch.long))
    assert logits.shape == (1, 20, 256)


def test_measuring_an_analytic_only_dtype_explains_itself():
    ex = CostExplorer(dtype="int8 (quantised cache)", memory="full KV cache")
    assert ex.measure(contexts=[8]) == {}
    assert "analytic only" in ex.readout_text() and ex.progress.bar_style == "danger"


def test_states_are_plain_frozen_data():
    with pytest.raises(dataclasses.FrozenInstanceError):
        CostState().n_layers = 3


# ============================================================================ memory inspector

INSPECTED = [
    ("full", {}), ("window", {"window": 4}), ("sink", {"sinks": 2, "window": 3}), ("segment", {"mem_len": 5}),
    ("compressive", {"mem_len": 4, "cmem_len": 2, "ratio": 2, "compress": "mean"}),
    ("compressive", {"mem_len": 3, "cmem_len": 3, "ratio": 3, "compress": "most_used"}),
    ("knn", {"capacity": 6, "top_k": 2}),
]


def qkv(n, d=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 1, n, d, generator=gen, dtype=torch.float64) for _ in range(3))


@pytest.mark.parametrize("name, sizes", INSPECTED)
def test_the_inspected_weights_are_what_the_memory_really_computes(name, sizes):
    # 11 tokens in chunks of 3: the last chunk is short
    memory = make_memory(name, **sizes)
    q, k, v = qkv(11)
    frames = memory_frames(memory, q, k, v, chunk=3)
    assert [f["chunk"] for f in frames] == [(0, 2), (3, 5), (6, 8), (9, 10)]
    for frame in frames:
        # weights @ values over [slots, chunk] reproduce memory.forward's output
        torch.testing.assert_close(frame["out_from_weights"], frame["out"])
        torch.testing.assert_close(frame["weights"].sum(-1), torch.ones(frame["weights"].shape[0], dtype=torch.float64))
        assert sum(size for _, size in frame["segments"]) == frame["weights"].shape[1]


@pytest.mark.parametrize("name, sizes", INSPECTED)
def test_slot_layout_lists_the_slots_in_the_order_of_memory_spans(name, sizes):
    memory = make_memory(name, **sizes)
    q, k, v = qkv(13)
    state = memory.init_state(1, 1, 4, dtype=torch.float64)
    for start in range(0, 13, 2):
        _, state = memory(q[:, :, start:start + 2], k[:, :, start:start + 2], v[:, :, start:start + 2], state)
        _, slots = slot_layout(memory, state)
        assert [(a, b) for a, b, _ in slots] == memory.spans(state)


def test_a_window_of_four_forgets_the_oldest_pairs():
    # n_c = 4, chunks of 2 over 8 tokens: before the chunk 6..7 the window holds 2..5
    frames = memory_frames(make_memory("window", window=4), *qkv(8), chunk=2)
    frame = frames[3]
    assert [(a, b) for a, b, _ in frame["slots"]] == [(2, 2), (3, 3), (4, 4), (5, 5)]
    # q_6 sees 3..6, q_7 sees 4..7: slot 2 is hidden from both, slot 3 from q_7
    assert frame["mask"].int().tolist() == [[0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert frame_changes(frame) == {"evicted": [2, 3], "compressed": [], "new_cmem": [], "dropped_cmem": []}


def test_a_compressive_memory_evicts_compresses_and_drops_in_order():
    # M = 4, C = 2, c = 2, chunks of 2: after 6 tokens Mem would hold 6 > 4 pairs, so 0..1 are
    # popped and compressed into one CMem slot [0..1]
    frames = memory_frames(make_memory("compressive", mem_len=4, cmem_len=2, ratio=2), *qkv(10), chunk=2)
    assert frame_changes(frames[2]) == {"evicted": [0, 1], "compressed": [0, 1], "new_cmem": [(0, 1)],
                                        "dropped_cmem": []}
    last = frames[4]  # chunk 8..9 sees CMem [0..1], [2..3] and Mem 4..7
    assert last["slots"] == [(0, 1, "CMem"), (2, 3, "CMem"), (4, 4, "Mem"), (5, 5, "Mem"), (6, 6, "Mem"),
                             (7, 7, "Mem")]
    assert last["segments"] == [("CMem", 2), ("Mem", 4), ("chunk", 2)]
    assert frame_changes(last) == {"evicted": [4, 5], "compressed": [4, 5], "new_cmem": [(4, 5)],
                                   "dropped_cmem": [(0, 1)]}


def test_stepping_the_inspector_moves_picture_readout_and_timeline():
    ins = MemoryInspector("a b c d e f g h i j", memory="compressive", mem_len=4, cmem_len=2, ratio=2,
                          chunk=2).go_live()
    assert ins.controls["step"].max == 4 and ins.play.max == 4
    png, readout = ins.image.value, ins.readout.value
    ins.controls["step"].value = 2
    assert ins.state.step == 2
    assert ins.image.value != png and ins.readout.value != readout
    assert "positions 0..1 evicted from Mem and compressed by f_c = mean into CMem slot [0..1]" in ins.readout_text()
    ins.play.value = 4  # the play button drives the same slider
    assert ins.controls["step"].value == 4 and ins.state.step == 4
    assert "CMem slot(s) [0..1] dropped" in ins.readout_text()
    current = [a for a in ins.figure().axes[0].patches if a.get_gid() == "current-step"][0]
    assert current.get_y() == 3.5


def test_choosing_another_memory_shows_only_its_sizes():
    ins = MemoryInspector("a b c d e f", memory="window", window=3)
    shown = {name for name, c in ins.controls.items() if c.layout.display != "none"}
    assert shown == {"memory", "chunk", "window", "step"}
    ins.controls["memory"].value = "sink"
    shown = {name for name, c in ins.controls.items() if c.layout.display != "none"}
    assert shown == {"memory", "chunk", "sinks", "window", "step"}
    assert "sinks 2 slots" in ins.set(step=1).readout_text()


def test_a_longer_chunk_shrinks_the_step_range():
    ins = MemoryInspector("a b c d e f g h", memory="full", chunk=2, step=3)
    ins.controls["chunk"].value = 4
    assert ins.state.step == 1 and ins.controls["step"].max == 1  # clamped to the last chunk
    with pytest.raises(ValueError, match="step=2 is not one of the 2 chunks"):
        ins.set(step=2)
    ins.set(chunk=1, step=7)  # a shorter chunk and a later step at once: the slider widens first
    assert ins.controls["step"].max == 7 and ins.controls["step"].value == 7 and ins.play.max == 7


def test_inspector_settings_are_checked():
    with pytest.raises(ValueError, match="memory='linear'"):
        update_inspector(InspectorState(), {"memory": "linear"}, 10)
    with pytest.raises(ValueError, match="compress='median'"):
        update_inspector(InspectorState(), {"compress": "median"}, 10)
    assert update_inspector(InspectorState(), {"mem_len": 2, "ratio": 3}, 10).mem_len == 3  # M >= c


# ============================================================================ compression playground

def test_no_compression_is_exact_and_smooth_keys_compress_better_than_noise():
    q, k, v = playground_data("smooth")
    view = compression_view(CompressionState(compress="mean", ratio=1), q, k, v, curves={})
    assert view["error"] == pytest.approx(0, abs=1e-12)
    torch.testing.assert_close(view["compressed"], view["keys"])
    smooth = compression_view(CompressionState(ratio=4), q, k, v, curves={})["error"]
    noisy = compression_view(CompressionState(ratio=4), *playground_data("random"), curves={})["error"]
    assert smooth < noisy / 3


def test_mean_pooling_averages_each_group_of_c_keys():
    q, k, v = playground_data("random", n_pairs=6)
    view = compression_view(CompressionState(compress="mean", ratio=3), q, k, v, curves={})
    torch.testing.assert_close(view["compressed"], k[0, 0].view(2, 3, -1).mean(1))


def test_most_used_keeps_original_keys():
    q, k, v = playground_data("random", n_pairs=12)
    ck = compression_view(CompressionState(compress="most_used", ratio=4), q, k, v, curves={})["compressed"]
    # the paper's rule: keep the evicted pairs of highest average attention, unchanged and in time order
    kept = [next(i for i in range(k.shape[2]) if torch.equal(row, k[0, 0, i])) for row in ck]
    assert kept == sorted(kept) and len(set(kept)) == len(kept) == len(ck)


def test_training_a_conv_compressor_lowers_the_error():
    q, k, v = playground_data("random", n_pairs=24)
    before = compression_view(CompressionState(compress="conv", ratio=4), q, k, v, curves={})["error"]
    after = compression_view(CompressionState(compress="conv", ratio=4, train_steps=50), q, k, v, curves={})["error"]
    assert after < before


def test_training_works_where_a_notebook_turned_gradients_off():
    q, k, v = playground_data("random", n_pairs=8)
    with torch.no_grad():
        view = compression_view(CompressionState(compress="conv", ratio=4, train_steps=2), q, k, v, curves={})
    assert view["error"] > 0


def test_moving_the_ratio_changes_the_compressed_keys_and_the_error():
    pg = CompressionPlayground(n_pairs=24).go_live()
    png, readout = pg.image.value, pg.readout_text()
    assert pg.controls["train_steps"].disabled  # mean pooling learns nothing
    pg.controls["ratio"].value = 2
    assert pg.state.ratio == 2 and pg.view["compressed"].shape[0] == 12
    assert pg.image.value != png and pg.readout_text() != readout
    assert "24 pairs -> 12 slots" in pg.readout_text()
    pg.controls["compress"].value = "conv"
    assert not pg.controls["train_steps"].disabled
    with pytest.raises(ValueError, match="ratio=5 must be >= 1 and divide the 24 pairs"):
        pg.set(ratio=5)


def test_valid_settings_that_a_menu_does_not_offer_are_added_to_it():
    ex = CostExplorer(size=100, head_dim=96, n_heads=4, n_kv_heads=4)
    assert ex.controls["size"].value == 100 and 100 in ex.controls["size"].options
    assert ex.controls["head_dim"].value == 96
    ex.set(max_context=5000)
    assert ex.controls["max_context"].value == 5000
    pg = CompressionPlayground(n_pairs=48, ratio=24)
    assert pg.controls["ratio"].value == 24


# ============================================================================ package layout

def test_state_and_view_functions_work_without_ipywidgets():
    """The pure layers import no ipywidgets: with it blocked, they run; only the explorers need it."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import sys
        sys.modules["ipywidgets"] = None  # any import of it now fails
        import course_lib.widgets as w
        from course_lib.widgets import attention_state, compression_state, cost_state, inspector_state
        assert w.update_cost(w.CostState(), {"memory": "window", "size": 64}).size == 64
        assert w.cost_view(w.CostState())["at_max"]
        view = w.attention_view(*w.toy_qk("a b c".split()), w.AttentionState(i=2, length=3))
        assert view["visible"] == [0, 1, 2]
        assert w.update_inspector(w.InspectorState(), {"memory": "window"}, 12).memory == "window"
        assert w.compression_view(w.CompressionState(), *w.playground_data("smooth"), curves={})["error"] > 0
        k, v = w.retrieval_data(length=6, d=3)
        assert w.retrieval_view(w.RetrievalState(t=5), k, v, fact_every=2)["kept"] >= 1
        assert "ipywidgets" not in [m for m in sys.modules if sys.modules[m] is not None]
        try:
            w.MemoryInspector
        except ImportError:
            print("explorers need ipywidgets")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "explorers need ipywidgets"


def test_menus_list_the_registered_memories():
    from course_lib.memory import REGISTERED
    from course_lib.widgets import COST_MEMORIES, INSPECT_MEMORIES, INSPECTOR_SIZES

    assert list(COST_MEMORIES.values()) == [cls.name for cls in REGISTERED]
    assert list(INSPECT_MEMORIES) == [cls.name for cls in REGISTERED if cls.holds_slots]
    assert INSPECTOR_SIZES["sink"] == ("sinks", "window") and INSPECTOR_SIZES["full"] == ()
    for title in COST_MEMORIES:  # every memory of the menu has a cost curve
        assert len(cost_view(CostState(memory=title, size=64))["analytic"]) in (1, 2)
    for name in INSPECT_MEMORIES:  # and every slot memory can be stepped through
        assert MemoryInspector(memory=name, chunk=5).set(step=3).view["segments"][-1] == ("chunk", 5)


def test_the_inspector_offers_a_control_for_every_size_a_slot_memory_declares():
    """A slot memory's sizes (its class's ``symbols``) are the inspector's controls, labelled by the
    argument and the book's symbol; a new memory with a size the inspector lacks fails here."""
    from course_lib.memory import memory_class
    from course_lib.widgets import INSPECT_MEMORIES, INSPECTOR_SIZES
    from course_lib.widgets.inspector_state import SIZE_LABELS

    for name in INSPECT_MEMORIES:
        missing = set(memory_class(name).symbols) - set(INSPECTOR_SIZES[name])
        assert not missing, f"{name}: add {sorted(missing)} to InspectorState (a default for the inspector)"
    assert SIZE_LABELS["mem_len"] == "mem_len n_m" and SIZE_LABELS["window"] == "window n_c"
    controls = MemoryInspector(memory="compressive").controls
    assert [controls[a].description for a in INSPECTOR_SIZES["compressive"]] == [
        "mem_len n_m", "cmem_len n_cm", "ratio c", "f_c"]
