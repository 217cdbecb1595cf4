"""``python -m course_lib doctor``: is this environment ready for the course?

Checks the Python and package versions, which device the course will use, and whether
JupyterLab can show widgets. Every problem comes with the fix in words; the exit code
is non-zero when something the course needs is missing.
"""

from __future__ import annotations

import importlib
import json
import platform

REQUIRED = ["torch", "numpy", "matplotlib", "ipywidgets", "jupyterlab", "tqdm"]
OPTIONAL = ["nbval", "pytest", "hypothesis", "playwright"]
FIX = "run `make lab` (or `make test`) from the course folder: it creates .venv with everything pinned"


def _version(name: str) -> str | None:
    try:
        module = importlib.import_module(name)
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return None
    return getattr(module, "__version__", "installed")


def collect() -> dict:
    """Gather the report as a dict: versions, device, widget support, problems."""
    problems: list[str] = []
    packages = {}
    for name in REQUIRED:
        packages[name] = _version(name)
        if packages[name] is None:
            problems.append(f"{name} is missing or fails to import; {FIX}")
    optional = {name: _version(name) for name in OPTIONAL}

    device = {"name": "unknown", "cuda": False, "mps": False}
    if packages["torch"] is not None:
        import torch

        from .device import describe_device, pick_device

        try:
            chosen = pick_device()
            device = {"name": chosen.type, "description": describe_device(chosen),
                      "cuda": torch.cuda.is_available(),
                      "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())}
        except ValueError as err:
            problems.append(str(err))
        if not packages["torch"].startswith("2."):
            problems.append(f"torch {packages['torch']} is not torch 2.x; {FIX}")

    widgets = {"ipywidgets": packages["ipywidgets"], "jupyterlab_widgets": _version("jupyterlab_widgets")}
    if packages["ipywidgets"] is not None and widgets["jupyterlab_widgets"] is None:
        problems.append("jupyterlab_widgets is missing, so sliders will not show in JupyterLab; "
                        "pip install jupyterlab_widgets")
    from . import __version__

    return {
        "course_lib": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "packages": packages,
        "optional": optional,
        "device": device,
        "widgets": widgets,
        "problems": problems,
        "ok": not problems,
    }


def format_report(report: dict) -> str:
    lines = [f"course_lib {report['course_lib']}  |  Python {report['python']}  |  {report['platform']}"]
    lines.append("packages:")
    for name, version in report["packages"].items():
        lines.append(f"  {'✓' if version else '✗'} {name:<12} {version or 'MISSING'}")
    for name, version in report["optional"].items():
        lines.append(f"  {'✓' if version else '·'} {name:<12} {version or 'not installed (only for tests)'}")
    dev = report["device"]
    lines.append(f"device: {dev.get('description', dev['name'])}  (cuda: {dev['cuda']}, mps: {dev['mps']}; "
                 "set COURSE_DEVICE=cpu to force the CPU)")
    w = report["widgets"]
    lines.append(f"widgets: ipywidgets {w['ipywidgets'] or 'MISSING'}, "
                 f"jupyterlab_widgets {w['jupyterlab_widgets'] or 'MISSING'}")
    if report["problems"]:
        lines.append("problems:")
        lines.extend(f"  ✗ {p}" for p in report["problems"])
    else:
        lines.append("all good: the course is ready to run")
    return "\n".join(lines)


def main(as_json: bool = False) -> int:
    report = collect()
    print(json.dumps(report, indent=2) if as_json else format_report(report))
    return 0 if report["ok"] else 1
