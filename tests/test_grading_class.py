"""Grading a class (issue 22): many submissions, a gradebook that survives interruptions, Dask.

The cheap tests hold the pieces to their rules without grading (which paths are collected,
student ids, the gradebook's append / replace / half-written line, the feedback's Markdown).
The scenarios grade real notebooks, each in its own sandbox (seconds each): a small class of
solutions and untouched exercises with ``--jobs 2`` and on a 2-worker ``LocalCluster`` gives
the same gradebook, a rerun grades nothing, a run SIGKILLed half-way then rerun completes it
with no row lost or duplicated, and a crashing / looping / flooding submission gets its row
while the others are graded. The whole class of every lesson is graded once (``slow``).
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from notebook_helpers import write_notebook

from course_lib.__main__ import main as course_main
from course_lib.grading.grader import GradingError
from course_lib.grading.grader.classroom import collect, grade_class, student_id
from course_lib.grading.grader.feedback import render_feedback
from course_lib.grading.grader.gradebook import Gradebook, row_of

ROOT = Path(__file__).resolve().parents[1]
FAST_LESSONS = ("01", "02", "03", "04")  # the subset the faster scenarios grade (about 6 s a notebook)


def read_book(path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def without_time(rows) -> list[dict]:
    return sorted(({k: v for k, v in row.items() if k != "seconds"} for row in rows), key=lambda r: r["path"])


def a_class(folder: Path, lessons=FAST_LESSONS) -> Path:
    """Copies of the solution notebooks and the untouched exercise notebooks of ``lessons``."""
    (folder / "solutions").mkdir(parents=True)
    (folder / "exercises").mkdir()
    for kind in ("solutions", "exercises"):
        for nb in sorted((ROOT / kind).glob("[0-9][0-9]_*.ipynb")):
            if lessons is None or nb.name[:2] in lessons:
                shutil.copyfile(nb, folder / kind / nb.name)
    return folder


def check_class_rows(rows):
    assert rows and all(row["status"] == "graded" for row in rows), [(r["path"], r["reason"]) for r in rows]
    for row in rows:
        if "solutions" in row["path"]:
            assert row["score"] == row["max_score"] and float(row["max_score"]) > 0, row
        else:
            assert row["score"] == "0", row
    assert len({row["path"] for row in rows}) == len(rows), "one row per submission"


# ---------------------------------------------------------------- the pieces, without grading


def test_collect_takes_files_folders_and_globs_without_checkpoints_or_backups(tmp_path):
    for name in ("a/03_x.ipynb", "a/deep/04_y.ipynb", "a/.ipynb_checkpoints/03_x-checkpoint.ipynb",
                 "a/backups/03_x-20261201.ipynb", "b/05_z.ipynb", "b/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    found = collect([str(tmp_path / "a"), str(tmp_path / "b" / "*.ipynb"), str(tmp_path / "a" / "03_x.ipynb")])
    assert [Path(p).relative_to(tmp_path).as_posix() for p in found] == ["a/03_x.ipynb", "a/deep/04_y.ipynb",
                                                                         "b/05_z.ipynb"]
    with pytest.raises(GradingError, match="does not exist"):
        collect([str(tmp_path / "nowhere")])
    with pytest.raises(GradingError, match="matches no notebook"):
        collect([str(tmp_path / "b" / "*.py")])


@pytest.mark.parametrize("path, student", [
    ("alice_03_two_routes_exercises.ipynb", "alice"),
    ("03_two_routes_exercises-bob.ipynb", "bob"),
    ("class/carol/03_two_routes_exercises.ipynb", "carol"),
    ("dave.ipynb", "dave"),
    ("e.f_10_gated_memories_solutions.ipynb", "e_f"),
])
def test_the_student_id_comes_from_the_file_name_or_its_folder(path, student):
    assert student_id(path) == student


def result(score=2.0, status="graded", reason=""):
    exercises = [{"id": "03.linear_attention", "score": score, "max_score": 2.0, "feedback": "",
                  "title": "t", "status": "passed", "checks": []}]
    return {"status": status, "reason": reason, "seconds": 1.25,
            "report": {"lessons": ["03"], "score": score, "max_score": 8.0, "exercises": exercises}}


def test_the_gradebook_appends_replaces_atomically_and_drops_a_half_written_line(tmp_path):
    path = tmp_path / "book.csv"
    book = Gradebook(path, ["03"])
    assert read_book(path) == [] and "03.sparse_cache" in book.header
    book.put(row_of("x/a.ipynb", "a", "h1", result()))
    book.put(row_of("x/b.ipynb", "b", "h2", result(0.0, "crashed", "=the kernel died")))
    rows = read_book(path)
    assert [(r["student"], r["score"], r["03.linear_attention"], r["status"]) for r in rows] == [
        ("a", "2", "2", "graded"), ("b", "0", "0", "crashed")]
    assert rows[1]["reason"] == "'=the kernel died", "nothing a spreadsheet reads as a formula"
    assert Gradebook(path).has("x/a.ipynb", "h1") and not Gradebook(path).has("x/a.ipynb", "other")
    book.put(row_of("x/a.ipynb", "a", "h3", result(1.0)))  # the file changed: its row is replaced
    assert [(r["path"], r["sha256"]) for r in read_book(path)] == [("x/a.ipynb", "h3"), ("x/b.ipynb", "h2")]
    with open(path, "a", encoding="utf-8") as f:  # killed inside a write
        f.write("c,03,1,8,1,,,,")
    again = Gradebook(path)
    assert sorted(again.rows()) == ["x/a.ipynb", "x/b.ipynb"]
    assert path.read_text(encoding="utf-8").endswith("\n") and len(read_book(path)) == 2
    assert not list(tmp_path.glob(".book.csv.*")), "no temporary file left"
    with pytest.raises(GradingError, match="gradebook must be a .csv"):
        Gradebook(tmp_path / "book.txt")


def test_the_feedback_lists_every_check_with_its_hint_and_what_is_left():
    res = result(1.0)
    res["report"]["exercises"][0]["checks"] = [{"name": "T = 5", "status": "passed", "hint": ""},
                                               {"name": "float32", "status": "failed", "hint": "keep the `dtype`"}]
    res["report"]["exercises"].append({"id": "03.strided_mask", "score": 0.0, "max_score": 2.0, "title": "mask",
                                       "feedback": "not attempted yet", "status": "not attempted", "checks": []})
    text = render_feedback("alice", "x/03_two_routes_exercises.ipynb", row_of("x", "alice", "h", res), res)
    assert "**Score: 1 / 8**" in text
    assert "- ✓ T = 5" in text and "- ✗ float32: `` keep the `dtype` ``" in text
    assert "## What is left" in text and "- 03.strided_mask (2 points): not attempted" in text


# ---------------------------------------------------------------- scenarios (each notebook graded in a sandbox)


@pytest.mark.slow
def test_a_class_with_jobs_2_and_on_a_local_dask_cluster_gives_the_same_gradebook(tmp_path):
    distributed = pytest.importorskip("distributed")
    folder = a_class(tmp_path / "class", lessons=("03", "04"))
    local, remote = tmp_path / "local.csv", tmp_path / "dask.csv"
    run = grade_class([str(folder)], jobs=2, gradebook=local, feedback=tmp_path / "feedback", progress=False)
    check_class_rows(read_book(local))
    assert len(run.graded) == 4 and len(list((tmp_path / "feedback").glob("*.md"))) == 4
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        grade_class([str(folder)], gradebook=remote, dask=client, progress=False)
    assert without_time(read_book(remote)) == without_time(read_book(local))
    again = grade_class([str(folder)], jobs=2, gradebook=local, progress=False)
    assert again.graded == [] and len(again.skipped) == 4, "a rerun grades nothing again"


KILL = ("import sys\nfrom course_lib.__main__ import main\n"
        "sys.exit(main(['grade', sys.argv[1], '--jobs', '2', '--gradebook', sys.argv[2]]))")


@pytest.mark.slow
def test_a_run_killed_half_way_then_rerun_loses_and_duplicates_no_row(tmp_path):
    folder = a_class(tmp_path / "class")
    book = tmp_path / "book.csv"
    env = {**os.environ, "COURSE_DEVICE": "cpu", "COURSE_QUIET": "1"}
    proc = subprocess.Popen([sys.executable, "-c", KILL, str(folder), str(book)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and (not book.exists() or len(read_book(book)) < 2):
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the grade command, its workers and their kernels
        proc.wait()
    first = read_book(book)
    assert 2 <= len(first) < 8, len(first)
    assert course_main(["grade", str(folder), "--jobs", "2", "--gradebook", str(book)]) == 0
    rows = read_book(book)
    assert len(rows) == 8
    check_class_rows(rows)
    kept = {r["path"]: r for r in rows}
    assert all(kept[r["path"]] == r for r in first), "the rows finished before the kill are kept as they were"


@pytest.mark.slow
def test_a_crashing_looping_flooding_or_broken_submission_gets_its_row_and_the_others_go_on(tmp_path, capsys):
    folder = tmp_path / "class"
    folder.mkdir()
    shutil.copyfile(ROOT / "solutions" / "03_two_routes_solutions.ipynb", folder / "ann_03_two_routes_solutions.ipynb")
    write_notebook(folder / "ben_03_two_routes_exercises.ipynb", "import os\nos._exit(1)")
    write_notebook(folder / "cat_03_two_routes_exercises.ipynb", "import time\ntime.sleep(1000)", "x = 1",
                   "import time\ntime.sleep(1000)", "import time\ntime.sleep(1000)")
    write_notebook(folder / "dan_03_two_routes_exercises.ipynb",
                   "line = 'x' * (2**20 - 1)\nfor _ in range(1024):\n    print(line)",  # 1 GiB, as B05
                   "x = 1", "x = 2", "x = 3")
    (folder / "eve_03_two_routes_exercises.ipynb").write_text("{not json")
    book = tmp_path / "book.csv"
    status = course_main(["grade", str(folder), "--jobs", "2", "--gradebook", str(book), "--timeout", "60",
                          "--cell-timeout", "5", "--feedback", str(tmp_path / "fb")])
    assert status == 1
    err = capsys.readouterr().err
    rows = {r["student"]: r for r in read_book(book)}
    statuses = {s: r["status"] for s, r in rows.items()}
    # the 1 GiB print trips the output limit or, printing for longer than --cell-timeout, the time limit
    assert statuses.pop("dan") in ("output-flood", "timeout")
    assert statuses == {"ann": "graded", "ben": "crashed", "cat": "timeout", "eve": "not-a-notebook"}
    assert rows["ann"]["score"] == "8" and "kernel died" in rows["ben"]["reason"]
    assert "4 of 5 submissions were not graded" in err
    assert "Not graded" in (tmp_path / "fb" / "eve.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_progress_shows_each_exercise_attempted_or_not_and_what_is_left(tmp_path, capsys):
    folder = tmp_path / "exercises"
    folder.mkdir()
    for lesson in ("03", "04"):
        shutil.copyfile(next((ROOT / "exercises").glob(f"{lesson}_*.ipynb")),
                        folder / next((ROOT / "exercises").glob(f"{lesson}_*.ipynb")).name)
    shutil.copyfile(ROOT / "solutions" / "03_two_routes_solutions.ipynb", folder / "03_two_routes_exercises.ipynb")
    assert course_main(["progress", "--folder", str(folder), "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert "03.linear_attention" in out and "04.window_update" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert " yes " in lines["03.linear_attention"] and " no " in lines["04.window_update"]
    assert "left to do (5): 04." in out and "attempted 5 of 10" in out
    assert course_main(["progress", "--folder", str(tmp_path / "nowhere")]) == 2


@pytest.mark.slow
def test_the_whole_class_of_every_lesson_solutions_full_exercises_zero(tmp_path):
    folder = a_class(tmp_path / "class", lessons=None)
    book = tmp_path / "book.csv"
    start = time.monotonic()
    assert course_main(["grade", str(folder), "--jobs", "2", "--gradebook", str(book)]) == 0
    print(f"class of {len(read_book(book))} graded with --jobs 2 in {time.monotonic() - start:.0f} s")
    check_class_rows(read_book(book))
    assert len(read_book(book)) == len(list((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))) + \
        len(list((ROOT / "exercises").glob("[0-9][0-9]_*.ipynb")))
