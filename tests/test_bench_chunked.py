"""``python -m course_lib bench chunked``: the matrix memories' token loop, chunked and parallel forms,
trained (forward + backward) against the text length."""

from __future__ import annotations

import json

import pytest
import torch

from course_lib.__main__ import main
from course_lib.bench import chunked

TINY = ["--batch", "1", "--heads", "2", "--head-dim", "4", "--chunk", "4", "--repeats", "1"]


def _bench(args, monkeypatch):
    monkeypatch.setenv("COURSE_QUIET", "1")
    threads = torch.get_num_threads()
    try:
        return main(["bench", "chunked", *args])
    finally:
        torch.set_num_threads(threads)


def test_a_tiny_run_prints_its_table_and_summary_and_writes_every_memory_form_and_length(tmp_path, capsys,
                                                                                        monkeypatch):
    threads = torch.get_num_threads()
    result, plot = tmp_path / "r.json", tmp_path / "c.png"
    assert _bench(["--T", "8,16", *TINY, "--json", str(result), "--out", str(plot)], monkeypatch) == 0
    assert torch.get_num_threads() == threads  # the benchmark's 2 threads are given back
    printed = capsys.readouterr().out
    table = printed.split("tokens/s (peak memory growth, MiB; -: not profiled) against T")[1]
    forms = {name: set(f) for name, (_, f) in chunked._forms().items()}
    assert forms == {"linear": {"recurrent", "chunked", "parallel"}, "delta": {"recurrent", "chunked"},
                     "decay": {"recurrent", "chunked", "parallel"}, "gated_delta": {"recurrent", "chunked"}}
    lines = {tuple(line.split()[:2]) for line in table.splitlines() if line.strip()}
    assert {(name, form) for name, fs in forms.items() for form in fs} <= lines
    assert "chunked over recurrent (tokens/s ratio)" in printed and "peak memory growth from one T" in printed
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    written = json.loads(result.read_text())
    rows = {(r["memory"], r["form"], r["T"]): r for r in written["rows"]}
    assert set(rows) == {(name, form, t) for name, fs in forms.items() for form in fs for t in (8, 16)}
    assert all(r["tokens_per_s"] > 0 and r["seconds"] > 0 and r["peak_bytes"] > 0 for r in rows.values())
    assert all(r["tokens_per_s"] == pytest.approx(r["T"] / r["seconds"]) for r in rows.values())  # batch 1
    assert written["command"] == ("python -m course_lib bench chunked --T 8,16 --batch 1 --heads 2 --head-dim 4 "
                                  f"--chunk 4 --repeats 1 --out {plot} --json {result}")  # repeats this run
    assert written["setup"]["chunk"] == 4 and written["setup"]["repeats"] == 1
    assert set(written["load_average"]) == {"before", "after"}
    summary = written["summary"]["chunked_over_recurrent"]
    assert set(summary) == set(forms) and all(set(by_t) == {"8", "16"} for by_t in summary.values())
    r = rows[("delta", "chunked", 16)]["tokens_per_s"] / rows[("delta", "recurrent", 16)]["tokens_per_s"]
    assert summary["delta"]["16"] == pytest.approx(r)


def test_no_memory_skips_the_profiler_and_one_memory_can_be_chosen(tmp_path, capsys, monkeypatch):
    result = tmp_path / "r.json"
    assert _bench(["--T", "8", *TINY, "--memory", "decay", "--no-memory", "--json", str(result),
                   "--out", str(tmp_path / "c.png")], monkeypatch) == 0
    assert "peak memory growth from one T" not in capsys.readouterr().out
    written = json.loads(result.read_text())
    assert written["command"] == ("python -m course_lib bench chunked --T 8 --memory decay --batch 1 --heads 2 "
                                  f"--head-dim 4 --chunk 4 --repeats 1 --no-memory --out {tmp_path / 'c.png'} "
                                  f"--json {result}")
    rows = written["rows"]
    assert [(r["memory"], r["form"]) for r in rows] == [("decay", "recurrent"), ("decay", "chunked"),
                                                        ("decay", "parallel")]
    assert all(r["peak_bytes"] is None for r in rows)


def test_the_token_loop_is_profiled_up_to_the_length_asked(tmp_path, capsys, monkeypatch):
    result = tmp_path / "r.json"
    assert _bench(["--T", "8,16", *TINY, "--memory", "linear", "--profile-loop-up-to", "8", "--json", str(result),
                   "--out", str(tmp_path / "c.png")], monkeypatch) == 0
    recurrent = capsys.readouterr().out.split("linear       recurrent")[1].splitlines()[0]
    assert recurrent.count("(-)") == 1 and recurrent.rstrip().endswith("(-)")
    peaks = {(r["form"], r["T"]): r["peak_bytes"] for r in json.loads(result.read_text())["rows"]}
    assert peaks.pop(("recurrent", 16)) is None and all(p > 0 for p in peaks.values())
    assert json.loads(result.read_text())["summary"]["peak_growth_per_step_of_T"]["linear"]["recurrent"] == []


def test_ratios_and_growth_give_the_exact_numbers_of_hand_made_rows():
    rows = [{"memory": "linear", "form": form, "T": t, "tokens_per_s": speed, "peak_bytes": peak}
            for form, t, speed, peak in [("recurrent", 256, 100.0, 10), ("recurrent", 512, 80.0, 20),
                                         ("chunked", 512, 2000.0, 30), ("chunked", 256, 1000.0, 15),
                                         ("parallel", 256, 500.0, 100), ("parallel", 512, 300.0, 400)]]
    rows.append({"memory": "delta", "form": "chunked", "T": 256, "tokens_per_s": 7.0, "peak_bytes": None})
    assert chunked.ratios(rows) == {"linear": {256: 10.0, 512: 25.0}}  # delta has no recurrence to divide by
    assert chunked.ratios(rows, over="parallel") == {"linear": {256: 2.0, 512: 2000.0 / 300.0}}
    assert chunked.growth(rows) == {"linear": {"recurrent": [2.0], "chunked": [2.0], "parallel": [4.0]}}


@pytest.mark.parametrize("args, name", [(["--T", "0"], "--T"), (["--T", "abc"], "--T"), (["--T", "8,x"], "--T"),
                                        (["--T", ","], "--T"), (["--chunk", "0"], "--chunk"),
                                        (["--repeats", "0"], "--repeats"), (["--batch", "0"], "--batch"),
                                        (["--threads", "-1"], "--threads"),
                                        (["--profile-loop-up-to", "-1"], "--profile-loop-up-to")])
def test_bad_arguments_are_refused_with_an_error_naming_them(args, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=name) as err:
        _bench(["--T", "8", *TINY, *args], monkeypatch)
    assert "got" in str(err.value)
    assert not list(tmp_path.iterdir())  # refused before measuring or writing anything


@pytest.mark.parametrize("name", chunked.MEMORY_NAMES)
def test_every_form_the_benchmark_times_computes_the_recurrence_and_its_gradients(name):
    """The benchmark times equal work: on its own inputs (in float64, T not a multiple of the chunk)
    every form gives the token loop's output, final state and gradients to the leaves."""
    gate_names, forms = chunked._forms()[name]
    q, k, v, gates, _ = chunked._inputs(gate_names, 2, 2, 13, 4, seed=1)

    def run(form):
        leaves = [x.detach().double().requires_grad_() for x in (q, k, v, *gates.values())]
        out, S = forms[form](*leaves[:3], dict(zip(gates, leaves[3:])), 4)[:2]
        grads = torch.autograd.grad(out.pow(2).sum(), leaves)
        return out, S, grads

    want = run("recurrent")
    for form in forms:
        got = run(form)
        torch.testing.assert_close(got[0], want[0], msg=f"{name} {form}: output")
        torch.testing.assert_close(got[1], want[1], msg=f"{name} {form}: final state")
        for leaf, g, w in zip(["q", "k", "v", *gates], got[2], want[2]):
            torch.testing.assert_close(g, w, msg=f"{name} {form}: gradient to {leaf}")


def test_the_gates_are_those_a_learned_model_gives():
    _, _, _, gates, leaves = chunked._inputs(("alpha", "beta"), 2, 3, 50, 4)
    assert gates["alpha"].shape == gates["beta"].shape == (2, 3, 50) and len(leaves) == 5
    assert 0.9 <= gates["alpha"].min() and gates["alpha"].max() < 1
    assert 0 <= gates["beta"].min() and gates["beta"].max() < 1


@pytest.mark.parametrize("name, form", [("linear", "recurrent"), ("decay", "parallel"), ("gated_delta", "chunked")])
def test_the_peak_memory_is_the_profilers_memory_timeline(name, form):
    """peak_bytes (the running sum of the profiler's allocations and frees) is the number the slower
    memory timeline gives for the same step."""
    sizes = dict(batch=1, heads=2, head_dim=4, chunk=4)
    peak = chunked.peak_bytes(name, form, 12, **sizes)
    assert peak > 0 and peak == chunked.timeline_peak_bytes(name, form, 12, **sizes)


def test_the_parallel_forms_peak_grows_with_t_squared_and_the_chunked_forms_with_t():
    sizes = dict(batch=1, heads=1, head_dim=8, chunk=16)
    peaks = {form: [chunked.peak_bytes("linear", form, t, **sizes) for t in (256, 512)] for form in
             ("chunked", "parallel")}
    assert 1.8 < peaks["chunked"][1] / peaks["chunked"][0] < 2.2, peaks
    assert 3.5 < peaks["parallel"][1] / peaks["parallel"][0] < 4.2, peaks


def test_the_readme_block_is_rendered_from_the_result_file_and_its_claims_hold():
    """README's chunked-training numbers are the shipped run's: the chunked form trains at least 5x
    faster than the token loop at T = 2,048 for every matrix memory (issue 20's target), its peak
    grows linearly (x2 per doubling of T) and the parallel form's about 4x."""
    import json
    from pathlib import Path

    from course_lib.bench.chunked import readme_block

    root = Path(__file__).resolve().parents[1]
    result = json.loads((root / "docs" / "results" / "bench_chunked.json").read_text())
    readme = (root / "README.md").read_text()
    start = readme.index("<!-- chunked table: rendered from docs/results/bench_chunked.json -->\n")
    end = readme.index("<!-- end of chunked table -->")
    assert readme[start:end].split("\n", 1)[1].strip() == readme_block(result)
    ratio, growth = result["summary"]["chunked_over_recurrent"], result["summary"]["peak_growth_per_step_of_T"]
    assert set(ratio) == {"linear", "delta", "decay", "gated_delta"}
    assert all(by_t["2048"] >= 5 for by_t in ratio.values()), ratio
    # "the delta rules gain least"
    assert max(ratio[n]["2048"] for n in ("delta", "gated_delta")) < min(ratio[n]["2048"] for n in ("linear", "decay"))
    assert all(1.8 <= x <= 2.2 for forms in growth.values() for x in forms["chunked"])
    assert all(x >= 3 for forms in growth.values() for x in forms.get("parallel", []))
