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
