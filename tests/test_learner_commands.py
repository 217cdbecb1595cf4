"""The commands a learner runs keep the README's promises (review 2026-12-01, part C).

* ``make exercises`` never overwrites an exercise notebook that holds a learner's answers,
  committed to git or not; keeping it is a normal outcome (exit 0), and ``FORCE=1`` moves the
  learner's copy to exercises/backups/ first and says how to bring it back;
* ``make notebooks NB=...`` does the same for a lesson or solution notebook edited by hand,
  still rebuilds after an edit of the source (the author's workflow), and answers a bad ``NB``
  in one line;
* ``make lab`` serves the project's root (lessons and exercises), opens lesson 00 and starts
  as root;
* ``make bench`` leaves no untracked file in the repository's root;
* lesson 06 prints no digits of rounding noise (its stored outputs compare on any CPU).

The scenarios run on throw-away course folders in tmp_path; where git or make is part of the
story, the folder is a clone-like tree with its own git and the course's modules copied into it,
so nothing here touches the real exercises/ or notebooks/.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from course_lib.tools.execute_notebooks import main as make_notebooks
from course_lib.tools.make_exercises import exercise_path
from course_lib.tools.make_exercises import main as make_exercises

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)
HAS_MAKE = shutil.which("make") is not None
HAS_GIT = shutil.which("git") is not None

HEADER = ("---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n"
          "kernelspec:\n  display_name: Python 3\n  language: python\n  name: python3\n---\n\n")


def solution_md(body: str = "One paragraph.") -> str:
    return (HEADER + "# Demo\n\n```{code-cell} ipython3\ndef f():\n    ### BEGIN SOLUTION\n    return 1\n"
            f"    ### END SOLUTION\n```\n\n{body}\n")


def lesson_md(body: str = "Some prose.") -> str:
    return HEADER + f"# Demo lesson\n\n```{{code-cell}} ipython3\nx = 1\n```\n\n{body}\n"


def git(cwd: Path, *args: str) -> str:
    out = subprocess.run(["git", "-c", "user.name=learner", "-c", "user.email=learner@example.org",
                          "-c", "commit.gpgsign=false", *args], cwd=cwd, capture_output=True, text=True,
                         timeout=60, check=True)
    return out.stdout


def clone_like(tmp_path: Path) -> Path:
    """A learner's copy of the course: the Makefile, the modules the commands run (copied, so that
    their ROOT is this folder) and a git repository, with one solution and one lesson source."""
    root = tmp_path / "course"
    for rel in ("Makefile", "course_lib/tools/make_exercises.py", "course_lib/tools/execute_notebooks.py",
                "course_lib/tools/sources.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, root / rel)
    for package in ("course_lib", "course_lib/tools"):
        (root / package / "__init__.py").write_text("")
    (root / "solutions" / "src").mkdir(parents=True)
    (root / "solutions" / "src" / "07_demo_solutions.md").write_text(solution_md())
    (root / "notebooks" / "src").mkdir(parents=True)
    (root / "notebooks" / "src" / "07_demo.md").write_text(lesson_md())
    if HAS_GIT:
        git(root, "init", "-q")
    return root


def make(root: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``make ARGS`` in ``root`` with this test's virtual environment (never reinstalled)."""
    env = dict(os.environ, COURSE_DEVICE="cpu", COURSE_QUIET="1", PYTHONHASHSEED="0")
    env.pop("MAKEFLAGS", None)
    return subprocess.run(["make", "--no-print-directory", f"VENV={VENV}", "-o", f"{VENV}/.installed", *args],
                          cwd=root, capture_output=True, text=True, timeout=timeout, env=env)


def fill(path: Path) -> str:
    """Answer the exercise as a learner would; returns the notebook's new text."""
    answered = path.read_text().replace("raise NotImplementedError()", "return 1  # my answer")
    path.write_text(answered)
    return answered


# ---------------------------------------------------------------- make exercises


@pytest.mark.skipif(not (HAS_MAKE and HAS_GIT), reason="needs make and git")
def test_a_learner_commits_filled_exercises_runs_make_exercises_and_their_answers_are_still_there(tmp_path):
    root = clone_like(tmp_path)
    first = make(root, "exercises")
    assert first.returncode == 0, first.stderr
    target = root / "exercises" / "07_demo_exercises.ipynb"
    git(root, "add", "-A")
    git(root, "commit", "-qm", "the course as cloned")

    answered = fill(target)
    git(root, "commit", "-qam", "my answers so far")
    again = make(root, "exercises")
    assert target.read_text() == answered, "committed answers must not be replaced by the stubs"
    assert again.returncode == 0, f"keeping the learner's work is no error:\n{again.stdout}{again.stderr}"
    assert "Error" not in again.stderr
    assert "left exercises/07_demo_exercises.ipynb as it is" in again.stderr
    assert "make exercises FORCE=1" in again.stderr


@pytest.mark.skipif(not (HAS_MAKE and HAS_GIT), reason="needs make and git")
def test_with_force_the_learners_copy_goes_to_an_ignored_backup_that_the_message_says_how_to_bring_back(tmp_path):
    root = clone_like(tmp_path)
    shutil.copy2(ROOT / ".gitignore", root / ".gitignore")
    make(root, "exercises")
    target = root / "exercises" / "07_demo_exercises.ipynb"
    answered = fill(target)
    (root / "solutions" / "src" / "07_demo_solutions.md").write_text(solution_md("The solution changed since."))

    forced = make(root, "exercises", "FORCE=1")
    assert forced.returncode == 0, forced.stderr
    (saved,) = (root / "exercises" / "backups").glob("07_demo_exercises-*.ipynb")
    assert saved.read_text() == answered
    assert "The solution changed since." in target.read_text()
    rel = saved.relative_to(root)
    assert f"moved exercises/07_demo_exercises.ipynb (it holds your answers) to {rel}" in forced.stdout
    assert f"to bring it back: mv {rel} exercises/07_demo_exercises.ipynb" in forced.stdout
    assert git(root, "status", "--porcelain", "--untracked-files=all", "exercises/backups") == "", \
        "exercises/backups/ is in .gitignore"


def test_a_notebook_the_learner_only_ran_or_that_is_still_as_generated_is_refreshed_without_force(tmp_path):
    src = tmp_path / "solutions" / "src"
    src.mkdir(parents=True)
    path = src / "07_demo_solutions.md"
    path.write_text(solution_md())
    assert make_exercises([str(path)]) == 0
    target = exercise_path(path)
    path.write_text(solution_md("Changed."))
    assert make_exercises([str(path)]) == 0 and "Changed." in target.read_text()
    assert not (target.parent / "backups").exists(), "nothing of the learner's was there to back up"


# ---------------------------------------------------------------- make notebooks


def lesson_tree(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "notebooks" / "src"
    src.mkdir(parents=True)
    source = src / "07_demo.md"
    source.write_text(lesson_md())
    return source, tmp_path / "notebooks" / "07_demo.ipynb"


def add_note(notebook: Path, text: str = "My own note: the cache grows with m.") -> str:
    nb = nbformat.read(notebook, as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell(text))
    nbformat.write(nb, notebook)
    return notebook.read_text()


def test_a_note_the_learner_added_to_a_lesson_survives_make_notebooks(tmp_path, capsys):
    source, notebook = lesson_tree(tmp_path)
    assert make_notebooks(["--no-execute", str(notebook)]) == 0
    mine = add_note(notebook)

    assert make_notebooks(["--no-execute", str(notebook)]) == 0, "keeping the learner's edit is no error"
    assert notebook.read_text() == mine, "the note must not be overwritten"
    err = capsys.readouterr().err
    assert "as it is" in err and "FORCE=1" in err and "backups/notebooks/" in err

    assert make_notebooks(["--no-execute", "--force", str(notebook)]) == 0
    (saved,) = (tmp_path / "backups" / "notebooks").glob("07_demo-*.ipynb")
    assert saved.read_text() == mine, "FORCE keeps the learner's version as a backup"
    assert "My own note" not in notebook.read_text()
    out = capsys.readouterr().out
    assert f"moved {notebook} (it was edited by hand) to {saved}" in out and "to bring it back: mv" in out


def test_an_author_edits_the_source_and_make_notebooks_rebuilds_without_force(tmp_path):
    source, notebook = lesson_tree(tmp_path)
    assert make_notebooks(["--no-execute", str(source)]) == 0
    for version in ("Second version.", "Third version."):  # the notebook equals what the previous source made
        source.write_text(lesson_md(version))
        assert make_notebooks(["--no-execute", str(notebook)]) == 0
        assert version in notebook.read_text()
    assert not (tmp_path / "backups").exists()


@pytest.mark.skipif(not HAS_GIT, reason="needs git")
def test_a_notebook_built_before_fingerprints_is_rebuilt_when_it_equals_its_committed_source(tmp_path):
    source, notebook = lesson_tree(tmp_path)
    make_notebooks(["--no-execute", str(source)])
    nb = nbformat.read(notebook, as_version=4)
    del nb.metadata["course"]  # as the notebooks committed before this change
    nbformat.write(nb, notebook)
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "course")
    source.write_text(lesson_md("Edited source."))
    assert make_notebooks(["--no-execute", str(notebook)]) == 0
    assert "Edited source." in notebook.read_text()


def test_make_notebooks_executes_the_rebuilt_notebook_and_stamps_what_it_built(tmp_path):
    source, notebook = lesson_tree(tmp_path)
    source.write_text(HEADER + "# Demo\n\n```{code-cell} ipython3\nprint(6 * 7)\n```\n")
    assert make_notebooks([str(notebook)]) == 0
    nb = nbformat.read(notebook, as_version=4)
    assert nb.cells[1].outputs[0]["text"] == "42\n"
    assert re.fullmatch(r"[0-9a-f]{16}", nb.metadata["course"]["built_from"])


@pytest.mark.skipif(not (HAS_MAKE and HAS_GIT), reason="needs make and git")
def test_a_learner_adds_a_note_to_a_committed_lesson_and_make_notebooks_keeps_it_until_force(tmp_path):
    root = clone_like(tmp_path)
    shutil.copy2(ROOT / ".gitignore", root / ".gitignore")
    built = make(root, "notebooks", "NB=notebooks/07_demo.ipynb")
    assert built.returncode == 0, built.stderr
    notebook = root / "notebooks" / "07_demo.ipynb"
    mine = add_note(notebook)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "the lesson with my note")

    kept = make(root, "notebooks", "NB=notebooks/07_demo.ipynb")
    assert kept.returncode == 0 and "Error" not in kept.stderr, kept.stderr
    assert notebook.read_text() == mine, "a committed note is the learner's work too"
    assert "left notebooks/07_demo.ipynb as it is" in kept.stderr
    assert "make notebooks NB=notebooks/07_demo.ipynb FORCE=1" in kept.stderr

    forced = make(root, "notebooks", "NB=notebooks/07_demo.ipynb", "FORCE=1")
    assert forced.returncode == 0, forced.stderr
    (saved,) = (root / "backups" / "notebooks").glob("07_demo-*.ipynb")
    assert saved.read_text() == mine
    assert "My own note" not in notebook.read_text()
    assert f"to bring it back: mv {saved.relative_to(root)} notebooks/07_demo.ipynb" in forced.stdout
    assert git(root, "status", "--porcelain", "--untracked-files=all", "backups") == "", "backups/ is ignored"


@pytest.mark.skipif(not HAS_MAKE, reason="needs make")
@pytest.mark.parametrize("nb, expected", [
    ("exercises/03_two_routes_exercises.ipynb", "generated by `make exercises`"),
    ("README.md", "expected a lesson or solution notebook"),
    ("notebooks/99_nothing.ipynb", "expected notebooks/src/99_nothing.md"),
])
def test_a_bad_nb_gets_one_line_naming_the_argument_what_it_got_and_what_was_expected(nb, expected):
    done = make(ROOT, "notebooks", f"NB={nb}", timeout=120)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    # make's own "Error 2" line ("make[1]: ***" when the suite itself runs under make)
    lines = [line for line in done.stderr.splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", line)]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"make notebooks: NB={nb}: ") and expected in lines[0]


# ---------------------------------------------------------------- make lab


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not HAS_MAKE, reason="needs make")
def test_make_lab_serves_the_lessons_and_the_exercises_opens_lesson_00_and_starts_as_root(tmp_path):
    pytest.importorskip("jupyterlab")
    port = free_port()
    extra = (f"--no-browser --ip 127.0.0.1 --port {port} --ServerApp.port_retries=0 --ServerApp.token= "
             "--ServerApp.password= --LabApp.news_url=None "
             f"--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate --LabApp.workspaces_dir={tmp_path}")
    dry = make(ROOT, "-n", "lab", f"LAB_ARGS={extra}", timeout=60)
    assert dry.returncode == 0, dry.stderr
    (line,) = [x for x in dry.stdout.splitlines() if "jupyter lab" in x or "jupyter-lab" in x]
    argv = shlex.split(line)
    assert f"--port {port}" in line, "LAB_ARGS reaches JupyterLab"
    assert ("--allow-root" in argv) == (os.getuid() == 0), "--allow-root exactly when running as root"

    env = dict(os.environ, COURSE_DEVICE="cpu", COURSE_QUIET="1")
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR", "IPYTHONDIR"):
        env[var] = str(tmp_path / var.lower())
    log = open(tmp_path / "lab.log", "w")
    server = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        listing, deadline = None, time.monotonic() + 120
        while listing is None and time.monotonic() < deadline:
            assert server.poll() is None, "JupyterLab exited:\n" + (tmp_path / "lab.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents", timeout=5) as answer:
                    listing = json.load(answer)
            except OSError:
                time.sleep(0.5)
        assert listing is not None, "JupyterLab did not answer:\n" + (tmp_path / "lab.log").read_text()[-3000:]
        names = {item["name"] for item in listing["content"]}
        assert {"notebooks", "exercises"} <= names, f"the file browser shows {sorted(names)}"
        opened = [p.read_text() for p in (tmp_path / "jupyter_runtime_dir").glob("jpserver-*-open.html")]
        assert any("notebooks/00_welcome.ipynb" in text for text in opened), "lesson 00 is what it opens"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
        log.close()


# ---------------------------------------------------------------- make bench


@pytest.mark.skipif(not (HAS_MAKE and HAS_GIT), reason="needs make and git")
def test_make_bench_writes_its_plot_where_git_ignores_it():
    dry = make(ROOT, "-n", "bench", timeout=60)
    (line,) = [x for x in dry.stdout.splitlines() if "course_lib bench" in x]
    argv = shlex.split(line)
    assert "--out" in argv, "without --out the plot lands in the root as bench_decode.png"
    out = argv[argv.index("--out") + 1]
    assert Path(out).parent != Path("."), f"{out} is in the repository's root"
    ignored = subprocess.run(["git", "check-ignore", "-q", out], cwd=ROOT, timeout=30)
    assert ignored.returncode == 0, f"{out} is not ignored by git"
    stray = subprocess.run(["git", "check-ignore", "-q", "bench_decode.png"], cwd=ROOT, timeout=30)
    assert stray.returncode == 0, "a plot written to the root by `python -m course_lib bench` is ignored too"
    memories = [argv[i + 1] for i, a in enumerate(argv) if a == "--memory"]
    assert memories == ["full", "window", "linear", "compressive"], "the memories README.md's table compares"


# ---------------------------------------------------------------- lesson 06 on any CPU


def test_lesson_06_prints_no_digits_of_rounding_noise():
    nb = nbformat.read(ROOT / "notebooks" / "06_compressive_transformer.ipynb", as_version=4)
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and "parameters that received a gradient" in c.source]
    text = "".join(o.get("text", "") for o in cell.outputs)
    assert "parameters that received a gradient" in text, "the gradient check is printed"
    # float32 digits of a loss or gradient differ from one CPU to another and fail strict nbval
    digits = re.findall(r"\d\.\d+(?:e[-+]?\d+)?", text)
    assert not digits, f"the cell prints float digits that differ between CPUs: {digits}"
    assert "0 (rounding)" in text and "'yes'" in text, "each gradient is printed as above or below the tolerance"
    assert not re.findall(r"\de-\d+", text), "no tolerance or value in scientific notation either"
