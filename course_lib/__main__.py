"""Command line: ``python -m course_lib doctor | grade | bench``.

* ``doctor``: versions, device, widget support; exits non-zero when the environment is
  broken, and says how to fix it.
* ``grade NOTEBOOK.ipynb [--json]``: run a learner's notebook in a fresh sandboxed kernel and
  score it with checks run outside the notebook.
* ``bench decode | recall | compare | chunked``: benchmarks that print a table and save a plot.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# each benchmark lives in course_lib/bench/<name>.py with add_arguments(parser) and run(args)
BENCHMARKS = {
    "decode": "ms/token and bytes against context length, for any memory",
    "recall": "MQAR accuracy against memory bytes, for every memory model",
    "compare": "course_lib side by side with Hugging Face GPT-2 and compressive-transformer-pytorch",
    "chunked": "training tokens/s and peak memory of the matrix memories' token loop, chunked and parallel forms",
}


def build_parser(bench_name: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only the chosen benchmark's module is imported (they are heavy)."""
    parser = argparse.ArgumentParser(prog="python -m course_lib", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    doctor = sub.add_parser("doctor", help="check the environment: versions, device, widgets")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")

    grade = sub.add_parser("grade", help="run a learner's notebook in a fresh kernel and score it")
    grade.add_argument("notebook", help="path to an exercises notebook (.ipynb); it is never modified")
    grade.add_argument("--json", action="store_true", help="print the report as JSON")
    grade.add_argument("--timeout", type=float, default=None,
                       help="seconds for the whole grade (default 3x the lessons' expected time)")
    grade.add_argument("--cell-timeout", type=float, default=120.0, help="seconds per cell (default 120)")
    grade.add_argument("--disk-gb", type=float, default=None,
                       help="GiB the notebook may write: its /tmp, working folder and answers (default 1)")
    grade.add_argument("--memory-gb", type=float, default=None,
                       help="the kernel's address-space limit in GiB (default 8)")
    grade.add_argument("--cpu-seconds", type=float, default=None,
                       help="CPU seconds for the notebook's processes, all cells together (default 3600)")

    bench = sub.add_parser("bench", help="benchmarks: print a table, save a PNG")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    for name, text in BENCHMARKS.items():
        p = bench_sub.add_parser(name, help=text)
        p.set_defaults(bench_module=name)
        if name == bench_name:
            _bench_module(name).add_arguments(p)
    return parser


def _bench_module(name: str):
    return importlib.import_module(f"course_lib.bench.{name}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    bench_name = argv[1] if len(argv) > 1 and argv[0] == "bench" and argv[1] in BENCHMARKS else None
    args = build_parser(bench_name).parse_args(argv)
    if args.command == "doctor":
        from .doctor import main as doctor_main

        return doctor_main(as_json=args.json)
    if args.command == "grade":
        from .grading.grader.cli import main as grade_main

        return grade_main(args.notebook, as_json=args.json, timeout=args.timeout, cell_timeout=args.cell_timeout,
                          memory_gb=args.memory_gb, cpu_seconds=args.cpu_seconds, disk_gb=args.disk_gb)
    return _bench_module(args.bench_module).run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
