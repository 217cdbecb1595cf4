"""``python -m course_lib bench decode``: every registered memory at the benchmark's budget."""

from __future__ import annotations

import json

import pytest
import torch

from course_lib.__main__ import main
from course_lib.bench import decode
from course_lib.memory import MEMORIES


def test_every_registered_memory_is_measured(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COURSE_QUIET", "1")
    threads = torch.get_num_threads()
    out = tmp_path / "decode.png"
    try:
        assert main(["bench", "decode", "--memory", "all", "--contexts", "8,24", "--steps", "1", "--d-model", "16",
                     "--layers", "1", "--heads", "2", "--device", "cpu", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    table = capsys.readouterr().out.split("ms/token against context length")[-1]
    rows = {line.split()[0] for line in table.splitlines() if line.strip()}
    assert set(MEMORIES) <= rows and decode.memory_names() == list(MEMORIES)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_budget_gives_every_memory_its_example():
    for name, cls in MEMORIES.items():
        memory = decode.build_memory(name, n_heads=2)
        assert type(memory) is cls
        assert repr(memory) == repr(cls.example(decode.DEFAULT_SLOTS, n_heads=2))


def test_the_readme_decode_table_is_the_one_rendered_from_its_result_file_and_its_claim_holds():
    """README's timing table is never typed: it is decode_summary + decode_table of the result file,
    and the sentence above it (full grows, fixed-size memories stay flat) is true of that file."""
    from pathlib import Path

    from course_lib.experiments.results import read_result

    root = Path(__file__).resolve().parents[1]
    result = read_result(root / "docs" / "results" / "bench_decode.json")
    readme = (root / "README.md").read_text()
    start = readme.index("<!-- decode table: rendered from docs/results/bench_decode.json -->\n")
    block = readme[start:readme.index("<!-- end of decode table -->")].split("\n", 1)[1]
    assert block == decode.decode_summary(result) + "\n\n" + decode.decode_table(result) + "\n"
    ms = {}
    for row in result["rows"]:
        ms.setdefault(row["memory"], {})[row["context"]] = row["ms_per_token"]
    ratio = {name: by[max(by)] / by[min(by)] for name, by in ms.items()}
    assert ratio.pop("full") > 3 and all(r < 1.6 for r in ratio.values()), ratio


def test_the_hand_loop_is_timed_against_generate_in_the_same_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COURSE_QUIET", "1")
    threads = torch.get_num_threads()
    common = ["bench", "decode", "--memory", "window", "--memory", "linear", "--contexts", "8", "--steps", "1",
              "--d-model", "16", "--layers", "1", "--heads", "2", "--device", "cpu", "--out", str(tmp_path / "d.png")]
    try:
        assert main([*common, "--loop-tokens", "5", "--json", str(tmp_path / "r.json")]) == 0
        printed = capsys.readouterr().out
        assert main([*common, "--loop-tokens", "0"]) == 0
        skipped = capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)
    table = printed.split("hand loop / generate: ")[1].splitlines()
    assert "5 new tokens after a 8-token prompt" in table[0]
    rows = {line.split()[0]: line.split()[1:] for line in table[2:4]}
    assert set(rows) == {"window", "linear"}
    assert all(len(r) == 5 for r in rows.values()), table  # five numbers, no '(different tokens!)'
    loops = json.loads((tmp_path / "r.json").read_text())["loop_vs_generate"]
    assert [r["memory"] for r in loops] == ["window", "linear"] and all(r["same_tokens"] for r in loops)
    assert all(r["loop / generate"] > 0 and r["reserved_loop / generate"] > 0 for r in loops)
    assert "hand loop / generate" not in skipped and "ms/token against context length" in skipped


def test_measure_loop_says_its_tokens_per_second_and_refuses_no_tokens():
    from course_lib.models import MemoryLM

    torch.manual_seed(0)
    model = MemoryLM(32, 16, 1, 2, decode.build_memory("full", 2))
    row = decode.measure_loop(model, 4, prompt=3, repeats=1)
    assert row["same_tokens"] and set(row) >= {"generate", "loop", "reserved_loop"}
    # one round: its own ratio is the ratio of the two rates
    assert row["reserved_loop / generate"] == pytest.approx(row["reserved_loop"] / row["generate"], rel=1e-9)
    with pytest.raises(ValueError, match="new_tokens"):
        decode.measure_loop(model, 0)


def test_the_loop_ratio_is_paired_by_round_so_a_slow_spell_does_not_decide_it(monkeypatch):
    """Rounds where the whole machine is 3x slower move no ratio: each round compares its own runs."""
    from course_lib.models import MemoryLM

    torch.manual_seed(0)
    model = MemoryLM(32, 16, 1, 2, decode.build_memory("full", 2))
    # per round: generate 1.0 s, loop 1.25 s, reserved 1.0 s; rounds 2 and 3 three times slower
    ticks = iter([0.0, 1.0, 0.0, 1.25, 0.0, 1.0] + [0.0, 3.0, 0.0, 3.75, 0.0, 3.0] * 2)
    monkeypatch.setattr(decode.time, "perf_counter", lambda: next(ticks))
    row = decode.measure_loop(model, 4, prompt=3, repeats=3)
    assert row["loop / generate"] == pytest.approx(0.8) and row["reserved_loop / generate"] == pytest.approx(1.0)
    assert row["generate"] == pytest.approx(4.0) and row["loop"] == pytest.approx(4 / 1.25)  # the fastest rounds
