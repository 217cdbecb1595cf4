"""Every notebook in notebooks/ and solutions/ is built from its one text source.

The source (jupytext MyST Markdown in notebooks/src/ or solutions/src/) holds the inputs; the
committed .ipynb must have exactly the cells, ids, tags and kernelspec the source gives, so that
an edit to either one alone is caught. Cell ids come from the cells, not their positions.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from course_lib.tools.sources import (
    ROOT,
    all_sources,
    assign_ids,
    from_text,
    input_cells,
    notebook_for,
    read_source,
    source_for,
)

pytest.importorskip("jupytext")

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "solutions").glob("*.ipynb"))
SOURCES = all_sources()


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


HEADER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
    format_version: 0.13
kernelspec:
  display_name: Python 3 (ipykernel)
  language: python
  name: python3
---
"""


def md(*cells: str) -> str:
    return HEADER + "\n+++\n\n".join(cells)


CODE_A = "```{code-cell} ipython3\nx = 1\n```\n"
CODE_B = "```{code-cell} ipython3\n:tags: [nbval-ignore-output]\n\n# nbval-ignore-output: a reason\nprint(x)\n```\n"


def test_there_are_sources_for_the_written_notebooks():
    names = {rel(p) for p in SOURCES}
    assert {"notebooks/src/00_welcome.md", "notebooks/src/01_attention.md", "notebooks/src/02_kv_cache.md",
            "solutions/src/01_attention_solutions.md"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=rel)
def test_notebook_inputs_equal_its_source(path):
    source = source_for(path)
    assert source.exists(), f"{rel(path)} has no text source; expected {rel(source)} (see jupytext.toml)"
    stored = nbformat.read(path, as_version=4)
    built = read_source(source)
    assert stored.metadata.get("kernelspec") == built.metadata["kernelspec"], f"{rel(path)}: kernelspec differs"
    have, want = input_cells(stored), input_cells(built)
    fix = f"edit {rel(source)}, then `make notebooks NB={rel(path)}`"
    assert len(have) == len(want), f"{rel(path)} has {len(have)} cells, its source {len(want)}; {fix}"
    for index, (h, w) in enumerate(zip(have, want)):
        assert h == w, f"{rel(path)} cell {index} differs from {rel(source)}:\n  notebook {h!r}\n  source {w!r}\n{fix}"


@pytest.mark.parametrize("source", SOURCES, ids=rel)
def test_every_source_has_its_notebook(source):
    assert notebook_for(source).exists(), f"{rel(source)} was never built; run `make notebooks NB={rel(source)}`"


def test_jupytext_pairs_each_notebook_with_the_source_the_build_uses():
    from jupytext.cli import paired_paths
    from jupytext.config import load_jupytext_config

    config = load_jupytext_config(str(ROOT / "notebooks"))
    assert config is not None, "jupytext.toml at the repository root declares the pairing"
    for path in NOTEBOOKS:
        formats = config.default_formats(str(path))
        assert formats, f"jupytext.toml does not pair {rel(path)}"
        pairs = {Path(p).resolve() for p, _ in paired_paths(str(path), "ipynb", formats)}
        assert source_for(path) in pairs, f"jupytext pairs {rel(path)} with {sorted(map(str, pairs))}"
    exercise = ROOT / "exercises" / "01_attention_exercises.ipynb"
    assert config.default_formats(str(exercise)) is None, "exercises/ is generated, never paired"


def test_paths_map_both_ways_and_refuse_other_folders(tmp_path):
    nb = ROOT / "notebooks" / "03_two_routes.ipynb"
    assert source_for(nb) == ROOT / "notebooks" / "src" / "03_two_routes.md"
    assert notebook_for(source_for(nb)) == nb
    sol = ROOT / "solutions" / "03_two_routes_solutions.ipynb"
    assert notebook_for(source_for(sol)) == sol
    with pytest.raises(ValueError, match="notebook must be"):
        source_for(ROOT / "exercises" / "01_attention_exercises.ipynb")
    with pytest.raises(ValueError, match="source must be"):
        notebook_for(ROOT / "exercises" / "src" / "01_attention_exercises.md")
    with pytest.raises(ValueError, match="source must be"):
        notebook_for(ROOT / "notebooks" / "01_attention.md")


def test_inserting_a_cell_keeps_every_other_id():
    before = from_text(md("# Title\n", CODE_A, "Some prose.\n", CODE_B, "## End\n"))
    after = from_text(md("# Title\n", "A new cell.\n", CODE_A, "Some prose.\n", "```{code-cell} ipython3\ny = 2\n```\n",
                         CODE_B, "## End\n"))
    old = [c.id for c in before.cells]
    new = [c.id for c in after.cells]
    assert len(set(old)) == len(old) and len(set(new)) == len(new)
    assert [new[0], *new[2:4], *new[5:]] == old, "the inserted cells must not renumber the others"
    assert new[1] not in old and new[4] not in old


def test_editing_a_cell_changes_only_its_own_id_and_tags_survive():
    before = from_text(md("# Title\n", CODE_A, CODE_B))
    after = from_text(md("# Title, edited\n", CODE_A, CODE_B))
    assert before.cells[0].id != after.cells[0].id
    assert [c.id for c in before.cells[1:]] == [c.id for c in after.cells[1:]]
    assert after.cells[2].metadata["tags"] == ["nbval-ignore-output"]
    assert after.metadata == {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                                             "name": "python3"}}


def test_identical_cells_and_explicit_ids():
    nb = from_text(md("Same.\n", "Same.\n", "+++ {\"id\": \"pinned\"}\n\nPinned.\n",
                      "```{code-cell} ipython3\n:id: setup\n\nx = 1\n```\n"))
    ids = [c.id for c in nb.cells]
    assert ids[1] == ids[0] + "-2"
    assert ids[2:] == ["pinned", "setup"]
    assert all("id" not in c.metadata for c in nb.cells), "an explicit id moves from the metadata to the cell"
    nbformat.validate(nb)


def test_bad_explicit_ids_are_refused():
    with pytest.raises(ValueError, match="id must match"):
        from_text(md("```{code-cell} ipython3\n:id: has space\n\nx = 1\n```\n"))
    with pytest.raises(ValueError, match="given to two cells"):
        from_text(md("+++ {\"id\": \"a\"}\n\nOne.\n", "+++ {\"id\": \"a\"}\n\nTwo.\n"))
    with pytest.raises(ValueError, match="kernelspec"):
        from_text("# no front matter\n")


def test_a_derived_id_does_not_depend_on_position():
    cells = from_text(md("One.\n", "Two.\n")).cells
    swapped = nbformat.v4.new_notebook(cells=[cells[1].copy(), cells[0].copy()])
    assign_ids(swapped)
    assert [c.id for c in swapped.cells] == [cells[1].id, cells[0].id]
