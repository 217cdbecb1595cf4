"""What every explorer shares and needs no ipywidgets: the frontend check and small text helpers."""

from __future__ import annotations

__all__ = ["has_widget_frontend", "FRONTEND_NOTE", "ranges_text", "with_option", "check_choice", "check_at_least"]

FRONTEND_NOTE = "static picture: no live widgets in this frontend; run the notebook in JupyterLab to move the controls"


def has_widget_frontend() -> bool:
    """True inside a Jupyter kernel, the only place where widgets can be live.

    Whether the frontend on the other side draws them is its choice: an explorer's display
    offers both the widget and a static picture, and the frontend shows what it can.
    """
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with ipywidgets
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def check_choice(name: str, value, choices) -> None:
    """A state's setting ``name`` must be one of ``choices`` (the error names both)."""
    if value not in choices:
        raise ValueError(f"{name}={value!r}; expected one of {choices}")


def check_at_least(state, names, minimum: int) -> None:
    """Each of the state's settings ``names`` must be ``>= minimum`` (the error names the first that is not)."""
    for name in names:
        if getattr(state, name) < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {getattr(state, name)}")


def with_option(options, value) -> list:
    """A menu's options with ``value`` added if it is a valid setting the menu did not offer."""
    options = list(options)
    if value in options:
        return options
    return sorted([*options, value]) if all(isinstance(o, int) for o in options) else [*options, value]


def ranges_text(positions) -> str:
    """``[0, 3, 4, 5] -> '0, 3..5'``"""
    parts, start = [], None
    positions = sorted(positions)
    for n, p in enumerate(positions):
        if start is None:
            start = p
        if n + 1 == len(positions) or positions[n + 1] != p + 1:
            parts.append(str(p) if p == start else f"{start}..{p}")
            start = None
    return ", ".join(parts) if parts else "none"
