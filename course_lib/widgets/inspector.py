"""The memory inspector: step through a text with a memory model and watch its slots."""

from __future__ import annotations

import dataclasses
import math

import ipywidgets as widgets
import torch

from .. import viz
from ..memory import COMPRESSIONS
from .attention_state import toy_qk
from .base import Explorer
from .common import ranges_text
from .inspector_state import (
    INSPECT_MEMORIES,
    INSPECTOR_SIZES,
    MAY_BE_ZERO,
    SIZE_LABELS,
    STORY,
    InspectorState,
    frame_changes,
    make_inspected_memory,
    memory_frames,
    update_inspector,
)

__all__ = ["MemoryInspector"]


class MemoryInspector(Explorer):
    r"""Step through a text with a memory model: what ``Mem`` holds, what leaves it, where attention goes.

    The text's tokens get toy vectors (one random vector per word, :func:`toy_qk`), so a query
    attends most to earlier copies of its own word. Each step feeds one chunk of ``n_s``
    tokens: ``out = Att(q_i, [CMem, Mem, chunk])``, then ``Mem = Update(S_kv, Mem_pre)``.

    Args:
        text: the tokens (a string is split on spaces).
        memory: a registered memory that holds slots (:data:`INSPECT_MEMORIES`); sizes as keywords
            (``window, sinks, mem_len, cmem_len, ratio, compress, capacity, top_k, chunk, step``).
    """

    data_fields = ("step",)

    def __init__(self, text: str | list[str] = STORY, *, seed: int = 0, d: int = 32, sharpness: float = 0.8,
                 **settings):
        self.tokens = text.split() if isinstance(text, str) else [str(t) for t in text]
        if not self.tokens:
            raise ValueError("text holds no tokens; pass a sentence or a list of tokens")
        q, k = toy_qk(self.tokens, d=d, seed=seed, sharpness=sharpness)
        gen = torch.Generator().manual_seed(seed + 1)
        v = torch.randn(len(self.tokens), d, generator=gen, dtype=torch.float64)
        self.q, self.k, self.v = (x[None, None] for x in (q, k, v))  # [1, 1, N, d]
        self._frames_cache = (None, None)
        self.state = update_inspector(InspectorState(), settings, len(self.tokens))
        self.play = widgets.Play(value=self.state.step, min=0, max=self.n_steps - 1, interval=900,
                                 description="play", show_repeat=False)
        super().__init__()
        widgets.link((self.play, "value"), (self.controls["step"], "value"))

    @property
    def n_steps(self) -> int:
        return math.ceil(len(self.tokens) / self.state.chunk)

    @property
    def frames(self) -> list[dict]:
        """Every step of the current memory configuration (computed once per configuration)."""
        key = dataclasses.replace(self.state, step=0)
        if self._frames_cache[0] != key:
            memory = make_inspected_memory(self.state)
            self._frames_cache = (key, memory_frames(memory, self.q, self.k, self.v, self.state.chunk))
        return self._frames_cache[1]

    def _compute_view(self) -> dict:
        frame = self.frames[self.state.step]
        return {**frame, **frame_changes(frame)}

    def _controls(self):
        s = self.state
        style = {"description_width": "initial"}
        def small():  # one Layout per control: a Layout shared by several widgets changes them all
            return widgets.Layout(width="190px")
        n_steps = self.n_steps
        return {
            "memory": widgets.Dropdown(options=list(INSPECT_MEMORIES), value=s.memory, description="memory",
                                       style=style, layout=widgets.Layout(width="220px")),
            "chunk": widgets.BoundedIntText(value=s.chunk, min=1, max=4096, description="chunk n_s", style=style,
                                            layout=small()),
            **{name: widgets.BoundedIntText(value=getattr(s, name), min=0 if name in MAY_BE_ZERO else 1,
                                            max=64 if name in ("sinks", "ratio") else 4096,
                                            description=SIZE_LABELS[name], style=style, layout=small())
               for name in SIZE_LABELS if name != "compress"},
            "compress": widgets.Dropdown(options=list(COMPRESSIONS),
                                         value=s.compress, description=SIZE_LABELS["compress"], style=style,
                                         layout=small()),
            "step": widgets.IntSlider(value=s.step, min=0, max=n_steps - 1, description="step", style=style,
                                      continuous_update=True, layout=widgets.Layout(width="420px")),
        }

    def _layout_controls(self):
        c = self.controls
        sizes = [c[name] for name in ("chunk", *SIZE_LABELS)]
        return widgets.VBox([
            widgets.HBox([c["memory"], *sizes], layout=widgets.Layout(flex_flow="row wrap")),
            widgets.HBox([self.play, c["step"]]),
        ])

    def _sync_enabled(self):
        used = set(INSPECTOR_SIZES[self.state.memory]) | {"memory", "chunk", "step"}
        for name, control in self.controls.items():
            control.layout.display = None if name in used else "none"
        top = self.n_steps - 1
        for control in (self.controls["step"], self.play):
            if control.max != top:
                control.max = top

    def _update(self, state, changes):
        return update_inspector(state, changes, len(self.tokens))

    def _slot_label(self, first, last):
        if first == last:
            return f"{first}:{self.tokens[first]}"
        return f"{first}\u2013{last}"  # a compressed slot: an en dash, unlike the ':' of one token

    def figure(self):
        v, s = self.view, self.state
        fig = viz.new_figure(figsize=(11, 7.6))
        # two subfigures: the timeline's legend and the heatmap's colourbar each get their own margin
        top, bottom = (sub.add_subplot() for sub in fig.subfigures(2, 1, height_ratios=[1.15, 1]))
        frames = self.frames
        viz.memory_timeline([[(a, b) for a, b, _ in f["slots"]] for f in frames], chunks=[f["chunk"] for f in frames],
                            parts=[[part for _, _, part in f["slots"]] for f in frames],
                            current=s.step, token_labels=self.tokens, ax=top,
                            title=f"{self._memory_words()}: what Mem holds before each chunk")
        first, last = v["chunk"]
        parts = ", ".join(f"\\mathrm{{{name}}}" for name, _ in v["segments"])
        keys = [self._slot_label(a, b) for a, b, _ in v["slots"]] + [self._slot_label(j, j)
                                                                     for j in range(first, last + 1)]
        viz.attention_heatmap(v["weights"], v["segments"], mask=v["mask"], key_labels=keys,
                              query_labels=[self._slot_label(j, j) for j in range(first, last + 1)], ax=bottom,
                              gamma=0.5,  # a query's own key dominates; the square root shows the memory's share
                              title=f"step {s.step}: the chunk's queries, "
                                    f"$\\mathrm{{Att}}(q_i, [{parts}])$")
        return fig

    def _memory_words(self) -> str:
        return make_inspected_memory(self.state).label()

    def _words(self, first, last) -> str:
        return " ".join(self.tokens[first:last + 1])

    def readout_lines(self):
        v, s = self.view, self.state
        first, last = v["chunk"]
        lines = [f"step {s.step} of {self.n_steps - 1}: chunk of n_s = {last - first + 1} tokens, positions "
                 f"{first}..{last}: {self._words(first, last)!r}"]
        parts = []
        for name, size in v["segments"][:-1]:
            spans = [(a, b) for a, b, part in v["slots"] if part == name]
            held = ", ".join(f"[{a}..{b}]" for a, b in spans) if name == "CMem" else ranges_text([a for a, _ in spans])
            parts.append(f"{name} {size} slot{'s' * (size != 1)}: {held}")
        lines.append("Mem before the chunk: " + ("; ".join(parts) if parts else "empty"))
        lines.append("after the chunk: " + self._change_words(v))
        lines.append(f"memory size: {v['nbytes_before']:,} B before, {v['nbytes_after']:,} B after, "
                     f"{v['peak_nbytes']:,} B at the peak of the chunk")
        n_mem = len(v["slots"])
        if n_mem:  # where the chunk reaches into the memory most strongly
            w = v["weights"][:, :n_mem]  # [T, P]
            r, j = divmod(int(torch.argmax(w)), n_mem)
            a, b, part = v["slots"][j]
            lines.append(f"strongest link into the memory: q_{first + r} ({self.tokens[first + r]!r}) puts "
                         f"{float(w[r, j]):.2f} on the {part} slot [{a}..{b}] ({self._words(a, b)!r})")
        return lines

    def _change_words(self, v) -> str:
        evicted, compressed = v["evicted"], v["compressed"]
        if not evicted and not v["dropped_cmem"]:
            return "nothing evicted; Mem got the chunk's pairs"
        words = []
        if compressed:
            slots = ", ".join(f"[{a}..{b}]" for a, b in v["new_cmem"])
            words.append(f"positions {ranges_text(compressed)} evicted from Mem and compressed by f_c = "
                         f"{self.state.compress} into CMem slot{'s' * (len(v['new_cmem']) != 1)} {slots}")
        dropped = [p for p in evicted if p not in compressed]
        if dropped:
            words.append(f"positions {ranges_text(dropped)} evicted (forgotten)")
        if v["dropped_cmem"]:
            words.append("CMem slot(s) " + ", ".join(f"[{a}..{b}]" for a, b in v["dropped_cmem"]) + " dropped")
        return "; ".join(words)
