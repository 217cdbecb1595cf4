"""The attention explorer: a query position ``i`` and a mask -> its weights and the keys it sees."""

from __future__ import annotations

import ipywidgets as widgets
import torch

from .. import viz
from .attention_state import DEMO_TEXT, MASKS, AttentionState, attention_view, toy_qk, update_attention
from .base import Explorer, slider
from .common import ranges_text

__all__ = ["AttentionExplorer"]


class AttentionExplorer(Explorer):
    r"""Pick a query position ``i`` and a mask; see ``Softmax(q_i K^T/sqrt(d) + Mask)`` and the visible keys.

    Args:
        text: the tokens (a string is split into words), default a short sentence.
        q, k: optional ``[T, d]`` queries and keys; default :func:`toy_qk` of the words.
        i, mask, window, sinks: the starting settings.

    >>> ex = AttentionExplorer("a b c d e", mask="window", window=2)
    >>> ex.set(i=4).view["visible"]
    [3, 4]
    """

    data_fields = ("i", "mask", "window", "sinks")

    def __init__(self, text: str | list[str] = DEMO_TEXT, *, q=None, k=None, i: int | None = None,
                 mask: str = "causal", window: int = 4, sinks: int = 1, seed: int = 0):
        self.tokens = text.split() if isinstance(text, str) else [str(t) for t in text]
        if not self.tokens:
            raise ValueError("text holds no tokens; pass a sentence or a list of tokens")
        if (q is None) != (k is None):
            raise ValueError("pass both q and k, or neither (then toy vectors are made from the words)")
        if q is None:
            q, k = toy_qk(self.tokens, seed=seed)
        for name, x in (("q", q), ("k", k)):
            if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] != len(self.tokens):
                raise ValueError(f"{name} must be a [T, d] tensor with T = {len(self.tokens)} tokens, got "
                                 f"{getattr(x, 'shape', type(x).__name__)}")
        self.q, self.k = q.double(), k.double()
        t = len(self.tokens)
        self.state = update_attention(AttentionState(i=t - 1 if i is None else i, length=t),
                                      {"mask": mask, "window": window, "sinks": sinks})
        super().__init__()

    def _compute_view(self) -> dict:
        return attention_view(self.q, self.k, self.state)

    def _controls(self):
        t, s = len(self.tokens), self.state
        controls = {
            "i": slider(s.i, 0, t - 1, "query i"),
            "mask": widgets.ToggleButtons(options=list(MASKS), value=s.mask, description="mask",
                                          style={"button_width": "70px"}),
            "window": slider(min(s.window, t), 1, t, "window n_c"),
            "sinks": slider(min(s.sinks, t), 0, min(4, t), "sinks"),
        }
        return controls

    def _sync_enabled(self):
        self.controls["window"].disabled = self.state.mask == "causal"
        self.controls["sinks"].disabled = self.state.mask != "sinks"

    def _update(self, state, changes):
        return update_attention(state, changes)

    def _labels(self):
        return [f"{j}:{w}" for j, w in enumerate(self.tokens)]

    def figure(self):
        v, s = self.view, self.state
        fig = viz.new_figure(figsize=(11, 4.4))
        left, right = fig.subplots(1, 2, width_ratios=[1.1, 1])
        viz.attention_heatmap(v["weights"], mask=v["mask"], query_labels=self._labels(), key_labels=self._labels(),
                              highlight_query=s.i, ax=left, title=f"all queries, mask: {self._mask_words()}")
        viz.attention_bars(v["row"], visible=v["mask"][s.i], labels=self._labels(), ax=right,
                           title=f"$q_i$ at $i = {s.i}$ ({self.tokens[s.i]!r}): its weights")
        return fig

    def _mask_words(self) -> str:
        s = self.state
        if s.mask == "causal":
            return "causal"
        if s.mask == "window":
            return f"window n_c = {s.window}"
        return f"window n_c = {s.window} + {s.sinks} sink(s)"

    def readout_lines(self):
        v, s = self.view, self.state
        seen = v["visible"]
        row = v["row"]
        top = int(torch.argmax(row))
        lines = [f"q_{s.i} ({self.tokens[s.i]!r}) sees {len(seen)} of the {s.i + 1} keys 0..{s.i} "
                 f"under the {self._mask_words()} mask: {ranges_text(seen)}",
                 f"largest weight {float(row[top]):.2f} on k_{top} ({self.tokens[top]!r})"]
        hidden = [j for j in range(s.i + 1) if j not in seen]
        if hidden:
            lines.append(f"hidden from q_{s.i}: {ranges_text(hidden)}")
        return lines
