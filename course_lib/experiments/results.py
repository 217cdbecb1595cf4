r"""One format for every result file under ``docs/results/``, and the one reader of ``COURSE_SCALE``.

A result file is what a long run leaves for a lesson, the README and the tests to read, so that
none of them types a number by hand. Every file has the same top level::

    {"schema": 1,
     "command": "python -m course_lib.experiments.lesson08 recall",   # how to make it again
     "commit": "9f94e9c...",           # the course's git commit (None outside a checkout)
     "dirty": false,                   # uncommitted changes when it ran
     "machine": {...},                 # platform, CPU, threads, torch, device
     "seeds": [0, 1, 2],
     "setup": {...},                   # the settings of the run (plain data)
     "seconds": 1968.3,
     "rows": [{...}, ...]}             # one dict per measurement (per design and seed)

plus, where a run needs it, more keys of its own. :func:`write_result` writes it (NaN as
``null``, tuples as lists), :func:`read_result` reads it back and says clearly what is wrong
with a file that does not follow the schema.

Statistics a sentence may rest on: :func:`spread` (mean, standard deviation, min, max over the
seeds), :func:`summarise` (one spread per design), :func:`exceeds_spread` (is a difference larger
than the seed-to-seed spread: every seed of one above every seed of the other).

:func:`scale` is the only place that reads ``COURSE_SCALE``: ``live`` (the default: what a
notebook runs in minutes on 2 CPU cores) or ``full`` (the runs behind the result files).
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
from pathlib import Path

import torch

__all__ = ["SCHEMA", "RESULTS", "SCALES", "scale", "pick", "machine", "commit", "write_result", "read_result",
           "spread", "summarise", "exceeds_spread", "ResultError", "load_average"]

SCHEMA = 1
ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"
SCALES = ("live", "full")
REQUIRED = ("schema", "command", "commit", "machine", "seeds", "setup", "rows")


class ResultError(ValueError):
    """A result file that does not follow the schema (names the file and what is missing)."""


def scale() -> str:
    """``"live"`` or ``"full"``, from the environment variable ``COURSE_SCALE`` (unset: live)."""
    value = os.environ.get("COURSE_SCALE", "").strip().lower() or "live"
    if value not in SCALES:
        raise ValueError(f"COURSE_SCALE must be 'live' or 'full' (or unset), got {os.environ['COURSE_SCALE']!r}")
    return value


def pick(live, full):
    """``full`` when ``COURSE_SCALE=full``, else ``live``: a lesson's settings for this run."""
    return full if scale() == "full" else live


def machine(device=None) -> dict:
    """Where a run ran: enough to judge whether a rerun elsewhere should agree in its timings."""
    out = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
           "python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
           "threads": torch.get_num_threads()}
    if device is not None:
        out["device"] = str(device)
        if torch.device(device).type == "cuda":
            out["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return out


def load_average() -> float | None:
    """The 1-minute load average (None where the system has none): a result file's timings are
    only as steady as the machine was quiet."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def commit() -> tuple[str | None, bool]:
    """``(commit, dirty)`` of the checkout the course runs from; ``(None, False)`` outside one.

    ``dirty``: tracked files differ from the commit, other than the runs' own outputs (the result
    files under ``docs/results`` and the pictures in ``docs/``), which a run rewrites as it goes."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--", ".",
                                 ":(exclude)docs/results", ":(exclude,glob)docs/*.png"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, False
    return head or None, bool(status.strip())


def _clean(x):
    """JSON-ready: NaN/inf as None, tuples as lists, tensors and numpy scalars as numbers."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _clean(x.tolist())
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_result(path, *, command: str, rows: list[dict], seeds, setup: dict | None = None,
                 seconds: float | None = None, device=None, **extra) -> Path:
    """Write a result file in the schema above; returns its path (folders are created)."""
    if not isinstance(command, str) or not command.startswith("python -m course_lib"):
        raise ValueError("command must be the command that makes the file ('python -m course_lib...'), "
                         f"got {command!r}")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise TypeError(f"rows must be a list of dicts, got {type(rows).__name__}")
    head, dirty = commit()
    result = {"schema": SCHEMA, "command": command, "commit": head, "dirty": dirty, "machine": machine(device),
              "seeds": list(seeds), "setup": setup or {}, "seconds": None if seconds is None else round(seconds, 1),
              **extra, "rows": rows}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(result), indent=1) + "\n")
    return path


def read_result(path) -> dict:
    """A result file: a path, or a name under ``docs/results/`` (``"lesson08_recall"``)."""
    path = Path(path)
    if path.suffix != ".json" and not path.exists():
        path = RESULTS / f"{path}.json"
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultError(f"no result file {path}; make it with the command in its lesson or module") from None
    except json.JSONDecodeError as err:
        raise ResultError(f"{path} is not JSON ({err})") from None
    missing = [key for key in REQUIRED if key not in result]
    if missing:
        raise ResultError(f"{path} lacks {', '.join(missing)}: not a result file of schema {SCHEMA} "
                          "(rerun its command to rewrite it)")
    if result["schema"] != SCHEMA:
        raise ResultError(f"{path} has schema {result['schema']!r}, expected {SCHEMA}")
    return result


def spread(values) -> dict:
    """``{"mean", "std", "min", "max", "n"}`` of ``values`` (NaN and None left out; std 0 for one value)."""
    xs = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not xs:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "min": min(xs), "max": max(xs), "n": len(xs)}


def summarise(rows: list[dict], value: str, by: str = "label") -> dict:
    """``{rows' by-key: spread(rows' value)}``, in first-seen order."""
    groups: dict = {}
    for row in rows:
        groups.setdefault(row[by], []).append(row.get(value))
    return {key: spread(vals) for key, vals in groups.items()}


def exceeds_spread(a, b) -> bool:
    """Whether two sets of per-seed values differ by more than their spread: every value of one
    lies above every value of the other (with 3 seeds, the difference a sentence may claim)."""
    a, b = spread(a), spread(b)
    if not a["n"] or not b["n"]:
        return False
    return a["min"] > b["max"] or b["min"] > a["max"]
