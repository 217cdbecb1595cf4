"""Structural checks of the lessons in notebooks/ (strict nbval checks their outputs).

Every lesson opens with its learning goals, alternates short code cells with prose, picks
its device with ``pick_device()``, is stored executed top to bottom without errors, uses
an nbval tag only with the reason written in the cell, and ends with check-your-understanding
questions whose answers are folded away in ``<details>``.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
LESSONS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
TAGS_NEEDING_A_REASON = ("nbval-ignore-output", "nbval-skip", "raises-exception")
MAX_CODE_LINES = 25

lesson = pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])


def read(path: Path):
    return nbformat.read(path, as_version=4)


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def questions_and_answers(text: str):
    """Numbered questions (``1. ...``) and the ``<details>`` blocks that fold their answers."""
    questions = re.findall(r"^[ \t]*\d+\.[ \t]+\S", text, flags=re.MULTILINE)
    answers = re.findall(r"<details>\s*<summary>[^<]+</summary>(.*?)</details>", text, flags=re.DOTALL)
    return questions, answers


def test_the_written_lessons_are_there():
    assert {"00_welcome", "01_attention", "02_kv_cache"} <= {p.stem for p in LESSONS}


def test_the_question_parser_on_a_small_example():
    text = "## Check\n\n1. Why?\n\n   <details><summary>Answer</summary>\n\n   Because.\n   </details>\n"
    assert questions_and_answers(text) == (["1. W"], ["\n\n   Because.\n   "])
    assert questions_and_answers("1. Why?\n<details><summary>Answer</summary></details>")[1] == [""]


@lesson
def test_opens_with_a_title_and_learning_goals(path):
    first = read(path).cells[0]
    assert first.cell_type == "markdown", f"{path.name}: the first cell must be markdown (title + learning goals)"
    assert first.source.startswith("# "), f"{path.name}: the first cell must start with the lesson's title"
    goals = re.search(r"^## Learning goals\s*\n(.*)", first.source, flags=re.MULTILINE | re.DOTALL)
    assert goals, f"{path.name}: the first cell needs a '## Learning goals' section"
    bullets = re.findall(r"^- \S", goals.group(1), flags=re.MULTILINE)
    assert len(bullets) >= 3, f"{path.name}: expected at least 3 learning goals as a list, got {len(bullets)}"


@lesson
def test_ends_with_questions_whose_answers_are_folded(path):
    last = read(path).cells[-1]
    assert last.cell_type == "markdown" and last.source.startswith("## Check your understanding"), (
        f"{path.name}: the last cell must be '## Check your understanding'")
    text = last.source
    questions, answers = questions_and_answers(text)
    assert len(questions) >= 3, f"{path.name}: expected at least 3 numbered questions, got {len(questions)}"
    assert text.count("<details>") == text.count("</details>") == len(answers), (
        f"{path.name}: every <details> needs a <summary> and a closing </details>")
    assert len(answers) == len(questions), (
        f"{path.name}: {len(questions)} questions but {len(answers)} folded answers; expected one each")
    assert all(answer.strip() for answer in answers), f"{path.name}: an answer inside <details> is empty"


@lesson
def test_nbval_tags_come_with_their_reason_in_the_cell(path):
    for index, cell in enumerate(read(path).cells):
        for tag in cell.metadata.get("tags", []):
            if tag.startswith("nbval-") or tag in TAGS_NEEDING_A_REASON:
                reason = re.search(rf"^#\s*{re.escape(tag)}:\s*(\S.{{9,}})$", cell.source, flags=re.MULTILINE)
                assert reason, (f"{path.name} cell {index} is tagged {tag!r} but does not say why; "
                                f"expected a comment line '# {tag}: <reason>'")
        assert "NBVAL_" not in cell.source, f"{path.name} cell {index}: use cell tags, not NBVAL_ comment markers"


@lesson
def test_is_stored_executed_in_order_without_errors(path):
    nb = read(path)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernel must be 'python3'"
    counts = [c.execution_count for c in code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1)), (
        f"{path.name}: expected one top-to-bottom run (execution counts 1..{len(counts)}), got {counts}; "
        f"run `make notebooks NB={path.relative_to(NOTEBOOKS.parent)}`")
    for index, cell in enumerate(nb.cells):
        if "raises-exception" in cell.metadata.get("tags", []):
            continue
        errors = [o for o in cell.get("outputs", []) if o.output_type == "error"]
        assert not errors, f"{path.name} cell {index} stored an error: {errors[0].ename}: {errors[0].evalue}"


@lesson
def test_alternates_short_code_cells_with_prose(path):
    cells = read(path).cells
    for index, cell in enumerate(cells):
        if cell.cell_type != "code":
            continue
        lines = len(cell.source.splitlines())
        assert lines <= MAX_CODE_LINES, (
            f"{path.name} cell {index} has {lines} lines; keep code cells to {MAX_CODE_LINES} lines or fewer")
        if index > 0:
            assert cells[index - 1].cell_type != "code", (
                f"{path.name} cells {index - 1} and {index} are two code cells in a row; put prose between them")


@lesson
def test_uses_the_course_device_and_prints_no_generator(path):
    source = "\n".join(c.source for c in code_cells(read(path)))
    assert "pick_device(" in source, f"{path.name}: pick the device with course_lib.pick_device()"
    assert "MPLBACKEND" not in source, f"{path.name}: do not set MPLBACKEND (figures must print their repr)"
    bare_seed = re.findall(r"^torch\.manual_seed\(.*\)[ \t]*$", source, flags=re.MULTILINE)
    assert not bare_seed, f"{path.name}: end {bare_seed[0]!r} with ';' (its repr holds a memory address)"


@pytest.mark.parametrize("name", ["01_attention", "02_kv_cache"])
def test_leaves_room_for_the_explorer_widget(name):
    cells = read(NOTEBOOKS / f"{name}.ipynb").cells
    explore = [i for i, c in enumerate(cells) if c.cell_type == "markdown" and "## Explore it yourself" in c.source]
    assert len(explore) == 1, f"{name}: expected one '## Explore it yourself' cell, found {len(explore)}"
    assert explore[0] < len(cells) - 1, f"{name}: 'Explore it yourself' must come before the questions"


STORED = sorted([*LESSONS, *(NOTEBOOKS.parent / "solutions").glob("[0-9][0-9]_*_solutions.ipynb")])
ROUNDING_LEVEL = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?e-(\d+)")


def _at_rounding_level(match) -> bool:
    return 0 < abs(float(match.group(0))) < 1e-10


def test_the_rounding_level_scan_on_a_small_example():
    found = [m.group(0) for m in ROUNDING_LEVEL.finditer("err 3.6e-15, lr 3e-4, '< 1e-10', x1e-12")
             if _at_rounding_level(m)]
    assert found == ["3.6e-15"]


@pytest.mark.parametrize("path", STORED, ids=[p.stem for p in STORED])
def test_no_compared_output_prints_a_value_at_rounding_level(path):
    """A number below 1e-10 printed in scientific notation is rounding noise: its digits differ between
    CPUs, so strict nbval would fail on another machine (print "< 1e-10" or compare to a tolerance)."""
    noisy = []
    for index, cell in enumerate(code_cells(read(path))):
        if {"nbval-ignore-output", "nbval-skip"} & set(cell.metadata.get("tags", [])):
            continue
        for output in cell.get("outputs", []):
            text = output.get("text", "") + output.get("data", {}).get("text/plain", "")
            noisy += [f"cell {index}: {m.group(0)}" for m in ROUNDING_LEVEL.finditer(text) if _at_rounding_level(m)]
    assert noisy == [], noisy


@pytest.mark.parametrize("path", STORED, ids=[p.stem for p in STORED])
def test_every_figure_a_cell_returns_is_stored_as_a_picture(path):
    """A bare matplotlib Figure returned by a cell shows only its repr, "<Figure size ... with 1 Axes>",
    where no inline formatter is registered: the reader gets no picture (course_lib.viz.Figure draws itself)."""
    blind = []
    for index, cell in enumerate(code_cells(read(path))):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "".join(data.get("text/plain", "")).startswith("<Figure size") and "image/png" not in data:
                blind.append(f"cell {index}")
    assert blind == [], f"{path.name}: figures without a picture in {blind}"
