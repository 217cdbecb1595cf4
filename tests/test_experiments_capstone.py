"""The capstone's seeded recall runs: one row per seed, the far recall, and the shipped result files."""

from __future__ import annotations

import dataclasses

import pytest

from course_lib.experiments import capstone, results

TINY = dataclasses.replace(capstone.SETUP, steps=2, n_train=16, n_test=4, batch_size=4)


def test_run_seeds_gives_a_row_per_seed_with_its_curve_and_far_recall():
    rows = capstone.run_seeds("window 32", (0, 1), TINY, log_every=1, far=(200,))
    assert [r["seed"] for r in rows] == [0, 1]
    for row in rows:
        assert row["spec"] == capstone.DESIGNS["window 32"] and 0 <= row["recall"] <= 1
        assert [step for step, _ in row["curve"]] == [1, 2]
        (far,) = row["far"]
        assert far["dialogue_length"] == 200 and far["distance"] > row["distance"] and 0 <= far["recall"] <= 1
    with pytest.raises(ValueError, match="design must be one of"):
        capstone.run_seeds("window 33", (0,), TINY)


def test_the_row_of_the_grades_seed_is_the_grades_own_training_run():
    capstone._RECALL_CACHE.clear()
    (row,) = capstone.run_seeds("window 32", (TINY.seed,), TINY, log_every=0, far=())
    capstone._RECALL_CACHE.clear()
    graded = capstone.train_recall(capstone.DESIGNS["window 32"], TINY)  # what 09.chatbot_design runs
    assert row["recall"] == graded["recall"] and row["distance"] == graded["distance"]


@pytest.mark.parametrize("name", ["capstone_delta_beta1", "capstone_delta_learned", "capstone_window"])
def test_the_shipped_capstone_runs_follow_the_schema_on_three_seeds(name):
    run = results.read_result(name)
    assert len(run["seeds"]) >= 3 and [r["seed"] for r in run["rows"]] == run["seeds"]
    assert run["spec"] == capstone.RUNNABLE[run["design"]]  # a design the lesson and the grade name
    assert run["setup"]["steps"] == capstone.SETUP.steps and run["command"].startswith(
        "python -m course_lib.experiments.capstone")
    for row in run["rows"]:
        assert row["curve"][-1] == [capstone.SETUP.steps, row["recall"]]
        assert [p["dialogue_length"] for p in row["far"]] == list(capstone.FAR_LENGTHS)


def test_the_reference_design_is_one_of_the_shipped_variants():
    assert capstone.DESIGNS["window 16 + delta"] in capstone.VARIANTS.values()
    shipped = [results.read_result(f"capstone_delta_{n}")["spec"] for n in ("beta1", "learned")]
    assert capstone.DESIGNS["window 16 + delta"] in shipped
