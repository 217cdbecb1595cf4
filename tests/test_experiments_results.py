"""One result format and one design spec: what every experiment writes and builds from."""

from __future__ import annotations

import json
import math

import pytest

from course_lib.experiments import results, specs


def test_a_result_file_round_trips_with_its_command_commit_machine_and_seeds(tmp_path):
    path = results.write_result(tmp_path / "r.json", command="python -m course_lib.experiments.x run",
                                rows=[{"label": "window", "seed": 0, "acc": float("nan")}], seeds=[0, 1, 2],
                                setup={"steps": (1, 2)}, seconds=1.234)
    back = results.read_result(path)
    assert back["schema"] == results.SCHEMA and back["seeds"] == [0, 1, 2] and back["seconds"] == 1.2
    assert back["rows"][0]["acc"] is None and back["setup"]["steps"] == [1, 2]
    assert {"torch", "python", "cpu_count"} <= set(back["machine"]) and "commit" in back


def test_a_file_without_the_schema_is_refused_with_what_it_lacks(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"rows": [], "setup": {}}))
    with pytest.raises(results.ResultError, match="lacks schema, command, commit, machine, seeds"):
        results.read_result(old)
    with pytest.raises(results.ResultError, match="no result file"):
        results.read_result(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="command must be"):
        results.write_result(tmp_path / "x.json", command="made by hand", rows=[], seeds=[0])


def test_spread_and_whether_a_difference_exceeds_it():
    s = results.spread([0.5, 0.7, float("nan"), 0.6])
    assert s["n"] == 3 and math.isclose(s["mean"], 0.6) and s["min"] == 0.5 and s["max"] == 0.7
    assert results.exceeds_spread([0.8, 0.9, 0.85], [0.5, 0.7, 0.6])
    assert not results.exceeds_spread([0.8, 0.6, 0.85], [0.5, 0.7, 0.6])  # ranges overlap
    assert not results.exceeds_spread([], [1.0])
    by = results.summarise([{"label": "a", "v": 1}, {"label": "b", "v": 3}, {"label": "a", "v": 2}], "v")
    assert list(by) == ["a", "b"] and by["a"]["mean"] == 1.5


@pytest.mark.parametrize("value, expected", [("", "live"), ("live", "live"), ("FULL", "full")])
def test_course_scale_is_read_in_one_place(monkeypatch, value, expected):
    monkeypatch.setenv("COURSE_SCALE", value)
    assert results.scale() == expected and results.pick("l", "f") == expected[0]


def test_a_bad_course_scale_names_the_variable(monkeypatch):
    monkeypatch.setenv("COURSE_SCALE", "huge")
    with pytest.raises(ValueError, match="COURSE_SCALE must be 'live' or 'full'.*'huge'"):
        results.scale()


def test_a_spec_builds_its_memory_and_comes_back_from_it():
    spec = {"name": "multi", "combine": "gate",
            "memories": [{"name": "window", "window": 4}, {"name": "sink", "sinks": 2, "window": 6}]}
    memory = specs.build_memory(spec, n_heads=2)
    assert specs.build_memory(specs.spec_of(memory)).label() == memory.label()
    assert specs.spec_label(spec) == "window n_c=4 + sink S=2 n_c=6 (gate)"
    with pytest.raises(ValueError, match=r"design\['memories'\]\[1\]\['name'\] must be one of"):
        specs.build_memory({"name": "multi", "memories": [{"name": "window", "window": 4}, {"name": "lstm"}]})


def test_exercise_08_question_1_quotes_the_shipped_recall_result():
    """The question's table is typed in its stem (it must read without the repository's files), so a
    test holds each number to lesson 08's result file: a rerun that changes them fails here."""
    import re
    from pathlib import Path

    from course_lib.experiments import recall

    root = Path(__file__).resolve().parents[1]
    stem = (root / "solutions" / "src" / "08_capacity_tradeoffs_solutions.md").read_text()
    stem = stem[stem.index("## Question 1"):stem.index("Which design would you ship?")]
    summary = recall.summary(results.read_result(root / "docs" / "results" / "lesson08_recall.json"))
    names = {"window n_c = 32": "window n_c=32", "Transformer-XL n_m = 16": "segment n_m=16",
             "k-NN N = 16, k = 4": "knn N=16 k=4", "delta, learned beta, d_h = 64": "delta beta=learned"}
    for shown, label in names.items():
        row = next(line for line in stem.splitlines() if line.startswith(f"| {shown}"))
        numbers = [int(x) for x in re.findall(r"(\d+)%", row)]
        full = next(lab for lab in summary if lab.startswith(label))
        assert numbers == [round(100 * summary[full][g]["mean"]) for g in (16, 64, 256)], (shown, numbers)


def _square(x):
    return x * x


def test_runs_in_workers_come_back_in_order_and_jobs_must_be_a_count():
    from course_lib.experiments.workers import default_jobs, map_runs

    assert list(map_runs(_square, [3, 1, 2], jobs=1)) == [9, 1, 4]
    assert list(map_runs(_square, [3, 1, 2, 5], jobs=2)) == [9, 1, 4, 25]  # spawned, in the items' order
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="jobs must be a whole number >= 1, got"):
            list(map_runs(_square, [1], jobs=bad))
    assert default_jobs("cuda", 12) == 1  # a GPU is shared better from one process
    assert 1 <= default_jobs("cpu", 12) <= 4 and default_jobs("cpu", 1) == 1


def test_a_run_rewriting_its_own_result_files_is_not_dirty_but_a_code_change_is(tmp_path):
    """A run that rewrites docs/results (or a picture in docs/) as it goes still ran committed code;
    an edit to the library is an uncommitted change. Tried on a checkout of this course_lib."""
    import shutil
    import subprocess
    import sys

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    clone = tmp_path / "checkout"
    shutil.copytree(results.ROOT / "course_lib", clone / "course_lib", ignore=shutil.ignore_patterns("__pycache__"))
    (clone / "docs" / "results").mkdir(parents=True)
    (clone / "docs" / "results" / "run.json").write_text("{}")
    (clone / "docs" / "run.png").write_bytes(b"a picture")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(clone)]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "x"]):
        subprocess.run(git + args, check=True, capture_output=True)
    ask = [sys.executable, "-c", "from course_lib.experiments.results import commit; print(commit()[1])"]

    def dirty():  # the checkout's course_lib, not the installed one
        return subprocess.run(ask, cwd=clone, capture_output=True, text=True, check=True,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(clone)}
                              ).stdout.strip()

    assert dirty() == "False"
    (clone / "docs" / "results" / "run.json").write_text('{"rows": []}')
    (clone / "docs" / "run.png").write_bytes(b"another picture")
    assert dirty() == "False"
    with open(clone / "course_lib" / "cost.py", "a") as f:
        f.write("\n")
    assert dirty() == "True"
