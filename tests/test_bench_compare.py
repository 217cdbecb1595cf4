"""``python -m course_lib bench compare``: the table, the PNG, and a clean skip without the peers.

The peers (transformers, compressive-transformer-pytorch) are the optional extra ``bench``;
the smoke run skips when they are missing. Timings are never asserted: a benchmark is not a test.
"""

from __future__ import annotations

import pytest
import torch

from course_lib.__main__ import main
from course_lib.bench import compare


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """The command sets torch's thread count (one on the CPU by default); give it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_the_table_says_pass_fail_and_skipped_in_words():
    rows = [
        compare.Row("decode", "decode 768 after 1", 300.0, 100.0, 3.0, ">= 1.5 (aim 3.0)", True),
        compare.Row("train", "train vs lucidrains", 120.0, 100.0, 1.2, ">= 1.5 (aim 2.0)", False),
        compare.Row("decode", "decode (GPT-2)", None, None, None, ">= 1.5", None, "pip install it"),
        compare.Row("flat", "window(256)", 2.0, 2.1, 1.05, "<= 1.2", True),
    ]
    lines = compare.format_table(rows).splitlines()
    assert lines[0].split()[-6:] == ["(tokens/s)", "course_lib", "peer", "ratio", "target", "result"]
    assert lines[2].split()[4:7] == ["300", "100", "3.00x"] and lines[2].endswith("PASS")
    assert "1.20x" in lines[3] and lines[3].endswith("FAIL")
    assert "skipped: pip install it" in lines[4]
    assert "2.00" in lines[-1] and "2.10" in lines[-1] and "1.05x" in lines[-1] and lines[-1].endswith("PASS")


def test_without_the_peers_the_comparisons_are_skipped_with_the_install_command(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(compare, "_peer_versions", lambda: {"transformers": None,
                                                            "compressive-transformer-pytorch": None})
    out_png = tmp_path / "compare.png"
    assert main(["bench", "compare", "--quick", "--only", "decode", "--only", "train", "--device", "cpu",
                 "--out", str(out_png)]) == 0
    out = capsys.readouterr().out
    assert out.count("skipped: pip install -e '.[bench]'") == 2
    assert "machine:" in out and "torch threads 1" in out and torch.__version__ in out
    assert out_png.stat().st_size > 0


def test_flat_cost_rows_run_without_the_peers(capsys, tmp_path):
    out_png = tmp_path / "flat.png"
    assert main(["bench", "compare", "--quick", "--only", "flat", "--device", "cpu", "--out", str(out_png)]) == 0
    out = capsys.readouterr().out
    for name in ("full", "window(8)", "sink(4, 4)", "linear", "delta(0.5)", "compressive(8, 2, 4)"):
        assert f"\n{name} " in out
    assert out_png.stat().st_size > 0


def test_half_precision_on_the_cpu_is_refused_with_the_alternative():
    with pytest.raises(SystemExit, match="bfloat16"):
        main(["bench", "compare", "--quick", "--device", "cpu", "--dtype", "float16"])


@pytest.mark.slow
def test_quick_run_compares_with_both_peers(capsys, tmp_path):
    pytest.importorskip("transformers", reason="the optional extra 'bench' is not installed")
    pytest.importorskip("compressive_transformer_pytorch", reason="the optional extra 'bench' is not installed")
    out_png = tmp_path / "compare.png"
    assert main(["bench", "compare", "--quick", "--only", "decode", "--only", "train", "--device", "cpu",
                 "--repeats", "1", "--out", str(out_png)]) == 0
    out = capsys.readouterr().out
    table = out[out.index("side by side"):]
    for name in ("decode 8 after 1", "decode 4 after 32", "lucidrains (plain residual)", "lucidrains (its defaults)"):
        assert name in table
    assert "skipped" not in table and table.count("x  >= 1.5") == 4
    assert "peers: transformers " in out and "not installed" not in out
    assert out_png.stat().st_size > 0


def test_the_readme_side_by_side_block_is_rendered_from_its_result_file():
    """README's side-by-side timings are never typed: they are readme_block of the result file."""
    from pathlib import Path

    from course_lib.bench.compare import readme_block
    from course_lib.experiments.results import read_result

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    start = readme.index("<!-- compare table: rendered from docs/results/bench_compare.json -->\n")
    block = readme[start:readme.index("<!-- end of compare table -->")].split("\n", 1)[1]
    assert block == readme_block(read_result(root / "docs" / "results" / "bench_compare.json")) + "\n"
