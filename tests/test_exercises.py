"""The exercise notebooks: generated from the solutions, complete, and safe to run untouched.

* the committed exercises/ is exactly what ``make exercises`` generates from the committed
  solutions (``git show HEAD:path``, so a learner's answers in exercises/ never fail a test),
  and ``make exercises`` never replaces a notebook holding a learner's answers;
* every solution scores full marks, every lesson has at least 3 graded items with at least
  one conceptual question, and the notebooks grade exactly the registered exercises;
* the untouched exercise notebooks run clean in a fresh kernel and grade to 0.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from course_lib.grading import EXERCISES
from course_lib.grading.grader.cli import grade_notebook
from course_lib.grading.grader.notebook import check_calls as cell_check_calls
from course_lib.tools.make_exercises import (
    committed_text,
    exercise_path,
    fingerprint,
    holds_answers,
    make_exercise,
    render_text,
    solution_paths,
    strip_solutions,
)
from course_lib.tools.make_exercises import (
    main as make_exercises,
)

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("*_solutions.ipynb"))
solution = pytest.mark.parametrize("path", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
SOURCES = solution_paths()  # each solution's text source (or its .ipynb where it has none)
source = pytest.mark.parametrize("path", SOURCES, ids=[p.stem for p in SOURCES])


def committed(path: Path) -> str:
    """The committed text of ``path`` (the working copy where there is no git)."""
    text = committed_text(path, ROOT)
    if text is None and (ROOT / ".git").exists():
        pytest.fail(f"{path.relative_to(ROOT)} is not committed")
    return path.read_text(encoding="utf-8") if text is None else text


def lesson_of(path: Path) -> str:
    return path.name[:2]


def check_calls(nb) -> list[str]:
    return [call.exercise_id for cell in nb.cells if cell.cell_type == "code" for call in cell_check_calls(cell.source)]


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
    out = make_exercise(nb, lesson="07")
    assert out.metadata == {"kernelspec": {"name": "python3", "display_name": "P"},
                            "course": {"lesson": "07", "generated": fingerprint(out)}}
    assert out.cells[1].outputs == [] and out.cells[1].execution_count is None
    assert out.cells[1].metadata == {"tags": ["nbval-ignore-output"]}
    assert out.cells[0].metadata == {"tags": ["note"]}
    assert nb.cells[1].outputs, "the solution notebook itself is left unchanged"


def test_exercise_paths_mirror_the_solutions():
    assert exercise_path(Path("/r/solutions/03_x_solutions.ipynb")) == Path("/r/exercises/03_x_exercises.ipynb")
    assert exercise_path(Path("/r/solutions/src/03_x_solutions.md")) == Path("/r/exercises/03_x_exercises.ipynb")
    with pytest.raises(ValueError, match="NN_topic_solutions.ipynb"):
        exercise_path(Path("/r/solutions/notes.ipynb"))


@source
def test_the_committed_exercises_are_what_the_generator_makes(path):
    """Committed against committed: a learner's answers in exercises/ never fail this test."""
    target = exercise_path(path)
    if path.suffix == ".md" and committed_text(path, ROOT) is None and (ROOT / ".git").exists():
        path = path.parent.parent / f"{path.stem}.ipynb"  # a source not committed yet: its notebook is
    if (ROOT / ".git").exists() and committed_text(path, ROOT) is None:
        pytest.skip(f"{path.name} is not committed yet (the suite compares committed files)")
    want = render_text(committed(path), path.name)
    assert committed(target) == want, \
        f"{target.name} differs from its solution: run `make exercises` and commit (never edit exercises/ by hand)"


def _listed(folder: str, pattern: str) -> set[str]:
    """Names of the committed files in ``folder`` matching ``pattern`` (the working copy without git):
    a learner's own copies in exercises/ are not the course's."""
    import fnmatch
    import subprocess

    if (ROOT / ".git").exists():
        out = subprocess.run(["git", "ls-files", folder], cwd=ROOT, capture_output=True, text=True, check=True)
        names = [Path(line).name for line in out.stdout.splitlines() if Path(line).parent == Path(folder)]
    else:
        names = [p.name for p in (ROOT / folder).iterdir()]
    return {n for n in names if fnmatch.fnmatch(n, pattern)}


def test_every_exercise_notebook_has_a_solution():
    exercises = _listed("exercises", "*.ipynb")
    solutions = {exercise_path(Path(n)).name for n in _listed("solutions/src", "*_solutions.md")}
    solutions |= {exercise_path(Path(n)).name for n in _listed("solutions", "*_solutions.ipynb")}
    assert exercises == solutions


def _tree(tmp_path, solution_text):
    """A throw-away course folder with one solution source."""
    src = tmp_path / "solutions" / "src"
    src.mkdir(parents=True)
    path = src / "07_demo_solutions.md"
    path.write_text(solution_text, encoding="utf-8")
    return path


def _solution_md(body: str) -> str:
    return ("---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n"
            "kernelspec:\n  display_name: Python 3\n  language: python\n  name: python3\n---\n\n"
            "# Demo\n\n```{code-cell} ipython3\ndef f():\n    ### BEGIN SOLUTION\n    return 1\n"
            f"    ### END SOLUTION\n```\n\n{body}\n")


def test_make_exercises_never_replaces_a_notebook_holding_answers(tmp_path, capsys):
    path = _tree(tmp_path, _solution_md("One paragraph."))
    target = exercise_path(path)
    assert make_exercises([str(path)]) == 0 and target.exists()
    assert not holds_answers(target.read_text())
    assert make_exercises([str(path)]) == 0, "an untouched notebook is simply kept or replaced"

    answered = target.read_text().replace("raise NotImplementedError()", "return 1")
    target.write_text(answered)
    assert holds_answers(answered)
    path.write_text(_solution_md("The solution changed since."))
    assert make_exercises([str(path)]) == 0, "keeping the learner's notebook is a normal outcome"
    err = capsys.readouterr().err
    assert target.read_text() == answered, "the learner's answers are still there"
    assert "holds your answers" in err and "make exercises FORCE=1" in err and "backups" in err

    assert make_exercises(["--force", str(path)]) == 0
    (saved,) = (target.parent / "backups").glob("07_demo_exercises-*.ipynb")
    assert saved.read_text() == answered, "--force keeps the learner's version as a backup"
    assert "The solution changed since." in target.read_text()


def test_an_exercise_notebook_that_was_only_run_is_replaced(tmp_path):
    path = _tree(tmp_path, _solution_md("One paragraph."))
    target = exercise_path(path)
    make_exercises([str(path)])
    nb = nbformat.read(target, as_version=4)
    nb.cells[-1].outputs = [new_output("stream", text="ran\n")]
    nb.cells[-1].execution_count = 3
    nbformat.write(nb, target)
    assert not holds_answers(target.read_text()), "outputs are not answers: running again recreates them"
    path.write_text(_solution_md("Changed."))
    assert make_exercises([str(path)]) == 0 and "Changed." in target.read_text()


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
def test_every_solution_scores_full_marks(path, capsys):
    """Run the solution's code cells in this process (no kernel), recording what check found."""
    from course_lib import grading

    results = []

    def recording_check(exercise_id, answer, **kwargs):
        results.append(grading.check(exercise_id, answer, **kwargs))
        return results[-1]

    namespace: dict = {"__name__": "__solution__"}
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "code":
            exec(compile(cell.source, f"{path.name}", "exec"), namespace)
            if namespace.get("check") is grading.check:
                namespace["check"] = recording_check
    out = capsys.readouterr().out
    assert [r.exercise_id for r in results] == check_calls(nbformat.read(path, as_version=4))
    for r in results:
        assert r.score == r.max_score, f"{r.exercise_id}: {r.feedback}"
    assert "\u2717" not in out


@solution
def test_solution_regions_hold_the_answers(path):
    nb = nbformat.read(path, as_version=4)
    regions = sum(len(re.findall(r"### BEGIN SOLUTION", c.source)) for c in nb.cells if c.cell_type == "code")
    assert regions >= len(check_calls(nb))


# ---------------------------------------------------------------- the untouched exercises, in a kernel


@pytest.mark.slow
@solution
def test_the_untouched_exercise_notebook_runs_clean_and_grades_to_zero(path, tmp_path):
    if (ROOT / ".git").exists() and committed_text(exercise_path(path), ROOT) is None:
        pytest.skip(f"{exercise_path(path).name} is not committed yet (the suite compares committed files)")
    untouched = tmp_path / exercise_path(path).name  # as committed: a learner's answers do not count here
    untouched.write_text(committed(exercise_path(path)), encoding="utf-8")
    report = grade_notebook(untouched, timeout=120)
    assert report.cell_errors == [] and report.stopped == ""
    assert [item.id for item in report.items] == check_calls(nbformat.read(path, as_version=4))
    assert report.score == 0 and report.max_score == sum(EXERCISES[i.id].points for i in report.items)
    assert {item.feedback for item in report.items} == {"not attempted yet"}
