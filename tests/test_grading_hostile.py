"""The instructor grades hostile notebooks (review 2026-12-01, part B; issue 17 points 1-4).

Each scenario is one attack of the review, written as the tester wrote it, graded with the
real grade command. Every one of them succeeded against the grader of revision a88716b; here
each finishes within its limits, writes nothing outside its work copy, and leaks no file
content or environment variable into its report. Attacks that are still possible by design
(an answer calling course_lib's own references, detecting that it is graded) are stated in
README.md's "What it cannot stop" and not tested as contained.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from notebook_helpers import write_notebook

from course_lib.grading.grader import sandbox
from course_lib.grading.grader.cli import grade_notebook

ROOT = Path(__file__).resolve().parents[1]
needs_bwrap = pytest.mark.skipif(bool(sandbox.bwrap_reason()), reason=f"no sandbox: {sandbox.bwrap_reason()}")


IMPORT = "from course_lib.grading import check\nimport os, glob, torch"
# Right answers to lesson 03 that take no time to write: the course's own references (allowed).
RIGHT_03 = (
    "from course_lib.memory import linear_attention_parallel\n"
    "from course_lib.experiments import lesson03 as _ref\n"
    "def linear_attention(q, k, v):\n    return linear_attention_parallel(q, k, v)[0]\n"
    "def strided_mask(t_q, t_k, stride):\n    return _ref.strided_mask(t_q, t_k, stride)\n"
    "def evictable(mask, t):\n    return _ref.evictable(mask, t)\n"
    "def cache_over_state():\n    return 2 * 4096 / 65\n"
)
CHECKS_03 = [f'check("03.{name}", {answer})' for name, answer in (
    ("linear_attention", "linear_attention"), ("strided_mask", "strided_mask"), ("evictable", "evictable"),
    ("state_bytes", "cache_over_state"))]




def items(report) -> dict:
    return {item.id: item for item in report.items}


def graded_item(tmp_path, exercise_id, *cells):
    """Grade a notebook of ``cells`` that ends with ``check(exercise_id, <the function named like it>)``;
    returns that exercise's report item."""
    name = exercise_id.split(".")[1]
    path = write_notebook(tmp_path / f"{exercise_id.replace('.', '_')}.ipynb", IMPORT, *cells,
                          f'check("{exercise_id}", {name})')
    return items(grade_notebook(path, timeout=120))[exercise_id]


def report_text(report) -> str:
    return json.dumps(report.as_dict()) + report.table()


MEASURE = ("import json, resource, sys\n"
           "from course_lib.grading.grader.cli import grade_notebook\n"
           "r = grade_notebook(sys.argv[1], timeout=float(sys.argv[2]), cell_timeout=float(sys.argv[3]))\n"
           "print(json.dumps({'report': r.as_dict(), 'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss"
           " / 1024}))")


def grade_measured(path, *, timeout=120, cell_timeout=60, env=None):
    """Grade in a separate grader process: (report dict, the grader's peak RSS in MB, wall seconds)."""
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(timeout), str(cell_timeout)],
                         capture_output=True, text=True, timeout=timeout + 120, cwd=ROOT,
                         env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["report"], result["rss_mb"], time.monotonic() - start


@pytest.fixture(scope="module")
def baseline_rss(tmp_path_factory):
    """The grader's peak memory on an honest lesson-03 notebook."""
    path = write_notebook(tmp_path_factory.mktemp("honest") / "03_honest.ipynb", IMPORT, RIGHT_03, *CHECKS_03)
    report, rss, _ = grade_measured(path)
    assert report["score"] >= 7, report
    return rss


# ---------------------------------------------------------------- B11, B12: the exchange


@pytest.mark.slow
@needs_bwrap
def test_B11_links_planted_where_the_grader_exchanges_files_are_never_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    home_victim = Path.home() / f".course_victim_{uuid.uuid4().hex}"
    home_victim.write_text("untouched")
    try:
        plant = (
            "ex = sorted(glob.glob(os.path.join(os.getcwd(), '..', '*')))\n"
            "planted = []\n"
            "for folder in ex:\n"
            "    for n in range(1, 60):\n"
            "        for name in (f'request-{n}.pt', f'response-{n}.pt'):\n"
            "            for target in (VICTIMS):\n"
            "                try:\n"
            "                    os.symlink(target, os.path.join(folder, name + str(hash(target))[-3:]))\n"
            "                    os.symlink(target, os.path.join(folder, name))\n"
            "                    planted.append(folder)\n"
            "                except OSError:\n"
            "                    pass\n"
            "print(sorted(set(planted)))").replace("VICTIMS", f"{str(victim)!r}, {str(home_victim)!r}")
        path = write_notebook(tmp_path / "03_links.ipynb", IMPORT, RIGHT_03, plant, *CHECKS_03)
        report = grade_notebook(path, timeout=120)
        assert victim.read_text() == "untouched" and home_victim.read_text() == "untouched"
        assert report.score >= 7, report.table()  # the grade itself is normal
    finally:
        home_victim.unlink()


@pytest.mark.slow
def test_B11_without_a_sandbox_links_for_the_next_requests_are_refused_not_followed(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_GRADE_NO_SANDBOX", "1")
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    # the kernel can write the request folder here: it learns the names' token and plants the next ones
    plant = (
        "import threading, re, time\n"
        "def plant():\n"
        "    end = time.time() + 60\n"
        "    while time.time() < end:\n"
        "        for p in glob.glob(os.path.join(os.getcwd(), '..', 'requests', 'request-*')):\n"
        "            m = re.search(r'request-(\\d+)-(\\w+)\\.pt', p)\n"
        "            if m:\n"
        "                for n in range(int(m.group(1)) + 1, int(m.group(1)) + 40):\n"
        "                    try:\n"
        "                        os.symlink(VICTIM, os.path.join(os.path.dirname(p), f'request-{n}-{m.group(2)}.pt'))\n"
        "                    except OSError:\n"
        "                        pass\n"
        "        time.sleep(0.01)\n"
        "threading.Thread(target=plant, daemon=True).start()").replace("VICTIM", repr(str(victim)))
    path = write_notebook(tmp_path / "03_links_plain.ipynb", IMPORT, RIGHT_03, plant, *CHECKS_03)
    report = grade_notebook(path, timeout=120)
    assert victim.read_text() == "untouched"
    assert report.sandbox.startswith("none")


PATCH_DUMP = (
    "import course_lib.grading.grader.remote as R\n"
    "_orig = R._dump\n"
    "def _dump(obj, path):\n"
    "    if 'response' in str(path):\n"
    "        %s\n"
    "    else:\n"
    "        _orig(obj, path)\n"
    "R._dump = _dump")


@pytest.mark.slow
@needs_bwrap
@pytest.mark.parametrize("plant", ["os.mkfifo(path)", "os.symlink('/dev/zero', path)"], ids=["fifo", "dev-zero"])
def test_B12_a_fifo_or_dev_zero_in_place_of_an_answer_neither_hangs_nor_fills_the_grader(
        tmp_path, plant, baseline_rss):
    path = write_notebook(tmp_path / "03_fifo.ipynb", IMPORT, RIGHT_03, PATCH_DUMP % plant, *CHECKS_03)
    report, rss, wall = grade_measured(path, timeout=120)
    assert wall < 100, "the grade finishes: a FIFO is not waited on"
    assert rss < baseline_rss + 200, f"the grader read {rss:.0f} MB (honest grade: {baseline_rss:.0f} MB)"
    found = {item["id"]: item for item in report["exercises"]}
    assert found["03.linear_attention"]["score"] == 0
    assert "not a plain file" in found["03.linear_attention"]["feedback"], found["03.linear_attention"]


# ---------------------------------------------------------------- B04, B05: size


@pytest.mark.slow
@needs_bwrap
def test_B04_enormous_answers_stay_small_in_the_grader_and_out_of_the_report(tmp_path, baseline_rss):
    path = write_notebook(
        tmp_path / "03_big.ipynb", IMPORT, RIGHT_03,
        # the right values in a view of a 512 MiB storage; a 250 MiB mask; a 50 MiB answer to a question
        "def linear_attention(q, k, v):\n"
        "    out = linear_attention_parallel(q, k, v)[0]\n"
        "    big = torch.zeros(2**26, dtype=out.dtype)\n"
        "    view = big[:out.numel()].view(out.shape)\n"
        "    view.copy_(out)\n"
        "    return view\n"
        "def strided_mask(t_q, t_k, stride):\n    return torch.ones(250 * 2**20, dtype=torch.bool)\n"
        "def strided_cache():\n    return 'Z' * (50 * 2**20)",
        *CHECKS_03, 'check("03.sparse_cache", strided_cache)')
    report, rss, _ = grade_measured(path, timeout=240, cell_timeout=120)
    assert rss < baseline_rss + 400, f"grader peak {rss:.0f} MB (honest grade: {baseline_rss:.0f} MB)"
    assert len(json.dumps(report)) < 20_000, "the report does not echo the 50 MiB answer"
    found = {item["id"]: item for item in report["exercises"]}
    assert found["03.linear_attention"]["score"] == 2, "a view sends its own values, not its storage"
    assert found["03.strided_mask"]["score"] == 0 and "more than the grader reads" in found["03.strided_mask"][
        "feedback"]


@pytest.mark.slow
@needs_bwrap
def test_B05_a_flood_of_output_is_cut_off_and_the_grader_stays_small(tmp_path, baseline_rss):
    path = write_notebook(tmp_path / "03_flood.ipynb", IMPORT, RIGHT_03, *CHECKS_03[:2],
                          "line = 'x' * (2**20 - 1)\nfor _ in range(1024):\n    print(line)",  # 1 GiB printed
                          *CHECKS_03[2:])
    report, rss, wall = grade_measured(path, timeout=240, cell_timeout=120)
    assert rss < baseline_rss + 300, f"grader peak {rss:.0f} MB (honest grade: {baseline_rss:.0f} MB)"
    assert wall < 120
    assert [hit["limit"] for hit in report["limits"]] == ["output"], report["limits"]
    found = {item["id"]: item for item in report["exercises"]}
    assert found["03.linear_attention"]["score"] == 2, "what was graded before the flood keeps its points"
    assert found["03.state_bytes"]["score"] == 0 and "not reached" in found["03.state_bytes"]["feedback"]
    assert len(json.dumps(report)) < 20_000


# ---------------------------------------------------------------- B10: probes


PATCHED_PROBES = [  # (exercise, the cells that patch a probe and give the wrong answer, a word the feedback says)
    pytest.param(
        "05.segment_update",
        ("import course_lib.grading.lessons.lesson05 as _L5\n"
         "_L5.detached_probe = lambda fn, args: [False, False]",
         "def segment_update(K_mem, V_mem, k, v, mem_len):  # WRONG: no stop-gradient\n"
         "    return torch.cat([K_mem, k], 2)[:, :, -mem_len:], torch.cat([V_mem, v], 2)[:, :, -mem_len:]"),
        "detach", id="the_stop_gradient_probe_in_the_kernel-a_memory_without_detach"),
    pytest.param(
        "06.reconstruction_loss",
        ("import course_lib.grading.lessons.lesson06 as _L6\n"
         "_L6.gradient_probe = lambda fn, args, needs_grad: {'requires_grad': True, 'reached': [3, 4]}\n"
         "import course_lib.grading.compare as _C\n_C.grads = lambda *a, **k: None",
         "import torch.nn.functional as F\nfrom course_lib import attention_reference\n"
         "def reconstruction_loss(q, old_k, old_v, comp_k, comp_v):  # WRONG: gradients reach q and old pairs\n"
         "    return F.mse_loss(attention_reference(q, comp_k, comp_v), attention_reference(q, old_k, old_v))"),
        "q", id="the_gradient_probe-a_reconstruction_loss_that_leaks_into_q"),
    pytest.param(
        "07.gate",
        ("def _right(out_a, out_b, w):\n"
         "    g = torch.sigmoid(w)[None, :, None, None]\n"
         "    return g * out_a + (1 - g) * out_b\n"
         "import course_lib.grading.compare as _C\n_orig = _C.grads\n"
         "_C.grads = lambda fn, inputs, weight: _orig(_right, inputs, weight)",
         "def gate(out_a, out_b, w):  # WRONG: the gate is detached, so w never learns\n"
         "    g = torch.sigmoid(w).detach()[None, :, None, None]\n"
         "    return g * out_a + (1 - g) * out_b"),
        "", id="compare_grads-a_gate_that_is_not_learned"),
]


@pytest.mark.slow
@needs_bwrap
@pytest.mark.parametrize("exercise_id,cells,said", PATCHED_PROBES)
def test_B10_patching_a_probe_does_not_pass_the_wrong_answer_it_would_hide(tmp_path, exercise_id, cells, said):
    item = graded_item(tmp_path, exercise_id, *cells)
    assert item.score < 2, item.feedback
    assert said in item.feedback


@pytest.mark.slow
@needs_bwrap
def test_B10_sending_the_probe_another_function_than_the_one_graded_is_caught(tmp_path):
    """The kernel's export is patched to hand the probe a correct, detaching function."""
    item = graded_item(
        tmp_path, "05.segment_update",
        "def good(K_mem, V_mem, k, v, mem_len):\n"
        "    return (torch.cat([K_mem, k], 2)[:, :, -mem_len:].detach(),\n"
        "            torch.cat([V_mem, v], 2)[:, :, -mem_len:].detach())",
        "import course_lib.grading.grader.remote as R\n_real = R.export_function\n"
        "R.export_function = lambda fn, depth=0: _real(good)",
        "def segment_update(K_mem, V_mem, k, v, mem_len):  # WRONG: no stop-gradient, and keeps one pair too many\n"
        "    return torch.cat([K_mem, k], 2)[:, :, -mem_len - 1:], torch.cat([V_mem, v], 2)[:, :, -mem_len - 1:]",
    )
    assert item.score < 1, item.feedback


@pytest.mark.slow
@needs_bwrap
def test_a_right_answer_that_uses_its_own_helpers_and_modules_passes_the_probe(tmp_path):
    item = graded_item(
        tmp_path, "05.segment_update",
        "import torch as T\nKEEP_LAST = -1\n"
        "def _newest(x, n):\n    return x[:, :, -n:]\n"
        "def segment_update(K_mem, V_mem, k, v, mem_len):\n"
        "    K = _newest(T.cat([K_mem, k], 2), mem_len).detach()\n"
        "    V = _newest(T.cat([V_mem, v], 2), mem_len).detach()\n"
        "    return K, V",
    )
    assert item.score == 2, item.feedback


# ---------------------------------------------------------------- B01, B02, B17: what the kernel sees


@pytest.mark.slow
@needs_bwrap
def test_B01_B02_B17_secrets_files_and_other_submissions_stay_out_of_the_kernel_and_the_report(
        tmp_path, monkeypatch):
    token = f"sk-instructor-{uuid.uuid4().hex}"
    monkeypatch.setenv("INSTRUCTOR_TOKEN", token)
    home_secret = Path.home() / f".course_secret_{uuid.uuid4().hex}"
    home_secret.write_text("HOME-SECRET-5678")
    other = Path("/var/tmp") / f"course_grade_other_{uuid.uuid4().hex}"
    other.mkdir()
    (other / "bob.ipynb").write_text("BOB-ANSWERS-9999")
    (tmp_path / "bob_beside.ipynb").write_text("BOB-BESIDE-1111")  # another submission in the same folder
    try:
        probe = (
            "found = {}\n"
            f"for p in [{str(home_secret)!r}, {str(ROOT / 'README.md')!r},\n"
            f"          {str(ROOT / 'solutions' / '03_two_routes_solutions.ipynb')!r}]:\n"
            "    try:\n        found[p] = open(p).read()[:40]\n"
            "    except Exception as e:\n        found[p] = 'ERR ' + type(e).__name__\n"
            "found['var_tmp'] = glob.glob('/var/tmp/*') + glob.glob('/var/tmp/*/*')\n"
            "found['here'] = sorted(os.listdir('.'))\n"
            "found['env'] = dict(os.environ)\n"
            "LEAK = json.dumps(found)\nprint(LEAK)")
        path = write_notebook(
            tmp_path / "03_leak.ipynb", IMPORT + "\nimport json", RIGHT_03, probe,
            "raise RuntimeError('LEAK ' + LEAK)",
            "def strided_cache():\n    return LEAK",
            "def evictable(mask, t):\n"
            "    raise type('LEAK=' + LEAK, (Exception,), {})('exfiltrated through the exception class name')",
            *CHECKS_03, 'check("03.sparse_cache", strided_cache)',
            # B02: run the instructor's solutions from disk
            f"sol = json.load(open({str(ROOT / 'solutions' / '03_two_routes_solutions.ipynb')!r}))\n")
        report = grade_notebook(path, timeout=120)
        text = report_text(report)
        for secret in (token, "HOME-SECRET-5678", "BOB-ANSWERS-9999", "BOB-BESIDE-1111", "course_grade_other",
                       "INSTRUCTOR_TOKEN"):
            assert secret not in text, secret
        errors = dict(report.cell_errors)
        assert any("FileNotFoundError" in e for e in errors.values()), "the solutions are not there to read"
        assert len(text) < 30_000
        name_error = items(report)["03.evictable"].feedback
        assert "exfiltrated" not in name_error or len(name_error) < 600
    finally:
        home_secret.unlink()
        (other / "bob.ipynb").unlink()
        other.rmdir()


# ---------------------------------------------------------------- B15, B16, CPU of the tree: limits


@pytest.mark.slow
def test_B15_cells_that_each_overstay_cannot_stretch_the_grade_past_its_limit(tmp_path):
    cells = []
    for _ in range(8):
        cells += ["import time\ntime.sleep(1000)", "x = 1"]
    path = write_notebook(tmp_path / "03_slow.ipynb", IMPORT, *cells, *CHECKS_03)
    start = time.monotonic()
    report = grade_notebook(path, timeout=25, cell_timeout=10)
    assert time.monotonic() - start < 25 + 45
    assert [h["limit"] for h in report.limits] == ["time"], report.limits
    assert "25 s limit" in report.stopped
    assert "not reached" in items(report)["03.linear_attention"].feedback


@pytest.mark.slow
@needs_bwrap
def test_B16_the_private_tmp_and_the_working_folder_are_size_limited(tmp_path):
    def write(name):
        return (f"chunk = b'\\0' * 2**24\nwith open({name!r}, 'wb') as f:\n"
                "    for _ in range(16):\n        f.write(chunk)")

    path = write_notebook(tmp_path / "03_disk.ipynb", IMPORT, write("bigfile.bin"), write("/tmp/bigfile.bin"),
                          "ok = 1", 'check("03.sparse_cache", "B")')
    report = grade_notebook(path, timeout=120, disk_gb=0.25)  # 128 MiB for /tmp, 128 MiB for the work copy
    errors = dict(report.cell_errors)
    assert len(errors) == 2 and all("No space left on device" in e for e in errors.values()), errors
    assert items(report)["03.sparse_cache"].score == 1, "the kernel goes on after a full disk"


@pytest.mark.slow
@needs_bwrap
def test_B16_answers_written_past_the_disk_limit_stop_the_kernel(tmp_path):
    path = write_notebook(
        tmp_path / "03_disk_answers.ipynb", IMPORT,
        "import course_lib.grading.grader.remote as R\n"
        "folder = [p for p in glob.glob(os.path.join(os.getcwd(), '..', '*')) if p.endswith('responses')][0]\n"
        "for n in range(40):\n"
        "    with open(os.path.join(folder, f'filler-{n}'), 'wb') as f:\n"
        "        f.write(b'\\0' * 2**23)\n"
        "        f.flush()\n"
        "import time\ntime.sleep(5)",
        'check("03.sparse_cache", "B")')
    report = grade_notebook(path, timeout=120, disk_gb=0.125)
    assert "disk" in [h["limit"] for h in report.limits], (report.limits, report.stopped)
    assert items(report)["03.sparse_cache"].score == 0


@pytest.mark.slow
def test_the_cpu_limit_holds_for_the_whole_process_tree(tmp_path):
    burn = ("import subprocess, sys\n"
            "code = 'import time\\nend = time.process_time() + 8\\nwhile time.process_time() < end: pass'\n"
            "kids = [subprocess.Popen([sys.executable, '-c', code]) for _ in range(4)]\n"
            "[k.wait() for k in kids]")
    path = write_notebook(tmp_path / "03_cpu.ipynb", IMPORT, burn, 'check("03.sparse_cache", "B")')
    report = grade_notebook(path, timeout=120, cpu_seconds=12)  # each child stays under 12 s, together 32 s
    assert "cpu" in [h["limit"] for h in report.limits], (report.limits, report.stopped)
    assert items(report)["03.sparse_cache"].score == 0


# ---------------------------------------------------------------- B13: malformed


def test_B13_a_cell_whose_source_is_not_text_gets_a_clear_message(tmp_path, capsys):
    from course_lib.__main__ import main as course_main

    path = tmp_path / "03_odd.ipynb"
    nb = json.loads(nbformat.writes(new_notebook(cells=[new_code_cell("x = 1")])))
    nb["cells"][0]["source"] = [1, 2, 3]
    path.write_text(json.dumps(nb))
    assert course_main(["grade", str(path)]) == 2
    assert "cell 1's source must be text, got list" in capsys.readouterr().err


# ---------------------------------------------------------------- the exchange, file by file (no kernel needed)


def test_the_grader_never_writes_through_a_link_planted_under_a_request_name(tmp_path):
    from course_lib.grading.grader.remote import Exchange

    exchange = Exchange(tmp_path / "requests", tmp_path / "responses")
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    request, _ = exchange.names(1)
    os.symlink(victim, exchange.requests / request)
    with pytest.raises(OSError):
        exchange.write_request(request, b"payload")
    assert victim.read_text() == "untouched"


@pytest.mark.parametrize("plant", ["symlink", "fifo", "dev-zero", "folder"])
def test_an_answer_that_is_not_a_plain_file_is_refused_at_once(tmp_path, plant):
    from course_lib.grading.grader.remote import Exchange, RemoteError

    exchange = Exchange(tmp_path / "requests", tmp_path / "responses")
    _, response = exchange.names(1)
    target = exchange.responses / response
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET")
    {"symlink": lambda: os.symlink(secret, target), "fifo": lambda: os.mkfifo(target),
     "dev-zero": lambda: os.symlink("/dev/zero", target), "folder": lambda: target.mkdir()}[plant]()
    start = time.monotonic()
    with pytest.raises(RemoteError) as err:
        exchange.read_response(response)
    assert time.monotonic() - start < 1 and "not a plain file" in str(err.value)


def test_replacing_the_answers_folder_by_a_link_changes_nothing_the_grader_reads(tmp_path):
    from course_lib.grading.grader.remote import Exchange

    exchange = Exchange(tmp_path / "requests", tmp_path / "responses")
    _, response = exchange.names(1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / response).write_bytes(b"planted")
    exchange.responses.rename(tmp_path / "moved")
    os.symlink(elsewhere, tmp_path / "responses")
    assert exchange.read_response(response) is None, "the grader reads the folder it opened, not the link"


def test_an_oversized_answer_is_refused_without_reading_it(tmp_path, monkeypatch):
    from course_lib.grading.grader import remote

    monkeypatch.setattr(remote, "MAX_RESPONSE_BYTES", 1024)
    exchange = remote.Exchange(tmp_path / "requests", tmp_path / "responses")
    _, response = exchange.names(1)
    with open(exchange.responses / response, "wb") as f:
        f.truncate(2**40)  # a sparse 1 TiB file
    with pytest.raises(remote.RemoteError, match="at most 1024"):
        exchange.read_response(response)


def test_B09_a_sparse_tensor_with_indices_out_of_range_is_refused(tmp_path):
    import torch

    from course_lib.grading.grader.remote import RemoteError, loopback_answer

    def answer():
        return torch.sparse_coo_tensor([[0, 10**9], [0, 5]], [1.0, 2.0], (4, 4), check_invariants=False)

    _, remote_answer = loopback_answer(answer, tmp_path)
    with pytest.raises(RemoteError, match="strided"):
        remote_answer()


def test_exception_names_from_the_kernel_reach_a_report_short_and_plain():
    from course_lib.grading.grader.remote import remote_error

    err = remote_error("LEAK=" + "{'secret': 1}" * 1000, "x" * 10_000)
    assert len(err.remote_type) <= 60 and "{" not in err.remote_type and len(str(err)) <= 300
