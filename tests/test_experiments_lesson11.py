"""Lesson 11's experiments: the compressed caches sized to the budget, the quick recall pipeline, the CLI."""

import json

import pytest

from course_lib.experiments import lesson11, recall
from course_lib.experiments.recall import design
from course_lib.experiments.results import read_result


def test_each_fixed_size_design_is_the_largest_that_fits_the_windows_bytes():
    s = lesson11.setup()
    limit = lesson11.layer_bytes(design({"name": "window", "window": s.budget}, d_model=s.d_model))
    q4, h2o, q2, latent, q4_all = lesson11.recall_designs(s)
    for record, key in ((q4, "window"), (h2o, "budget"), (q2, "window")):
        assert lesson11.layer_bytes(record) <= limit
        bigger = {**record["spec"], key: record["spec"][key] + 1}
        if key == "budget":
            bigger["recent"] = bigger["budget"] // 2
        assert lesson11.layer_bytes(design(bigger, d_model=s.d_model)) > limit, record["label"]
    assert q2["spec"]["window"] > q4["spec"]["window"] > s.budget  # fewer bits, more pairs
    assert "window" not in latent["spec"] and "window" not in q4_all["spec"]  # the growing ones


def test_a_fit_that_cannot_fit_says_so():
    s = lesson11.setup()
    with pytest.raises(ValueError, match="exceeds the budget"):
        lesson11.fit(lambda n: design({"name": "window", "window": 10 * s.budget + n}, d_model=s.d_model), s)


def test_the_quick_run_gives_a_row_for_every_design_seed_and_gap(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_QUIET", "1")
    s = lesson11.setup(quick=True)
    out = tmp_path / "r.json"
    result = lesson11.run_recall(s, out=out, log=lambda line: None, progress=False)
    back = read_result(out)
    assert back["rows"] == json.loads(json.dumps(result["rows"]))
    assert back["command"] == "python -m course_lib.experiments.lesson11 recall"
    names = {d["spec"]["name"] for d in lesson11.recall_designs(s)}
    assert {r["family"] for r in back["rows"]} == names == {"quantized", "heavy_hitter", "latent"}
    best = back["best_lr"]
    for d in lesson11.recall_designs(s):
        got = {(r["seed"], r["gap"]) for r in back["rows"] if r["label"] == d["label"] and r["lr"] == best[d["label"]]}
        assert got == {(seed, g) for seed in s.seeds for g in s.eval_gaps}
    assert recall.distance_table(back).count("\n") == len(names) + 3  # header, rule, one row per design


def test_the_command_line_writes_its_file_with_the_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COURSE_QUIET", "1")
    out = tmp_path / "r.json"
    args = ["recall", "--quick", "--seeds", "1", "--lrs", "0.001", "--only", "heavy_hitter", "--out", str(out)]
    assert lesson11.main(args) == 0
    back = read_result(out)
    assert back["command"] == "python -m course_lib.experiments.lesson11 " + " ".join(args)
    assert {r["family"] for r in back["rows"]} == {"heavy_hitter"} and back["seeds"] == [0]
    assert "wrote " in capsys.readouterr().out


def test_the_shipped_cost_file_has_every_design_at_every_context():
    cost = read_result(lesson11.COST_RESULT)
    labels = [d["label"] for d in lesson11.cost_designs(lesson11.setup())]
    assert sorted({r["label"] for r in cost["rows"]}) == sorted(labels)
    contexts = {r["context"] for r in cost["rows"]}
    assert max(contexts) >= 4096 and all(sum(r["label"] == x for r in cost["rows"]) == len(contexts) for x in labels)


@pytest.mark.parametrize("args, code", [(["cost", "--help"], 0), (["cost", "--bogus"], 2)])
def test_the_cost_command_parses_its_options_before_timing_anything(args, code, monkeypatch):
    monkeypatch.setattr(lesson11, "run_cost", lambda **kw: pytest.fail("timed despite " + " ".join(args)))
    with pytest.raises(SystemExit) as exit_:
        lesson11.main(args)
    assert exit_.value.code == code
