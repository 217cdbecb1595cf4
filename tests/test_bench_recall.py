"""``python -m course_lib bench recall``: the quick run end to end, and its pieces."""

from __future__ import annotations

import math

import torch

from course_lib.__main__ import main
from course_lib.bench import recall
from course_lib.data import IGNORE, mqar
from course_lib.memory import MEMORIES


def test_quick_run_prints_every_design_and_saves_the_png(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COURSE_QUIET", "1")
    out = tmp_path / "recall.png"
    assert main(["bench", "recall", "--quick", "--device", "cpu", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    table = text[text.index("design"):]
    for design in recall.designs(recall.QUICK):
        assert design.label in table, design.label
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_only_runs_the_named_families(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COURSE_QUIET", "1")
    out = tmp_path / "r.png"
    main(["bench", "recall", "--quick", "--only", "full,window", "--device", "cpu", "--out", str(out)])
    table = capsys.readouterr().out.split("design")[-1]
    assert "full" in table and "window" in table and "delta" not in table


def test_worker_processes_give_the_rows_of_a_run_in_place(monkeypatch):
    monkeypatch.setenv("COURSE_QUIET", "1")
    s = recall.QUICK
    here = recall.run_all(s, device="cpu", only={"window"}, jobs=1, log=lambda line: None)
    there = recall.run_all(s, device="cpu", only={"window"}, jobs=2, log=lambda line: None)
    assert [r.label for r in there] == [r.label for r in here] == [f"window n_c = {s.window}"]
    assert there[0].nbytes == here[0].nbytes
    assert abs(there[0].accuracy - here[0].accuracy) <= 0.07  # thread counts may differ in the last bits


def test_every_registered_memory_that_can_recall_is_in_the_full_run():
    families = [d.family for d in recall.designs(recall.FULL)]
    assert set(families) == {name for name, cls in MEMORIES.items() if cls.uses_query}
    assert {"full", "window", "sink", "linear", "delta", "segment", "compressive", "knn", "multi"} <= set(families)
    sweeps = [d for d in recall.designs(recall.FULL) if d.family in ("linear", "delta")]
    assert len(sweeps) == 2 * len(recall.FULL.sweep) >= 6
    assert len({d.label for d in recall.designs(recall.FULL)}) == len(families)  # workers find designs by label


def test_fixed_size_memories_are_within_a_factor_of_two_of_each_other():
    s = recall.FULL
    sizes = {}
    for design in recall.designs(s):
        model = recall.build_model(s, design)
        _, state = model(torch.zeros(1, s.seq_len, dtype=torch.long))
        sizes[design.label] = model.state_nbytes(state)
    budget = sizes[f"window n_c = {s.window}"]
    for label in (f"sink S = {s.window // 4}, n_c = {s.window - s.window // 4}", f"segment M = {s.window}"):
        assert sizes[label] == budget, (label, sizes[label], budget)
    compressive = next(v for k, v in sizes.items() if k.startswith("compressive"))
    assert budget / 2 <= compressive <= 2 * budget
    assert sizes["full KV cache"] > budget
    deltas = [v for k, v in sizes.items() if k.startswith("delta")]
    assert deltas == sorted(deltas) and deltas[0] < deltas[-1], "the sweep grows the state"


def test_query_gaps_count_back_to_the_value_token():
    # pairs (1, 5), (2, 6) at positions 0..3; key 2 asked at position 4, key 1 at position 8
    x = torch.tensor([[1, 5, 2, 6, 2, 0, 0, 0, 1, 0]])
    y = torch.full_like(x, IGNORE)
    y[0, 4], y[0, 8] = 6, 5
    assert recall.query_gaps(x, y, n_pairs=2).tolist() == [4 - 3, 8 - 1]


def test_query_gaps_on_generated_data_are_positive():
    x, y = mqar(20, 32, 4, 16, seed=0, random_fill=False)
    gaps = recall.query_gaps(x, y, 4)
    assert gaps.numel() == 80 and (gaps > 0).all()


def test_table_and_plot_are_pure_functions_of_the_rows():
    rows = [
        recall.Row("full", "Full", 4096, 1.0, 1.0, 1.0, 1.0),
        recall.Row("window n_c=4", "Window", 512, 0.5, 1.0, 0.0, 1.0),
        recall.Row("delta d_h=8", "Delta", 256, 0.3, 0.3, math.nan, 1.0),
        recall.Row("delta d_h=16", "Delta", 1024, 0.9, 0.9, 0.9, 1.0),
    ]
    table = recall.format_table(rows, recall.QUICK)
    assert "50.0%" in table and "100.0%" in table and " -" in table
    fig = recall.plot_recall(rows, recall.QUICK)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    labels = {t.get_text() for t in ax.texts}
    assert labels == {r.label for r in rows}
