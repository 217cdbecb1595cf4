"""The sandbox a graded notebook's kernel (and the grader's probe interpreter) runs in.

With Debian's ``bubblewrap`` (``bwrap``) the kernel sees an allow-list of the file system,
read-only: the system's programs and libraries (``/usr``), a few files of ``/etc`` that
programs need to start, the Python installation and virtual environment, and the course's
own package (``course_lib/``, not the rest of its checkout: no ``solutions/``). It does not
see ``$HOME``, ``/var/tmp``, other submissions or other grades in progress. Its only
writable places are a private ``/tmp`` and its working folder, both size-limited tmpfs
(``Limits.disk``), and the folder it writes its answers to, which the grader watches. It
has no network (its own empty network namespace), a minimal environment (none of the
grader's variables), and lives in its own process namespace: when the kernel ends, or the
grader dies, every process it started ends too, even one started in a new session.

Limits, with or without bubblewrap: an address-space limit per process (``memory``), a CPU
limit per process (``RLIMIT_CPU``) and, watched by the grader, for the whole process tree
(:func:`tree_cpu_seconds`), a file-size limit, and the grade's wall-clock limit.

Without bubblewrap the kernel gets the limits, a minimal environment and a throw-away
working folder, and the grade command says plainly that nothing else is protected.

The kernel's command is ``[bwrap ...] python -m course_lib.grading.grader.sandbox --memory BYTES
--cpu SECONDS --fsize BYTES [--copy-from DIR] -- COMMAND...``: it sets the limits on
itself, copies the notebook into its working folder, and then becomes ``COMMAND``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..core import GRADING_ENV

__all__ = ["bwrap_reason", "kernel_argv", "worker_argv", "Limits", "Layout", "minimal_env", "tree_cpu_seconds",
           "kill_tree", "folder_bytes", "DEFAULT_MEMORY", "DEFAULT_CPU", "DEFAULT_DISK"]

DEFAULT_MEMORY = 8 * 2**30  # bytes of address space per process (torch reserves far more than it touches)
DEFAULT_CPU = 3600  # seconds of CPU time for the whole notebook: all threads and processes together
DEFAULT_DISK = 1 * 2**30  # bytes the kernel may write: private /tmp + working folder + its answers
CPU_BACKSTOP = 10  # seconds a single process may run past the tree's CPU limit before RLIMIT_CPU ends it

# What a graded kernel inherits of the grader's environment: course settings and numeric-library
# switches, never tokens, paths or credentials.
PASSED_ENV = ("COURSE_DEVICE", "COURSE_QUIET", "COURSE_SCALE", "PYTHONHASHSEED", "OMP_NUM_THREADS",
              "MKL_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "TZ")
# The files of /etc that programs need to start (dynamic linker, users, name service, time zone).
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "passwd", "group", "nsswitch.conf", "localtime",
             "hosts", "host.conf", "alternatives", "mime.types", "fonts", "os-release")


@dataclass(frozen=True)
class Limits:
    """What one graded notebook may spend. ``memory``: address space per process (bytes);
    ``cpu``: CPU seconds of the whole process tree; ``disk``: bytes it may write in all."""

    memory: int = DEFAULT_MEMORY
    cpu: int = DEFAULT_CPU
    disk: int = DEFAULT_DISK

    @property
    def file_size(self) -> int:
        """``RLIMIT_FSIZE``: no single file larger than the whole disk allowance."""
        return int(self.disk)


@dataclass(frozen=True)
class Layout:
    """The grader's private folder (``root``, mode 700) and what the sandbox sees of it.

    ``requests``: the grader writes, the kernel only reads; ``responses``: the kernel writes
    its answers, the grader reads them without following links; ``sockets``: the kernel's
    ipc sockets; ``source``: the notebook, copied by the launcher into ``work``, the
    kernel's working folder (a size-limited tmpfs under bubblewrap)."""

    root: Path

    @classmethod
    def create(cls, root: Path) -> Layout:
        layout = cls(Path(root).resolve())
        layout.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(layout.root, 0o700)
        for folder in (layout.requests, layout.responses, layout.sockets, layout.source, layout.work):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        return layout

    requests = property(lambda self: self.root / "requests")
    responses = property(lambda self: self.root / "responses")
    sockets = property(lambda self: self.root / "sockets")
    source = property(lambda self: self.root / "source")
    work = property(lambda self: self.root / "work")
    connection_file = property(lambda self: self.root / "connection.json")
    spec = property(lambda self: self.root / "spec")


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
        probe = subprocess.run([path, *_system_binds(), "--dev", "/dev", "--proc", "/proc", "--size", str(2**20),
                                "--tmpfs", "/tmp", "--unshare-all", "--die-with-parent", "--remount-ro", "/",
                                "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        return f"bubblewrap could not start ({err})"
    if probe.returncode != 0:
        detail = " ".join(probe.stderr.decode(errors="replace").split())[:200]
        return f"bubblewrap cannot create namespaces on this machine ({detail or 'exit ' + str(probe.returncode)})"
    return ""


def minimal_env(extra: dict | None = None) -> dict[str, str]:
    """The whole environment of a graded process: a PATH, a HOME in its private /tmp, a locale,
    the course's own settings; none of the grader's other variables."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp",
           "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
           "MPLCONFIGDIR": "/tmp/matplotlib", "IPYTHONDIR": "/tmp/ipython", "TMPDIR": "/tmp",
           "JUPYTER_RUNTIME_DIR": "/tmp/jupyter", "JUPYTER_PLATFORM_DIRS": "1"}
    env.update({name: os.environ[name] for name in PASSED_ENV if name in os.environ})
    env.update(extra or {})
    return env


def _system_binds() -> list[str]:
    """Read-only binds of the system's programs and libraries (merged-/usr symlinks kept as links)."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    for name in ETC_FILES:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    args += ["--ro-bind-try", "/sys/devices/system/cpu", "/sys/devices/system/cpu"]
    return args


def _python_binds() -> list[str]:
    """Read-only binds of what Python needs: the interpreter's installation, the virtual
    environment, every folder on ``sys.path``, and the course's package (not its checkout)."""
    import course_lib

    package = Path(course_lib.__file__).resolve().parent
    needed = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix), Path(sys.executable).parent, package}
    prefixes = [Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), Path(sys.exec_prefix).resolve()]
    for entry in sys.path:  # installed packages only: never the current folder, a checkout or $HOME itself
        path = Path(entry).resolve() if entry else None
        if path is not None and path.exists() and (any(path.is_relative_to(p) for p in prefixes)
                                                   or path.name in ("site-packages", "dist-packages")):
            needed.add(path)
    paths = sorted({p.resolve() for p in needed}, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in paths:  # a folder inside one already bound needs no bind of its own
        if path == Path("/") or path == package.parent or any(path.is_relative_to(k) for k in kept):
            continue
        if path.is_relative_to(Path("/usr")):
            continue
        kept.append(path)
    args: list[str] = []
    for path in kept:
        args += ["--ro-bind", str(path), str(path)]
    return args


def _bwrap(layout: Layout | None, limits: Limits, env: dict[str, str], chdir: Path) -> list[str]:
    args = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--clearenv"]
    for key, value in env.items():
        args += ["--setenv", key, value]
    args += _system_binds() + ["--dev", "/dev", "--proc", "/proc",
                               "--size", str(max(limits.disk // 2, 2**20)), "--tmpfs", "/tmp"]
    args += _python_binds()
    if layout is not None:
        args += ["--ro-bind", str(layout.requests), str(layout.requests),
                 "--bind", str(layout.responses), str(layout.responses),
                 "--bind", str(layout.sockets), str(layout.sockets),
                 "--ro-bind", str(layout.source), str(layout.source),
                 "--size", str(max(limits.disk // 2, 2**20)), "--tmpfs", str(layout.work),
                 # written by jupyter before the kernel starts
                 "--ro-bind", str(layout.connection_file), str(layout.connection_file)]
    args += ["--remount-ro", "/", "--chdir", str(chdir)]
    return args


def _launcher(limits: Limits, copy_from: Path | None = None) -> list[str]:
    # the per-process CPU limit is a backstop: the grader's watchdog stops the whole tree first
    args = [sys.executable, "-m", "course_lib.grading.grader.sandbox", "--memory", str(int(limits.memory)),
            "--cpu", str(int(limits.cpu) + CPU_BACKSTOP), "--fsize", str(int(limits.file_size))]
    if copy_from is not None:
        args += ["--copy-from", str(copy_from)]
    return args + ["--"]


def kernel_argv(layout: Layout, *, sandbox: bool, limits: Limits = Limits()) -> list[str]:
    """The kernelspec ``argv`` of a graded kernel (``{connection_file}`` filled in by jupyter)."""
    kernel = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    inner = _launcher(limits, layout.source) + kernel
    if not sandbox:
        return inner
    return _bwrap(layout, limits, minimal_env({GRADING_ENV: "1"}), layout.work) + inner


def worker_argv(*, sandbox: bool, limits: Limits = Limits()) -> list[str]:
    """The command of the grader's probe interpreter (:mod:`course_lib.grading.grader.probe`)."""
    inner = _launcher(limits) + [sys.executable, "-m", "course_lib.grading.grader.probe"]
    if not sandbox:
        return inner
    return _bwrap(None, limits, minimal_env(), Path("/tmp")) + inner


# ---------------------------------------------------------------- watching the process tree


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (Linux ``/proc``)."""
    tree, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(tree.get(p, []))
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds spent by ``pid`` and all its descendants, living or ended (an ended process's
    time is in its parent's ``cutime``/``cstime`` once reaped)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
        except (OSError, IndexError, ValueError):
            continue
    return total / ticks


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it (children first seen, then the root)."""
    for p in reversed(descendants(pid)):
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def folder_bytes(folder: Path, limit: int | None = None) -> int:
    """Bytes held by the files under ``folder`` (links not followed); stops counting past ``limit``."""
    total = 0
    stack = [str(folder)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
            except OSError:
                continue
            if limit is not None and total > limit:
                return total
    return total


# ---------------------------------------------------------------- the launcher (runs in the sandbox)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.grading.grader.sandbox")
    parser.add_argument("--memory", type=int, required=True, help="address-space limit in bytes")
    parser.add_argument("--cpu", type=int, required=True, help="CPU-time limit in seconds")
    parser.add_argument("--fsize", type=int, default=None, help="largest file it may write, in bytes")
    parser.add_argument("--copy-from", default=None, help="copy this folder's files into the working folder")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("a command to run is required after --")
    resource.setrlimit(resource.RLIMIT_AS, (args.memory, args.memory))
    resource.setrlimit(resource.RLIMIT_CPU, (args.cpu, args.cpu + 5))
    if args.fsize:
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.fsize, args.fsize))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past it fails (EFBIG) instead of killing
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):
        pass
    if args.copy_from:
        for path in sorted(Path(args.copy_from).iterdir()):
            if path.is_file() and not path.is_symlink():
                shutil.copyfile(path, Path.cwd() / path.name)
    os.execvp(command[0], command)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
