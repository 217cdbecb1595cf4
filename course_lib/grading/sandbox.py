"""The sandbox a graded notebook's kernel runs in.

With Debian's ``bubblewrap`` (``bwrap``) the kernel sees the whole file system read-only
except a private ``/tmp`` and the grading folder (its throw-away working copy and the
sockets it talks through), has no network (its own empty network namespace), and lives in
its own process namespace: when the kernel ends, or the grader dies, every process it
started ends too, even one started in a new session. In both cases the kernel gets a
limit on its address space (memory) and on its CPU time.

Without bubblewrap the kernel still gets the limits and a throw-away working folder, and
the grade command says plainly that it ran without a sandbox.

The kernel's command is ``python -m course_lib.grading.sandbox --memory BYTES --cpu SECONDS
-- COMMAND...``: it sets the limits on itself and then becomes ``COMMAND``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

__all__ = ["bwrap_reason", "kernel_argv", "copy_working_folder", "DEFAULT_MEMORY", "DEFAULT_CPU"]

DEFAULT_MEMORY = 8 * 2**30  # bytes of address space (torch reserves far more than it touches)
DEFAULT_CPU = 3600  # seconds of CPU time for the whole notebook (all threads together)
GRADING_ENV = "COURSE_GRADE_SESSION"  # set in a graded kernel: check() leaves the checks to the grader


def bwrap_reason() -> str:
    """"" when bubblewrap works here, else why not (in words a learner can act on)."""
    if os.environ.get("COURSE_GRADE_NO_SANDBOX"):
        return "COURSE_GRADE_NO_SANDBOX is set"
    return _probe_bwrap(shutil.which("bwrap"))


@lru_cache(maxsize=4)
def _probe_bwrap(path: str | None) -> str:
    if path is None:
        return "bubblewrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    try:
        probe = subprocess.run([path, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-all",
                                "--die-with-parent", "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        return f"bubblewrap could not start ({err})"
    if probe.returncode != 0:
        detail = " ".join(probe.stderr.decode(errors="replace").split())[:200]
        return f"bubblewrap cannot create namespaces on this machine ({detail or 'exit ' + str(probe.returncode)})"
    return ""


def kernel_argv(rw: Path, work: Path, *, sandbox: bool, memory: int = DEFAULT_MEMORY,
                cpu: int = DEFAULT_CPU) -> list[str]:
    """The kernelspec ``argv`` of a graded kernel (``{connection_file}`` filled in by jupyter)."""
    kernel = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    limits = [sys.executable, "-m", "course_lib.grading.sandbox", "--memory", str(int(memory)), "--cpu",
              str(int(cpu)), "--"]
    if not sandbox:
        return limits + kernel
    rw = str(Path(rw).resolve())
    bwrap = [shutil.which("bwrap") or "bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
             "--tmpfs", "/tmp", *_keep_under_tmp(), "--bind", rw, rw,
             "--unshare-all", "--die-with-parent", "--new-session",
             "--chdir", str(Path(work).resolve()), "--unsetenv", "JPY_PARENT_PID",
             "--setenv", "MPLCONFIGDIR", "/tmp/matplotlib", "--setenv", "IPYTHONDIR", "/tmp/ipython"]
    return limits + bwrap + kernel


def _keep_under_tmp() -> list[str]:
    """``--ro-bind`` arguments that bring back, read-only, what the kernel needs from under ``/tmp``
    (a checkout or virtual environment there, as in a CI clone), which the sandbox's own tmpfs hides."""
    import course_lib

    needed = {Path(sys.prefix), Path(sys.base_prefix), Path(course_lib.__file__).parents[1]}
    args: list[str] = []
    for path in sorted({str(p.resolve()) for p in needed}):
        if path == "/tmp" or path.startswith("/tmp/"):
            args += ["--ro-bind", path, path]
    return args


def copy_working_folder(source: Path, dest: Path, *, max_bytes: int = 50 * 2**20) -> None:
    """A throw-away copy of the notebook's folder (its files, not its subfolders; large files left out),
    so that relative reads work and writes never reach the learner's files."""
    dest.mkdir(parents=True, exist_ok=True)
    total = 0
    for path in sorted(Path(source).iterdir()):
        try:
            if not path.is_file() or path.is_symlink():
                continue
            size = path.stat().st_size
            if total + size > max_bytes:
                continue
            shutil.copy2(path, dest / path.name)
            total += size
        except OSError:
            continue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.grading.sandbox")
    parser.add_argument("--memory", type=int, required=True, help="address-space limit in bytes")
    parser.add_argument("--cpu", type=int, required=True, help="CPU-time limit in seconds")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("a command to run is required after --")
    resource.setrlimit(resource.RLIMIT_AS, (args.memory, args.memory))
    resource.setrlimit(resource.RLIMIT_CPU, (args.cpu, args.cpu + 5))
    os.execvp(command[0], command)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
