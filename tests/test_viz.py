"""The pictures plot the data they are given: checked on the artists, not only that a Figure exists."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.colors import to_hex

from course_lib import viz
from course_lib.cost import ModelConfig, cost_curve


def boxes(collection):
    """``(first, last + 1, row)`` of each rectangle in a PolyCollection drawn by memory_timeline."""
    verts = [path.vertices for path in collection.get_paths()]
    return sorted((round(v[:, 0].min() + 0.5), round(v[:, 0].max() + 0.5), round(v[:, 1].mean())) for v in verts)


def artist(fig, gid):
    found = [a for ax in fig.axes for a in ax.get_children() if a.get_gid() == gid]
    assert found, f"no artist with gid {gid!r}"
    return found


def test_no_pyplot_figures_are_left_behind():
    before = plt.get_fignums()
    viz.attention_heatmap(np.eye(3))
    viz.memory_timeline([[(0, 0)]])
    viz.recall_vs_bytes([{"name": "a", "bytes": 10, "recall": 0.5}])
    assert plt.get_fignums() == before


def test_figures_show_themselves_as_png_in_a_notebook():
    fig = viz.attention_heatmap(np.eye(2))
    assert isinstance(fig, viz.Figure)
    assert fig._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"
    assert repr(fig).startswith("<Figure size")  # the text repr that nbval compares stays matplotlib's


# ----------------------------------------------------------------------------- attention heatmap

def test_heatmap_shows_the_weights_and_greys_out_masked_cells():
    weights = torch.tensor([[1.0, 0.0, 0.0], [0.25, 0.75, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, False, False], [True, True, False]])
    fig = viz.attention_heatmap(weights, mask=mask)
    shown = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(shown.filled(np.nan)[mask.numpy()], weights[mask].numpy())
    assert np.isnan(shown.filled(np.nan)[~mask.numpy()]).all()  # hidden keys are not drawn as weight 0


def test_heatmap_can_stretch_small_weights_and_says_so():
    fig = viz.attention_heatmap(np.array([[0.04, 0.96]]), gamma=0.5)
    image = fig.axes[0].images[0]
    np.testing.assert_allclose(image.get_array(), [[0.04, 0.96]])  # the data stay the weights
    assert image.norm(0.04) == pytest.approx((0.04 / 0.96) ** 0.5)  # only the colours are stretched
    assert "\u221a colour scale" in fig.axes[1].get_ylabel()


def test_heatmap_marks_cmem_mem_and_chunk_segments():
    w = np.full((3, 9), 1 / 9)
    fig = viz.attention_heatmap(w, [("CMem", 2), ("Mem", 4), ("chunk", 3)])
    # boundaries between slot 1|2 and 5|6
    xs = sorted(line.get_xdata()[0] for line in artist(fig, "segment-boundary"))
    assert xs == [1.5, 5.5]
    (top,) = fig.axes[0].child_axes  # the segment names, written above the heatmap
    labels = top.get_xticklabels()
    assert [t.get_text() for t in labels] == ["CMem (2)", "Mem (4)", "chunk (3)"]
    assert [t.get_position()[0] for t in labels] == [0.5, 3.5, 7.0]
    assert to_hex(labels[0].get_color()) == viz.OKABE_ITO["orange"].lower()
    band = artist(fig, "segment-Mem")[0]
    assert (band.get_x(), band.get_width()) == (1.5, 4)


def test_heatmap_outlines_the_current_query_row():
    fig = viz.attention_heatmap(np.eye(4), highlight_query=2)
    box = artist(fig, "highlight-query")[0]
    assert (box.get_y(), box.get_height(), box.get_width()) == (1.5, 1, 4)


def test_heatmap_rejects_bad_input_with_a_clear_message():
    with pytest.raises(ValueError, match="2 dimensions.*weights\\[0, 0\\]"):
        viz.attention_heatmap(np.ones((1, 1, 3, 3)))
    with pytest.raises(ValueError, match="cover 5 key slots but weights have 9"):
        viz.attention_heatmap(np.ones((3, 9)), [("Mem", 2), ("chunk", 3)])
    with pytest.raises(ValueError, match="mask has shape"):
        viz.attention_heatmap(np.ones((2, 2)), mask=np.ones((2, 3), bool))


def test_bars_draw_visible_weights_and_mark_hidden_keys():
    row = [0.5, 0.0, 0.0, 0.2, 0.3]
    visible = [True, False, False, True, True]
    fig = viz.attention_bars(row, visible=visible, segments=[("sinks", 1), ("Mem", 4)])
    bars = fig.axes[0].patches
    assert [b.get_x() + b.get_width() / 2 for b in bars] == [0, 3, 4]
    np.testing.assert_allclose([b.get_height() for b in bars], [0.5, 0.2, 0.3])
    assert to_hex(bars[0].get_facecolor()) == viz.SEGMENT_COLOURS["sinks"].lower()
    hidden = artist(fig, "hidden-keys")[0]
    assert list(hidden.get_xdata()) == [1, 2]


# ----------------------------------------------------------------------------- memory timeline

def test_timeline_draws_one_box_per_slot_over_the_positions_it_stands_for():
    # a compressive memory with c = 2: after step 1 positions 0..1 are one CMem slot
    spans = [[(0, 0), (1, 1)], [(0, 1), (2, 2), (3, 3)]]
    fig = viz.memory_timeline(spans, chunks=[(2, 3), (4, 5)], current=1)
    single = artist(fig, "Mem")[0]
    compressed = artist(fig, "CMem")[0]
    chunk = artist(fig, "chunk")[0]
    assert boxes(single) == [(0, 1, 0), (1, 2, 0), (2, 3, 1), (3, 4, 1)]
    assert boxes(compressed) == [(0, 2, 1)]  # one slot standing for positions 0..1
    assert boxes(chunk) == [(2, 4, 0), (4, 6, 1)]
    current = artist(fig, "current-step")[0]
    assert current.get_y() == 0.5
    ax = fig.axes[0]
    assert ax.get_xlim() == (-0.5, 5.5)
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # step 0 on top: time flows down


def test_timeline_colours_slots_by_the_part_of_memory_they_belong_to():
    fig = viz.memory_timeline([[(0, 0), (1, 1), (5, 5)]], parts=[["sinks", "sinks", "Mem"]])
    assert boxes(artist(fig, "sinks")[0]) == [(0, 1, 0), (1, 2, 0)]
    assert boxes(artist(fig, "Mem")[0]) == [(5, 6, 0)]
    assert to_hex(artist(fig, "sinks")[0].get_facecolor()[0]) == viz.SEGMENT_COLOURS["sinks"].lower()
    with pytest.raises(ValueError, match=r"parts holds \['cache'\]"):
        viz.memory_timeline([[(0, 0)]], parts=[["cache"]])


def test_timeline_rejects_backwards_spans():
    with pytest.raises(ValueError, match=r"spans_per_step\[1\].*\(3, 2\)"):
        viz.memory_timeline([[(0, 0)], [(3, 2)]])
    with pytest.raises(ValueError, match="one per step"):
        viz.memory_timeline([[(0, 0)], [(1, 1)]], chunks=[(1, 1)])


# ----------------------------------------------------------------------------- cost

def test_cost_curves_plot_the_analytic_numbers_on_log_axes():
    cfg = ModelConfig(n_layers=2, n_heads=4, head_dim=8)
    ctx = [256, 512, 1024, 2048]
    full = cost_curve(cfg, ctx, "full")
    window = cost_curve(cfg, ctx, "window", window=512)
    fig = viz.cost_curves({"full": full, "window": window})
    ax_bytes, ax_flops = fig.axes
    lines = {line.get_label(): line for line in ax_bytes.get_lines()}
    np.testing.assert_array_equal(lines["full"].get_ydata(), full["bytes"])
    np.testing.assert_array_equal(lines["window"].get_ydata(), [2 * 2 * 4 * 8 * m * 2 for m in (256, 512, 512, 512)])
    flops = {line.get_label(): line for line in ax_flops.get_lines()}
    np.testing.assert_array_equal(flops["full"].get_xdata(), ctx)
    np.testing.assert_array_equal(flops["full"].get_ydata(), full["flops"])
    for ax in fig.axes:
        assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    assert lines["full"].get_color() != lines["window"].get_color()
    assert lines["full"].get_linestyle() != lines["window"].get_linestyle()  # not by colour alone


def test_cost_curves_overlay_measured_points_and_ms_per_token():
    cfg = ModelConfig(n_layers=1, n_heads=1, head_dim=4)
    rows = [{"context": 256, "ms_per_token": 1.5, "nbytes": 4096},
            {"context": 512, "ms_per_token": 2.5, "nbytes": 8192}]
    fig = viz.cost_curves({"full": cost_curve(cfg, [256, 512], "full")}, {"full": rows})
    assert len(fig.axes) == 3
    (ms,) = artist(fig, "measured-ms")
    assert list(ms.get_xdata()) == [256, 512] and list(ms.get_ydata()) == [1.5, 2.5]
    (nbytes,) = artist(fig, "measured-bytes")
    assert list(nbytes.get_ydata()) == [4096, 8192]


def test_cost_curves_leave_room_for_a_measurement_to_come():
    cfg = ModelConfig(n_layers=1, n_heads=1, head_dim=4)
    fig = viz.cost_curves({"full": cost_curve(cfg, [256], "full")}, ms_panel=True)
    assert len(fig.axes) == 3
    assert "measure" in artist(fig, "measure-hint")[0].get_text()
    assert len(viz.cost_curves({"full": cost_curve(cfg, [256], "full")}).axes) == 2
    # the empty panel shares x with the others and must not cut their curves short
    wide = viz.cost_curves({"full": cost_curve(cfg, [256, 65536], "full")}, ms_panel=True)
    for ax in wide.axes:
        assert ax.get_xlim()[0] <= 256 and ax.get_xlim()[1] >= 65536


def test_byte_and_count_labels_read_like_a_person_writes_them():
    assert viz.format_bytes(1536) == "1.5 KiB"
    assert viz.format_bytes(2**30) == "1 GiB"
    assert viz.format_bytes(0) == "0 B"
    assert viz.format_count(65536) == "65.5k"
    assert viz.format_count(2e9) == "2G"


# ----------------------------------------------------------------------------- recall vs bytes

ROWS = [
    {"name": "full", "bytes": 1000, "recall": 1.0},
    {"name": "window", "bytes": 100, "recall": 0.3},
    {"name": "compressive", "bytes": 100, "recall": 0.6},  # same bytes, better recall: beats window
    {"name": "linear", "bytes": 50, "recall": 0.2},
    {"name": "big window", "bytes": 400, "recall": 0.5},  # more bytes, less recall than compressive
]


def test_pareto_front_keeps_only_rows_nothing_beats():
    assert [r["name"] for r in viz.pareto_front(ROWS)] == ["linear", "compressive", "full"]
    assert viz.pareto_front([]) == []
    tie = [{"name": "a", "bytes": 1, "recall": 0.5}, {"name": "b", "bytes": 2, "recall": 0.5}]
    assert [r["name"] for r in viz.pareto_front(tie)] == ["a"]  # as good for more bytes is not on the front


def test_recall_vs_bytes_draws_every_point_and_the_front():
    fig = viz.recall_vs_bytes(ROWS)
    ax = fig.axes[0]
    points = artist(fig, "points")
    drawn = sorted((float(x), float(y)) for line in points for x, y in zip(line.get_xdata(), line.get_ydata()))
    assert drawn == sorted((r["bytes"], r["recall"]) for r in ROWS)
    (front,) = artist(fig, "pareto-front")
    assert list(front.get_xdata()) == [50, 100, 1000]
    assert list(front.get_ydata()) == [0.2, 0.6, 1.0]
    assert front.get_drawstyle() == "steps-post"
    assert ax.get_xscale() == "log"
    assert {t.get_text() for t in ax.texts} == {r["name"] for r in ROWS}


def test_recall_vs_bytes_names_a_missing_field():
    with pytest.raises(ValueError, match=r"rows\[0\] has no 'recall'"):
        viz.recall_vs_bytes([{"name": "a", "bytes": 3}])
    with pytest.raises(ValueError, match="bytes=0"):
        viz.recall_vs_bytes([{"name": "a", "bytes": 0, "recall": 1}])
