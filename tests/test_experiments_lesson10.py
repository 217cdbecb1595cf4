"""Lesson 10's experiments (course_lib.experiments.lesson10): gated memories and hybrids on recall
against distance, at equal peak bytes; their quick runs, result files and command line."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from course_lib.experiments import lesson10, recall
from course_lib.experiments.results import read_result
from course_lib.models import MemoryAttention

SETUPS = [lesson10.setup(), lesson10.setup(quick=True)]


def _peaks(s, designs):
    out = {}
    for d in designs:
        model = recall.build_model(d, vocab_size=s.vocab_size, n_layers=s.n_layers, local=s.local)
        # past two budgets and a segment every fixed-size design is full (a window holds B, compressive
        # n_m + c n_cm <= B tokens), so its peak stays: longer contexts only cost time
        out[d["label"]] = (recall.model_bytes(model, 3 * s.n_pairs + 2 * s.budget + s.segment_len, s.segment_len), d)
    return out


@pytest.mark.parametrize("s", SETUPS, ids=["full", "quick"])
def test_every_recall_design_holds_the_windows_peak_bytes_within_two_percent(s):
    sizes = _peaks(s, lesson10.recall_designs(s))
    window = next(b for b, d in sizes.values() if d["spec"]["name"] == "window")["peak_nbytes"]
    for label, (b, d) in sizes.items():
        # linear attention carries its normaliser z too: d_h values beside d_h^2, 1/d_h more
        tol = 0.02 + (1 / d["d_model"] if d["spec"]["name"] == "linear" else 0)
        assert abs(b["peak_nbytes"] - window) <= tol * window, (label, b, window)
        assert (b["nbytes"] < b["peak_nbytes"]) == (d["spec"]["name"] == "compressive")  # its segment is counted
    families = {d["spec"]["name"] for _, d in sizes.values()}
    assert families == {"linear", "delta", "decay", "gated_delta", "window", "compressive"}
    betas = {d["spec"].get("beta") for _, d in sizes.values() if d["spec"]["name"] == "delta"}
    assert betas == {1.0, "learned"}  # fixed and learned write strength
    # the gated memories hold the delta memory's state: one head of d_h = d_model
    delta = next(b for b, d in sizes.values() if d["spec"] == {"name": "delta", "beta": "learned"})
    for b, d in sizes.values():
        if d["spec"]["name"] in ("decay", "gated_delta"):
            assert d["n_heads"] == 1 and d["spec"]["alpha"] == "learned" and b == delta


@pytest.mark.parametrize("s", SETUPS, ids=["full", "quick"])
def test_the_hybrids_have_equal_peak_bytes_and_the_layers_they_name(s):
    designs = lesson10.hybrid_designs(s)
    sizes = _peaks(s, designs)
    peaks = {b["peak_nbytes"] for b, _ in sizes.values()}
    assert max(peaks) - min(peaks) <= 0.02 * min(peaks), sizes
    names = {d["label"]: [spec["name"] for spec in d["layers"]] for d in designs}
    assert sorted(names.values()) == sorted([["gated_delta"] * 3 + ["window"], ["gated_delta"] * 4, ["window"] * 4])
    for d in designs:
        model = recall.build_model(d, vocab_size=s.vocab_size, n_layers=s.n_layers, local=s.local)
        assert len(model.blocks) == d["n_layers"] == 5
        assert model.memories[0].name == "window" and model.memories[0].window == s.local  # the local layer
        assert [m.name for m in model.memories[1:]] == names[d["label"]]
        assert all(b.attn.n_heads == 1 for b in model.blocks)
        gated = [m for m in model.memories[1:] if m.name == "gated_delta"]
        assert all(m.learns_alpha and m.learns_beta for m in gated)


def test_build_model_keeps_memorylms_decay_initialisation():
    s = lesson10.setup(quick=True)
    d = lesson10.recall_designs(s)[0]
    torch.manual_seed(0)
    attn = recall.build_model(d, vocab_size=s.vocab_size)
    layer = attn.blocks[1].attn
    assert isinstance(layer, MemoryAttention) and layer.w_alpha is not None
    rate = torch.nn.functional.softplus(layer.w_alpha.bias.double())  # -log alpha at x = 0
    torch.testing.assert_close(rate, torch.logspace(-3, -1, layer.mem_heads, dtype=torch.float64))
    assert attn.blocks[0].attn.w_alpha is None  # the local window learns no decay


def test_layered_designs_refuse_bad_input():
    with pytest.raises(ValueError, match="layers must be a non-empty list"):
        recall.layered_design([], label="x", family="x")
    with pytest.raises(ValueError, match=r"layers\[1\]\['name'\] must be one of"):
        recall.layered_design([{"name": "window", "window": 4}, {"name": "nope"}], label="x", family="x")
    d = recall.layered_design([{"name": "window", "window": 4}] * 2, d_model=16, label="w w", family="window")
    assert json.loads(json.dumps(d)) == d and d["n_layers"] == 3 and d["spec"] == {"name": "window", "window": 4}
    assert recall.model_layers(d, 2, 4) == 3 and recall.model_layers({"label": "plain"}, 2, 4) == 2
    with pytest.raises(ValueError, match="expected n_layers=2"):
        recall.model_layers(d, 2, 0)  # without the local layer the record's count does not hold
    with pytest.raises(ValueError, match="local must be >= 1"):
        lesson10.hybrid_designs(lesson10.setup(quick=True, local=0))


def _check_rows(result, designs, s):
    rows = result["rows"]
    labels = [d["label"] for d in designs]
    assert {r["label"] for r in rows} == set(labels)
    runs = len(s.lrs) + len(s.seeds) - 1  # the sweep on seeds[0], the others at the best rate
    assert len(rows) == len(labels) * runs * len(s.eval_gaps)
    for label in labels:
        best = result["best_lr"][label]
        for seed in s.seeds:
            assert {r["gap"] for r in rows if (r["label"], r["seed"], r["lr"]) == (label, seed, best)} \
                == set(s.eval_gaps)
    for r in rows:
        assert {"spec", "d_model", "n_heads", "lr", "seed", "gap", "accuracy", "own_segment", "from_memory",
                "nbytes", "peak_nbytes", "val_accuracy"} <= set(r)
    summ = recall.summary(result)
    assert set(summ) == set(labels)
    assert all(b["n"] == len(s.seeds) for buckets in summ.values() for b in buckets.values())


@pytest.mark.parametrize("what", ["recall", "hybrid"])
def test_quick_runs_give_a_row_for_every_design_seed_and_gap_and_round_trip(what, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_QUIET", "1")
    s = lesson10.setup(quick=True)
    run = lesson10.run_recall if what == "recall" else lesson10.run_hybrid
    designs = (lesson10.recall_designs if what == "recall" else lesson10.hybrid_designs)(s)
    out = tmp_path / f"{what}.json"
    result = run(s, out=out, log=lambda line: None, progress=False)
    back = read_result(out)
    assert not recall.partial_path(out).exists() and back["partial"] is False
    assert back["rows"] == json.loads(json.dumps(result["rows"])) and back["seeds"] == list(s.seeds)
    assert back["command"] == f"python -m course_lib.experiments.lesson10 {what}"
    assert [d["label"] for d in back["designs"]] == [d["label"] for d in designs]
    _check_rows(back, designs, s)
    if what == "hybrid":
        assert all(r["n_layers"] == 5 and len(r["layers"]) == 4 for r in back["rows"])
    table = lesson10.recall_table(back)
    assert table.count("\n") == len(designs) + 1 and all(d["label"] in table for d in designs)
    assert lesson10.plot_recall(back).axes[0].get_xscale() == "log"


def test_a_hybrid_run_resumes_without_training_again(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_QUIET", "1")
    s = lesson10.setup(quick=True, seeds=(0,), lrs=(1e-3,))
    out = tmp_path / "h.json"
    first = lesson10.run_hybrid(s, only={"hybrid"}, out=out, log=lambda line: None, progress=False)
    out.rename(recall.partial_path(out))  # as if it had died after its last run
    monkeypatch.setattr(recall, "train_one", lambda *a, **k: pytest.fail("trained a run that was done"))
    again = lesson10.run_hybrid(s, only={"hybrid"}, out=out, log=lambda line: None, progress=False, resume=True)
    assert again["rows"] == json.loads(json.dumps(first["rows"])) and out.exists()


@pytest.mark.parametrize("what", ["recall", "hybrid"])
def test_the_command_line_writes_its_file_with_the_command(what, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COURSE_QUIET", "1")
    out = tmp_path / "r.json"
    only = "gated_delta,window"
    args = [what, "--quick", "--seeds", "1", "--only", only, "--out", str(out)]
    assert lesson10.main(args) == 0
    back = read_result(out)
    assert back["command"] == "python -m course_lib.experiments.lesson10 " + " ".join(args)
    assert back["seeds"] == [0] and {r["family"] for r in back["rows"]} == {"gated_delta", "window"}
    assert "wrote " in capsys.readouterr().out


def test_the_live_runs_are_small(monkeypatch):
    monkeypatch.setenv("COURSE_QUIET", "1")
    result = lesson10.live_recall(("gated_delta",), steps=2, gaps=(0, 16))
    assert {r["gap"] for r in result["rows"]} == {0, 16} and {r["seed"] for r in result["rows"]} == {0}
    assert {r["family"] for r in result["rows"]} == {"gated_delta"}
    hybrid = lesson10.live_hybrid(("hybrid",), steps=2, gaps=(0,))
    assert {r["family"] for r in hybrid["rows"]} == {"hybrid"} and recall.summary(hybrid)
    with pytest.raises(ValueError, match="no design of"):
        lesson10.live_recall(("full",), steps=2)


@pytest.mark.parametrize("what, designs", [("recall", lesson10.recall_designs), ("hybrid", lesson10.hybrid_designs)])
def test_the_shipped_results_hold_every_design_on_three_seeds_at_every_gap(what, designs):
    result = read_result(lesson10.RECALL_RESULT if what == "recall" else lesson10.HYBRID_RESULT)
    s = lesson10.setup()
    assert result["command"].startswith(f"python -m course_lib.experiments.lesson10 {what}")
    assert result["partial"] is False and len(result["seeds"]) >= 3 and max(result["setup"]["eval_gaps"]) >= 4096
    assert result["setup"] == json.loads(json.dumps(dataclasses.asdict(s)))  # the full setup
    _check_rows(result, designs(s), s)
    window = next(r["peak_nbytes"] for r in result["rows"] if r["family"] == "window")
    for r in result["rows"]:  # every row at the window's peak (linear: its normaliser more)
        assert abs(r["peak_nbytes"] - window) <= (0.02 + (1 / r["d_model"] if r["family"] == "linear" else 0)) * window
