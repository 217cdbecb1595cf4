"""Attacks on the grade command, each as a hostile notebook: contained, nothing outside the
sandbox written, the score not inflated (issue 11 C and D).

The scores come from checks run in the grading process, which call the learner's answer
in the sandboxed kernel; the maximum is the lessons' registered totals. The sandbox
(bubblewrap) keeps the file system read-only except a private /tmp and the throw-away
working copy, has no network, and ends the whole process tree; the kernel gets memory
and CPU-time limits. Tests that need bubblewrap are skipped where it cannot run.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import nbformat
import pytest
from notebook_helpers import write_notebook

import course_lib.grading as grading_package
from course_lib.__main__ import main as course_main
from course_lib.grading.grader import sandbox
from course_lib.grading.grader.cli import grade_notebook

ROOT = Path(__file__).resolve().parents[1]
GRADING_INIT = Path(grading_package.__file__)
needs_bwrap = pytest.mark.skipif(bool(sandbox.bwrap_reason()), reason=f"no sandbox: {sandbox.bwrap_reason()}")

IMPORT = "from course_lib.grading import check"
WRONG_ATTENTION = "def scaled_attention(q, k, v, mask=None):\n    return v[..., : q.shape[2], :] * 0 + 1"




def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def items(report) -> dict:
    return {item.id: item for item in report.items}


@pytest.mark.slow
@needs_bwrap
def test_forging_attacks_inside_the_kernel_gain_nothing_and_write_nothing_outside(tmp_path):
    marker = f"course_attack_{uuid.uuid4().hex}"
    outside = Path("/tmp") / marker  # the system's temporary folder
    before = digest(GRADING_INIT)
    path = write_notebook(
        tmp_path / "01_attacks.ipynb",
        "from course_lib.grading import check\nimport course_lib.grading as g, course_lib.grading.core as core",
        WRONG_ATTENTION,
        # C: make every grading function in the kernel report full marks
        "full = lambda ex, answer, **kw: core.CheckResult(ex.id, 1000.0, 1000.0, 'passed', [])\n"
        "g.run_exercise = core.run_exercise = full\n"
        "g.check = lambda *a, **k: None",
        # C: records appended to any result file the kernel can name
        "import os, json\n"
        "for name in [os.environ.get('COURSE_GRADE_RECORD') or 'records.jsonl', '/tmp/records.jsonl']:\n"
        "    with open(name, 'a') as f:\n"
        "        for _ in range(5000):\n"
        "            f.write(json.dumps({'id': '01.first_query', 'score': 5000, 'max_score': 1}) + '\\n')",
        'check("01.scaled_attention", scaled_attention)',
        # C: check again with the reference after the wrong answer
        'from course_lib import attention_reference\ncheck("01.scaled_attention", attention_reference)',
        # D: write outside (system temp, the course's own code), and keep a process alive
        f"open({str(outside)!r}, 'w').write('escaped')",
        f"with open({str(GRADING_INIT)!r}, 'a') as f:\n    f.write('\\nrun_exercise = None\\n')",
        "import urllib.request\nurllib.request.urlopen('http://1.1.1.1', timeout=3)",
        "import subprocess, sys\n"
        f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)  # {marker}'],"
        " start_new_session=True)",
        # C: delete whatever files the kernel can reach in its grading folder
        "import glob\nfor p in glob.glob(os.path.join(os.path.dirname(os.getcwd()), '**'), recursive=True):\n"
        "    if os.path.isfile(p):\n        os.remove(p)",
        'def first_query():\n    return "C"\ncheck("01.first_query", first_query)',
    )
    report = grade_notebook(path, timeout=60)
    found = items(report)
    assert report.sandbox == "bubblewrap"
    shape_only = round(2 / len(grading_package.get_exercise("01.scaled_attention").checks), 2)
    assert found["01.scaled_attention"].score == shape_only, found["01.scaled_attention"].feedback
    assert found["01.first_query"].score == 0 and "Causality comes from the mask" in found["01.first_query"].feedback
    assert (report.score, report.max_score) == (shape_only, 8), "maximum = lesson 01's registered total"
    errors = dict(report.cell_errors)
    # cell 8 wrote to the sandbox's own /tmp; cell 12 found only read-only files above its working folder
    assert sorted(errors) == [9, 10, 12], report.cell_errors
    assert "Read-only file system" in errors[9] and "Read-only file system" in errors[12]
    assert "URLError" in errors[10]
    assert not outside.exists(), "the system's /tmp was not written"
    assert digest(GRADING_INIT) == before, "course_lib was not modified"
    alive = [p for p in Path("/proc").glob("[0-9]*") if marker in _cmdline(p)]
    assert alive == [], "a process started with start_new_session=True ended with the sandbox"


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.slow
def test_a_renamed_notebook_with_its_failing_check_cells_deleted_keeps_the_lessons_maximum(tmp_path):
    source = write_notebook(tmp_path / "01_attention_exercises.ipynb", IMPORT, 'check("01.first_query", "B")',
                            metadata={"course": {"lesson": "01"}})
    renamed = tmp_path / "homework.ipynb"
    source.rename(renamed)
    report = grade_notebook(renamed, timeout=60)
    assert report.lessons == ["01"] and (report.score, report.max_score) == (1, 8)
    # without the metadata too: the lesson of the exercises it checks
    nb = nbformat.read(renamed, as_version=4)
    nb.metadata.pop("course")
    nbformat.write(nb, renamed)
    report = grade_notebook(renamed, timeout=60)
    assert (report.score, report.max_score) == (1, 8)
    assert items(report)["01.scaled_attention"].feedback == "not reached: no cell calls check for this exercise"


@pytest.mark.slow
def test_memory_and_cpu_limits_contain_a_greedy_notebook(tmp_path):
    path = write_notebook(
        tmp_path / "01_greedy.ipynb",
        IMPORT,
        "import torch\nheld = []\nfor _ in range(30):\n    held.append(torch.ones(2**28))  # 1 GiB each",
        "del held\nok = 1",
        'check("01.first_query", "B")',
        "while True:\n    pass",  # CPU time runs out: the kernel is killed
        'check("01.window_scores", 1836032)',
    )
    report = grade_notebook(path, timeout=60, memory_gb=3, cpu_seconds=20)
    errors = dict(report.cell_errors)
    assert 3 in errors and ("memory" in errors[3].lower() or "MemoryError" in errors[3]), errors
    assert 4 not in errors, "after the failed allocation the kernel goes on"
    found = items(report)
    assert found["01.first_query"].score == 1
    assert found["01.window_scores"].score == 0 and report.stopped, report.stopped
    assert [hit["limit"] for hit in report.limits] == ["cpu", "memory"], report.limits
    assert "limit 20 s" in report.stopped and "3 GiB" in report.limits[1]["reason"]


@pytest.mark.slow
def test_without_a_sandbox_the_grade_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COURSE_GRADE_NO_SANDBOX", "1")
    path = write_notebook(tmp_path / "01_plain.ipynb", IMPORT, 'check("01.first_query", "B")')
    assert course_main(["grade", str(path)]) == 0
    captured = capsys.readouterr()
    assert "grade: no sandbox: COURSE_GRADE_NO_SANDBOX is set" in captured.err
    assert "could read and write your files" in captured.err
    assert "graded WITHOUT a sandbox" in captured.out
    assert captured.out.splitlines()[-2].split() == ["total", "1/8"]


def test_the_kernel_command_sets_limits_and_wraps_bubblewrap(tmp_path):
    layout = sandbox.Layout.create(tmp_path / "grade")
    limits = sandbox.Limits(memory=2**30, cpu=60, disk=2**28)
    argv = sandbox.kernel_argv(layout, sandbox=True, limits=limits)
    launcher = argv.index("course_lib.grading.grader.sandbox") - 2
    assert argv[launcher + 1:launcher + 9] == ["-m", "course_lib.grading.grader.sandbox", "--memory", str(2**30),
                                                "--cpu", str(60 + sandbox.CPU_BACKSTOP), "--fsize", str(2**28)]
    joined = " ".join(argv)
    for flag in ("--tmpfs /tmp", "--unshare-all", "--die-with-parent", "--new-session", "--clearenv",
                 "--remount-ro /", f"--ro-bind {layout.requests} {layout.requests}",
                 f"--bind {layout.responses} {layout.responses}", f"--tmpfs {layout.work}"):
        assert flag in joined
    assert "--ro-bind / /" not in joined, "an allow-list, not the whole file system"
    assert f"--ro-bind {ROOT} " not in joined + " ", "the course's package only, not its checkout"
    assert argv[-3:] == ["ipykernel_launcher", "-f", "{connection_file}"]
    plain = sandbox.kernel_argv(layout, sandbox=False, limits=limits)
    assert "bwrap" not in " ".join(plain) and "--memory" in plain


def test_the_limits_launcher_applies_them_before_running_the_command(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "course_lib.grading.grader.sandbox", "--memory", str(2**31),
                          "--cpu", "7", "--", sys.executable, "-c",
                          "import resource; print(resource.getrlimit(resource.RLIMIT_AS)[0], "
                          "resource.getrlimit(resource.RLIMIT_CPU)[0])"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ})
    assert out.stdout.split() == [str(2**31), "7"], out.stderr


SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*_solutions.ipynb"))


@pytest.mark.slow
@needs_bwrap
@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.name[:2] for p in SOLUTIONS])
def test_every_worked_solution_gets_full_marks_through_the_sandbox(path):
    """Honest notebooks lose nothing to the allow-list, the minimal environment, the probe
    interpreter or the default limits."""
    report = grade_notebook(path)
    assert report.sandbox == "bubblewrap" and not report.limits and not report.stopped, report.table()
    assert report.score == report.max_score > 0, report.table()
