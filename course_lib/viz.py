r"""Pictures of attention and memory: pure matplotlib functions (data in, Figure out).

Every function takes plain data (lists, numpy arrays or torch tensors), draws on a fresh
:class:`Figure` (or on the ``ax`` you pass) and returns the Figure. Nothing touches
``pyplot``'s global state, so calling them never opens windows or leaks figures; in a
notebook the returned Figure shows itself as a PNG.

* :func:`attention_heatmap`: ``Softmax(q K^T / sqrt(d) + Mask)`` with the memory's
  segments marked (``CMem | Mem | chunk``).
* :func:`memory_timeline`: which token positions each slot of ``Mem`` stands for, step by
  step (a compressed slot of ratio ``c`` is drawn as a span of ``c`` positions).
* :func:`cost_curves`: bytes and FLOPs per token against the context length ``m``,
  analytic lines and measured points, on log axes.
* :func:`recall_vs_bytes`: recall against memory bytes with the Pareto front.

Colours come from the Okabe-Ito palette, which stays distinguishable for the common
forms of colour blindness; lines also differ by dash and marker, heatmaps use viridis.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.collections import PolyCollection
from matplotlib.colors import Normalize, PowerNorm
from matplotlib.figure import Figure as _MplFigure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FuncFormatter, LogFormatter, LogLocator, NullFormatter

__all__ = [
    "Figure", "OKABE_ITO", "PALETTE", "SEGMENT_COLOURS", "figure_png", "attention_heatmap", "attention_bars",
    "memory_timeline", "cost_curves", "recall_vs_bytes", "pareto_front", "format_bytes", "error_vs_ratio",
]

OKABE_ITO = {
    "black": "#000000", "orange": "#E69F00", "sky_blue": "#56B4E9", "green": "#009E73",
    "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7",
}
# series colours in order of use (yellow last: it is hard to read on white)
PALETTE = [OKABE_ITO[c] for c in ("blue", "orange", "green", "vermillion", "purple", "sky_blue", "black", "yellow")]
LINESTYLES = ["-", "--", "-.", ":"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
SEGMENT_COLOURS = {
    "CMem": OKABE_ITO["orange"], "Mem": OKABE_ITO["blue"], "chunk": OKABE_ITO["green"],
    "sinks": OKABE_ITO["purple"], "window": OKABE_ITO["blue"], "keys": OKABE_ITO["blue"],
}
MASKED_GREY = "#d9d9d9"
WEIGHTS_CMAP = matplotlib.colormaps["viridis"].with_extremes(bad=MASKED_GREY)
DIVERGING_CMAP = "RdBu_r"  # ColorBrewer's red-blue: colour-blind safe, zero is white


class Figure(_MplFigure):
    """A matplotlib Figure that shows itself as a PNG in any notebook, ``pyplot`` or not."""

    def _repr_png_(self) -> bytes:
        return figure_png(self)


def figure_png(fig: _MplFigure, dpi: int = 100) -> bytes:
    """The figure rendered as PNG bytes (Agg), without going through ``pyplot``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()


def new_figure(figsize=(6.4, 4.8), **kwargs) -> Figure:
    return Figure(figsize=figsize, layout="constrained", **kwargs)


def _figure_and_axes(ax, figsize):
    if ax is None:
        fig = new_figure(figsize)
        return fig, fig.add_subplot()
    return ax.figure, ax


def _as_array(name: str, x, ndim: int | None = None) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().double().numpy()
    try:
        arr = np.asarray(x, dtype=float)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be numbers (a list, numpy array or tensor), got {type(x).__name__}") from err
    if ndim is not None and arr.ndim != ndim:
        hint = "; pick one batch and head, e.g. weights[0, 0]" if arr.ndim > ndim else ""
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {arr.shape}{hint}")
    return arr


# ----------------------------------------------------------------------------- formatters

def format_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``: bytes in binary units, short enough for a tick label."""
    if n <= 0:
        return "0 B"
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    k = min(int(math.log(n, 1024)), len(units) - 1)
    value = n / 1024**k
    return f"{value:.3g} {units[k]}"


def format_count(n: float) -> str:
    """``65536 -> '64k'``, ``2e9 -> '2G'``: counts with SI-ish suffixes for tick labels."""
    if n <= 0:
        return "0"
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= factor:
            return f"{n / factor:.3g}{suffix}"
    return f"{n:.3g}"


def _format_context(n: float) -> str:
    if n >= 1024 and n % 1024 == 0:
        return f"{int(n // 1024)}k"
    return f"{n:g}"


# ----------------------------------------------------------------------------- attention

def attention_heatmap(weights, segments=None, *, mask=None, query_labels=None, key_labels=None,
                      highlight_query: int | None = None, gamma: float = 1.0, title: str | None = None, ax=None):
    r"""Attention weights ``[T_q, T_k]`` as an image; rows are queries, columns key slots.

    Args:
        weights: ``[T_q, T_k]`` (one batch element and head).
        segments: the key slots' parts in attention order, ``[(name, n_slots), ...]``,
            e.g. ``[("CMem", 2), ("Mem", 4), ("chunk", 3)]``; their sizes must add up to
            ``T_k``. Drawn as white boundaries and coloured names on top.
        mask: optional boolean ``[T_q, T_k]``, ``True`` = may attend; hidden cells are grey.
        query_labels, key_labels: tick labels (token text or positions).
        highlight_query: row to outline (the current query ``q_i``).
        gamma: colour scale ``weight ** gamma``; ``0.5`` makes small weights visible beside a
            dominant one (the colour bar says so).
    """
    w = _as_array("weights", weights, ndim=2)
    t_q, t_k = w.shape
    shown = w.copy()
    if mask is not None:
        m = _as_array("mask", mask, ndim=2).astype(bool)
        if m.shape != w.shape:
            raise ValueError(f"mask has shape {m.shape} but weights have {w.shape}; expected equal shapes")
        shown[~m] = np.nan
    fig, ax = _figure_and_axes(ax, figsize=(min(12, max(4.5, 0.32 * t_k + 2.5)), min(8, max(2.6, 0.3 * t_q + 2))))
    vmax = np.nanmax(shown) if np.isfinite(shown).any() else 1.0
    vmax = max(float(vmax), 1e-12)
    norm = Normalize(0.0, vmax) if gamma == 1.0 else PowerNorm(gamma, 0.0, vmax)
    image = ax.imshow(shown, cmap=WEIGHTS_CMAP, norm=norm, aspect="auto", interpolation="nearest")
    label = {1.0: "attention weight", 0.5: "attention weight (\u221a colour scale)"}.get(
        gamma, f"attention weight (colour \u221d w^{gamma:g})")
    fig.colorbar(image, ax=ax, label=label, shrink=0.9)
    ax.set_xlabel("key slot j")
    ax.set_ylabel("query")
    _tick_labels(ax.xaxis, key_labels, t_k, "key_labels", rotate=True)
    _tick_labels(ax.yaxis, query_labels, t_q, "query_labels", rotate=False)
    if segments:
        _mark_segments(ax, segments, t_k)
    if highlight_query is not None:
        if not 0 <= highlight_query < t_q:
            raise ValueError(f"highlight_query={highlight_query} is outside the {t_q} query rows")
        ax.add_patch(Rectangle((-0.5, highlight_query - 0.5), t_k, 1, fill=False, edgecolor=OKABE_ITO["vermillion"],
                               linewidth=2.5, gid="highlight-query"))
    ax.set_title(title or r"$\mathrm{Softmax}(q_i K^\top/\sqrt{d} + \mathrm{Mask})$", loc="left")
    return fig


def _tick_labels(axis, labels, n, name, rotate):
    if labels is None:
        if n <= 24:
            axis.set_ticks(range(n))
        return
    labels = [str(x) for x in labels]
    if len(labels) != n:
        raise ValueError(f"{name} has {len(labels)} labels for {n} rows/columns; expected {n}")
    axis.set_ticks(range(n), labels=labels, fontsize=9 if n <= 32 else 7)
    if rotate:
        for label in axis.get_ticklabels():
            label.set_rotation(90)


def _mark_segments(ax, segments, t_k):
    names, sizes = [], []
    for seg in segments:
        if not (isinstance(seg, (tuple, list)) and len(seg) == 2):
            raise TypeError(f"segments must be (name, n_slots) pairs, got {seg!r}")
        name, size = seg
        if int(size) != size or size < 0:
            raise ValueError(f"segment {name!r} has n_slots={size!r}; expected an int >= 0")
        names.append(str(name))
        sizes.append(int(size))
    if sum(sizes) != t_k:
        raise ValueError(f"segments {list(zip(names, sizes))} cover {sum(sizes)} key slots but weights have {t_k}")
    edges = np.cumsum([0] + sizes)
    for x in edges[1:-1]:
        ax.axvline(x - 0.5, color="white", linewidth=3, gid="segment-boundary")
    top = ax.secondary_xaxis("top")
    centres = [(a + b - 1) / 2 for a, b, s in zip(edges[:-1], edges[1:], sizes) if s]
    shown = [n for n, s in zip(names, sizes) if s]
    top.set_xticks(centres, labels=[f"{n} ({s})" for n, s in zip(shown, [s for s in sizes if s])])
    top.tick_params(length=0)
    for label, name in zip(top.get_xticklabels(), shown):
        label.set_color(SEGMENT_COLOURS.get(name, OKABE_ITO["black"]))
        label.set_fontweight("bold")
    for (a, b), name in zip(zip(edges[:-1], edges[1:]), names):
        if b > a:  # a coloured band along the top edge, so the segment reads without its label
            ax.add_patch(Rectangle((a - 0.5, 1.0), b - a, 0.025, transform=ax.get_xaxis_transform(),
                                   color=SEGMENT_COLOURS.get(name, OKABE_ITO["black"]), clip_on=False,
                                   gid=f"segment-{name}"))


def attention_bars(row, *, visible=None, labels=None, segments=None, title: str | None = None, ax=None):
    r"""One query's weights over the key slots as bars; hidden keys (mask ``False``) drawn as grey ``x``.

    Args:
        row: ``[T_k]`` weights of one query ``q_i``.
        visible: optional boolean ``[T_k]``, ``True`` = key may be attended to.
        segments: ``[(name, n_slots), ...]`` colouring the bars by part of the memory.
    """
    w = _as_array("row", row, ndim=1)
    t_k = w.shape[0]
    vis = np.ones(t_k, bool) if visible is None else _as_array("visible", visible, ndim=1).astype(bool)
    if vis.shape != w.shape:
        raise ValueError(f"visible has {vis.shape[0]} entries but row has {t_k}; expected equal lengths")
    colours = [SEGMENT_COLOURS["keys"]] * t_k
    if segments:
        colours = []
        for name, size in segments:
            colours += [SEGMENT_COLOURS.get(str(name), OKABE_ITO["black"])] * int(size)
        if len(colours) != t_k:
            raise ValueError(f"segments cover {len(colours)} key slots but row has {t_k}")
    fig, ax = _figure_and_axes(ax, figsize=(min(12, max(4.5, 0.3 * t_k + 2)), 3))
    x = np.arange(t_k)
    ax.bar(x[vis], w[vis], color=[c for c, v in zip(colours, vis) if v], edgecolor="black", linewidth=0.5,
           gid="visible-weights")
    handles = []
    if segments:
        handles = [Patch(color=SEGMENT_COLOURS.get(str(n), OKABE_ITO["black"]), label=str(n)) for n, s in segments if s]
    if (~vis).any():
        (hidden,) = ax.plot(x[~vis], np.zeros((~vis).sum()), linestyle="none", marker="x", color="0.45",
                            markersize=7, clip_on=False, label="hidden by the mask", gid="hidden-keys")
        handles.append(hidden)
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="upper left", frameon=False, ncols=len(handles))
    ax.set_xlim(-0.6, t_k - 0.4)
    ax.set_ylim(0, max(1e-9, float(w.max())) * 1.25)
    ax.set_xlabel("key slot j")
    ax.set_ylabel("weight")
    _tick_labels(ax.xaxis, labels, t_k, "labels", rotate=True)
    ax.set_title(title or "weights of $q_i$ over the keys", loc="left")
    return fig


# ----------------------------------------------------------------------------- memory

def _check_spans(spans_per_step):
    steps = []
    for s, spans in enumerate(spans_per_step):
        row = []
        for slot in spans:
            if len(slot) != 2:
                raise ValueError(f"spans_per_step[{s}] holds {slot!r}; expected (first, last) pairs")
            first, last = int(slot[0]), int(slot[1])
            if first > last or first < 0:
                raise ValueError(f"spans_per_step[{s}] holds the slot {slot!r}; expected 0 <= first <= last")
            row.append((first, last))
        steps.append(row)
    return steps


TIMELINE_STYLES = {  # part of the memory -> (legend label, PolyCollection style)
    "sinks": ("attention sink (kept for ever)", dict(facecolor=SEGMENT_COLOURS["sinks"], edgecolor="black",
                                                     linewidth=0.6)),
    "Mem": ("slot holding one pair $(k_j, v_j)$", dict(facecolor=SEGMENT_COLOURS["Mem"], edgecolor="white",
                                                       linewidth=0.6)),
    "CMem": ("compressed slot ($c$ pairs)", dict(facecolor=SEGMENT_COLOURS["CMem"], edgecolor="black",
                                                  linewidth=0.8)),
}


def memory_timeline(spans_per_step, *, parts=None, chunks=None, current: int | None = None, token_labels=None,
                    step_labels=None, title: str | None = None, ax=None):
    r"""What ``Mem`` holds at each step: one row per step, one box per slot over the positions it stands for.

    Args:
        spans_per_step: for each step, ``Memory.spans(state)``: ``[(first, last), ...]`` per slot.
            A slot with ``first == last`` holds one token's pair; a wider one is a compressed
            slot of ``CMem`` standing for ``last - first + 1`` positions.
        parts: optional, for each step the part of the memory each slot belongs to
            (``"CMem"``, ``"Mem"``, ``"sinks"``), which sets its colour; by default a slot over
            one position is ``Mem`` and a wider one ``CMem``. One PolyCollection per part,
            its ``gid`` the part's name.
        chunks: optional ``(first, last)`` per step: the chunk of new tokens whose queries
            attend to that row's memory (drawn hatched, ``gid="chunk"``).
        current: the step to outline.
        token_labels: text of each token position, used as x tick labels when short.
    """
    steps = _check_spans(spans_per_step)
    chunk_rows = None if chunks is None else _check_spans([[c] for c in chunks])
    if chunk_rows is not None and len(chunk_rows) != len(steps):
        raise ValueError(f"chunks has {len(chunk_rows)} entries for {len(steps)} steps; expected one per step")
    if parts is None:
        parts = [["Mem" if a == b else "CMem" for a, b in row] for row in steps]
    if len(parts) != len(steps) or any(len(p) != len(r) for p, r in zip(parts, steps)):
        raise ValueError("parts must name the part of every slot of every step, like spans_per_step")
    unknown = {p for row in parts for p in row} - set(TIMELINE_STYLES)
    if unknown:
        raise ValueError(f"parts holds {sorted(unknown)}; expected names among {list(TIMELINE_STYLES)}")
    n_pos = 1 + max([last for row in steps for _, last in row]
                    + ([last for row in chunk_rows for _, last in row] if chunk_rows else []) + [0])
    size = (min(12, max(6, 0.25 * n_pos + 3)), min(7, max(2.5, 0.28 * len(steps) + 1.6)))
    fig, ax = _figure_and_axes(ax, figsize=size)
    by_part = {name: [] for name in TIMELINE_STYLES}
    for s, (row, names) in enumerate(zip(steps, parts)):
        for (first, last), name in zip(row, names):
            by_part[name].append(_box(first, last, s))
    handles = []
    if chunk_rows:
        style = dict(facecolor="none", edgecolor=SEGMENT_COLOURS["chunk"], hatch="////", linewidth=1.2)
        ax.add_collection(PolyCollection([_box(*r[0], s) for s, r in enumerate(chunk_rows)], gid="chunk", **style))
        handles.append(Patch(label="current chunk (its queries)", **style))
    for name, boxes in by_part.items():
        if boxes:
            label, style = TIMELINE_STYLES[name]
            ax.add_collection(PolyCollection(boxes, gid=name, **style))
            handles.append(Patch(label=label, **style))
    if current is not None:
        if not 0 <= current < len(steps):
            raise ValueError(f"current={current} is outside the {len(steps)} steps")
        ax.add_patch(Rectangle((-0.5, current - 0.5), n_pos, 1, fill=False, edgecolor=OKABE_ITO["vermillion"],
                               linewidth=2.2, gid="current-step"))
    ax.set_xlim(-0.5, n_pos - 0.5)
    ax.set_ylim(len(steps) - 0.5, -0.5)  # time flows down
    ax.set_xlabel("token position j")
    ax.set_ylabel("step")
    if step_labels is not None:
        ax.set_yticks(range(len(steps)), labels=[str(x) for x in step_labels])
    elif len(steps) <= 20:
        ax.set_yticks(range(len(steps)))
    if token_labels is not None and n_pos <= 48:
        labels = [str(t) for t in token_labels][:n_pos]
        ax.set_xticks(range(len(labels)), labels=labels, rotation=90, fontsize=8)
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title(title or r"$\mathrm{Mem} = \mathrm{Update}(S_{kv}, \mathrm{Mem}_{pre})$: positions held per slot",
                 loc="left")
    return fig


def _box(first, last, row, pad=0.06, height=0.76):
    x0, x1 = first - 0.5 + pad, last + 0.5 - pad
    y0, y1 = row - height / 2, row + height / 2
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


# ----------------------------------------------------------------------------- cost

def _style(k: int) -> dict:
    return {"color": PALETTE[k % len(PALETTE)], "linestyle": LINESTYLES[k % len(LINESTYLES)],
            "marker": MARKERS[k % len(MARKERS)]}


def cost_curves(analytic: Mapping, measured: Mapping | None = None, *, ms_panel: bool | None = None,
                title: str | None = None):
    r"""Cost per new token against the context length ``m``, on log axes.

    Args:
        analytic: ``{label: cost.cost_curve(...)}``, each a dict of lists ``"context"``,
            ``"bytes"`` (memory held) and ``"flops"`` (attention FLOPs for the next token).
        measured: ``{label: cost.measure_decode(...)}`` rows ``{"context", "ms_per_token",
            "nbytes"}``: measured bytes are drawn as points on the bytes panel, ms/token in
            a third panel.
        ms_panel: draw the ms/token panel even with nothing measured yet (default: only
            when ``measured`` has rows).
    """
    measured = dict(measured or {})
    ms_panel = any(measured.values()) if ms_panel is None else ms_panel
    n_panels = 3 if ms_panel else 2
    fig = new_figure(figsize=(3.6 * n_panels + 0.6, 3.8))
    axes = fig.subplots(1, n_panels, sharex=True)
    ax_bytes, ax_flops = axes[0], axes[1]
    colour_of = {}
    for k, (label, curve) in enumerate(analytic.items()):
        for key in ("context", "bytes", "flops"):
            if key not in curve:
                raise ValueError(f"analytic[{label!r}] has no {key!r}; expected a cost.cost_curve(...) dict")
        style = _style(k)
        colour_of[label] = k
        ctx = np.asarray(curve["context"], dtype=float)
        ax_bytes.plot(ctx, curve["bytes"], label=label, markevery=max(1, len(ctx) // 6), markersize=5, **style)
        ax_flops.plot(ctx, curve["flops"], label=label, markevery=max(1, len(ctx) // 6), markersize=5, **style)
    ax_ms = axes[2] if ms_panel else None
    for label, rows in measured.items():
        if not rows:
            continue
        k = colour_of.setdefault(label, len(colour_of))
        style = _style(k)
        ctx = [r["context"] for r in rows]
        ax_bytes.plot(ctx, [r["nbytes"] for r in rows], linestyle="none", marker=style["marker"], markersize=8,
                      markerfacecolor="none", markeredgewidth=1.8, color=style["color"],
                      label=f"{label} (measured, allocated)", gid="measured-bytes")
        if ax_ms is not None:
            ax_ms.plot(ctx, [r["ms_per_token"] for r in rows], color=style["color"], marker=style["marker"],
                       linestyle=style["linestyle"], label=label, gid="measured-ms")
    panels = [(ax_bytes, "memory held", format_bytes, 2), (ax_flops, "attention FLOPs per new token", format_count, 10)]
    if ax_ms is not None:
        panels.append((ax_ms, "measured ms per token", None, 10))
    for ax, ylabel, fmt, base in panels:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=base)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _format_context(v)))
        if fmt is not None:
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _, f=fmt: f(v)))
            ax.yaxis.set_minor_formatter(NullFormatter())
        else:  # plain numbers (0.5, 2, 10), minor ticks labelled when the range is narrow
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
        ax.set_xlabel("context length m (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
    if ax_ms is not None and not any(measured.values()):
        ax_ms.text(0.5, 0.5, "press \u201cmeasure\u201d to time\nthe real model here", transform=ax_ms.transAxes,
                   ha="center", va="center", color="0.35", gid="measure-hint")
        ax_ms.set_ylim(0.1, 10)  # x follows the analytic panels (shared)
    ax_bytes.set_title("bytes: $2 L n_g d_h m b$ (full cache)", loc="left", fontsize=10)
    ax_flops.set_title("FLOPs: $4 L \\tau d_h m$ (full cache)", loc="left", fontsize=10)
    if ax_ms is not None:
        ax_ms.set_title("measured on this device", loc="left", fontsize=10)
    ax_bytes.legend(fontsize=8, loc="upper left")
    if title:
        fig.suptitle(title)
    return fig


def error_vs_ratio(curves: Mapping, *, current=None, title: str | None = None, ax=None):
    r"""Relative error of attention outputs against the compression ratio ``c``, one line per ``f_c``.

    Args:
        curves: ``{name: [(c, error), ...]}``.
        current: optional ``(name, c, error)`` to ring (the playground's current choice).
    """
    fig, ax = _figure_and_axes(ax, figsize=(5, 3.8))
    for k, (name, points) in enumerate(curves.items()):
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=str(name), markersize=5, **_style(k))
    if current is not None:
        name, c, error = current
        ax.plot([c], [error], linestyle="none", marker="o", markersize=13, markerfacecolor="none",
                markeredgecolor=OKABE_ITO["black"], markeredgewidth=2, gid="current", label=f"now: {name}, c = {c}")
    ax.set_xlabel("compression ratio c")
    ax.set_ylabel("relative error of the outputs")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", framealpha=0.9)  # a frame keeps it readable over the lines
    ax.set_title(title or r"$\|\mathrm{Att}(q, f_c(K), f_c(V)) - \mathrm{Att}(q, K, V)\|$ (relative)", loc="left",
                 fontsize=10)
    return fig


# ----------------------------------------------------------------------------- trade-offs

def pareto_front(rows: Sequence[Mapping], x: str = "bytes", y: str = "recall") -> list:
    """Rows that no other row beats: none has ``x <=`` and ``y >=`` with one of them strict.

    Returned in increasing ``x`` (memory bytes), so ``y`` (recall) increases along the front.

    >>> [r["name"] for r in pareto_front([{"name": "a", "bytes": 1, "recall": 0.2},
    ...     {"name": "b", "bytes": 2, "recall": 0.1}, {"name": "c", "bytes": 4, "recall": 0.9}])]
    ['a', 'c']
    """
    front, best = [], -math.inf
    for row in sorted(rows, key=lambda r: (r[x], -r[y])):
        if row[y] > best:
            front.append(row)
            best = row[y]
    return front


def recall_vs_bytes(rows: Sequence[Mapping], *, title: str | None = None, ylabel: str = "recall (accuracy)",
                    annotate: bool = True, ax=None):
    r"""Recall against memory bytes (log x), one point per memory model, with the Pareto front.

    Args:
        rows: ``[{"name": ..., "bytes": ..., "recall": ...}, ...]``; an optional
            ``"family"`` groups points under one colour and marker (default: the name).
    """
    for k, row in enumerate(rows):
        for key in ("name", "bytes", "recall"):
            if key not in row:
                raise ValueError(f"rows[{k}] has no {key!r}; expected dicts with 'name', 'bytes' and 'recall'")
        if row["bytes"] <= 0:
            raise ValueError(f"rows[{k}] has bytes={row['bytes']!r}; expected > 0 (the x axis is logarithmic)")
    fig, ax = _figure_and_axes(ax, figsize=(7, 4.5))
    families = list(dict.fromkeys(r.get("family", r["name"]) for r in rows))
    for k, family in enumerate(families):
        pts = [r for r in rows if r.get("family", r["name"]) == family]
        style = _style(k)
        ax.plot([r["bytes"] for r in pts], [r["recall"] for r in pts], linestyle="none", marker=style["marker"],
                color=style["color"], markersize=8, label=str(family), gid="points")
    front = pareto_front(rows)
    if front:
        ax.plot([r["bytes"] for r in front], [r["recall"] for r in front], drawstyle="steps-post", color="black",
                linewidth=1.4, linestyle="--", label="Pareto front", gid="pareto-front", zorder=1)
    if annotate:
        largest = max(r["bytes"] for r in rows) if rows else 0
        for r in rows:
            right = r["bytes"] == largest  # label the rightmost points on their left, inside the axes
            ax.annotate(str(r["name"]), (r["bytes"], r["recall"]), textcoords="offset points",
                        xytext=(-6, 5) if right else (6, 5), ha="right" if right else "left", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(LogLocator(base=2, numticks=8))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: format_bytes(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.08)
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("memory bytes (log scale)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(title or "Recall vs bytes of $\\mathrm{Mem}$: the Pareto front", loc="left")
    return fig
