"""README's lesson 10 tables are rendered from the shipped result files, and its sentences hold
for their numbers: a rerun that overturns one fails here."""

from pathlib import Path

import pytest

from course_lib.experiments import recall
from course_lib.experiments.lesson10 import load_result, recall_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def _block(name: str) -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index(f"<!-- lesson 10 {name} table: rendered from docs/results/lesson10_{name}.json -->\n")
    end = readme.index(f"<!-- end of lesson 10 {name} table -->")
    return readme[start:end].split("\n", 1)[1].strip()


@pytest.mark.parametrize("name", ["recall", "hybrid"])
def test_the_readme_tables_are_the_ones_rendered_from_the_result_files(name):
    assert _block(name) == recall_table(load_result(RESULTS / f"lesson10_{name}.json"))


def _label(result, start: str) -> str:
    (label,) = [label for label in recall.summary(result) if label.startswith(start)]
    return label


def _above(result, a: str, b: str, gap: int) -> bool:
    """Every seed of ``a`` above every seed of ``b``: a difference beyond the spread."""
    return min(recall.seed_values(result, a, gap)) > max(recall.seed_values(result, b, gap))


def test_the_readme_sentences_about_gated_memories_hold_for_the_shipped_run():
    r = load_result(RESULTS / "lesson10_recall.json")
    gated, decay = _label(r, "gated_delta"), _label(r, "decay")
    learned, fixed = _label(r, "delta beta=learned"), _label(r, "delta beta=1")
    gaps = sorted(recall.summary(r)[gated])
    assert max(gaps) >= 4096 and all(len(recall.seed_values(r, gated, g)) >= 3 for g in gaps)
    assert not any(_above(r, gated, learned, g) or _above(r, learned, gated, g) for g in gaps)  # overlap
    assert all(_above(r, learned, decay, g) and _above(r, gated, decay, g) for g in (64, 256))
    assert all(_above(r, gated, fixed, g) for g in (64, 256))
    assert all(recall.summary(r)[label][4096]["mean"] < 0.06 for label in recall.summary(r))  # chance ~3%


def test_the_readme_sentences_about_the_hybrid_hold_for_the_shipped_run():
    r = load_result(RESULTS / "lesson10_hybrid.json")
    hybrid, gated, window = _label(r, "hybrid"), _label(r, "all gated"), _label(r, "all window")
    gaps = sorted(recall.summary(r)[hybrid])
    assert not any(_above(r, hybrid, gated, g) for g in gaps)
    assert all(_above(r, window, hybrid, g) and _above(r, window, gated, g) for g in (0, 16))
    assert all(recall.summary(r)[window][g]["mean"] < 0.06 for g in gaps if g >= 64)
