"""README's lesson 10 and 11 tables are rendered from the shipped result files, and its sentences hold
for their numbers: a rerun that overturns one fails here."""

from pathlib import Path

import pytest

from course_lib.experiments import recall
from course_lib.experiments.lesson10 import load_result, recall_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def _block(name: str, lesson: str = "10") -> str:
    readme = (ROOT / "README.md").read_text()
    source = f"docs/results/lesson{lesson}_{name}.json"
    start = readme.index(f"<!-- lesson {lesson} {name} table: rendered from {source} -->\n")
    end = readme.index(f"<!-- end of lesson {lesson} {name} table -->")
    return readme[start:end].split("\n", 1)[1].strip()


@pytest.mark.parametrize("lesson, name", [("10", "recall"), ("10", "hybrid"), ("11", "recall")])
def test_the_readme_tables_are_the_ones_rendered_from_the_result_files(lesson, name):
    assert _block(name, lesson) == recall_table(load_result(RESULTS / f"lesson{lesson}_{name}.json"))


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


def test_the_readme_sentences_about_compressed_caches_hold_for_the_shipped_run():
    r, fixed = load_result(RESULTS / "lesson11_recall.json"), load_result(RESULTS / "lesson10_recall.json")
    q4, q2, h2o = _label(r, "quantized b=4 G=8 R=8 n_c"), _label(r, "quantized b=2"), _label(r, "heavy_hitter")
    window = _label(fixed, "window n_c=32")
    assert all(len(recall.seed_values(r, q2, g)) >= 3 for g in (64, 256))
    below = recall.seed_values(r, q4, 64) + recall.seed_values(fixed, window, 64)
    assert min(recall.seed_values(r, q2, 64)) > max(below)
    assert all(min(recall.seed_values(r, h2o, g)) > max(recall.seed_values(fixed, window, g)) for g in (64, 256, 1024))
    assert all(recall.summary(r)[label][4096]["mean"] < 0.10 for label in recall.summary(r))


def test_the_readme_text_table_of_lesson_11s_caches_is_the_one_rendered_from_its_result_file():
    from course_lib.experiments.lesson06 import text_table

    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- lesson 11 text table: rendered from docs/results/lesson11_text.json -->\n")
    end = readme.index("<!-- end of lesson 11 text table -->")
    assert readme[start:end].split("\n", 1)[1].strip() == text_table(load_result(RESULTS / "lesson11_text.json"))


def test_the_readme_sentences_about_text_and_the_capstones_caches_hold_for_the_shipped_runs():
    from course_lib.experiments import results

    rows = load_result(RESULTS / "lesson11_text.json")["rows"]
    bpc = {(r["design"], r["seed"]): r["bpc"] for r in rows}
    assert all(bpc[d, s] > bpc["window", s] for d, s in bpc if d != "window")  # the window, every seed
    recall_of = {n: [r["recall"] for r in results.read_result(f"capstone_{n}")["rows"]]
                 for n in ("kivi4", "kivi2", "h2o", "window", "delta_learned")}
    assert not any(results.exceeds_spread(recall_of[k], recall_of["window"]) for k in ("kivi4", "kivi2"))
    windows = recall_of["window"] + recall_of["kivi4"] + recall_of["kivi2"]
    assert min(recall_of["h2o"]) > max(windows) and max(recall_of["h2o"]) < min(recall_of["delta_learned"])
