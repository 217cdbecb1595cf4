"""The compression playground: ``f_c`` and ``c`` -> how far attention over the compressed pairs
lands from attention over the originals."""

from __future__ import annotations

import ipywidgets as widgets

from .. import viz
from ..memory import COMPRESSIONS
from .base import Explorer
from .common import with_option
from .compression_state import (
    LEARNED,
    SIGNALS,
    CompressionState,
    compression_view,
    error_curves,
    playground_data,
    update_compression,
)

__all__ = ["CompressionPlayground"]


class CompressionPlayground(Explorer):
    r"""Pick ``f_c`` and ``c``: see the compressed keys beside the originals and how far
    ``Att(q, f_c(K), f_c(V))`` lands from ``Att(q, K, V)``.

    Args:
        n_pairs: pairs to compress (every ratio offered divides it); ``n_queries``, ``d``, ``seed``.
        compress, ratio, signal, train_steps: the starting settings.
    """

    data_fields = ("compress", "ratio", "train_steps")

    def __init__(self, *, n_pairs: int = 48, n_queries: int = 8, d: int = 8, seed: int = 0, **settings):
        self.n_pairs, self.n_queries, self.d, self.seed = n_pairs, n_queries, d, seed
        self._curves = {}
        self.state = update_compression(CompressionState(), settings, n_pairs)
        super().__init__()

    def data(self):
        return playground_data(self.state.signal, self.n_pairs, self.n_queries, self.d, self.seed)

    def _compute_view(self) -> dict:
        return compression_view(self.state, *self.data(), curves={})

    def curves(self) -> dict:
        """:func:`error_curves` for the current keys (they depend on nothing else: computed once)."""
        if self.state.signal not in self._curves:
            self._curves[self.state.signal] = error_curves(*self.data())
        return self._curves[self.state.signal]

    def _controls(self):
        s = self.state
        style = {"description_width": "initial"}
        ratios = [c for c in (1, 2, 3, 4, 6, 8, 12, 16) if self.n_pairs % c == 0]
        return {
            "compress": widgets.ToggleButtons(options=list(COMPRESSIONS),
                                              value=s.compress, description="f_c", style={"button_width": "110px"}),
            "ratio": widgets.SelectionSlider(options=with_option(ratios, s.ratio), value=s.ratio, description="ratio c",
                                             style=style),
            "signal": widgets.ToggleButtons(options=list(SIGNALS), value=s.signal, description="keys",
                                            style={"button_width": "80px"}),
            "train_steps": widgets.Dropdown(options=with_option([0, 50, 200], s.train_steps), value=s.train_steps,
                                           description="train f_c (steps)", style=style,
                                           layout=widgets.Layout(width="220px")),
        }

    def _sync_enabled(self):
        self.controls["train_steps"].disabled = self.state.compress not in LEARNED

    def _update(self, state, changes):
        return update_compression(state, changes, self.n_pairs)

    def figure(self):
        v, s = self.view, self.state
        keys, ck = v["keys"].numpy(), v["compressed"].numpy()
        fig = viz.new_figure(figsize=(11, 3.9))
        left, mid, right = fig.subplots(1, 3, width_ratios=[1, 1, 1.05])
        lim = float(max(abs(keys).max(), abs(ck).max()))
        norm = dict(cmap=viz.DIVERGING_CMAP, vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
        left.imshow(keys.T, extent=(-0.5, keys.shape[0] - 0.5, keys.shape[1] - 0.5, -0.5), **norm)
        image = mid.imshow(ck.T, extent=(-0.5, keys.shape[0] - 0.5, keys.shape[1] - 0.5, -0.5), **norm)
        fig.colorbar(image, ax=mid, label="key value", shrink=0.9)
        left.set_title(f"keys $K$: {keys.shape[0]} pairs", loc="left", fontsize=10)
        mid.set_title(f"$f_c(K)$: {ck.shape[0]} slots, each over c = {s.ratio} positions", loc="left", fontsize=10)
        for ax in (left, mid):
            ax.set_xlabel("token position j")
            ax.set_ylabel("dimension of $k_j$")
        viz.error_vs_ratio(self.curves(), current=(s.compress, s.ratio, v["error"]), ax=right)
        return fig

    def readout_lines(self):
        v, s = self.view, self.state
        trained = f", after {s.train_steps} training steps" if s.train_steps and s.compress in LEARNED else ""
        return [f"f_c = {s.compress}, c = {s.ratio}{trained}: {self.n_pairs} pairs -> {self.n_pairs // s.ratio} "
                f"slots ({s.signal} keys)",
                f"relative error of the attention outputs ||Att(q, f_c(K), f_c(V)) - Att(q, K, V)|| / "
                f"||Att(q, K, V)|| = {v['error']:.3f} over {self.n_queries} queries"]
