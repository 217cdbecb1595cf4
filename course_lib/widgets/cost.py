"""The cost explorer: a model configuration and a memory -> bytes and FLOPs per token against ``m``;
"measure" times the real model."""

from __future__ import annotations

import dataclasses

import ipywidgets as widgets

from .. import viz
from .base import Explorer
from .common import with_option
from .cost_state import COST_MEMORIES, DTYPES, CostState, cost_memory, cost_view, measure_cost, sizes_used, update_cost

__all__ = ["CostExplorer"]


class CostExplorer(Explorer):
    r"""Bytes and FLOPs per token against ``m`` for a model and a memory; "measure" times the real model.

    Analytic: ``bytes = 2 L n_g d_h m b`` for the full cache (``b`` bytes per value), flat
    once a fixed-size memory is full. Measured: :func:`~course_lib.cost.measure_decode` on
    :func:`~course_lib.device.pick_device`, contexts ``256, 512, ...`` up to ``measure up to``.
    The memory menu is the registry; ``size`` is the budget of slots per head given to the
    memory's ``example(size)`` (``n_c`` of a window, ``M + C`` of a compressive memory, ...).
    """

    data_fields = ("n_layers", "n_kv_heads", "dtype", "size", "ratio")

    def __init__(self, *, measure_up_to: int = 2048, steps: int = 8, device=None, **settings):
        self.state = update_cost(CostState(), settings)
        self.measured: dict[str, list] = {}
        self.measure_steps, self.device = steps, device
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="measuring", bar_style="info",
                                            layout=widgets.Layout(visibility="hidden"))
        self.measure_button = widgets.Button(description="measure", icon="clock-o",
                                             tooltip="time the real model on this device (cost.measure_decode)")
        self.measure_up_to = widgets.Dropdown(options=with_option([2**p for p in range(4, 17)], measure_up_to),
                                              value=measure_up_to,
                                              description="measure up to m =", style={"description_width": "initial"},
                                              layout=widgets.Layout(width="220px"))
        self.measure_button.on_click(lambda _: self.measure())
        self.message = ""
        super().__init__()

    def _compute_view(self) -> dict:
        return cost_view(self.state)

    def _controls(self):
        s = self.state
        def small():  # one Layout per control: a Layout shared by several widgets changes them all
            return widgets.Layout(width="240px")
        style = {"description_width": "initial"}
        return {
            "n_layers": widgets.BoundedIntText(value=s.n_layers, min=1, max=1024, description="layers L", style=style,
                                               layout=small()),
            "n_heads": widgets.BoundedIntText(value=s.n_heads, min=1, max=1024, description="heads tau", style=style,
                                              layout=small()),
            "head_dim": widgets.Dropdown(options=with_option([8, 16, 32, 64, 128, 256], s.head_dim), value=s.head_dim,
                                         description="d_h",
                                         style=style, layout=small()),
            "n_kv_heads": widgets.BoundedIntText(value=s.n_kv_heads, min=1, max=1024, description="KV groups n_g",
                                                 style=style, layout=small()),
            "dtype": widgets.Dropdown(options=list(DTYPES), value=s.dtype, description="dtype", style=style,
                                      layout=small()),
            "memory": widgets.Dropdown(options=list(COST_MEMORIES), value=s.memory, description="memory",
                                       style=style, layout=widgets.Layout(width="300px")),
            "size": widgets.Dropdown(options=with_option([2**p for p in range(4, 15)], s.size), value=s.size,
                                     description="slots per head", style=style, layout=small()),
            "ratio": widgets.Dropdown(options=with_option([1, 2, 3, 4, 8, 16], s.ratio), value=s.ratio,
                                      description="ratio c", style=style,
                                      layout=small()),
            "max_context": widgets.Dropdown(options=with_option([2**p for p in range(10, 21)], s.max_context),
                                            value=s.max_context,
                                            description="curves up to m =", style=style, layout=small()),
        }

    def _layout_controls(self):
        c = self.controls
        rows = [[c["n_layers"], c["n_heads"], c["head_dim"], c["n_kv_heads"], c["dtype"]],
                [c["memory"], c["size"], c["ratio"], c["max_context"]],
                [self.measure_button, self.measure_up_to, self.progress]]
        return widgets.VBox([widgets.HBox(r, layout=widgets.Layout(flex_flow="row wrap")) for r in rows])

    def _sync_enabled(self):
        used = sizes_used(self.state)
        self.controls["size"].disabled = "size" not in used
        self.controls["ratio"].disabled = "ratio" not in used

    def _update(self, state, changes):
        new = update_cost(state, changes)
        if new != state:
            self.measured = {}  # measurements belong to the configuration they were made with
            self.message = ""
        return new

    def measure(self, contexts=None) -> dict:
        """Time the real model (:func:`measure_cost`) with the chosen memory and, for comparison,
        with the full KV cache; the progress bar follows. Returns ``{label: rows}``."""
        top = self.measure_up_to.value
        contexts = contexts or [m for m in (2**p for p in range(8, 21)) if m <= top] or [top]
        full = next(title for title, name in COST_MEMORIES.items() if name == "full")
        runs = {"full KV cache": dataclasses.replace(self.state, memory=full)}
        if COST_MEMORIES[self.state.memory] != "full":
            runs = {cost_memory(self.state).label(): self.state, **runs}
        self.progress.max, self.progress.value = len(contexts) * len(runs), 0
        self.progress.layout.visibility = "visible"
        self.progress.bar_style, self.progress.description = "info", "measuring"
        self.measure_button.disabled = True
        measured = {}
        try:
            for label, state in runs.items():
                before = self.progress.value
                measured[label] = measure_cost(state, contexts, steps=self.measure_steps, device=self.device,
                                               on_progress=lambda done, total, b=before: self._progress(b + done))
        except (ValueError, TypeError, RuntimeError) as err:
            self.message = f"measure failed: {err}"
            self.progress.bar_style, self.progress.description = "danger", "failed"
            measured = {}
        else:
            self.message = ""
            self.progress.bar_style, self.progress.description = "success", "measured"
        finally:
            self.measure_button.disabled = False
        self.measured = measured
        self.refresh()
        return measured

    def _progress(self, value: int):
        self.progress.value = value

    def figure(self):
        v = self.view
        return viz.cost_curves(v["analytic"], self.measured, ms_panel=True)

    def readout_lines(self):
        v, s = self.view, self.state
        cfg = v["config"]
        m = v["contexts"][-1]
        lines = [f"L = {cfg.n_layers}, tau = {cfg.n_heads}, d_h = {cfg.head_dim}, n_g = {cfg.kv_heads}, "
                 f"b = {cfg.bytes_per_value} bytes per value ({s.dtype})"]
        for label, cost in v["at_max"].items():
            lines.append(f"{label}: at m = {m:,} holds {viz.format_bytes(cost['bytes'])}, "
                         f"{viz.format_count(cost['flops'])} attention FLOPs per new token")
        for label, rows in self.measured.items():
            if rows:
                first, last = rows[0], rows[-1]
                lines.append(f"measured {label}: {first['ms_per_token']:.2f} ms/token at m = {first['context']:,}, "
                             f"{last['ms_per_token']:.2f} ms/token at m = {last['context']:,}")
        if self.message:
            lines.append(self.message)
        return lines
