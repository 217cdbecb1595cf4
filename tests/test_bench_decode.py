"""``python -m course_lib bench decode``: every registered memory at the benchmark's budget."""

from __future__ import annotations

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
