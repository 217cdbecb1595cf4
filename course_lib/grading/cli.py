"""``python -m course_lib grade NOTEBOOK.ipynb [--json] [--timeout S] [--cell-timeout S]``: score a notebook.

The notebook runs in a fresh kernel inside a sandbox (:mod:`course_lib.grading.sandbox`:
bubblewrap when the machine has it; memory, CPU, disk and time limits always) with a
throw-away copy of the notebook alone in its working folder, cell after cell with a
per-cell timeout, the whole grade under a wall-clock limit (``--timeout``, by default 3x the
lessons' expected time). A cell that raises does not stop the run, a cell that overstays is
interrupted, a kernel that dies or passes a limit ends the run with a report of what was
reached and which limit was hit. What the kernel prints is kept up to a limit per cell and
for the whole run, so a flood of output cannot fill the grader's memory.

Scores come from this process, not from the notebook: right after the first cell that
calls ``check("NN.name", answer)`` has run, the grader runs that exercise's checks here,
calling ``answer`` in the kernel through :mod:`course_lib.grading.remote` (only data comes
back). Inside the graded kernel ``check`` itself does nothing, so nothing the notebook
does to ``course_lib.grading``, to files, or by calling ``check`` again changes a score.

The notebook is graded for its lesson (``metadata.course.lesson``, the ``NN_`` of its file
name, and the lesson of every exercise it checks); the maximum is the sum of those
lessons' registered totals, so an exercise whose check cell was deleted still counts,
with 0 and "not reached". The notebook file is only read.

Exit status: 0 when grading worked (whatever the score), 2 when the notebook cannot be
read or no kernel starts.
"""

from __future__ import annotations

import ast
import copy
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import sandbox as sb
from .core import format_score, run_exercise
from .lessons import lesson_exercises
from .remote import safe_name

__all__ = ["main", "grade_notebook", "Report", "Item"]

CELL_OUTPUT_BYTES = 2**20  # what the report keeps of one cell's output
TOTAL_OUTPUT_BYTES = 16 * 2**20  # and of the whole run's
MAX_CELL_ERRORS = 50  # cell errors listed in a report (the rest counted)
EXPECTED_SECONDS = {"09": 150}  # a lesson's grade on a quiet 2-core CPU; the others take about 20 s
DEFAULT_EXPECTED = 20
LIMIT_GRACE = 30  # seconds past the deadline before the kernel is killed rather than interrupted

CHECK_CALL = re.compile(r"""\bcheck\(\s*["'](\d\d\.\w+)["']""")
CHECK_ARG = re.compile(r"""\bcheck\(\s*["'](\d\d\.\w+)["']\s*,\s*"""
                       r"""([A-Za-z_][\w.]*|"[^"]*"|'[^']*'|-?[\d.eE+_]+)\s*[,)]""")


@dataclass
class Item:
    id: str
    score: float
    max_score: float
    feedback: str

    def as_dict(self) -> dict:
        return {"id": self.id, "score": self.score, "max_score": self.max_score, "feedback": self.feedback}


@dataclass
class Report:
    notebook: str
    items: list[Item]
    cell_errors: list[tuple[int, str]] = field(default_factory=list)  # (cell number, "Name: message")
    stopped: str = ""  # why the run ended early, if it did
    sandbox: str = ""  # "bubblewrap", or "none: why"
    lessons: list[str] = field(default_factory=list)
    limits: list[dict] = field(default_factory=list)  # each limit hit: {"limit": name, "reason": words}

    @property
    def score(self) -> float:
        return round(sum(item.score for item in self.items), 2)

    @property
    def max_score(self) -> float:
        return round(sum(item.max_score for item in self.items), 2)

    def as_dict(self) -> dict:
        return {"notebook": self.notebook, "lessons": self.lessons, "score": self.score,
                "max_score": self.max_score, "exercises": [item.as_dict() for item in self.items],
                "cell_errors": [{"cell": number, "error": error}
                                for number, error in self.cell_errors[:MAX_CELL_ERRORS]],
                "cell_errors_not_listed": max(len(self.cell_errors) - MAX_CELL_ERRORS, 0),
                "stopped": self.stopped, "sandbox": self.sandbox, "limits": self.limits}

    def table(self) -> str:
        width = max([len("exercise"), *(len(item.id) for item in self.items)])
        scores = [f"{format_score(i.score)}/{format_score(i.max_score)}" for i in self.items]
        total = f"{format_score(self.score)}/{format_score(self.max_score)}"
        swidth = max([len("score"), len(total), *map(len, scores)])
        lines = [f"Grading {self.notebook}", f"{'exercise':<{width}}  {'score':>{swidth}}  feedback"]
        for item, score in zip(self.items, scores):
            lines.append(f"{item.id:<{width}}  {score:>{swidth}}  {item.feedback}")
        lines.append(f"{'total':<{width}}  {total:>{swidth}}")
        for number, error in self.cell_errors[:MAX_CELL_ERRORS]:
            lines.append(f"cell {number} raised {error}")
        if len(self.cell_errors) > MAX_CELL_ERRORS:
            lines.append(f"... and {len(self.cell_errors) - MAX_CELL_ERRORS} more cells raised")
        if self.stopped:
            lines.append(f"the run stopped early: {self.stopped}")
        for hit in self.limits:
            lines.append(f"limit hit ({hit['limit']}): {hit['reason']}")
        if self.sandbox.startswith("none"):
            lines.append(f"note: graded WITHOUT a sandbox ({self.sandbox[len('none: '):]})")
        return "\n".join(lines)


def _mark_unrun(nb, start: int) -> None:
    for cell in nb.cells[start:]:
        if cell.cell_type == "code":
            cell["metadata"]["course_unrun"] = True


def _error_output(cell):
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            return safe_name(output.get("ename", "Error"))
    return None


def _error_text(cell) -> str:
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            text = " ".join(str(output.get("evalue", ""))[:1000].split())
            name = safe_name(output.get("ename", "Error"))
            return f"{name}: {text[:200]}" if text else name
    return ""


def _not_reached(target, ran, stopped: str) -> str:
    if target.cell is None:
        return "not reached: no cell calls check for this exercise"
    cell = ran.cells[target.cell]
    number = target.cell + 1
    if cell.get("metadata", {}).get("course_unrun"):
        return f"not reached: the run stopped before cell {number} ({stopped})"
    if cell.get("metadata", {}).get("course_timed_out"):
        return f"not reached: cell {number} ran longer than {format_score(float(cell.metadata.course_timed_out))} s " \
               "and was interrupted"
    if _error_output(cell) is not None:
        return f"not reached: cell {number} raised {_error_text(cell)} before check finished"
    if target.exercise.id in cell.get("metadata", {}).get("course_no_answer", []):
        return f"not reached: cell {number} calls check without an answer"
    if stopped:
        return f"not reached: {stopped}"
    return f"not reached: cell {number} ran but its answer was not checked"


NO_SANDBOX_NOTICE = ("grade: no sandbox: {reason}. The notebook's code ran with your user's rights: it could read "
                     "and write your files and use the network, and a process it started could outlive grading; "
                     "only the limits (memory, CPU, disk, time, output) and a minimal environment applied. "
                     "Grade only notebooks you trust this way.")


def main(notebook, as_json: bool = False, timeout: float | None = None, memory_gb: float | None = None,
         cpu_seconds: float | None = None, cell_timeout: float = 120.0, disk_gb: float | None = None) -> int:
    """Grade ``notebook`` and print a table (or JSON). Returns the exit status."""
    try:
        report = grade_notebook(notebook, timeout=timeout, cell_timeout=cell_timeout, memory_gb=memory_gb,
                                cpu_seconds=cpu_seconds, disk_gb=disk_gb)
    except GradingError as err:
        print(f"grade: {err}", file=sys.stderr)
        return 2
    if report.sandbox.startswith("none"):
        print(NO_SANDBOX_NOTICE.format(reason=report.sandbox[len("none: "):]), file=sys.stderr)
    print(json.dumps(report.as_dict(), indent=2) if as_json else report.table())
    return 0


class GradingError(Exception):
    """The notebook could not be graded at all (unreadable file, no kernel)."""


@dataclass
class _Target:
    """An exercise the notebook is graded on: where its first check call is, and what it passes."""

    exercise: object
    cell: int | None = None
    expr: str | None = None


def expected_seconds(lessons) -> float:
    """How long grading these lessons takes on a quiet 2-core CPU (the default limit is 3x that)."""
    return float(sum(EXPECTED_SECONDS.get(lesson, DEFAULT_EXPECTED) for lesson in lessons) or DEFAULT_EXPECTED)


def _positive(name: str, value, *, optional: bool = True):
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value != value:
        raise GradingError(f"{name} must be a positive number, got {value!r}")
    return value


def grade_notebook(notebook, *, timeout: float | None = None, cell_timeout: float = 120.0,
                   sandbox: bool | None = None, memory_gb: float | None = None, cpu_seconds: float | None = None,
                   disk_gb: float | None = None) -> Report:
    """Run ``notebook`` in a fresh sandboxed kernel and score every exercise of its lesson(s).

    ``timeout``: seconds for the whole grade (default 3x :func:`expected_seconds`);
    ``cell_timeout``: seconds per cell; ``sandbox``: None uses bubblewrap when it works here,
    False runs without it (limits only), True requires it."""
    import nbformat

    path = Path(notebook)
    if not path.is_file():
        raise GradingError(f"notebook {str(path)!r} does not exist (expected a path to an .ipynb file)")
    _positive("timeout", timeout)
    _positive("cell_timeout", cell_timeout, optional=False)
    for name, value in (("memory_gb", memory_gb), ("cpu_seconds", cpu_seconds), ("disk_gb", disk_gb)):
        _positive(name, value)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        _plain_sources(raw)
        nb = nbformat.reads(json.dumps(raw), as_version=4)
    except GradingError:
        raise
    except Exception as err:  # not JSON, not a notebook
        detail = " ".join(str(err).split())[:300]
        raise GradingError(f"cannot read {str(path)!r} as a notebook: {detail}") from None

    lessons, targets = _targets(nb, path)
    reason = sb.bwrap_reason() if sandbox in (None, True) else "the caller asked for no sandbox"
    if sandbox is True and reason:
        raise GradingError(f"a sandbox was required but {reason}")
    use_bwrap = not reason
    limits = sb.Limits(memory=int((memory_gb or sb.DEFAULT_MEMORY / 2**30) * 2**30),
                       cpu=int(cpu_seconds or sb.DEFAULT_CPU),
                       disk=int((disk_gb or sb.DEFAULT_DISK / 2**30) * 2**30))
    total = float(timeout) if timeout is not None else 3 * expected_seconds(lessons)
    results: dict[str, object] = {}
    hits: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="course_grade_", dir=_private_tmp()) as tmp:
        layout = sb.Layout.create(Path(tmp))
        shutil.copyfile(path, layout.source / _safe_file_name(path.name))
        ran, stopped = _run(copy.deepcopy(nb), layout, float(cell_timeout), targets, results, hits,
                            sandbox=use_bwrap, limits=limits, deadline=time.monotonic() + total, total=total)

    items = []
    for exercise_id, target in targets.items():
        ex = target.exercise
        if exercise_id in results:
            score, feedback = results[exercise_id]
            items.append(Item(exercise_id, min(max(float(score), 0.0), float(ex.points)), float(ex.points), feedback))
        else:
            items.append(Item(exercise_id, 0.0, float(ex.points), _not_reached(target, ran, stopped)))
    errors = [(index + 1, _error_text(cell)) for index, cell in enumerate(ran.cells)
              if cell.cell_type == "code" and _error_output(cell) is not None]
    return Report(str(notebook), items, errors, stopped, "bubblewrap" if use_bwrap else f"none: {reason}",
                  lessons, hits)


def _safe_file_name(name: str) -> str:
    cleaned = re.sub(r"[^\w.-]", "_", name)[:100]
    return cleaned if cleaned.endswith(".ipynb") else "notebook.ipynb"


def _plain_sources(nb) -> None:
    """Every cell's source as one string (a cell whose source is not text is refused by name)."""
    cells = nb.get("cells", []) if isinstance(nb, dict) else []
    for index, cell in enumerate(cells if isinstance(cells, list) else []):
        if not isinstance(cell, dict):
            raise GradingError(f"cell {index + 1} must be a JSON object, got {type(cell).__name__}")
        source = cell.get("source", "")
        if isinstance(source, list) and all(isinstance(part, str) for part in source):
            cell["source"] = "".join(source)
        elif not isinstance(source, str):
            raise GradingError(f"cell {index + 1}'s source must be text, got {type(source).__name__}")


def _private_tmp() -> str | None:
    """A temporary folder outside /tmp (which the sandbox replaces by its own) when there is one."""
    for candidate in (os.environ.get("COURSE_GRADE_TMPDIR"), "/var/tmp"):
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK):
            return candidate
    return None


def _lessons(nb, path: Path) -> list[str]:
    """The lessons a notebook is graded for: its metadata's, its file name's, and those it checks."""
    found = set()
    meta = nb.metadata.get("course", {}) if isinstance(nb.metadata.get("course"), dict) else {}
    if isinstance(meta.get("lesson"), str) and re.fullmatch(r"\d\d", meta["lesson"]):
        found.add(meta["lesson"])
    name = re.match(r"(\d\d)_", path.name)
    if name:
        found.add(name.group(1))
    for cell in nb.cells:
        if cell.cell_type == "code":
            found.update(i.split(".")[0] for i in CHECK_CALL.findall(cell.source))
    return sorted(found)


def _check_calls(source: str) -> list[tuple[str, str | None]]:
    """``(exercise id, source of the answer argument)`` for each ``check(...)`` call in a cell."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython magics and the like: a plainer reading of the same calls
        calls = {m.group(1): m.group(2) for m in CHECK_ARG.finditer(source)}
        return [(i, calls.get(i)) for i in CHECK_CALL.findall(source)]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) and re.fullmatch(r"\d\d\.\w+", node.args[0].value):
            func = node.func
            if (isinstance(func, ast.Name) and func.id == "check") or \
                    (isinstance(func, ast.Attribute) and func.attr == "check"):
                expr = ast.get_source_segment(source, node.args[1]) if len(node.args) > 1 else None
                out.append((node.args[0].value, expr))
    out.sort(key=lambda pair: source.find(pair[0]))
    return out


def _targets(nb, path: Path) -> tuple[list[str], dict[str, _Target]]:
    """Every registered exercise of the notebook's lessons, in order, with its first check call."""
    lessons = _lessons(nb, path)
    targets = {ex.id: _Target(ex) for lesson in lessons for ex in lesson_exercises(lesson)}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for exercise_id, expr in _check_calls(cell.source):
            target = targets.get(exercise_id)
            if target is not None and target.cell is None:
                target.cell, target.expr = index, expr
    return lessons, targets


def _expected_items(nb, path: Path, exercises=None) -> dict[str, int | None]:
    """Exercise id -> index of the first cell that calls check for it (None: no cell does)."""
    return {i: t.cell for i, t in _targets(nb, path)[1].items()}


def _kernel_manager(layout: sb.Layout, *, sandbox: bool, limits: sb.Limits):
    """A kernel manager whose kernel runs in the sandbox and talks over sockets in ``layout.sockets``."""
    import zmq
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    spec = layout.spec / "course-graded"
    spec.mkdir(parents=True)
    argv = sb.kernel_argv(layout, sandbox=sandbox, limits=limits)
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "graded notebook",
                                                  "language": "python", "interrupt_mode": "message"}))
    km = AsyncKernelManager(kernel_name="course-graded", kernel_spec_manager=KernelSpecManager(
        kernel_dirs=[str(layout.spec)]), transport="ipc", ip=str(layout.sockets / "kernel"),
        connection_file=str(layout.connection_file))
    # a message larger than this (ipykernel sends a flood of prints as a few huge ones) drops the link
    # for a moment instead of landing in the grader's memory; the output is lost, the grade goes on
    km.context.setsockopt(zmq.MAXMSGSIZE, 4 * CELL_OUTPUT_BYTES)
    make_client = km.client
    km.client = lambda **kwargs: make_client(**{"context": km.context, **kwargs})  # the client's sockets too
    return km


def _content_bytes(x, depth: int = 0) -> int:
    if isinstance(x, str):
        return len(x)
    if isinstance(x, (bytes, bytearray)):
        return len(x)
    if depth > 8:
        return 0
    if isinstance(x, dict):
        return sum(_content_bytes(v, depth + 1) for v in x.values())
    if isinstance(x, (list, tuple)):
        return sum(_content_bytes(v, depth + 1) for v in x)
    return 8


def _bounded_client_class():
    from jupyter_core.utils import run_sync
    from nbclient import NotebookClient

    class BoundedClient(NotebookClient):
        """Keeps at most ``CELL_OUTPUT_BYTES`` of a cell's output and ``TOTAL_OUTPUT_BYTES`` in all."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.course_total, self.course_cell, self.course_truncated = 0, 0, set()
            self.course_lost_in_a_row = 0
            self.course_flood = lambda reason: None  # called once the output passes the whole run's limit

        async def async_execute_cell(self, cell, cell_index, *args, **kwargs):
            self.course_cell = 0
            out = await super().async_execute_cell(cell, cell_index, *args, **kwargs)
            # a message too large for the link is dropped with the cell's "idle": three cells in a row
            # that way mean the kernel is still pushing a flood of output
            if cell.get("metadata", {}).get("execution", {}).get("iopub.status.idle"):
                self.course_lost_in_a_row = 0
            else:
                self.course_lost_in_a_row += 1
                if self.course_lost_in_a_row >= 3:
                    self.course_flood("the notebook's output came in messages too large to read "
                                      f"(more than {4 * CELL_OUTPUT_BYTES // 2**20} MiB each)")
            return out

        execute_cell = run_sync(async_execute_cell)

        def output(self, outs, msg, display_id, cell_index):
            size = _content_bytes(msg.get("content", {}))
            if self.course_total + size > TOTAL_OUTPUT_BYTES:
                self.course_flood(f"the notebook printed more than {TOTAL_OUTPUT_BYTES // 2**20} MiB")
            if self.course_cell + size > CELL_OUTPUT_BYTES or self.course_total + size > TOTAL_OUTPUT_BYTES:
                if msg.get("msg_type") == "error":  # keep the error itself, shortened
                    msg = copy.deepcopy(msg)
                    msg["content"]["traceback"] = []
                    msg["content"]["evalue"] = str(msg["content"].get("evalue", ""))[:1000]
                    msg["content"]["ename"] = safe_name(msg["content"].get("ename", "Error"))
                    return super().output(outs, msg, display_id, cell_index)
                if id(outs) not in self.course_truncated:
                    self.course_truncated.add(id(outs))
                    from nbformat.v4 import new_output

                    outs.append(new_output("stream", name="stderr", text="[course grader: output truncated]\n"))
                return None
            self.course_cell += size
            self.course_total += size
            return super().output(outs, msg, display_id, cell_index)

    return BoundedClient


class _Watchdog(threading.Thread):
    """Watches the kernel's process tree while it runs: its CPU time (all processes together), the
    bytes it wrote where the grader can see them, and the grade's deadline; past a limit it kills
    the tree and records which limit and why."""

    def __init__(self, km, limits: sb.Limits, deadline: float, total: float, folders, hits: list, worker=None):
        super().__init__(daemon=True)
        self.km, self.limits, self.deadline, self.total, self.folders = km, limits, deadline, total, folders
        self.hits, self.worker = hits, worker
        self.done = threading.Event()

    def pid(self):
        process = getattr(getattr(self.km, "provisioner", None), "process", None)
        return None if process is None or process.poll() is not None else process.pid

    def hit(self, limit: str, reason: str) -> None:
        _hit(self.hits, limit, reason)
        pid = self.pid()
        if pid is not None:
            sb.kill_tree(pid)
        if self.worker is not None and self.worker.process is not None:
            sb.kill_tree(self.worker.process.pid)

    def run(self) -> None:
        while not self.done.wait(0.25):
            pid = self.pid()
            if time.monotonic() > self.deadline + LIMIT_GRACE:
                self.hit("time", f"the grade ran past its {self.total:g} s limit and the kernel was stopped")
            if pid is not None:
                cpu = sb.tree_cpu_seconds(pid)
                if self.worker is not None and self.worker.process is not None:
                    cpu += sb.tree_cpu_seconds(self.worker.process.pid)
                if cpu > self.limits.cpu:
                    self.hit("cpu", f"the notebook's processes used {cpu:.0f} s of CPU (limit {self.limits.cpu} s)")
            written = sum(sb.folder_bytes(f, self.limits.disk) for f in self.folders)
            if written > self.limits.disk:
                self.hit("disk", f"the notebook wrote more than {self.limits.disk / 2**20:.0f} MiB")


def _run(nb, layout: sb.Layout, timeout: float, targets: dict, results: dict, hits: list, *, sandbox: bool,
         limits: sb.Limits, deadline: float, total: float):
    """Execute ``nb`` in memory, grading each exercise after its check cell; returns (the executed
    notebook, why it stopped early or "")."""
    import nbformat
    from nbclient.exceptions import DeadKernelError

    from .remote import Exchange, KernelGone, ProbeWorker, Session, remote_code

    km = _kernel_manager(layout, sandbox=sandbox, limits=limits)
    client = _bounded_client_class()(
        nb, km=km, timeout=int(math.ceil(timeout)), allow_errors=True, interrupt_on_timeout=True,
        error_on_timeout={"ename": "CellTimeoutError", "evalue": f"the cell ran longer than {timeout:g} s "
                          "and was interrupted", "traceback": []},
        startup_timeout=120, resources={"metadata": {"path": str(layout.work)}}, record_timing=True,
        iopub_timeout=10,
    )
    env = sb.minimal_env({sb.GRADING_ENV: "1"})
    by_cell: dict[int, list[str]] = {}
    for exercise_id, target in targets.items():
        if target.cell is not None:
            by_cell.setdefault(target.cell, []).append(exercise_id)

    def left() -> float:
        return deadline - time.monotonic()

    def transport(request, response, remaining):
        from .core import CheckTimeout

        if left() <= 0:
            raise CheckTimeout()
        cell = nbformat.v4.new_code_cell(remote_code(request, response))
        scratch = nbformat.v4.new_notebook(cells=[cell])
        real, limit = client.nb, int(math.ceil(min((remaining or timeout) + 5, max(left(), 1))))
        start = time.monotonic()
        try:
            client.nb, client.timeout = scratch, limit
            client.execute_cell(cell, 0, store_history=False)
        except DeadKernelError:
            raise KernelGone() from None
        finally:
            client.nb, client.timeout = real, int(math.ceil(timeout))
        if _error_output(cell) in ("KeyboardInterrupt", "CellTimeoutError") or time.monotonic() - start >= limit:
            raise CheckTimeout()

    probe_dir = layout.root / "probe"
    probe_dir.mkdir()
    worker = ProbeWorker(sb.worker_argv(sandbox=sandbox, limits=limits), sb.minimal_env(), cwd=str(probe_dir))
    session = Session(transport, Exchange(layout.requests, layout.responses), prober=worker)
    watched = [layout.responses, layout.sockets] + ([] if sandbox else [layout.work, probe_dir])
    watchdog = _Watchdog(km, limits, deadline, total, watched, hits, worker)
    client.course_flood = lambda reason: watchdog.hit("output", reason)
    stopped = ""
    try:
        with client.setup_kernel(env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
            watchdog.start()
            timeouts_in_a_row = 0
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                if left() <= 0:
                    stopped = f"the grade ran past its {total:g} s limit"
                    _hit(hits, "time", f"the grade ran past its {total:g} s limit (--timeout)")
                    _mark_unrun(nb, index)
                    break
                cell_limit = min(timeout, max(left(), 1.0))
                client.timeout = int(math.ceil(cell_limit))
                start = time.monotonic()
                try:
                    client.execute_cell(cell, index)
                except DeadKernelError:
                    stopped = f"the kernel died in cell {index + 1}"
                    _mark_unrun(nb, index)
                    break
                finally:
                    client.timeout = int(math.ceil(timeout))
                # interrupted (KeyboardInterrupt), or still running when the interrupt did not take
                if time.monotonic() - start >= cell_limit and _error_output(cell) in ("KeyboardInterrupt", None):
                    cell["metadata"]["course_timed_out"] = timeout
                    timeouts_in_a_row += 1
                else:
                    timeouts_in_a_row = 0
                if timeouts_in_a_row == 2:  # the interrupts do not take: give up rather than wait on
                    stopped = f"two cells in a row ran past {timeout:g} s"
                    _mark_unrun(nb, index + 1)
                    break
                if _error_output(cell) is not None or cell["metadata"].get("course_timed_out"):
                    continue
                session.hard_deadline = deadline
                gone = _grade_after(cell, by_cell.get(index, []), targets, session, results)
                if gone:
                    stopped = f"the kernel died while {gone} was checked"
                    _mark_unrun(nb, index + 1)
                    break
    except DeadKernelError:
        stopped = stopped or "the kernel died"
    except RuntimeError as err:  # no kernel could start
        if not stopped and not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"):
            raise GradingError(f"could not start a python3 kernel: {err}") from None
        stopped = stopped or f"the kernel failed: {err}"
    finally:
        watchdog.done.set()
        worker.close()
        _shutdown(km)
        session.exchange.close()
    for index, cell in enumerate(nb.cells):
        text = _error_text(cell).lower() if cell.cell_type == "code" else ""
        if text.startswith("memoryerror") or "can't allocate memory" in text or "out of memory" in text:
            _hit(hits, "memory", f"cell {index + 1} ran out of memory (at most {limits.memory / 2**30:g} GiB of "
                                 "address space per process)")
    for hit in hits:  # a limit the watchdog enforced explains why the kernel died
        if hit["limit"] != "time" or not stopped:
            stopped = f"{stopped}; {hit['reason']}" if stopped else hit["reason"]
            break
    return nb, stopped


def _hit(hits: list, limit: str, reason: str) -> None:
    if not any(h["limit"] == limit for h in hits):
        hits.append({"limit": limit, "reason": reason})


def _shutdown(km) -> None:
    """End the kernel and, with it, the sandbox and every process started in it."""
    from jupyter_core.utils import run_sync

    process = getattr(getattr(km, "provisioner", None), "process", None)
    try:
        if run_sync(km.is_alive)():
            run_sync(km.shutdown_kernel)(now=True)
    except Exception:  # already gone
        pass
    if process is not None:
        if process.poll() is None:
            sb.kill_tree(process.pid)
        try:
            process.wait(timeout=10)
        except Exception:
            pass


def _grade_after(cell, exercise_ids, targets, session, results) -> str:
    """Run the checks of the exercises whose first check call is in ``cell``; returns the id of
    the exercise being checked when the kernel died, else ""."""
    from .core import CheckTimeout
    from .remote import KernelGone, RemoteError

    for exercise_id in exercise_ids:
        target = targets[exercise_id]
        ex = target.exercise
        if not target.expr:
            cell["metadata"].setdefault("course_no_answer", []).append(exercise_id)
            continue
        try:
            answer = _literal(target.expr)
            if answer is _NOT_LITERAL:
                answer = session.answer(target.expr)
            result = run_exercise(ex, answer)
            results[exercise_id] = (result.score, result.feedback)
        except KernelGone:
            return exercise_id
        except (RemoteError, CheckTimeout, NotImplementedError) as err:
            why = "ran out of time" if isinstance(err, CheckTimeout) else \
                f"raised {getattr(err, 'remote_type', type(err).__name__)}: {' '.join(str(err).split())[:160]}"
            results[exercise_id] = (0.0, f"not reached: reading the answer `{target.expr}` {why}")
    return ""


_NOT_LITERAL = object()


def _literal(expr: str):
    try:
        return ast.literal_eval(expr)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _NOT_LITERAL
