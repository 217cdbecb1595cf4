"""Each student's feedback from a class grade (``--feedback DIR``): one Markdown file per submission.

The report says the score, then for every exercise of the lesson its points, whether it was
attempted, and every check line with its hint (what the notebook's own ``check`` prints),
then what is left to do (exercises not attempted or not reached), the cells that raised and
why the run stopped, if it did. Text that comes from the learner's notebook (an echoed
answer, an exception's message) is shown inside code spans, so it cannot format the page.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..core import format_score

__all__ = ["feedback_names", "render_feedback", "write_feedback"]

PASS, FAIL = "✓", "✗"


def _safe(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", str(text)).strip("._")[:80] or "submission"


def feedback_names(submissions) -> dict[str, str]:
    """Path -> the feedback file's name: ``STUDENT_LESSONSTEM.md`` (the notebook's stem when two
    submissions would share a name)."""
    first = {}
    for sub in submissions:
        first.setdefault(_safe(sub.student), []).append(sub)
    names, used = {}, set()
    for sub in submissions:
        stem = _safe(Path(sub.path).stem)
        name = f"{_safe(sub.student)}.md" if len(first[_safe(sub.student)]) == 1 else \
            f"{_safe(sub.student)}_{stem}.md"
        if name in used:
            name = f"{_safe(sub.student)}_{stem}_{sub.sha256[:8]}.md"
        used.add(name)
        names[sub.path] = name
    return names


def _code(text) -> str:
    """``text`` as an inline code span that no backtick inside it can close."""
    text = " ".join(str(text).split())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    return f"{fence} {text} {fence}"


def _plain(text) -> str:
    """Grader-written text for a Markdown line: one line, Markdown's special characters escaped."""
    return re.sub(r"([\\`*_\[\]<>#|])", r"\\\1", " ".join(str(text).split()))


def render_feedback(student: str, path: str, row: dict, result: dict) -> str:
    """The Markdown report of one submission (``result``: the worker's dict)."""
    report = result.get("report") or {}
    lines = [f"# Feedback for {_plain(student)}", "", f"Notebook: {_code(Path(path).name)}"]
    if report.get("lessons"):
        lines.append(f"Lesson: {', '.join(report['lessons'])}")
    lines.append("")
    if not report:
        lines += [f"**Not graded** ({_plain(row.get('status', 'error'))}): {_code(result.get('reason', ''))}", ""]
        return "\n".join(lines) + "\n"
    lines.append(f"**Score: {format_score(report['score'])} / {format_score(report['max_score'])}**")
    if row.get("status") != "graded":
        lines.append(f"\nThe run did not finish ({_plain(row['status'])}): {_code(result.get('reason', ''))}")
    lines.append("")
    left = []
    for item in report.get("exercises", []):
        title = f" — {_plain(item['title'])}" if item.get("title") else ""
        status = item.get("status") or ""
        lines.append(f"## {item['id']}{title}: {format_score(item['score'])} / {format_score(item['max_score'])}")
        lines.append("")
        if status in ("not attempted", "not reached"):
            left.append((item, status))
        if status == "not attempted":
            lines.append("Not attempted yet: the code still raises `NotImplementedError`.")
        elif status == "not reached":
            lines.append(f"Not reached: {_code(item['feedback'].removeprefix('not reached: '))}")
        else:
            checks = item.get("checks") or []
            for check in checks:
                mark = PASS if check["status"] == "passed" else FAIL
                hint = "" if check["status"] == "passed" else f": {_code(check.get('hint') or check['status'])}"
                lines.append(f"- {mark} {_plain(check['name'])}{hint}")
            if not checks:
                lines.append(_code(item["feedback"]))
        lines.append("")
    lines.append("## What is left")
    lines.append("")
    if left:
        for item, status in left:
            lines.append(f"- {item['id']} ({format_score(item['max_score'])} points): {status}")
    else:
        lines.append("Every exercise was attempted.")
    lines.append("")
    errors = report.get("cell_errors") or []
    if errors:
        lines += ["## Cells that raised", ""]
        lines += [f"- cell {e['cell']}: {_code(e['error'])}" for e in errors]
        lines.append("")
    return "\n".join(lines) + "\n"


def write_feedback(target: Path, sub, row: dict, result: dict) -> None:
    """Write ``sub``'s feedback to ``target`` (its folder created), atomically."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(render_feedback(sub.student, sub.path, row, result), encoding="utf-8")
    os.replace(tmp, target)
