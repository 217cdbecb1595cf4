"""Running a graded notebook's cells in a fresh kernel inside the sandbox, as data.

:func:`run_cells` starts a kernel in the sandbox (:mod:`course_lib.grading.grader.sandbox`),
executes a copy of the notebook cell after cell with a per-cell timeout, under the grade's
wall-clock deadline and a watchdog of its CPU time and the bytes it writes, and returns one
:class:`CellOutcome` per code cell (whether it ran, the error it raised, the limit it ran
past, why the run stopped before it): the report is built from those, nothing is written
into the notebook. A cell that raises does not stop the run, a cell that overstays is
interrupted, a kernel that dies or passes a limit ends the run. What the kernel prints is
kept up to a limit per cell and for the whole run, so a flood of output cannot fill the
grader's memory.

After each cell that ran cleanly the caller's ``after_cell(index, session)`` runs (the grade
command checks the exercises whose first check call is in that cell, calling the answer in
the kernel through the :class:`~course_lib.grading.grader.remote.Session`).
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..core import GRADING_ENV, CheckTimeout
from . import GradingError
from . import sandbox as sb
from .remote import safe_name

__all__ = ["CellOutcome", "KernelRun", "run_cells"]

CELL_OUTPUT_BYTES = 2**20  # what the report keeps of one cell's output
TOTAL_OUTPUT_BYTES = 16 * 2**20  # and of the whole run's
LIMIT_GRACE = 30  # seconds past the deadline before the kernel is killed rather than interrupted


@dataclass(frozen=True)
class CellOutcome:
    """What became of one code cell (``index``: its place in the notebook, from 0).

    ``ran``: it was executed (to its end, or until it was interrupted); ``error``: what it
    raised, ``"Name: message"`` ("" when nothing); ``timed_out``: the per-cell limit in seconds
    it ran past and was interrupted at (None when it did not); ``stopped_by``: for a cell that
    did not run because the run stopped before it, why ("" otherwise)."""

    index: int
    ran: bool
    error: str = ""
    timed_out: float | None = None
    stopped_by: str = ""


@dataclass(frozen=True)
class KernelRun:
    """The outcome of a run: one :class:`CellOutcome` per code cell, in order; why the run ended
    early ("" when it did not); each limit hit (``{"limit": name, "reason": words}``)."""

    cells: tuple[CellOutcome, ...]
    stopped: str
    limits: tuple[dict, ...]

    def cell(self, index: int) -> CellOutcome:
        """The outcome of the code cell at ``index``."""
        for outcome in self.cells:
            if outcome.index == index:
                return outcome
        raise KeyError(f"index must be that of a code cell of the run, got {index!r}")


def _error(cell) -> tuple[str, str] | None:
    """``(name, "Name: message")`` of the error a cell's outputs hold, None when there is none."""
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            name = safe_name(output.get("ename", "Error"))
            text = " ".join(str(output.get("evalue", ""))[:1000].split())
            return name, (f"{name}: {text[:200]}" if text else name)
    return None


def _error_name(cell) -> str | None:
    found = _error(cell)
    return None if found is None else found[0]


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


def run_cells(nb, layout: sb.Layout, *, cell_timeout: float, sandbox: bool, limits: sb.Limits, deadline: float,
              total: float, after_cell: Callable[[int, object], str]) -> KernelRun:
    """Execute a copy of ``nb`` in a fresh kernel in ``layout`` (``nb`` itself is left as it is).

    ``cell_timeout``: seconds per cell; ``deadline`` (``time.monotonic()``) and ``total`` (the
    same in seconds, for the words of the report): the whole grade's limit. After each cell that
    ran cleanly, ``after_cell(index, session)`` runs; it returns the id of the exercise that was
    being checked when the kernel died, or "". Raises :class:`GradingError` when no kernel starts."""
    import nbformat
    from nbclient.exceptions import DeadKernelError

    from .remote import Exchange, KernelGone, ProbeWorker, Session, remote_code

    nb = copy.deepcopy(nb)
    hits: list[dict] = []
    km = _kernel_manager(layout, sandbox=sandbox, limits=limits)
    client = _bounded_client_class()(
        nb, km=km, timeout=int(math.ceil(cell_timeout)), allow_errors=True, interrupt_on_timeout=True,
        error_on_timeout={"ename": "CellTimeoutError", "evalue": f"the cell ran longer than {cell_timeout:g} s "
                          "and was interrupted", "traceback": []},
        startup_timeout=120, resources={"metadata": {"path": str(layout.work)}}, record_timing=True,
        iopub_timeout=10,
    )
    env = sb.minimal_env({GRADING_ENV: "1"})

    def left() -> float:
        return deadline - time.monotonic()

    def transport(request, response, remaining):
        if left() <= 0:
            raise CheckTimeout()
        cell = nbformat.v4.new_code_cell(remote_code(request, response))
        scratch = nbformat.v4.new_notebook(cells=[cell])
        real, limit = client.nb, int(math.ceil(min((remaining or cell_timeout) + 5, max(left(), 1))))
        start = time.monotonic()
        try:
            client.nb, client.timeout = scratch, limit
            client.execute_cell(cell, 0, store_history=False)
        except DeadKernelError:
            raise KernelGone() from None
        finally:
            client.nb, client.timeout = real, int(math.ceil(cell_timeout))
        if _error_name(cell) in ("KeyboardInterrupt", "CellTimeoutError") or time.monotonic() - start >= limit:
            raise CheckTimeout()

    probe_dir = layout.root / "probe"
    probe_dir.mkdir()
    worker = ProbeWorker(sb.worker_argv(sandbox=sandbox, limits=limits), sb.minimal_env(), cwd=str(probe_dir))
    session = Session(transport, Exchange(layout.requests, layout.responses), prober=worker)
    session.hard_deadline = deadline
    watched = [layout.responses, layout.sockets] + ([] if sandbox else [layout.work, probe_dir])
    watchdog = _Watchdog(km, limits, deadline, total, watched, hits, worker)
    client.course_flood = lambda reason: watchdog.hit("output", reason)
    stopped = ""
    executed: list[int] = []  # the code cells run (to their end or interrupted), in order
    timed_out: dict[int, float] = {}
    unrun_from: int | None = None  # the run stopped before this cell
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
                    unrun_from = index
                    break
                cell_limit = min(cell_timeout, max(left(), 1.0))
                client.timeout = int(math.ceil(cell_limit))
                start = time.monotonic()
                try:
                    client.execute_cell(cell, index)
                except DeadKernelError:
                    stopped = f"the kernel died in cell {index + 1}"
                    unrun_from = index
                    break
                finally:
                    client.timeout = int(math.ceil(cell_timeout))
                executed.append(index)
                # interrupted (KeyboardInterrupt), or still running when the interrupt did not take
                if time.monotonic() - start >= cell_limit and _error_name(cell) in ("KeyboardInterrupt", None):
                    timed_out[index] = cell_timeout
                    timeouts_in_a_row += 1
                else:
                    timeouts_in_a_row = 0
                if timeouts_in_a_row == 2:  # the interrupts do not take: give up rather than wait on
                    stopped = f"two cells in a row ran past {cell_timeout:g} s"
                    unrun_from = index + 1
                    break
                if _error(cell) is not None or index in timed_out:
                    continue
                gone = after_cell(index, session)
                if gone:
                    stopped = f"the kernel died while {gone} was checked"
                    unrun_from = index + 1
                    break
    except DeadKernelError:
        stopped = stopped or "the kernel died"
    except RuntimeError as err:  # no kernel could start
        if not stopped and not executed:
            raise GradingError(f"could not start a python3 kernel: {err}") from None
        stopped = stopped or f"the kernel failed: {err}"
    finally:
        watchdog.done.set()
        worker.close()
        _shutdown(km)
        session.exchange.close()
    errors = {index: found[1] for index in executed if (found := _error(nb.cells[index])) is not None}
    for index, text in errors.items():
        text = text.lower()
        if text.startswith("memoryerror") or "can't allocate memory" in text or "out of memory" in text:
            _hit(hits, "memory", f"cell {index + 1} ran out of memory (at most {limits.memory / 2**30:g} GiB of "
                                 "address space per process)")
    for hit in hits:  # a limit the watchdog enforced explains why the kernel died
        if hit["limit"] != "time" or not stopped:
            stopped = f"{stopped}; {hit['reason']}" if stopped else hit["reason"]
            break
    outcomes = tuple(
        CellOutcome(index, index in executed, errors.get(index, ""), timed_out.get(index),
                    stopped if unrun_from is not None and index >= unrun_from else "")
        for index, cell in enumerate(nb.cells) if cell.cell_type == "code")
    return KernelRun(outcomes, stopped, tuple(hits))


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


