"""How a benchmark's result file was made, said once for every README block rendered from one:
the command, the commit, the machine and the load average during the run (``write_result``'s
``command``, ``commit``, ``dirty``, ``machine``, ``load_average`` and ``seconds``)."""

from __future__ import annotations

__all__ = ["commit_text", "load_text", "how_made"]


def commit_text(result: dict) -> str:
    """The short commit the run was made at, ``"... with uncommitted changes"`` where the tree was dirty."""
    return (result.get("commit") or "unknown")[:7] + (" with uncommitted changes" if result.get("dirty") else "")


def load_text(result: dict) -> str:
    """``"; load average 0.4-1.2 during the run"`` (before and after it), or ``""`` where none was read."""
    load = result.get("load_average") or {}
    loads = [v for v in (load.get("before"), load.get("after")) if v is not None]
    return f"; load average {min(loads):.1f}-{max(loads):.1f} during the run" if loads else ""


def how_made(result: dict, setup: str) -> str:
    """One sentence: ``"`command` at commit abc1234 (machine, setup; load; 12 s)."``, ``setup`` being
    what the benchmark says of its own sizes (threads, dtype, shapes, repeats).

    >>> print(how_made({"command": "python -m course_lib bench x", "commit": "0123456789", "seconds": 12.3,
    ...                 "machine": {"processor": "x86_64", "cpu_count": 4, "torch": "2.5.1"},
    ...                 "load_average": {"before": 0.5, "after": 1.5}}, "2 threads"))
    `python -m course_lib bench x` at commit 0123456 (x86_64, 4 logical CPUs, torch 2.5.1, 2 threads;
    load average 0.5-1.5 during the run; 12 s).
    >>> print(how_made({"command": "c", "commit": "0123456789", "seconds": 1,
    ...                 "machine": {"processor": "x86_64", "cpu_count": 16, "torch": "2.11.0", "gpu": "NVIDIA H200"}},
    ...                "float32"))
    `c` at commit 0123456 (NVIDIA H200, x86_64, 16 logical CPUs, torch 2.11.0, float32; 1 s).
    """
    m = result["machine"]
    where = f"{m.get('processor') or 'a CPU'}, {m.get('cpu_count')} logical CPUs, torch {m.get('torch')}"
    if m.get("gpu"):  # a run on CUDA (results.machine names the GPU)
        where = f"{m['gpu']}, {where}"
    return (f"`{result['command']}` at commit {commit_text(result)} ({where}, {setup}{load_text(result)}; "
            f"{result['seconds']:.0f} s).")
