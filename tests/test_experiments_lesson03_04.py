"""Lessons 03 and 04's experiment helpers: sparse patterns, eviction, recall by distance, the stored result."""

import torch

from course_lib import CumulativeAverageMemory, FullMemory, SinkMemory, WindowMemory, causal_mask
from course_lib.experiments import lesson03, lesson04


def test_strided_mask_scenarios():
    assert torch.equal(lesson03.strided_mask(7, 7, 1), causal_mask(7, 7))
    assert torch.equal(lesson03.strided_mask(5, 5, 9), causal_mask(5, 5))  # stride >= T: everything is recent
    # the last query of 10 positions, stride 3: recent 7, 8, 9 and 0, 3, 6 (multiples of 3 back)
    assert lesson03.strided_mask(1, 10, 3)[0].nonzero().flatten().tolist() == [0, 3, 6, 7, 8, 9]


def test_evictable_window_frees_old_keys_strided_and_global_keep_them():
    assert lesson03.evictable(lesson03.window_mask(10, 3), 6) == [0, 1, 2, 3]
    assert lesson03.evictable(lesson03.strided_mask(30, 30, 4), 20) == []
    assert lesson03.evictable(lesson03.global_mask(30, 3, 8), 20) == []
    assert lesson03.evictable(causal_mask(6, 6), 6) == list(range(6))  # no query left
    assert lesson03.kept_keys("window", 100, 8) == 7
    assert lesson03.kept_keys("strided", 100, 8) == 100


def test_fixed_and_dilated_patterns_and_local_global_queries_bound_the_cache():
    # fixed pattern, blocks of 4 with 1 summary: the query at 5 reads its block (4, 5) and the summary 3
    assert lesson03.fixed_mask(8, 4, 1)[5].nonzero().flatten().tolist() == [3, 4, 5]
    assert torch.equal(lesson03.fixed_mask(6, 6, 1), causal_mask(6, 6))  # one block: full causal
    # after 8 positions (two whole blocks of 4, summaries c = 2 at 2, 3, 6, 7) only the summaries stay
    assert lesson03.evictable(lesson03.fixed_mask(20, 4, 2), 8) == [0, 1, 4, 5]
    # dilated window of 3 keys every 2nd: the query at 9 reads 9, 7, 5
    assert lesson03.dilated_mask(10, 3, 2)[9].nonzero().flatten().tolist() == [5, 7, 9]
    assert lesson03.evictable(lesson03.dilated_mask(30, 3, 2), 20) == list(range(16))
    # global keys read by all, their queries local: the globals and a window stay
    local = lesson03.global_mask(30, 3, 8, reads_all=False)
    assert [j for j in range(20) if j not in lesson03.evictable(local, 20)] == [0, 8, 16, 18, 19]
    assert torch.equal(lesson03.global_mask(12, 2, 5, reads_all=True), lesson03.global_mask(12, 2, 5))
    for bad in (lambda: lesson03.fixed_mask(8, 4, 5), lambda: lesson03.dilated_mask(8, 0, 2)):
        try:
            bad()
        except ValueError:
            pass
        else:
            raise AssertionError("expected a ValueError")


def test_recall_by_distance_follows_what_the_memory_holds():
    distances = [1, 7, 8, 20]
    assert lesson04.recall_by_distance(FullMemory(), distances, trials=8) == [1.0] * 4
    window = lesson04.recall_by_distance(WindowMemory(8), distances, trials=8)
    assert window[:2] == [1.0, 1.0] and max(window[2:]) <= 0.25
    sinks = lesson04.recall_by_distance(SinkMemory(1, 4), [3, 6, 20], trials=8)  # distance 20 = position 0
    assert sinks[0] == 1.0 and sinks[1] <= 0.25 and sinks[2] == 1.0
    assert max(lesson04.recall_by_distance(CumulativeAverageMemory(), distances, trials=8)) <= 0.25


def test_stored_sink_result_has_every_memory_seed_and_bucket():
    result = lesson04.stored_result("sinks")
    s = result["setup"]
    assert result["command"] == lesson04.COMMAND and result["seeds"] == list(lesson04.SEEDS)
    bpc = lesson04.bpc_by_seed(result)
    assert list(bpc) == list(lesson04.sink_memories(s["seq_len"], s["sinks"]))
    for runs in bpc.values():
        assert len(runs) == len(result["seeds"]) and all(len(b) == s["eval_len"] // result["bucket"] for b in runs)
    assert all(len(a) == s["n_layers"] for a in lesson04.per_seed(result, "first_key_attention"))


def test_the_sink_arms_are_labelled_by_their_positions():
    labels = list(lesson04.sink_memories(64, 4))
    assert labels == ["full KV cache", "window n_c = 64", "sink S = 4, n_c = 60",
                      "sink S = 4, n_c = 60 (cache positions)"]


def test_settings_follow_course_scale(monkeypatch):
    monkeypatch.setenv("COURSE_SCALE", "full")
    assert lesson04.settings() == lesson04.FULL
    monkeypatch.delenv("COURSE_SCALE")
    assert lesson04.settings() == lesson04.LIVE


def test_a_tiny_sink_experiment_runs_and_its_rows_read_back():
    tiny = dict(lesson04.LIVE, steps=3, d_model=16, eval_len=128, eval_rows=2, max_chars=20_000)
    run = lesson04.sink_experiment(**tiny)
    live = lesson04.as_result([run])
    assert list(lesson04.bpc_by_seed(live)) == list(run["bpc"]) and lesson04.per_seed(live, "seconds")
    assert run["window_cache_max_diff"] < 1e-3  # a window reads the same with cache positions
    first = [b[0] for b in run["bpc"].values()]
    assert max(first) - min(first) < 1e-9  # inside the training length all four hold the same keys
