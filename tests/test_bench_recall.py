"""``python -m course_lib bench recall``: the quick run end to end (a front to
course_lib.experiments.recall), and the short task it keeps for lessons 05 and 06."""

from __future__ import annotations

import torch

from course_lib.__main__ import main
from course_lib.bench import recall
from course_lib.data import IGNORE, mqar
from course_lib.experiments.recall import DistanceSetup, distance_designs
from course_lib.experiments.results import read_result
from course_lib.memory import DeltaMemory


def test_quick_run_prints_the_table_by_gap_and_saves_the_png(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COURSE_QUIET", "1")
    out, result = tmp_path / "recall.png", tmp_path / "recall.json"
    assert main(["bench", "recall", "--quick", "--only", "window,delta", "--device", "cpu", "--out", str(out),
                 "--json", str(result)]) == 0
    text = capsys.readouterr().out
    s = DistanceSetup.quick()
    for d in distance_designs(s):
        assert (d["label"] in text) == (d["spec"]["name"] in ("window", "delta")), d["label"]
    assert all(f"gap {g:,}" in text for g in s.eval_gaps) and "before the question's segment" in text
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert read_result(result)["command"] == "python -m course_lib bench recall"


def test_the_short_task_of_lessons_05_and_06_has_random_filler_and_a_first_layer_window():
    s = recall.QUICK
    assert s.random_fill and recall.FULL.random_fill
    (x, y), _ = recall.task_data(s)
    assert x.shape == (s.n_train, s.seq_len) and (x[:, 2 * s.n_pairs:] != 0).float().mean() > 0.5
    design = recall.Design("delta", "delta", lambda: DeltaMemory(beta="learned"))
    model = recall.build_model(s, design)
    assert model.blocks[0].attn.memory.name == "window" and model.blocks[0].attn.w_beta is None
    assert model.blocks[1].attn.w_beta is not None
    logits, _ = model(x[:2])  # the first layer takes no write strength
    assert logits.shape == (2, s.seq_len, s.vocab_size)


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
