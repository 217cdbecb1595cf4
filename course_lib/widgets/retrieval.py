r"""The retrieval explorer: watch a matrix memory forget, pair by pair, as it reads on."""

from __future__ import annotations

import ipywidgets as widgets

from .. import viz
from . import retrieval_state as rs
from .base import Explorer

__all__ = ["RetrievalExplorer"]


class RetrievalExplorer(Explorer):
    r"""For each past position ``j``, how well ``k^_j`` still reads ``v_j`` back from ``S_t`` as ``t`` grows.

    Left: the chosen memory's :func:`~course_lib.widgets.retrieval_map`, ``cos(k^_j S_t, v_j)`` over
    ``(j, t)``; right: row ``t`` for the delta, gated delta and decay memories at the same gates.

    Args:
        length: tokens written (random unit keys and values, :func:`.retrieval_state.retrieval_data`);
            ``d`` the key size, ``seed``; ``fact_every``: every ``fact_every``-th position is a fact, written
            with ``beta``
            (the others with ``filler_beta``).
        memory, t, alpha, beta, filler_beta: the starting settings (:class:`.retrieval_state.RetrievalState`).
    """

    data_fields = ("t",)

    def __init__(self, *, length: int = 128, d: int = 16, fact_every: int = 16, seed: int = 0, **settings):
        self.k, self.v = rs.retrieval_data(length, d, seed=seed)
        self.length, self.d, self.fact_every = length, d, fact_every
        rs.write_strengths(length, fact_every, 1.0, 1.0)  # checks fact_every
        self._maps = (None, None)
        settings.setdefault("t", length - 1)
        self.state = rs.update_retrieval(rs.RetrievalState(), settings, length)
        super().__init__()

    @property
    def maps(self) -> dict:
        """memory -> its retrieval map for the current gates (computed once per setting of the gates)."""
        s = self.state
        key = (s.alpha, s.beta, s.filler_beta)
        if self._maps[0] != key:
            beta = rs.write_strengths(self.length, self.fact_every, s.beta, s.filler_beta)
            self._maps = (key, {name: rs.retrieval_map(name, self.k, self.v, s.alpha, beta)
                                for name in rs.RETRIEVAL_MEMORIES})
        return self._maps[1]

    def _compute_view(self) -> dict:
        return rs.retrieval_view(self.state, self.k, self.v, self.fact_every, maps=self.maps)

    def _controls(self):
        s = self.state
        style = {"description_width": "initial"}

        def gate(value, lo, hi, description):
            return widgets.FloatSlider(value=value, min=lo, max=hi, step=0.01, description=description, style=style,
                                       continuous_update=False, readout_format=".2f")

        return {
            "memory": widgets.ToggleButtons(options=list(rs.RETRIEVAL_MEMORIES),
                                            value=s.memory, description="memory", style={"button_width": "100px"}),
            "t": widgets.IntSlider(value=s.t, min=0, max=self.length - 1, description="read up to t", style=style,
                                   continuous_update=True, layout=widgets.Layout(width="420px")),
            "alpha": gate(s.alpha, 0.5, 1.0, "decay alpha"),
            "beta": gate(s.beta, 0.0, 2.0, "beta (facts)"),
            "filler_beta": gate(s.filler_beta, 0.0, 2.0, "beta (filler)"),
        }

    def _layout_controls(self):
        c = self.controls
        return widgets.VBox([widgets.HBox([c["memory"], c["t"]], layout=widgets.Layout(flex_flow="row wrap")),
                             widgets.HBox([c["alpha"], c["beta"], c["filler_beta"]],
                                          layout=widgets.Layout(flex_flow="row wrap"))])

    def _sync_enabled(self):
        self.controls["alpha"].disabled = self.state.memory == "delta"  # the delta rule has no decay

    def _update(self, state, changes):
        return rs.update_retrieval(state, changes, self.length)

    def figure(self):
        view, s = self.view, self.state
        fig = viz.new_figure(figsize=(11, 4.0))
        left, right = fig.subplots(1, 2, width_ratios=[1, 1.25])
        rs.retrieval_heatmaps({self._title(s.memory): view["map"]}, t=s.t, facts=view["facts"], ax=left)
        js = list(range(s.t + 1))
        for n, name in enumerate(rs.RETRIEVAL_MEMORIES):
            bold = name == s.memory
            right.plot(js, view["rows"][name].numpy(), color=viz.PALETTE[n], ls=viz.LINESTYLES[n],
                       lw=2.0 if bold else 1.0, alpha=1.0 if bold else 0.45, zorder=3 if bold else 2,
                       label=self._title(name))
        right.plot(view["facts"], view["rows"][s.memory][view["facts"]].numpy(), "v", color="k", ms=5,
                   label="facts (chosen memory)")
        right.axhline(rs.KEPT, color="0.5", lw=0.8, ls=":")
        right.set_xlim(-0.5, self.length - 0.5)
        right.set_ylim(-0.5, 1.05)
        right.set_xlabel("position written, j")
        right.set_ylabel(f"cos($\\hat{{k}}_j S_{{{s.t}}}$, $v_j$)")
        right.set_title(f"what each pair reads back after t = {s.t}", fontsize=10, loc="left")
        right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
        right.grid(alpha=0.3)
        return fig

    def _title(self, name):
        s = self.state
        gates = [] if name == "delta" else [f"alpha {s.alpha:.2f}"]
        gates.append(f"beta {s.beta:.2f}" if s.beta == s.filler_beta else f"beta {s.beta:.2f}/{s.filler_beta:.2f}")
        return f"{rs.RETRIEVAL_LABELS[name]} ({', '.join(gates)})"

    def readout_lines(self):
        view, s = self.view, self.state
        oldest = view["oldest_fact_kept"]
        n_facts = len(view["facts"])
        return [f"{self._title(s.memory)}, d = {self.d}, after reading positions 0..{s.t}:",
                f"{view['kept']} of the {s.t + 1} pairs still read back at cosine >= {rs.KEPT}; "
                f"{view['facts_kept']} of the {n_facts} facts (every {self.fact_every}th position), "
                + (f"the oldest at j = {oldest} ({s.t - oldest} tokens back)" if oldest is not None else "none of them")
                + f"; mean cosine over the facts {view['fact_quality']:.2f}"]
