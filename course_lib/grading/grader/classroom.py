"""Grading a class: many submissions, each in its own sandbox, in parallel, into a gradebook.

``python -m course_lib grade PATH... [--jobs N] [--gradebook FILE.csv] [--feedback DIR] [--dask ADDRESS]``
(and ``progress``) come here. :func:`collect` turns files, folders and globs into a sorted
list of notebooks; :func:`grade_submission` grades one notebook *given as bytes* with
:func:`~course_lib.grading.grader.cli.grade_notebook` (the single-notebook grader, its sandbox and
limits unchanged) and returns a JSON-able dict, so that the same function runs in a local
worker process (:class:`concurrent.futures.ProcessPoolExecutor`) or on a Dask worker
(``distributed``): only the notebook's bytes go out, only that dict comes back.

:func:`grade_class` ties them together: it skips the submissions whose ``(path, sha256)``
the gradebook already holds (:mod:`course_lib.grading.grader.gradebook`), grades the others,
writes each row as soon as its submission finishes (appended and fsynced, so a run that is
interrupted loses no finished row), writes each student's feedback
(:mod:`course_lib.grading.grader.feedback`) and shows a progress bar on stderr.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from . import GradingError

__all__ = ["collect", "student_id", "grade_submission", "status_of", "grade_class", "ClassRun", "Submission",
           "GRADED", "STATUSES", "default_jobs", "longest_first",
           "progress", "progress_entries", "progress_table"]

GRADED = "graded"
# every status a row can have, and what it means (the --help and docs/grading.md list them)
STATUSES = {
    GRADED: "the notebook ran to its end (or past cells that raised); its score is final",
    "crashed": "the kernel died (the notebook ended its own process, or a limit killed it)",
    "timeout": "the grade ran past --timeout, or two cells in a row past --cell-timeout",
    "output-flood": "the notebook printed more than the grader keeps (16 MiB)",
    "cpu-limit": "the notebook's processes used more CPU time than allowed",
    "disk-limit": "the notebook wrote more than --disk-gb",
    "memory-limit": "a cell ran out of memory (--memory-gb)",
    "not-a-notebook": "the file is not a readable notebook",
    "error": "the grader could not grade it (no kernel started, or an error of the grader itself)",
}
SKIP_PARTS = (".ipynb_checkpoints", "backups", "__pycache__")
GLOB_CHARS = re.compile(r"[*?\[]")
LESSON_NAME = re.compile(r"\d\d_[A-Za-z0-9_]*?_(?:exercises|solutions)(?![A-Za-z0-9])")


def default_jobs() -> int:
    """The cores this process may use (``--jobs``'s default)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return max(os.cpu_count() or 1, 1)


# ---------------------------------------------------------------- what to grade


def _skipped(path: Path) -> bool:
    return any(part in SKIP_PARTS for part in path.parts) or path.stem.endswith("-checkpoint")


def collect(paths: Iterable[str]) -> list[str]:
    """The notebooks named by ``paths``: files as they are, folders' ``*.ipynb`` (recursively,
    without ``.ipynb_checkpoints``, ``backups`` and ``*-checkpoint.ipynb``), and globs (``*``,
    ``?``, ``[...]``, ``**``); sorted, each once. Raises :class:`GradingError` naming a path that
    matches nothing."""
    found: dict[str, str] = {}
    for given in paths:
        given = str(given)
        path = Path(given)
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            matches = sorted(p for p in path.rglob("*.ipynb") if p.is_file() and not _skipped(p.relative_to(path)))
        elif GLOB_CHARS.search(given):
            matches = []
            for hit in sorted(glob.glob(given, recursive=True)):
                hit_path = Path(hit)
                if hit_path.is_file():
                    matches.append(hit_path)
                elif hit_path.is_dir():
                    matches += sorted(p for p in hit_path.rglob("*.ipynb")
                                      if p.is_file() and not _skipped(p.relative_to(hit_path)))
            matches = [p for p in matches if not _skipped(p)]
        else:
            raise GradingError(f"submission {given!r} does not exist (expected a notebook, a folder or a glob)")
        if not matches:
            raise GradingError(f"submission path {given!r} matches no notebook (.ipynb)")
        for match in matches:
            key = os.path.normpath(str(match))
            found.setdefault(str(Path(key).resolve()), key)
    return sorted(found.values())


def student_id(path: str | Path) -> str:
    """The student a submission belongs to, from its file name: the file's stem minus the
    lesson's notebook name (``alice_03_two_routes_exercises.ipynb`` and
    ``03_two_routes_exercises-alice.ipynb``: ``alice``), its parent folder's name when the stem
    is the lesson's name alone (``alice/03_two_routes_exercises.ipynb``: ``alice``), else the
    whole stem (``alice.ipynb``: ``alice``)."""
    path = Path(path)
    stem = path.stem
    rest = LESSON_NAME.sub(" ", stem, count=1) if LESSON_NAME.search(stem) else stem
    rest = re.sub(r"[\s_.-]+", " ", rest).strip().replace(" ", "_")
    if rest:
        return rest
    parent = path.resolve().parent.name
    return parent or stem


# ---------------------------------------------------------------- one submission (runs in a worker)


def status_of(report: dict) -> tuple[str, str]:
    """``(status, reason)`` of a grade's report (:meth:`Report.as_dict`): "graded" unless the run
    was stopped by a limit or by the kernel's death."""
    limits = [hit.get("limit") for hit in report.get("limits", [])]
    stopped = str(report.get("stopped", ""))
    reasons = "; ".join([stopped] + [hit.get("reason", "") for hit in report.get("limits", [])
                                     if hit.get("reason", "") not in stopped]).strip("; ")
    for limit, status in (("output", "output-flood"), ("time", "timeout"), ("cpu", "cpu-limit"),
                          ("disk", "disk-limit")):
        if limit in limits:
            return status, reasons
    if "ran past" in stopped:
        return "timeout", reasons
    if "memory" in limits and stopped:
        return "memory-limit", reasons
    if stopped:
        return "crashed", reasons
    return GRADED, ""


def grade_submission(name: str, data: bytes, options: dict | None = None) -> dict:
    """Grade one notebook given as its file's ``name`` and ``data`` (bytes): written into a
    private temporary folder under that name, graded by
    :func:`~course_lib.grading.grader.cli.grade_notebook` with ``options`` (its keyword
    arguments: ``timeout``, ``cell_timeout``, ``memory_gb``, ``cpu_seconds``, ``disk_gb``).

    Returns a JSON-able dict: ``status`` (see :data:`STATUSES`), ``reason``, ``seconds``,
    ``sha256`` and ``report`` (:meth:`Report.as_record`, None when there is none). Never raises
    for a bad submission: this runs in a worker process or on a Dask worker."""
    from .cli import _private_tmp, _safe_file_name, grade_notebook

    _quiet_closed_channels()
    start = time.monotonic()
    digest = hashlib.sha256(data).hexdigest()
    result = {"name": str(name), "sha256": digest, "status": "error", "reason": "", "report": None}
    try:
        with tempfile.TemporaryDirectory(prefix="course_class_", dir=_private_tmp()) as tmp:
            path = Path(tmp) / _safe_file_name(Path(str(name)).name)
            path.write_bytes(data)
            report = grade_notebook(path, **(options or {}))
        record = report.as_record()
        record["notebook"] = str(name)
        result["report"] = record
        result["status"], result["reason"] = status_of(record)
    except GradingError as err:
        text = str(err).replace(str(path), str(name)) if "path" in locals() else str(err)
        readable = not (text.startswith("cannot read") or text.startswith("cell ") or "notebook must" in text)
        result["status"] = "error" if readable else "not-a-notebook"
        result["reason"] = " ".join(text.split())[:300]
    except Exception as err:  # a bug of the grader: this submission's row says so, the others go on
        result["reason"] = f"the grader failed: {type(err).__name__}: {' '.join(str(err).split())[:300]}"
    result["seconds"] = round(time.monotonic() - start, 2)
    return result


def _quiet_closed_channels() -> None:
    """In a long-lived worker, jupyter_client's channel thread of a kernel already shut down may
    wake on its closed socket and print a ZMQError traceback: that one is noise, not a failure."""
    import threading

    if getattr(threading.excepthook, "_course_quiet", False):
        return
    previous = threading.excepthook

    def hook(args):
        module = getattr(getattr(args, "exc_type", None), "__module__", "") or ""
        if module.startswith("zmq") and "jupyter_client" in repr(args.exc_traceback and _frames(args.exc_traceback)):
            return
        previous(args)

    hook._course_quiet = True
    threading.excepthook = hook


def _frames(tb) -> list[str]:
    names = []
    while tb is not None:
        names.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    return names


def _worker_init() -> None:
    """A local worker ends when the grade command does, even when it is SIGKILLed (Linux), so that
    its kernel (bubblewrap's ``--die-with-parent``) ends too."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------- a class


@dataclass
class Submission:
    """A notebook to grade: its path as collected, the student, its bytes' sha256."""

    path: str
    student: str
    sha256: str


@dataclass
class ClassRun:
    """What :func:`grade_class` did: ``rows`` (the gradebook's rows of every submission, in path
    order), ``graded`` (the paths graded in this run), ``skipped`` (already in the gradebook with
    the same hash), ``results`` (path -> the worker's dict, for those graded now)."""

    rows: list[dict] = field(default_factory=list)
    graded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    results: dict[str, dict] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def not_graded(self) -> list[dict]:
        """The rows whose status is not "graded"."""
        return [row for row in self.rows if row.get("status") != GRADED]


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def grade_class(paths: Iterable[str], *, jobs: int | None = None, gradebook: str | Path | None = None,
                feedback: str | Path | None = None, dask=None, options: dict | None = None,
                progress: bool = True) -> ClassRun:
    """Grade every notebook ``paths`` name (:func:`collect`), each in its own sandbox.

    ``jobs``: local worker processes (default :func:`default_jobs`); ``dask``: a scheduler's
    address (``"tcp://host:8786"``) or a ``distributed.Client``, used instead of local workers;
    ``gradebook``: the CSV to update (submissions already there with the same hash are not
    graded again); ``feedback``: a folder for each student's Markdown report; ``options``: the
    single-notebook grader's limits (:func:`~course_lib.grading.grader.cli.grade_notebook`).
    Raises :class:`GradingError` for bad arguments; a submission that fails gets its row."""
    from .feedback import feedback_names, write_feedback
    from .gradebook import Gradebook, row_of

    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise GradingError(f"jobs must be a positive whole number, got {jobs!r}")
    files = collect(paths)
    submissions = [Submission(p, student_id(p), hashlib.sha256(_read(p)).hexdigest()) for p in files]
    book = Gradebook(gradebook, _lessons_named(files)) if gradebook is not None else None
    run = ClassRun()
    todo = []
    for sub in submissions:
        if book is not None and book.has(sub.path, sub.sha256):
            run.skipped.append(sub.path)
        else:
            todo.append(sub)
    todo = longest_first(todo)
    names = feedback_names(submissions) if feedback is not None else {}
    fresh: dict[str, dict] = {}

    def finished(sub: Submission, result: dict) -> None:
        result = dict(result)
        result.setdefault("seconds", 0.0)
        row = row_of(sub.path, sub.student, sub.sha256, result)
        if book is not None:
            book.put(row)
        fresh[sub.path] = row
        run.results[sub.path] = result
        run.graded.append(sub.path)
        if feedback is not None:
            write_feedback(Path(feedback) / names[sub.path], sub, row, result)

    bar = _bar(len(todo), progress)
    try:
        if dask is not None:
            _run_dask(todo, dask, options or {}, finished, bar)
        else:
            _run_local(todo, jobs or default_jobs(), options or {}, finished, bar)
    except KeyboardInterrupt:
        run.interrupted = True
    finally:
        bar.close()
    for sub in submissions:
        row = fresh.get(sub.path) or (book.row(sub.path) if book is not None else None)
        if row is not None:
            run.rows.append(row)
    return run


def longest_first(todo: list[Submission]) -> list[Submission]:
    """``todo`` in the order to start them: the longest expected grade first (the capstone's,
    :func:`~course_lib.grading.grader.cli.expected_seconds` of the lesson in its file name), else
    in path order, so that a long grade started last does not leave the other workers idle at
    the end of the run."""
    from .cli import expected_seconds

    return sorted(todo, key=lambda sub: -expected_seconds(_lessons_named([sub.path])))


def _lessons_named(files: list[str]) -> list[str]:
    """The lessons of the notebooks' file names (the gradebook's exercise columns; those a
    notebook's metadata or checks add are added when its row comes)."""
    found = set()
    for path in files:
        match = re.match(r"(\d\d)_", Path(path).name) or re.search(r"(?:^|[^0-9])(\d\d)_[A-Za-z]", Path(path).stem)
        if match:
            found.add(match.group(1))
    return sorted(found)


def _bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="grading", unit="notebook", file=sys.stderr, disable=not enabled or total == 0,
                bar_format="{desc}: {n}/{total} graded |{bar}| {elapsed} elapsed, {remaining} left")


def _crash_result(sub: Submission, reason: str) -> dict:
    return {"name": sub.path, "sha256": sub.sha256, "status": "error", "reason": reason, "report": None,
            "seconds": 0.0}


def _run_local(todo: list[Submission], jobs: int, options: dict, finished, bar) -> None:
    """Grade ``todo`` in ``jobs`` worker processes; a worker that dies costs its pool one retry of
    what was in flight, then those submissions get an "error" row."""
    import multiprocessing

    if not todo:
        return
    pending = list(todo)
    retried: set[str] = set()
    while pending:
        context = multiprocessing.get_context("forkserver")
        pool = ProcessPoolExecutor(max_workers=min(jobs, len(pending)), mp_context=context, initializer=_worker_init)
        futures = {}
        broken: list[Submission] = []
        try:
            for sub in pending:
                futures[pool.submit(grade_submission, sub.path, _read(sub.path), options)] = sub
            pending = []
            running = set(futures)
            while running:
                done, running = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
                for future in done:
                    sub = futures[future]
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        broken.append(sub)
                        continue
                    except Exception as err:
                        result = _crash_result(sub, f"the worker failed: {type(err).__name__}: {err}"[:300])
                    finished(sub, result)
                    bar.update(1)
        except BaseException:
            _stop_pool(pool)
            raise
        pool.shutdown(wait=True, cancel_futures=True)
        for sub in broken:
            if sub.path in retried:
                finished(sub, _crash_result(sub, "the grading worker process died twice on this submission"))
                bar.update(1)
            else:
                retried.add(sub.path)
                pending.append(sub)


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """End the pool's workers now (Ctrl-C): their kernels end with them."""
    processes = dict(getattr(pool, "_processes", None) or {})
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes.values():
        try:
            process.kill()
        except (OSError, AttributeError, ValueError):
            pass


def _run_dask(todo: list[Submission], dask, options: dict, finished, bar) -> None:
    """Grade ``todo`` on a Dask cluster: ``dask`` is a scheduler address or a ``distributed.Client``."""
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise GradingError("--dask needs the 'distributed' package (pip install distributed)") from None
    own = None
    if isinstance(dask, str):
        try:
            own = client = Client(dask, timeout=30)
        except OSError as err:
            raise GradingError(f"cannot reach the Dask scheduler at {dask!r}: {err}") from None
    elif isinstance(dask, Client):
        client = dask
    else:
        raise GradingError(f"dask must be a scheduler address or a distributed.Client, got {type(dask).__name__}")
    futures: dict = {}
    try:
        if not todo:
            return
        for sub in todo:
            future = client.submit(grade_submission, sub.path, _read(sub.path), options, pure=False, retries=1,
                                   key=f"grade-{sub.sha256[:16]}-{hashlib.sha256(sub.path.encode()).hexdigest()[:8]}")
            futures[future.key] = (future, sub)
        for future in as_completed([f for f, _ in futures.values()]):
            sub = futures[future.key][1]
            try:
                result = future.result()
            except Exception as err:  # the worker died (twice) or could not import the course
                result = _crash_result(sub, f"the Dask worker failed: {type(err).__name__}: {err}"[:300])
            finished(sub, result)
            bar.update(1)
    except BaseException:
        for future, _ in futures.values():
            future.cancel()
        raise
    finally:
        if own is not None:
            own.close()


# ---------------------------------------------------------------- the commands


def main(paths, *, jobs: int | None = None, gradebook=None, feedback=None, dask=None, as_json: bool = False,
         options: dict | None = None) -> int:
    """``python -m course_lib grade PATH... --jobs/--gradebook/--feedback/--dask``: a line per
    submission (or ``--json``), then a summary. Exit status: 0 when every submission was graded
    (whatever the scores), 1 when some were not (each named, with its status), 2 when nothing
    could be graded (no such path, a bad gradebook, no scheduler), 130 after Ctrl-C (the rows
    finished so far are in the gradebook)."""
    import json

    try:
        run = grade_class(paths, jobs=jobs, gradebook=gradebook, feedback=feedback, dask=dask, options=options)
    except GradingError as err:
        print(f"grade: {err}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(run.rows, indent=2))
    else:
        print(class_table(run.rows))
    print(f"grade: {len(run.graded)} graded now, {len(run.skipped)} already in the gradebook with the same hash"
          + (f"; gradebook {gradebook}" if gradebook else "") + (f"; feedback in {feedback}" if feedback else ""),
          file=sys.stderr)
    if run.interrupted:
        print("grade: interrupted; the rows finished so far are kept, run the same command again to go on",
              file=sys.stderr)
        return 130
    if run.not_graded:
        for row in run.not_graded:
            reason = f" ({row['reason']})" if row["reason"] else ""
            print(f"grade: not graded: {row['path']}: {row['status']}{reason}", file=sys.stderr)
        print(f"grade: {len(run.not_graded)} of {len(run.rows)} submissions were not graded to the end",
              file=sys.stderr)
        return 1
    return 0


def class_table(rows: list[dict]) -> str:
    """One line per row: student, lesson, score/max, status, seconds, path."""
    head = ("student", "lesson", "score", "status", "seconds", "path")
    table = [head] + [(r["student"], r["lesson"], f"{r['score']}/{r['max_score'] or '?'}", r["status"], r["seconds"],
                       r["path"]) for r in rows]
    widths = [max(len(str(line[i])) for line in table) for i in range(len(head))]
    return "\n".join("  ".join(f"{str(v):<{w}}" for v, w in zip(line, widths)).rstrip() for line in table)


def progress(folder="exercises", *, jobs: int | None = None, dask=None, options: dict | None = None,
             show_bar: bool = True) -> list[dict]:
    """For each notebook in ``folder`` (sorted by lesson), its path, lessons, score, status and
    every exercise (``id``, ``title``, ``attempted``: "yes", "no" or "not reached", ``score``,
    ``max_score``), graded as :func:`grade_class` grades (in parallel, each in its own sandbox)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GradingError(f"folder {str(folder)!r} does not exist (expected the exercises/ folder of a checkout)")
    return progress_entries(grade_class([str(folder)], jobs=jobs, dask=dask, options=options, progress=show_bar))


def progress_entries(run: ClassRun) -> list[dict]:
    """:func:`progress`'s entries of the submissions graded in ``run``, sorted by lesson."""
    found = []
    for row in run.rows:
        if row["path"] not in run.results:  # skipped (already in a gradebook): no report here
            continue
        report = run.results[row["path"]].get("report") or {}
        exercises = []
        for item in report.get("exercises", []):
            status = item.get("status", "")
            attempted = "no" if status == "not attempted" else "not reached" if status == "not reached" else "yes"
            exercises.append({"id": item["id"], "title": item.get("title", ""), "attempted": attempted,
                              "score": item["score"], "max_score": item["max_score"]})
        found.append({"path": row["path"], "lesson": row["lesson"], "score": row["score"],
                      "max_score": row["max_score"], "status": row["status"], "reason": row["reason"],
                      "exercises": exercises})
    return sorted(found, key=lambda entry: (entry["lesson"], entry["path"]))


def progress_table(entries: list[dict]) -> str:
    """The learner's view: each lesson's exercises, attempted or not and the points, then what is left."""
    from ..core import format_score

    lines, todo, unfinished = [], [], []
    width = max([len("exercise"), *(len(ex["id"]) for e in entries for ex in e["exercises"])])
    for entry in entries:
        lines.append(f"lesson {entry['lesson'] or '?'}  {entry['path']}  {entry['score']}/{entry['max_score'] or '?'}"
                     + ("" if entry["status"] == GRADED else f"  ({entry['status']}: {entry['reason']})"))
        for ex in entry["exercises"]:
            points = f"{format_score(ex['score'])}/{format_score(ex['max_score'])}"
            lines.append(f"  {ex['id']:<{width}}  {ex['attempted']:<11}  {points:>7}  {ex['title']}")
            if ex["attempted"] != "yes":
                todo.append(ex["id"])
            elif ex["score"] < ex["max_score"]:
                unfinished.append(ex["id"])
    done = sum(1 for e in entries for ex in e["exercises"] if ex["attempted"] == "yes")
    total = sum(len(e["exercises"]) for e in entries)
    lines.append("")
    lines.append(f"attempted {done} of {total} exercises")
    if todo:
        lines.append(f"left to do ({len(todo)}): {', '.join(todo)}")
    if unfinished:
        lines.append(f"attempted, points still missing ({len(unfinished)}): {', '.join(unfinished)}")
    if not todo and not unfinished:
        lines.append("nothing left: every exercise has full points")
    return "\n".join(lines)


def progress_main(folder="exercises", *, jobs: int | None = None, dask=None, as_json: bool = False,
                  options: dict | None = None) -> int:
    """``python -m course_lib progress``: 0 when every notebook was graded, 1 when one was not, 2 on bad input."""
    import json

    try:
        entries = progress(folder, jobs=jobs, dask=dask, options=options)
    except GradingError as err:
        print(f"progress: {err}", file=sys.stderr)
        return 2
    print(json.dumps(entries, indent=2) if as_json else progress_table(entries))
    return 0 if all(e["status"] == GRADED for e in entries) else 1
