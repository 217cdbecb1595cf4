"""The capstone's seeded recall runs: one row per seed, the far recall, and the shipped result files."""

from __future__ import annotations

import dataclasses
import functools
import math

import pytest
import torch

from course_lib.experiments import capstone, results

TINY = dataclasses.replace(capstone.SETUP, steps=2, n_train=16, n_test=4, batch_size=4)


def test_run_seeds_gives_a_row_per_seed_with_its_curve_and_far_recall():
    rows = capstone.run_seeds("window 32", (0, 1), TINY, log_every=1, far=(200,))
    assert [r["seed"] for r in rows] == [0, 1]
    for row in rows:
        assert row["spec"] == capstone.DESIGNS["window 32"] and 0 <= row["recall"] <= 1
        assert [step for step, _ in row["curve"]] == [1, 2]
        (far,) = row["far"]
        assert far["dialogue_length"] == 200 and far["distance"] > row["distance"] and 0 <= far["recall"] <= 1
    with pytest.raises(ValueError, match="design must be one of"):
        capstone.run_seeds("window 33", (0,), TINY)


def test_the_row_of_the_grades_seed_is_the_grades_own_training_run():
    capstone._RECALL_CACHE.clear()
    (row,) = capstone.run_seeds("window 32", (TINY.seed,), TINY, log_every=0, far=())
    capstone._RECALL_CACHE.clear()
    graded = capstone.train_recall(capstone.DESIGNS["window 32"], TINY)  # what 09.chatbot_design runs
    assert row["recall"] == graded["recall"] and row["distance"] == graded["distance"]


@pytest.mark.parametrize("name", ["capstone_delta_beta1", "capstone_delta_learned", "capstone_window",
                                  "capstone_gated_delta", "capstone_decay", "capstone_linear",
                                  "capstone_compressive", "capstone_kivi4", "capstone_kivi2", "capstone_h2o"])
def test_the_shipped_capstone_runs_follow_the_schema_on_three_seeds(name):
    run = results.read_result(name)
    assert len(run["seeds"]) >= 3 and [r["seed"] for r in run["rows"]] == run["seeds"]
    assert run["spec"] == capstone.RUNNABLE[run["design"]]  # a design the lesson and the grade name
    assert run["setup"]["steps"] == capstone.SETUP.steps and run["command"].startswith(
        "python -m course_lib.experiments.capstone")
    for row in run["rows"]:
        assert row["curve"][-1] == [capstone.SETUP.steps, row["recall"]]
        assert [p["dialogue_length"] for p in row["far"]] == list(capstone.FAR_LENGTHS)


def test_the_reference_design_is_one_of_the_shipped_variants():
    assert capstone.DESIGNS["window 16 + delta"] in capstone.VARIANTS.values()
    shipped = [results.read_result(f"capstone_delta_{n}")["spec"] for n in ("beta1", "learned")]
    assert capstone.DESIGNS["window 16 + delta"] in shipped


GATED = ["window 16 + gated delta", "window 16 + decay"]


@pytest.mark.parametrize("design", GATED)
def test_a_gated_design_is_runnable_and_trains(design):
    """Lesson 10's memories in the reference design's place: seeded rows as the other designs give."""
    (row,) = capstone.run_seeds(design, (0,), TINY, log_every=1, far=(200,))
    assert capstone.build_memory(row["spec"]).learns_alpha and 0 <= row["recall"] <= 1
    assert [step for step, _ in row["curve"]] == [1, 2] and row["far"][0]["dialogue_length"] == 200


def test_a_gated_design_trains_from_the_decay_its_layer_starts_with():
    """train_recall's width-aware re-initialisation must not redraw W_alpha's bias (that gave alpha ~ 0.5, a
    half-life of one token, and a recall no better than the window alone's)."""
    capstone._RECALL_CACHE.clear()
    spec = capstone.RUNNABLE["window 16 + gated delta"]
    model = capstone.train_recall(spec, TINY)["model"]
    for block in model.blocks:  # two steps of Adam move the bias by ~lr: -log alpha stays near its start
        rate = torch.nn.functional.softplus(block.attn.w_alpha.bias.detach().double())
        torch.testing.assert_close(rate, -capstone.initial_decay(spec).double().log(), rtol=0.05, atol=0)


def test_a_gated_designs_reach_decays_from_the_alpha_its_layer_starts_with():
    spec = capstone.RUNNABLE["window 16 + decay"]
    expected = torch.manual_seed(0).get_state()
    alpha = capstone.initial_decay(spec)
    assert torch.equal(torch.get_rng_state(), expected)  # the caller's random stream is untouched
    torch.testing.assert_close(-alpha.double().log(), torch.logspace(-3, -1, capstone.SETUP.n_heads,
                                                                     dtype=torch.float64), rtol=1e-4, atol=0)
    with pytest.raises(ValueError, match="learned decay"):
        capstone.initial_decay(capstone.DESIGNS["window 16 + delta"])
    reach = capstone.document_reach(spec, length=2048, block=64, chunk=512)
    assert all(change > capstone.REACH_THRESHOLD for change in reach.values())  # 2k tokens: every head still holds
    gated = capstone.document_reach(capstone.RUNNABLE["window 16 + gated delta"], length=2048, block=64, chunk=512)
    assert set(gated) == {0, 1, 2, 3} and all(math.isfinite(x) for x in gated.values())


def test_the_chatbot_check_measures_a_gated_design(monkeypatch):
    """09.chatbot_design's checks on window 16 + gated delta: the bytes at 64k tokens (within the budget,
    flat), the time per token (flat) and a training run (here the test's tiny one, too short to recall, so
    the recall hint quotes the measured numbers and no made-up reach), its justification's numbers too."""
    from course_lib.grading import get_exercise, run_exercise
    from course_lib.grading.lessons import lesson09

    monkeypatch.setattr(capstone, "train_recall", functools.partial(capstone.train_recall, setup=TINY))
    spec = capstone.RUNNABLE["window 16 + gated delta"]
    why = ("A window of 16 tokens keeps the recent turn exact and a gated delta memory keeps the facts in a fixed "
           "matrix, so the 24 KiB and the time per token stay flat; its decay forgets old facts on purpose.")
    result = run_exercise(get_exercise("09.chatbot_design"), {"memory": spec, "justification": why})
    status = {line.name.split(" ")[0]: line for line in result.lines}
    # the justification check streams 64k tokens under a 10 s limit: a loaded test machine may time it out
    assert [line.passed for line in result.lines[:5]] == [True, True, True, True, False], result.feedback
    lesson09._check_justification({"memory": spec, "justification": why})  # its numbers: 16, 24 KiB
    assert capstone.state_bytes(spec)[-1] == {"context": capstone.SETUP.context, "nbytes": 24 * 1024}
    recall = status["recall"]
    assert "held-out conversations answered" in recall.hint and "reaches about" not in recall.hint
    assert lesson09._reach(spec) == (math.inf, "")  # a matrix memory: no cut-off, it blurs (as delta)


def test_the_capstone_measures_a_latent_cache_design():
    """A learner's MLA cache ({"name": "latent", "rank": r}) goes through the same measurement: its bytes
    (latent_cache_bytes, growing: it does not fit 64k tokens), ms per token, no recall run when it does not fit."""
    from course_lib.experiments.specs import build_memory, spec_label
    from course_lib.kv_cache import latent_cache_bytes
    from course_lib.memory import LatentMemory

    spec = {"name": "latent", "rank": 8, "rope_dim": 4}
    memory = capstone.build_memory(spec)
    assert isinstance(memory, LatentMemory) and (memory.rank, memory.rope_dim) == (8, 4)
    assert isinstance(build_memory(spec), LatentMemory) and spec_label(spec) == "latent r=8 d_R=4"
    setup = dataclasses.replace(capstone.SETUP, context=2048, decode_contexts=(64, 128))
    out = capstone.measure_design({"name": "latent", "rank": 8}, setup)
    # float32, all layers, where the stream stopped (past 4 x the budget)
    assert out["nbytes"] == latent_cache_bytes(setup.n_layers, 8, out["bytes_at"], 1, 4) > 4 * setup.budget
    assert out["fits"] is False and out["recall"] is None and [r["context"] for r in out["ms"]] == [64, 128]


@pytest.mark.parametrize("spec,label", [
    ({"name": "quantized", "bits": 4, "group": 8, "residual": 8, "window": 56}, "quantized b=4 G=8 R=8 n_c=56"),
    ({"name": "heavy_hitter", "budget": 24, "recent": 8}, "heavy_hitter B_h=24 n_r=8"),
])
def test_the_capstone_measures_a_quantized_or_heavy_hitter_cache(spec, label):
    """A learner's 4-bit KIVI cache (windowed: fixed-size) or H2O cache goes through the same measurement:
    bytes flat with the context and within the budget, ms per token flat, and a (tiny) recall run."""
    setup = dataclasses.replace(TINY, context=2048, decode_contexts=(64, 128))
    out = capstone.measure_design(spec, setup)
    memory = capstone.build_memory(spec)
    assert out["label"] == label and memory.fixed_size
    assert len({row["nbytes"] for row in out["bytes"]}) == 1 and out["nbytes"] <= setup.budget
    assert out["nbytes"] == setup.n_layers * memory.nbytes(memory.init_state(1, setup.n_heads, 16))
    assert out["fits"] is True and isinstance(out["flat"], bool) and [r["context"] for r in out["ms"]] == [64, 128]
    assert 0.0 <= out["recall"] <= 1.0 and out["recalls"] is not None


def test_a_quantized_cache_without_a_window_grows_and_is_not_trained():
    setup = dataclasses.replace(TINY, context=2048, decode_contexts=(64, 128))
    out = capstone.measure_design({"name": "quantized", "bits": 4}, setup)
    float_bytes = capstone.kv_bytes_per_token(setup) * out["bytes_at"]
    assert out["fits"] is False and out["recall"] is None and out["nbytes"] < 0.55 * float_bytes


# ------------------------------------------------------------- lesson 11's caches sized to the budget

FIXED_CACHES = {"KIVI 4-bit window 56": "window", "H2O 31, recent 15": "budget", "KIVI 2-bit window 72": "window"}
GROWING_CACHES = ["latent r = 8, d_R = 4 (grows)", "KIVI 4-bit, every pair (grows)"]


def test_lesson11s_caches_are_its_own_fit_to_the_capstones_budget():
    from course_lib.experiments import lesson11

    s = capstone.SETUP
    assert list(capstone.CACHES) == [*FIXED_CACHES, *GROWING_CACHES]
    assert set(capstone.CACHES) <= set(capstone.RUNNABLE) and not set(capstone.CACHES) & set(capstone.DESIGNS)
    # the window of 32 fills the budget exactly: the bound lesson 11's bisection holds every cache to
    assert capstone.state_bytes(capstone.DESIGNS["window 32"], (1024,))[0]["nbytes"] == s.budget
    fitted = lesson11.recall_designs(lesson11.setup(budget=32, d_model=s.d_model), n_heads=s.n_heads)
    assert list(capstone.CACHES.values()) == [r["spec"] for r in fitted]
    for name, key in FIXED_CACHES.items():  # fixed-size: the same bytes at every context, within the budget
        spec = capstone.CACHES[name]
        rows = capstone.state_bytes(spec, (1024, 4096))
        held = rows[0]["nbytes"]
        assert rows[1]["nbytes"] == held and 0.9 * s.budget < held <= s.budget, name
        record = lesson11.design(spec, n_heads=s.n_heads, d_model=s.d_model)
        assert held == s.n_layers * lesson11.layer_bytes(record)
        bigger = {**spec, key: spec[key] + 1, **({"recent": (spec[key] + 1) // 2} if key == "budget" else {})}
        assert capstone.state_bytes(bigger, (1024,))[0]["nbytes"] > s.budget, name  # the largest that fits


def test_the_growing_caches_fail_the_budget_on_the_chart_with_their_true_bytes():
    s = capstone.SETUP
    d_h = s.d_model // s.n_heads
    latent = capstone.CACHES["latent r = 8, d_R = 4 (grows)"]
    rows = capstone.state_bytes(latent)  # stops once 4x over the budget
    assert rows[-1]["context"] < s.context and rows[-1]["nbytes"] > 4 * s.budget
    assert all(r["nbytes"] == s.n_layers * (latent["rank"] + latent["rope_dim"]) * 4 * r["context"] for r in rows)
    every = capstone.CACHES["KIVI 4-bit, every pair (grows)"]
    (row,) = capstone.state_bytes(every)  # over 4x the budget at the first point already
    g, m = every["group"], row["context"]
    quantized = (m - every["residual"]) // g * g
    per_group = g * 2 * d_h * 4 // 8 + (2 * d_h + 2 * g) * 4  # 4-bit codes of keys and values, scales and zeros
    assert row["nbytes"] == s.n_layers * s.n_heads * (quantized // g * per_group + (m - quantized) * 2 * d_h * 4)
    assert row["nbytes"] > 4 * s.budget


@pytest.mark.parametrize("design", list(FIXED_CACHES))
def test_lesson11s_fixed_size_caches_run_seeds(design):
    saved = []
    rows = capstone.run_seeds(design, (0, 1), TINY, log_every=1, far=(200,), on_row=lambda r: saved.append(len(r)))
    assert saved == [1, 2] and [r["seed"] for r in rows] == [0, 1]
    for row in rows:
        assert row["spec"] == capstone.CACHES[design] and 0 <= row["recall"] <= 1
        assert [step for step, _ in row["curve"]] == [1, 2] and row["far"][0]["dialogue_length"] == 200


def test_the_command_writes_each_seed_as_it_finishes(tmp_path, monkeypatch):
    run_seeds, given = capstone.run_seeds, []

    def tiny(design, seeds, setup, **kw):  # the command's own setup is recorded; the test trains TINY
        given.append(setup)
        return run_seeds(design, seeds, dataclasses.replace(TINY, steps=setup.steps), log_every=1, far=(200,), **kw)

    monkeypatch.setattr(capstone, "run_seeds", tiny)
    out = tmp_path / "kivi2.json"
    assert capstone.main(["--design", "KIVI 2-bit window 72", "--seeds", "0,1", "--out", str(out), "--steps", "2"]) == 0
    run = results.read_result(out)
    assert given == [dataclasses.replace(capstone.SETUP, steps=2)] and run["setup"]["steps"] == 2
    assert run["seeds"] == [0, 1] and [r["seed"] for r in run["rows"]] == [0, 1] and "partial" not in run
    assert run["spec"] == capstone.CACHES["KIVI 2-bit window 72"] and run["command"] == (
        f"python -m course_lib.experiments.capstone --design 'KIVI 2-bit window 72' --seeds 0,1 --out {out} --steps 2")
    train = capstone.train_recall

    def stop_at_seed_1(spec, setup, **kw):  # a run cut short (a timeout) after its first seed
        if setup.seed == 1:
            raise KeyboardInterrupt
        return train(spec, setup, **kw)

    monkeypatch.setattr(capstone, "train_recall", stop_at_seed_1)
    cut = tmp_path / "cut.json"
    with pytest.raises(KeyboardInterrupt):
        capstone.main(["--design", "H2O 31, recent 15", "--seeds", "0,1,2", "--out", str(cut), "--steps", "2"])
    run = results.read_result(cut)
    assert run["partial"] is True and run["seeds"] == [0] and [r["seed"] for r in run["rows"]] == [0]
    monkeypatch.setattr(capstone, "train_recall", train)
    given.clear()
    args = ["--design", "H2O 31, recent 15", "--seeds", "0,1", "--out", str(cut), "--steps", "2", "--resume"]
    assert capstone.main(args) == 0  # the cut run resumed: seed 0 kept as it was, seed 1 made
    again = results.read_result(cut)
    assert again["rows"][0] == run["rows"][0] and again["seeds"] == [0, 1] and "partial" not in again
    assert capstone.main(args) == 0 and results.read_result(cut)["rows"] == again["rows"]  # nothing left to run
    assert len(given) == 1  # only the first resume trained (seed 1)


def test_plot_designs_draws_lesson09s_eleven_rows_each_distinct_with_the_legend_beside():
    labels = [*capstone.DESIGNS, *capstone.CACHES]
    assert len(labels) == 11  # more rows than matplotlib's ten colours
    rows = [{"label": label, "bytes": [{"context": m, "nbytes": 1000 * (i + 1)} for m in (1024, 4096)],
             "ms": [{"context": m, "ms_per_token": 1.0 + i} for m in (1024, 4096)]} for i, label in enumerate(labels)]
    fig = capstone.plot_designs(rows)
    ax_b, ax_t = fig.axes
    for ax in (ax_b, ax_t):
        drawn = [line for line in ax.get_lines() if line.get_label() in labels]
        assert [line.get_label() for line in drawn] == labels
        looks = {(line.get_color(), line.get_marker(), line.get_linestyle()) for line in drawn}
        assert len(looks) == len(labels)  # no two rows alike
    (legend,) = fig.legends
    budget = f"budget {capstone.format_bytes(capstone.SETUP.budget)}"
    assert [t.get_text() for t in legend.get_texts()] == [*labels, budget]
    assert ax_b.get_legend() is None  # beside the panels, not over the lines
