"""The exercise notebooks: generated from the solutions, complete, and safe to run untouched.

* exercises/ is exactly what ``make exercises`` generates from solutions/;
* every solution scores full marks, every lesson has at least 3 graded items with at least
  one conceptual question, and the notebooks grade exactly the registered exercises;
* the untouched exercise notebooks run clean in a fresh kernel and grade to 0.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from course_lib.grading import EXERCISES
from course_lib.grading.cli import CHECK_CALL, grade_notebook
from course_lib.grading.make_exercises import exercise_path, make_exercise, render, strip_solutions

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("*_solutions.ipynb"))
solution = pytest.mark.parametrize("path", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])


def lesson_of(path: Path) -> str:
    return path.name[:2]


def check_calls(nb) -> list[str]:
    return [i for cell in nb.cells if cell.cell_type == "code" for i in CHECK_CALL.findall(cell.source)]


# ---------------------------------------------------------------- the generator


def test_a_solution_region_becomes_the_stub_at_its_indentation():
    source = (
        "def f(x):\n"
        '    """Double x."""\n'
        "    ### BEGIN SOLUTION\n"
        "    y = 2 * x\n"
        "    return y\n"
        "    ### END SOLUTION\n"
        "\n"
        "class C:\n"
        "    def g(self):\n"
        "        ### BEGIN SOLUTION\n"
        "        return 1\n"
        "        ### END SOLUTION"
    )
    assert strip_solutions(source) == (
        "def f(x):\n"
        '    """Double x."""\n'
        "    # YOUR CODE HERE\n"
        "    raise NotImplementedError()\n"
        "\n"
        "class C:\n"
        "    def g(self):\n"
        "        # YOUR CODE HERE\n"
        "        raise NotImplementedError()"
    )


def test_a_markdown_region_becomes_your_answer_here():
    assert strip_solutions("Why?\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION", cell_type="markdown") == \
        "Why?\nYOUR ANSWER HERE"


@pytest.mark.parametrize("source, message", [
    ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION", "top level of a code cell"),
    ("def f():\n    ### BEGIN SOLUTION\n    return 1", "never closed"),
    ("def f():\n    return 1\n    ### END SOLUTION", "without a"),
    ("def f():\n    ### BEGIN SOLUTION\n    ### BEGIN SOLUTION\n", "inside another"),
])
def test_malformed_regions_are_refused(source, message):
    with pytest.raises(ValueError, match=message):
        strip_solutions(source, where="nb, cell 3")


def test_outputs_counts_and_metadata_are_cleared_but_kernelspec_and_tags_kept():
    cell = new_code_cell("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION",
                         execution_count=7, outputs=[new_output("stream", text="1\n")],
                         metadata={"tags": ["nbval-ignore-output"], "scrolled": True, "execution": {}})
    md = new_markdown_cell("text", metadata={"tags": ["note"], "editable": False})
    metadata = {"kernelspec": {"name": "python3", "display_name": "P"}, "widgets": {"state": {}},
                "language_info": {"name": "python", "version": "3"}}
    nb = new_notebook(cells=[md, cell], metadata=metadata)
    out = make_exercise(nb)
    assert out.metadata == {"kernelspec": {"name": "python3", "display_name": "P"}}
    assert out.cells[1].outputs == [] and out.cells[1].execution_count is None
    assert out.cells[1].metadata == {"tags": ["nbval-ignore-output"]}
    assert out.cells[0].metadata == {"tags": ["note"]}
    assert nb.cells[1].outputs, "the solution notebook itself is left unchanged"


def test_exercise_paths_mirror_the_solutions():
    assert exercise_path(Path("/r/solutions/03_x_solutions.ipynb")) == Path("/r/exercises/03_x_exercises.ipynb")
    with pytest.raises(ValueError, match="NN_topic_solutions.ipynb"):
        exercise_path(Path("/r/solutions/notes.ipynb"))


@solution
def test_the_committed_exercises_are_what_the_generator_makes(path):
    target = exercise_path(path)
    assert target.exists(), f"{target.name} is missing: run `make exercises`"
    assert target.read_text(encoding="utf-8") == render(path), \
        f"{target.name} differs from its solution notebook: run `make exercises` (never edit exercises/ by hand)"


def test_every_exercise_notebook_has_a_solution():
    exercises = {p.name for p in (ROOT / "exercises").glob("*.ipynb")}
    assert exercises == {exercise_path(p).name for p in SOLUTIONS}


# ---------------------------------------------------------------- the solutions


@solution
def test_a_lesson_grades_exactly_its_registered_exercises(path):
    calls = check_calls(nbformat.read(path, as_version=4))
    registered = [i for i in EXERCISES if i.startswith(lesson_of(path) + ".")]
    assert calls == registered, "each registered exercise is checked once, in registry order"
    assert len(registered) >= 3
    assert any(EXERCISES[i].kind == "question" for i in registered)
    assert any(EXERCISES[i].kind == "code" for i in registered)


def test_every_lesson_with_exercises_has_a_solution_notebook():
    lessons = {i.split(".")[0] for i in EXERCISES}
    assert lessons == {lesson_of(p) for p in SOLUTIONS}


@solution
def test_multiple_choice_options_are_shown_as_registered(path):
    text = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown")
    for exercise_id in check_calls(nbformat.read(path, as_version=4)):
        for letter, option in EXERCISES[exercise_id].options.items():
            assert f"- **{letter}.** {option}" in text, f"{exercise_id}: option {letter} differs from the registry"


@solution
def test_every_solution_scores_full_marks(path, tmp_path, monkeypatch, capsys):
    """Run the solution's code cells in this process (no kernel) and read what check recorded."""
    records = tmp_path / "records.jsonl"
    monkeypatch.setenv("COURSE_GRADE_RECORD", str(records))
    namespace: dict = {"__name__": "__solution__"}
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "code":
            exec(compile(cell.source, f"{path.name}", "exec"), namespace)
    out = capsys.readouterr().out
    results = [json.loads(line) for line in records.read_text().splitlines()]
    assert [r["id"] for r in results] == check_calls(nbformat.read(path, as_version=4))
    for r in results:
        assert r["score"] == r["max_score"], f"{r['id']}: {r['feedback']}"
    assert "\u2717" not in out


@solution
def test_solution_regions_hold_the_answers(path):
    nb = nbformat.read(path, as_version=4)
    regions = sum(len(re.findall(r"### BEGIN SOLUTION", c.source)) for c in nb.cells if c.cell_type == "code")
    assert regions >= len(check_calls(nb))


# ---------------------------------------------------------------- the untouched exercises, in a kernel


@pytest.mark.slow
@solution
def test_the_untouched_exercise_notebook_runs_clean_and_grades_to_zero(path):
    report = grade_notebook(exercise_path(path), timeout=120)
    assert report.cell_errors == [] and report.stopped == ""
    assert [item.id for item in report.items] == check_calls(nbformat.read(path, as_version=4))
    assert report.score == 0 and report.max_score == sum(EXERCISES[i.id].points for i in report.items)
    assert {item.feedback for item in report.items} == {"not attempted yet"}
