"""Command line: ``python -m course_lib doctor | grade | bench``.

* ``doctor``: versions, device, widget support; exits non-zero when the environment is
  broken, and says how to fix it.
* ``grade NOTEBOOK.ipynb [--json]``: run a learner's notebook in a fresh sandboxed kernel and
  score it with checks run outside the notebook; ``grade PATH... [--jobs N] [--gradebook FILE.csv]
  [--feedback DIR] [--dask ADDRESS]`` grades a class (docs/grading.md).
* ``progress [--folder exercises]``: each lesson's exercises, attempted or not, and the score.
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

    grade = sub.add_parser(
        "grade", help="run a learner's notebook in a fresh kernel and score it; or a whole class",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=GRADE_EPILOG)
    grade.add_argument("notebook", nargs="+", metavar="PATH",
                       help="an exercises notebook (.ipynb; never modified), or several, folders (their *.ipynb, "
                            "recursively, without checkpoints and backups) and globs: a class")
    grade.add_argument("--json", action="store_true", help="print the report (a class: the rows) as JSON")
    _limit_arguments(grade)
    grade.add_argument("--jobs", type=int, default=None,
                       help="submissions graded at once, each in its own worker and sandbox (default: the cores)")
    grade.add_argument("--gradebook", default=None, metavar="FILE.csv",
                       help="CSV to write one row per submission to; a rerun skips those already in it unchanged")
    grade.add_argument("--feedback", default=None, metavar="DIR", help="write each student's Markdown report here")
    grade.add_argument("--dask", default=None, metavar="ADDRESS",
                       help="grade on a Dask cluster, e.g. tcp://scheduler:8786 (workers need the course and "
                            "bubblewrap installed)")

    progress = sub.add_parser("progress", help="each lesson's exercises: attempted or not, and the score")
    progress.add_argument("--folder", default="exercises", help="the exercise notebooks' folder (default exercises)")
    progress.add_argument("--jobs", type=int, default=None, help="notebooks graded at once (default: the cores)")
    progress.add_argument("--json", action="store_true", help="print the result as JSON")
    _limit_arguments(progress)

    bench = sub.add_parser("bench", help="benchmarks: print a table, save a PNG")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    for name, text in BENCHMARKS.items():
        p = bench_sub.add_parser(name, help=text)
        p.set_defaults(bench_module=name)
        if name == bench_name:
            _bench_module(name).add_arguments(p)
    return parser


GRADE_EPILOG = """\
One notebook and none of --jobs/--gradebook/--feedback/--dask: its report; exit 0 when grading
worked (whatever the score), 2 when the notebook cannot be read or no kernel starts.

A class (several paths, a folder, a glob, or any of those options): each submission graded
in its own worker and sandbox, a progress bar on stderr, a line per submission on stdout.
Student id: the file's stem minus the lesson's notebook name (alice_03_two_routes_exercises.ipynb
and 03_two_routes_exercises-alice.ipynb: alice); the parent folder's name when the stem is the
lesson's name alone (alice/03_two_routes_exercises.ipynb: alice); else the stem.
Gradebook columns: student, lesson, score, max_score, one per exercise of the lessons, status,
reason, seconds, sha256, path. Status: graded, crashed, timeout, output-flood, cpu-limit,
disk-limit, memory-limit, not-a-notebook, error. Exit status: 0 when every submission was
graded (whatever the scores), 1 when some were not (named on stderr; their rows say why),
2 when nothing could be graded (no such path, bad gradebook, no scheduler), 130 after Ctrl-C
(finished rows kept: rerun the same command to go on). See docs/grading.md.
"""

CLASS_OPTIONS = ("jobs", "gradebook", "feedback", "dask")


def _limit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds for the whole grade of a notebook (default 3x the lessons' expected time)")
    parser.add_argument("--cell-timeout", type=float, default=120.0, help="seconds per cell (default 120)")
    parser.add_argument("--disk-gb", type=float, default=None,
                        help="GiB the notebook may write: its /tmp, working folder and answers (default 1)")
    parser.add_argument("--memory-gb", type=float, default=None,
                        help="the kernel's address-space limit in GiB (default 8)")
    parser.add_argument("--cpu-seconds", type=float, default=None,
                        help="CPU seconds for the notebook's processes, all cells together (default 3600)")


def _limits(args) -> dict:
    return {"timeout": args.timeout, "cell_timeout": args.cell_timeout, "memory_gb": args.memory_gb,
            "cpu_seconds": args.cpu_seconds, "disk_gb": args.disk_gb}


def _is_class(args) -> bool:
    """A class grade: several paths, a folder or a glob, or any class option."""
    from pathlib import Path

    paths = args.notebook
    if len(paths) > 1 or any(getattr(args, name) is not None for name in CLASS_OPTIONS):
        return True
    return Path(paths[0]).is_dir() or (not Path(paths[0]).exists() and any(c in paths[0] for c in "*?["))


def _bench_module(name: str):
    return importlib.import_module(f"course_lib.bench.{name}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    bench_name = argv[1] if len(argv) > 1 and argv[0] == "bench" and argv[1] in BENCHMARKS else None
    args = build_parser(bench_name).parse_args(argv)
    if args.command == "doctor":
        from .doctor import main as doctor_main

        return doctor_main(as_json=args.json)
    if args.command == "grade" and _is_class(args):
        from .grading.grader.classroom import main as class_main

        return class_main(args.notebook, jobs=args.jobs, gradebook=args.gradebook, feedback=args.feedback,
                          dask=args.dask, as_json=args.json, options=_limits(args))
    if args.command == "grade":
        from .grading.grader.cli import main as grade_main

        return grade_main(args.notebook[0], as_json=args.json, timeout=args.timeout, cell_timeout=args.cell_timeout,
                          memory_gb=args.memory_gb, cpu_seconds=args.cpu_seconds, disk_gb=args.disk_gb)
    if args.command == "progress":
        from .grading.grader.classroom import progress_main

        return progress_main(args.folder, jobs=args.jobs, as_json=args.json, options=_limits(args))
    return _bench_module(args.bench_module).run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
