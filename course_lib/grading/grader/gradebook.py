"""The class gradebook: a CSV an LMS imports, one row per submission, safe to interrupt.

Columns (:data:`FIXED` around the exercises): ``student, lesson, score, max_score``, then one
column per registered exercise of the lessons in the book (``03.linear_attention``, ...,
points scored), then ``status, reason, seconds, sha256, path``. UTF-8, a header row, no
index column, ``\\r\\n`` line ends (RFC 4180).

Each finished submission's row is appended and fsynced at once, so a run that is interrupted
(Ctrl-C, SIGKILL, a crash) keeps every row it finished. A row that replaces another (the
same path graded again because its file changed) or that needs a new exercise column
rewrites the whole file through a temporary file and :func:`os.replace`, so the book is
always either the old one or the new one. A half-written last line (the process killed
inside a write) is dropped when the book is read.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path

from ..core import format_score
from ..lessons import all_exercises, lesson_exercises
from . import GradingError

__all__ = ["Gradebook", "row_of", "FIXED_HEAD", "FIXED_TAIL", "columns_for"]

FIXED_HEAD = ["student", "lesson", "score", "max_score"]
FIXED_TAIL = ["status", "reason", "seconds", "sha256", "path"]
MAX_REASON = 300


def _cell(text) -> str:
    """A value as a spreadsheet shows it: one line, never read as a formula."""
    text = " ".join(str(text).split())
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def _number(x) -> str:
    return format_score(float(x))


def row_of(path: str, student: str, sha256: str, result: dict) -> dict:
    """The gradebook row of one graded submission (``result``:
    :func:`~course_lib.grading.grader.classroom.grade_submission`'s dict)."""
    report = result.get("report") or {}
    lessons = report.get("lessons") or []
    row = {"student": _cell(student), "lesson": "+".join(lessons), "status": result.get("status", "error"),
           "reason": _cell(str(result.get("reason", ""))[:MAX_REASON]),
           "seconds": f"{float(result.get('seconds', 0.0)):.1f}", "sha256": sha256, "path": _cell(path)}
    if report:
        row["score"], row["max_score"] = _number(report.get("score", 0)), _number(report.get("max_score", 0))
        for item in report.get("exercises", []):
            row[str(item["id"])] = _number(item["score"])
    else:
        row["score"], row["max_score"] = "0", ""
    return row


def columns_for(exercise_ids) -> list[str]:
    """The header: the fixed columns around ``exercise_ids`` in the course's order."""
    order = {exercise_id: n for n, exercise_id in enumerate(all_exercises())}
    ids = sorted(set(exercise_ids), key=lambda i: (order.get(i, len(order)), i))
    return FIXED_HEAD + ids + FIXED_TAIL


class Gradebook:
    """The CSV at ``path`` (created when missing), with columns for ``lessons``' exercises at least."""

    def __init__(self, path: str | Path, lessons=()):
        self.path = Path(path)
        if self.path.suffix.lower() != ".csv":
            raise GradingError(f"gradebook must be a .csv file, got {str(self.path)!r}")
        if self.path.exists() and not self.path.is_file():
            raise GradingError(f"gradebook {str(self.path)!r} exists and is not a file")
        if not self.path.parent.is_dir():
            raise GradingError(f"gradebook's folder {str(self.path.parent)!r} does not exist")
        self._rows: dict[str, dict] = {}
        header, clean = self._load()
        exercises = {c for c in header if c not in FIXED_HEAD + FIXED_TAIL}
        exercises.update(ex.id for lesson in lessons for ex in lesson_exercises(lesson))
        self.header = columns_for(exercises)
        if header != self.header or not clean:
            self._rewrite()

    def _load(self) -> tuple[list[str], bool]:
        """The file's header and rows; ``clean`` is False when a line had to be dropped."""
        if not self.path.exists():
            return [], False
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise GradingError(f"cannot read the gradebook {str(self.path)!r}: {err}") from None
        if not text.strip():
            return [], False
        clean = text.endswith("\n")
        lines = text.splitlines(keepends=True)
        if not clean:
            lines = lines[:-1]  # killed inside a write: the last row is incomplete
        reader = csv.reader(io.StringIO("".join(lines)))
        header = next(reader, [])
        if not {"sha256", "path", "student"} <= set(header):
            raise GradingError(f"{str(self.path)!r} is not a gradebook of this course (header {header[:6]})")
        for values in reader:
            if len(values) != len(header):
                clean = False
                continue
            row = dict(zip(header, values))
            if row["path"] in self._rows:
                clean = False  # a duplicate: the later row wins
            self._rows[row["path"]] = row
        return header, clean

    def rows(self) -> dict[str, dict]:
        """Path -> row, for every row in the book."""
        return dict(self._rows)

    def row(self, path: str) -> dict | None:
        """The row of ``path`` (as collected), None when there is none."""
        return self._rows.get(_cell(path))

    def has(self, path: str, sha256: str) -> bool:
        """Whether the book holds a row for ``path`` graded from a file with this ``sha256``."""
        row = self._rows.get(_cell(path))
        return row is not None and row.get("sha256") == sha256

    def put(self, row: dict) -> None:
        """Add ``row`` (replacing the row of the same path): appended and fsynced, or the whole
        book rewritten atomically when a row is replaced or a column is new."""
        replaces = row["path"] in self._rows
        new_columns = set(row) - set(self.header)
        self._rows[row["path"]] = row
        if new_columns:
            self.header = columns_for([c for c in self.header if c not in FIXED_HEAD + FIXED_TAIL] + list(new_columns))
        if replaces or new_columns:
            self._rewrite()
            return
        with open(self.path, "a", encoding="utf-8", newline="") as f:
            csv.DictWriter(f, self.header, restval="", extrasaction="ignore").writerow(row)
            f.flush()
            os.fsync(f.fileno())

    def _rewrite(self) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
                writer = csv.DictWriter(f, self.header, restval="", extrasaction="ignore")
                writer.writeheader()
                for row in self._rows.values():
                    writer.writerow(row)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        try:
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass
