"""The lesson map is written once (course_lib/tools/lesson_map.py, titles from the lessons'
headings): README.md's table and lesson 00's are its renderings and must not drift from it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nbformat
import pytest

from course_lib.tools import lesson_map
from course_lib.tools.lesson_map import COVERS, block, lesson_sources, lesson_table, lessons, stale, write

ROOT = Path(__file__).resolve().parents[1]
FIX = "run `python -m course_lib.tools.lesson_map --write` (then `make notebooks NB=notebooks/src/00_welcome.md`)"


@pytest.mark.parametrize("name", sorted(lesson_map.TARGETS))
def test_readme_and_lesson_00_hold_the_map_as_it_is_rendered(name):
    written = lesson_map.written_block(ROOT / name)
    assert written == block(lesson_map.TARGETS[name]), f"{name}'s lesson map differs from the map; {FIX}"


def test_the_executed_lesson_00_holds_the_same_map():
    nb = nbformat.read(ROOT / "notebooks" / "00_welcome.ipynb", as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "markdown" and lesson_map.START in c.source]
    assert len(cells) == 1 and block("notebooks") in cells[0], f"notebooks/00_welcome.ipynb is stale; {FIX}"


def test_every_lesson_has_one_line_in_the_map_and_every_line_a_lesson():
    stems = {p.stem for p in lesson_sources()}
    assert {"00_welcome", "09_capstone"} <= stems
    assert set(COVERS) == stems, (f"lessons without a line: {sorted(stems - set(COVERS))}, "
                                  f"lines without a lesson: {sorted(set(COVERS) - stems)}")
    assert [lesson.stem for lesson in lessons()] == sorted(stems)


def test_titles_come_from_the_lessons_headings():
    titles = {lesson.number: lesson.title for lesson in lessons()}
    assert titles["00"] == "Welcome" and titles["05"] == "Recurrent memory" and titles["09"] == "Capstone"


@pytest.mark.parametrize("base", ["", "notebooks"])
def test_every_link_of_the_map_leads_to_a_file(base):
    targets = re.findall(r"\]\(([^)]+)\)", lesson_table(base))
    assert len(targets) >= 2 * len(COVERS)  # each lesson and (nearly) each exercise notebook
    missing = [t for t in targets if not (ROOT / base / t).resolve().is_file()]
    assert not missing, f"links from {base or 'the root'} that lead nowhere: {missing}"


def _copy_of_the_course(tmp_path: Path) -> Path:
    for folder in ("notebooks/src", "solutions/src"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    return tmp_path


def test_a_new_lesson_without_a_line_in_the_map_is_refused(tmp_path):
    root = _copy_of_the_course(tmp_path)
    (root / "notebooks" / "src" / "10_extra.md").write_text("# 10 · Extra\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"lessons without a line: \['10_extra'\]"):
        lesson_table(root=root)


def test_an_edited_table_is_found_stale_and_rewritten(tmp_path):
    root = _copy_of_the_course(tmp_path)
    readme = root / "README.md"
    readme.write_text(readme.read_text(encoding="utf-8").replace("| 03 |", "| 3 |"), encoding="utf-8")
    assert stale(root) == ["README.md"]
    assert write(root) == ["README.md"] and stale(root) == []
    assert readme.read_text(encoding="utf-8").count("| 03 |") == 1


def test_a_file_without_its_markers_is_an_error_naming_them(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("# no map here\n", encoding="utf-8")
    with pytest.raises(ValueError, match="lesson-map:start .* got 0 start"):
        lesson_map.written_block(path)
