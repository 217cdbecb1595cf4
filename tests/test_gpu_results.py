"""README's GPU tables are the shipped GPU runs' (``make gpu-check``), and its sentences are true of them.

These read result files, so they run everywhere; the runs themselves need a GPU (``.ci/gpu-check``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from course_lib.bench import chunked, decode

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _result(name):
    return json.loads((ROOT / "docs" / "results" / f"{name}.json").read_text())


def _block(marker, end):
    start = README.index(f"<!-- {marker}: rendered from docs/results/")
    return README[start:README.index(f"<!-- {end} -->")].split("\n", 1)[1]


@pytest.mark.parametrize("name", ["bench_decode_cuda", "bench_chunked_cuda"])
def test_each_gpu_run_ran_on_cuda_and_says_how_it_was_made(name):
    result = _result(name)
    assert result["machine"]["device"].startswith("cuda") and result["machine"]["gpu"]
    assert "--device cuda" in result["command"] and result["note"]
    assert result["command"].endswith(f"--json docs/results/{name}.json")


def test_the_gpu_decode_table_is_rendered_from_its_file_and_fixed_memories_stay_flat_while_full_grows():
    result = _result("bench_decode_cuda")
    assert _block("GPU decode table", "end of GPU decode table") == (
        decode.decode_summary(result) + "\n\n" + decode.decode_table(result) + "\n")
    ms = {}
    for row in result["rows"]:
        ms.setdefault(row["memory"], {})[row["context"]] = row["ms_per_token"]
    full = ms.pop("full")
    assert full[max(full)] / full[min(full)] > 3  # "the full cache's still grows with it"
    for name, by in ms.items():  # "about the same ms per token at every context"
        assert max(by.values()) / min(by.values()) < 1.15, (name, by)


def test_the_gpu_chunked_table_is_rendered_from_its_file_and_the_chunked_form_gains_far_more_than_on_the_cpu():
    gpu, cpu = _result("bench_chunked_cuda"), _result("bench_chunked")
    assert _block("GPU chunked table", "end of GPU chunked table").strip() == chunked.readme_block(gpu)
    on_gpu, on_cpu = gpu["summary"]["chunked_over_recurrent"], cpu["summary"]["chunked_over_recurrent"]
    assert set(on_gpu) == set(on_cpu) == set(chunked.MEMORY_NAMES)
    for name, by_t in on_gpu.items():
        assert min(by_t.values()) >= 10 and max(by_t.values()) >= 40, (name, by_t)  # "tens to hundreds"
        assert all(by_t[t] > 2 * on_cpu[name][t] for t in by_t), (name, by_t, on_cpu[name])  # "far more"
    assert max(max(by_t.values()) for by_t in on_gpu.values()) >= 100
