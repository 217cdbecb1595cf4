r"""Explorers: move a slider, watch attention and memory change.

Each explorer is three layers, so every piece can be tested without a browser:

1. a frozen *state* dataclass (what the controls say) and a pure ``update_*`` function
   that checks a change and returns the new state;
2. a pure *view* function (state -> numbers: weights, spans, bytes) and a figure built
   from it with :mod:`course_lib.viz`;
3. the widget: ipywidgets controls wired to ``set(...)``, a PNG of the figure and a
   readout in words.

Displaying an explorer in JupyterLab shows the live widget. A frontend without widgets
(``nbconvert``, GitHub, a terminal) gets the static picture of the current state and a
line saying so; ``explorer.show()`` does the same outside a kernel by returning the figure.

* :class:`AttentionExplorer`: a query position ``i`` and a mask (causal, window ``n_c``,
  attention sinks) -> the weights and which keys ``q_i`` sees.
* :class:`CostExplorer`: ``L``, ``tau``, ``d_h``, ``n_g``, dtype and a memory -> bytes and
  FLOPs per token against the context length ``m``; "measure" times the real model.
* :class:`MemoryInspector`: a memory model stepping through a text: what each slot holds,
  what is evicted or compressed, and the chunk's attention over ``[CMem | Mem | chunk]``.
* :class:`CompressionPlayground`: ``f_c`` and ``c`` -> how far attention over the
  compressed pairs is from attention over the originals.
"""

from __future__ import annotations

import abc
import base64
import dataclasses
import html
import math
from dataclasses import dataclass

import ipywidgets as widgets
import torch

from . import viz
from .attention import attention_reference, causal_mask
from .cost import ModelConfig, cost_curve

__all__ = [
    "has_widget_frontend", "Explorer",
    "AttentionState", "update_attention", "attention_view", "AttentionExplorer",
    "CostState", "update_cost", "cost_view", "measure_cost", "CostExplorer",
    "InspectorState", "update_inspector", "memory_frames", "frame_changes", "slot_layout", "MemoryInspector",
    "CompressionState", "update_compression", "compression_view", "CompressionPlayground",
]

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


class Explorer(abc.ABC):
    """Shared machinery: controls -> ``set(**changes)`` -> new state -> picture and readout.

    Subclasses define ``state`` (a frozen dataclass), ``_update(state, changes)`` (pure),
    ``figure()`` (a :class:`~course_lib.viz.Figure` of the current state),
    ``readout_lines()`` and ``_controls()`` (name -> widget, names = state fields).
    """

    dpi = 90

    def __init__(self):
        self._syncing = False
        self._live, self._stale = False, True
        self._layouts = {}
        self.image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%", height="auto"))
        self.readout = widgets.HTML(layout=widgets.Layout(margin="4px 0 0 8px"))
        self.controls = self._controls()
        for name, control in self.controls.items():
            control.observe(self._on_change(name), names="value")
        self.widget = widgets.VBox([self._layout_controls(), self.image, self.readout])
        self._sync_controls()
        self.refresh()

    # -- subclass hooks
    @abc.abstractmethod
    def _controls(self) -> dict:
        """name -> widget; the names are fields of ``state``."""

    @abc.abstractmethod
    def _compute_view(self) -> dict:
        """The numbers behind the picture for ``self.state``."""

    @property
    def view(self) -> dict:
        """The numbers behind the picture for the current state (computed once per state)."""
        if getattr(self, "_view_state", None) != self.state:
            self._view, self._view_state = self._compute_view(), self.state
        return self._view

    def _layout_controls(self):
        return widgets.HBox(list(self.controls.values()), layout=widgets.Layout(flex_flow="row wrap"))

    @abc.abstractmethod
    def _update(self, state, changes: dict):
        """The new state after ``changes`` (pure; raises ValueError on bad values)."""

    @abc.abstractmethod
    def figure(self):
        """A matplotlib Figure of the current state."""

    @abc.abstractmethod
    def readout_lines(self) -> list[str]:
        """The readout under the picture, one line each."""

    # -- machinery
    def _on_change(self, name):
        def handler(change):
            if not self._syncing:
                self.set(**{name: change["new"]})
        return handler

    def set(self, **changes):
        """Change the state (the same as moving the controls) and redraw. Returns ``self``."""
        fields = {f.name for f in dataclasses.fields(self.state)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise TypeError(f"{type(self).__name__}.set() got unknown settings {unknown}; "
                            f"expected some of {sorted(fields)}")
        self.state = self._update(self.state, changes)
        self._sync_controls()
        self.refresh()
        return self

    def _sync_controls(self):
        self._syncing = True
        try:
            self._sync_enabled()  # first: it may widen a slider's range for the new value
            for name, control in self.controls.items():
                value = getattr(self.state, name)
                options = getattr(control, "options", None)
                if options is not None and value not in options:  # a valid setting the menu did not offer
                    control.options = _options(options, value)
                if control.value != value:
                    control.value = value
        finally:
            self._syncing = False

    def _sync_enabled(self):  # noqa: B027 - an optional hook: by default every control stays enabled
        """Enable only the controls that matter for the current state."""

    # state fields that only move data inside the same picture (a slider); see _render
    data_fields: tuple[str, ...] = ()

    def _render(self) -> bytes:
        """PNG of :meth:`figure`. Constrained layout is the slow part of drawing, so it runs once per
        picture layout; moving a data-only control reuses the axes positions it found."""
        fig = self.figure()
        key = tuple((f.name, getattr(self.state, f.name)) for f in dataclasses.fields(self.state)
                    if f.name not in self.data_fields)
        cached = self._layouts.get(key)
        if cached is not None and len(cached) == len(fig.axes):
            fig.set_layout_engine("none")
            for ax, position in zip(fig.axes, cached):
                ax.set_position(position)
            return viz.figure_png(fig, self.dpi)
        png = viz.figure_png(fig, self.dpi)  # lays the figure out
        self._layouts = {key: [ax.get_position() for ax in fig.axes]}
        return png

    def refresh(self):
        """Update the readout, and the picture once the explorer has been displayed (until then
        drawing would be wasted: :meth:`go_live` or displaying it draws the current state)."""
        self._stale = True
        if self._live:
            self.png()
        # the readout last: once it shows the new state, the new picture has been sent too
        self.readout.value = "<br>".join(html.escape(line) for line in self.readout_lines())

    def png(self) -> bytes:
        """The picture of the current state as PNG bytes (also what the widget's image shows)."""
        if self._stale or not self.image.value:
            self.image.value = self._render()
            self._stale = False
        return self.image.value

    def go_live(self):
        """Draw the picture now and after every change, as displaying the explorer does. Returns ``self``."""
        self._live = True
        self.png()
        return self

    def readout_text(self) -> str:
        """The readout in plain text (what the widget shows under the picture)."""
        return "\n".join(self.readout_lines())

    def static_figure(self):
        """The picture of the current state with a line on top saying that it is not live."""
        fig = self.figure()
        fig.suptitle(f"{type(self).__name__}, {FRONTEND_NOTE}", fontsize=9, fontstyle="italic", color="0.3")
        return fig

    def _repr_mimebundle_(self, include=None, exclude=None):
        """The live widget, and for frontends without widgets a static picture and the readout.

        A frontend shows the richest it can: JupyterLab the widget, nbconvert and GitHub the
        PNG, a terminal the text. Only the text is compared by nbval; it is the readout, so it
        is the same on every machine.
        """
        self.go_live()
        name = type(self).__name__
        bundle = {
            "text/plain": f"{name} ({FRONTEND_NOTE})\n{self.readout_text()}",
            "image/png": base64.b64encode(viz.figure_png(self.static_figure(), self.dpi)).decode("ascii"),
        }
        widget_bundle = self.widget._repr_mimebundle_() or {}
        view = "application/vnd.jupyter.widget-view+json"
        if view in widget_bundle:
            bundle[view] = widget_bundle[view]
        return bundle

    def show(self):
        """Display the live widget in a kernel; elsewhere print why not and return the static Figure."""
        if has_widget_frontend():
            from IPython.display import display

            display(self)
            return None
        print(f"{type(self).__name__}: no Jupyter kernel here, so no live widget; returning a static figure.")
        return self.static_figure()

    def __repr__(self):
        return f"{type(self).__name__}({self.state})"


def _options(options, value) -> list:
    """A menu's options with ``value`` added if it is a valid setting the menu did not offer."""
    options = list(options)
    if value in options:
        return options
    return sorted([*options, value]) if all(isinstance(o, int) for o in options) else [*options, value]


def _slider(value, lo, hi, description, step=1, **kw):
    return widgets.IntSlider(value=value, min=lo, max=hi, step=step, description=description, continuous_update=True,
                             style={"description_width": "initial"}, **kw)


# ============================================================================ attention

MASKS = ("causal", "window", "sinks")
DEMO_TEXT = "the cat sat on the mat and the dog sat on the cat"


@dataclass(frozen=True)
class AttentionState:
    """Query position ``i``; mask ``causal`` (keys ``0..i``), ``window`` (``K_{[i-n_c+1, i]}``)
    or ``sinks`` (the window plus the first ``sinks`` keys)."""

    i: int
    mask: str = "causal"
    window: int = 4
    sinks: int = 1
    length: int = 12


def update_attention(state: AttentionState, changes: dict) -> AttentionState:
    """Check ``changes`` against the sequence length and return the new state."""
    new = dataclasses.replace(state, **changes)
    if not 0 <= new.i < new.length:
        raise ValueError(f"i={new.i} is not a position of the {new.length} tokens; expected 0 <= i < {new.length}")
    if new.mask not in MASKS:
        raise ValueError(f"mask={new.mask!r}; expected one of {MASKS}")
    if new.window < 1:
        raise ValueError(f"window (n_c) must be >= 1, got {new.window}")
    if new.sinks < 0:
        raise ValueError(f"sinks must be >= 0, got {new.sinks}")
    return new


def attention_mask_for(state: AttentionState) -> torch.Tensor:
    """``[T, T]`` bool mask (``True`` = may attend) for the state's mask choice."""
    t = state.length
    if state.mask == "causal":
        return causal_mask(t, t)
    return causal_mask(t, t, window=state.window, sinks=state.sinks if state.mask == "sinks" else 0)


def attention_view(q: torch.Tensor, k: torch.Tensor, state: AttentionState) -> dict:
    """Weights of every query under the state's mask, and what ``q_i`` sees.

    ``q, k``: ``[T, d]``. Returns ``{"mask" [T, T] bool, "weights" [T, T], "row" [T],
    "visible": [j, ...] keys q_i may attend to}``.
    """
    mask = attention_mask_for(state)
    _, weights = attention_reference(q[None, None], k[None, None], k[None, None], mask=mask, return_weights=True)
    weights = weights[0, 0]  # [T, T]
    visible = torch.nonzero(mask[state.i]).flatten().tolist()
    return {"mask": mask, "weights": weights, "row": weights[state.i], "visible": visible}


def toy_qk(tokens: list[str], d: int = 16, seed: int = 0, sharpness: float = 0.8):
    """Toy ``q_i = k_i = e(token_i)``: one random vector per distinct word, so ``q_i`` scores
    highest on earlier copies of its own word (an easy pattern to spot in the weights)."""
    gen = torch.Generator().manual_seed(seed)
    vocab = {w: n for n, w in enumerate(dict.fromkeys(tokens))}
    table = torch.randn(len(vocab), d, generator=gen, dtype=torch.float64) * sharpness
    e = table[[vocab[w] for w in tokens]]  # [T, d]
    noise = 0.3 * torch.randn(len(tokens), d, generator=gen, dtype=torch.float64)
    return e + noise, e.clone()


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
            "i": _slider(s.i, 0, t - 1, "query i"),
            "mask": widgets.ToggleButtons(options=list(MASKS), value=s.mask, description="mask",
                                          style={"button_width": "70px"}),
            "window": _slider(min(s.window, t), 1, t, "window n_c"),
            "sinks": _slider(min(s.sinks, t), 0, min(4, t), "sinks"),
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
                 f"under the {self._mask_words()} mask: {_ranges(seen)}",
                 f"largest weight {float(row[top]):.2f} on k_{top} ({self.tokens[top]!r})"]
        hidden = [j for j in range(s.i + 1) if j not in seen]
        if hidden:
            lines.append(f"hidden from q_{s.i}: {_ranges(hidden)}")
        return lines


def _ranges(positions) -> str:
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


# ============================================================================ cost

DTYPES = {"float32": 4, "bfloat16": 2, "float16": 2, "int8 (quantised cache)": 1}
COST_MEMORIES = {  # label -> (cost model name, size argument that the "size" control sets)
    "full KV cache": ("full", None),
    "window": ("window", "window"),
    "sinks + window": ("sink", "window"),
    "segment (Transformer-XL)": ("segment", "mem_len"),
    "compressive": ("compressive", "mem_len"),
    "k-NN": ("knn", "capacity"),
    "linear": ("linear", None),
    "delta": ("delta", None),
}


SINKS, TOP_K = 4, 32  # the fixed sizes of the sink and k-NN memories in the cost explorer
MAX_MEASURED_PARAMETERS = 300_000_000  # bigger models are for the analytic curves only


@dataclass(frozen=True)
class CostState:
    """A model configuration (``L``, ``tau``, ``d_h``, ``n_g``, dtype) and a memory choice."""

    n_layers: int = 4
    n_heads: int = 8
    head_dim: int = 64
    n_kv_heads: int = 8
    dtype: str = "float32"  # what the CPU computes fast; try float16 or bfloat16 (GPU) for half the bytes
    memory: str = "window"
    size: int = 1024
    ratio: int = 4
    max_context: int = 65536


def update_cost(state: CostState, changes: dict) -> CostState:
    """Check ``changes`` and return the new state; ``n_kv_heads`` snaps to a divisor of ``n_heads``."""
    new = dataclasses.replace(state, **changes)
    ModelConfig(new.n_layers, new.n_heads, new.head_dim)  # validates the sizes
    if new.dtype not in DTYPES:
        raise ValueError(f"dtype={new.dtype!r}; expected one of {list(DTYPES)}")
    if new.memory not in COST_MEMORIES:
        raise ValueError(f"memory={new.memory!r}; expected one of {list(COST_MEMORIES)}")
    for name in ("size", "ratio", "max_context"):
        if getattr(new, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(new, name)}")
    if new.n_heads % new.n_kv_heads:  # n_g must divide tau: take the largest divisor not above the request
        g = max(d for d in range(1, new.n_heads + 1) if new.n_heads % d == 0 and d <= max(1, new.n_kv_heads))
        new = dataclasses.replace(new, n_kv_heads=g)
    return new


def _config(state: CostState) -> ModelConfig:
    return ModelConfig(state.n_layers, state.n_heads, state.head_dim, n_kv_heads=state.n_kv_heads,
                       bytes_per_value=DTYPES[state.dtype])


def _sizes(state: CostState) -> dict:
    name, size_arg = COST_MEMORIES[state.memory]
    sizes = {} if size_arg is None else {size_arg: state.size}
    if name == "compressive":
        sizes.update(cmem_len=state.size, ratio=state.ratio)
    elif name == "sink":
        sizes.update(sinks=SINKS)
    elif name == "knn":
        sizes.update(top_k=TOP_K)
    return sizes


def cost_view(state: CostState) -> dict:
    """Analytic curves for the full KV cache and the chosen memory, contexts ``256..max_context``.

    Returns ``{"contexts", "analytic": {label: cost_curve}, "at_max": {label: {"bytes", "flops"}}}``.
    """
    config = _config(state)
    top = max(256, state.max_context)
    contexts = [2**p for p in range(8, int(math.log2(top)) + 1)]
    curves = {"full KV cache": cost_curve(config, contexts, "full")}
    name, _ = COST_MEMORIES[state.memory]
    if name != "full":
        curves[_memory_label(state)] = cost_curve(config, contexts, name, **_sizes(state))
    at_max = {label: {"bytes": c["bytes"][-1], "flops": c["flops"][-1]} for label, c in curves.items()}
    return {"contexts": contexts, "analytic": curves, "at_max": at_max, "config": config}


def _memory_label(state: CostState) -> str:
    name, size_arg = COST_MEMORIES[state.memory]
    if name == "compressive":
        return f"compressive M = {state.size}, c = {state.ratio}"
    if size_arg == "window":
        return f"{state.memory} n_c = {state.size}"
    if size_arg is not None:
        return f"{state.memory} {state.size} slots"
    return state.memory


def build_cost_model(state: CostState, *, vocab_size: int = 256, device=None):
    """The :class:`~course_lib.models.MemoryLM` that the state describes, on ``device``."""
    from .device import pick_device
    from .models import MemoryLM

    device = pick_device() if device is None else torch.device(device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(state.dtype)
    if dtype is None:
        raise ValueError(f"dtype={state.dtype!r} is analytic only (no int8 model); measure with float32/16 or bfloat16")
    d_model = state.n_heads * state.head_dim
    params = state.n_layers * 12 * d_model**2  # attention 4 d^2 (at most) + MLP 8 d^2 per layer
    if params > MAX_MEASURED_PARAMETERS:
        raise ValueError(
            f"this model has about {params / 1e6:,.0f}M parameters (L = {state.n_layers}, d_model = {d_model}); "
            f"measuring it here would take too long: keep it under {MAX_MEASURED_PARAMETERS / 1e6:,.0f}M "
            "(fewer layers, heads or a smaller d_h) -- the analytic curves hold for any size")
    memory = _make_memory(state)
    model = MemoryLM(vocab_size, state.n_heads * state.head_dim, state.n_layers, state.n_heads, memory,
                     n_kv_heads=state.n_kv_heads)
    return model.to(device=device, dtype=dtype)


def _make_memory(state: CostState):
    name, _ = COST_MEMORIES[state.memory]
    sizes = _sizes(state)
    try:
        from .memory import make_memory
    except ImportError:
        make_memory = None
    if name == "full" or make_memory is None:
        if name != "full":
            raise ValueError(f"memory {state.memory!r} cannot be measured yet: course_lib.memory has no make_memory")
        from .memory import FullMemory

        return FullMemory()
    return make_memory(name, **sizes)


def measure_cost(state: CostState, contexts, *, steps: int = 8, device=None, on_progress=None) -> list[dict]:
    """Time the real model of ``state`` after each context length (``cost.measure_decode``).

    On the CPU the timing runs on one thread (steadier, and what one decoding step can use).
    ``on_progress(done, total)`` is called after each context (the widget's progress bar).
    """
    from .cost import measure_decode

    model = build_cost_model(state, device=device)
    rows = []
    contexts = [int(m) for m in contexts]
    threads = torch.get_num_threads()
    on_cpu = next(model.parameters()).device.type == "cpu"
    if on_cpu:  # one decoding step is small work: a second thread adds waiting, a lot on a busy machine
        torch.set_num_threads(1)
    try:
        for n, m in enumerate(contexts):
            rows += measure_decode(model, [m], steps=steps, progress=False)
            if on_progress is not None:
                on_progress(n + 1, len(contexts))
    finally:
        torch.set_num_threads(threads)
    return rows


class CostExplorer(Explorer):
    r"""Bytes and FLOPs per token against ``m`` for a model and a memory; "measure" times the real model.

    Analytic: ``bytes = 2 L n_g d_h m b`` for the full cache (``b`` bytes per value), flat
    once a fixed-size memory is full. Measured: :func:`~course_lib.cost.measure_decode` on
    :func:`~course_lib.device.pick_device`, contexts ``256, 512, ...`` up to ``measure up to``.
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
        self.measure_up_to = widgets.Dropdown(options=_options([2**p for p in range(4, 17)], measure_up_to),
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
            "head_dim": widgets.Dropdown(options=_options([8, 16, 32, 64, 128, 256], s.head_dim), value=s.head_dim,
                                         description="d_h",
                                         style=style, layout=small()),
            "n_kv_heads": widgets.BoundedIntText(value=s.n_kv_heads, min=1, max=1024, description="KV groups n_g",
                                                 style=style, layout=small()),
            "dtype": widgets.Dropdown(options=list(DTYPES), value=s.dtype, description="dtype", style=style,
                                      layout=small()),
            "memory": widgets.Dropdown(options=list(COST_MEMORIES), value=s.memory, description="memory",
                                       style=style, layout=widgets.Layout(width="300px")),
            "size": widgets.Dropdown(options=_options([2**p for p in range(4, 15)], s.size), value=s.size,
                                     description="n_c / M / slots", style=style, layout=small()),
            "ratio": widgets.Dropdown(options=_options([1, 2, 3, 4, 8, 16], s.ratio), value=s.ratio,
                                      description="ratio c", style=style,
                                      layout=small()),
            "max_context": widgets.Dropdown(options=_options([2**p for p in range(10, 21)], s.max_context),
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
        name, size_arg = COST_MEMORIES[self.state.memory]
        self.controls["size"].disabled = size_arg is None
        self.controls["ratio"].disabled = name != "compressive"

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
        runs = {"full KV cache": dataclasses.replace(self.state, memory="full KV cache")}
        if COST_MEMORIES[self.state.memory][0] != "full":
            runs = {_memory_label(self.state): self.state, **runs}
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




# ============================================================================ memory inspector

INSPECT_MEMORIES = ("full", "window", "sink", "segment", "compressive", "knn")
STORY = ("the keeper wrote the password : blue whale . then the storm came , ships passed , the lamp "
         "burned and years went by . one night a child asked : what was the password ?")


@dataclass(frozen=True)
class InspectorState:
    """A memory model, its sizes, the chunk length ``n_s`` and the step (chunk) being looked at."""

    memory: str = "compressive"
    window: int = 6  # n_c (window, sink)
    sinks: int = 2  # S (sink)
    mem_len: int = 6  # M (segment, compressive)
    cmem_len: int = 8  # C (compressive)
    ratio: int = 3  # c (compressive)
    compress: str = "mean"  # f_c (compressive)
    capacity: int = 16  # N (knn)
    top_k: int = 3  # k (knn)
    chunk: int = 4  # n_s
    step: int = 0


# which sizes each memory uses, in the order its controls appear
INSPECTOR_SIZES = {
    "full": (), "window": ("window",), "sink": ("sinks", "window"), "segment": ("mem_len",),
    "compressive": ("mem_len", "cmem_len", "ratio", "compress"), "knn": ("capacity", "top_k"),
}


def update_inspector(state: InspectorState, changes: dict, n_tokens: int) -> InspectorState:
    """Check ``changes``; the step is clamped to the chunks that ``n_tokens`` make."""
    from .memory import COMPRESSIONS

    new = dataclasses.replace(state, **changes)
    if new.memory not in INSPECT_MEMORIES:
        raise ValueError(f"memory={new.memory!r}; the inspector shows slot memories {INSPECT_MEMORIES}")
    for name in ("window", "mem_len", "cmem_len", "ratio", "capacity", "top_k", "chunk"):
        if getattr(new, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(new, name)}")
    if new.sinks < 0:
        raise ValueError(f"sinks must be >= 0, got {new.sinks}")
    if new.compress not in COMPRESSIONS:
        raise ValueError(f"compress={new.compress!r}; expected one of {COMPRESSIONS}")
    if new.memory == "compressive" and new.mem_len < new.ratio:
        new = dataclasses.replace(new, mem_len=new.ratio)  # M >= c: evictions pop whole groups
    n_steps = math.ceil(n_tokens / new.chunk)
    if not 0 <= new.step < n_steps:
        if "step" in changes:
            raise ValueError(f"step={new.step} is not one of the {n_steps} chunks; expected 0 <= step < {n_steps}")
        new = dataclasses.replace(new, step=min(new.step, n_steps - 1))
    return new


def make_inspected_memory(state: InspectorState):
    """The :class:`~course_lib.memory.Memory` that ``state`` describes."""
    from .memory import make_memory

    sizes = {name: getattr(state, name) for name in INSPECTOR_SIZES[state.memory]}
    return make_memory(state.memory, **sizes)


def slot_layout(memory, state) -> tuple[list[int], list[tuple[int, int, str]]]:
    """Where ``Mem``'s slots sit in its buffer and what they hold, in attention order.

    Returns ``(order, slots)``: ``order[n]`` is the buffer index of the ``n``-th held slot and
    ``slots[n] = (first, last, part)``, ``part`` in ``"CMem"``, ``"sinks"``, ``"Mem"``.
    ``(first, last)`` agree with ``memory.spans(state)``.
    """
    from .memory import CompressiveMemory, FullMemory, SinkMemory

    if isinstance(memory, FullMemory):
        return list(range(state.length)), [(j, j, "Mem") for j in range(state.length)]
    pos = state.buffer.pos.tolist()
    held = sorted((p, n) for n, p in enumerate(pos) if p >= 0)
    order, slots = [], []
    for p, n in held:
        if isinstance(memory, CompressiveMemory) and n < memory.cmem_len:
            slots.append((p, p + memory.ratio - 1, "CMem"))
        elif isinstance(memory, SinkMemory) and n < memory.sinks:
            slots.append((p, p, "sinks"))
        else:
            slots.append((p, p, "Mem"))
        order.append(n)
    return order, slots


def _held_pairs(memory, state, q):
    """Keys, values ``[B, H, P, D]`` of the held slots in attention order, and the mask ``[T, P + T]``."""
    from .memory import FullMemory

    order, _ = slot_layout(memory, state)
    t = q.shape[2]
    if isinstance(memory, FullMemory):
        mask = torch.ones(t, state.length + t, dtype=torch.bool).tril(state.length)
        return state.keys, state.values, mask
    keys, values, mask = memory.slots(q, state)
    mask = mask.expand(*mask.shape[:-2], t, mask.shape[-1])
    mask = mask[0, 0] if mask.dim() == 4 else mask  # [T, P + T] (one batch element and head)
    idx = torch.tensor(order, dtype=torch.long)
    cols = torch.cat([idx, keys.shape[2] + torch.arange(t)])
    return keys[:, :, idx], values[:, :, idx], mask[:, cols]


def memory_frames(memory, q, k, v, chunk: int) -> list[dict]:
    """Run ``memory`` over ``q, k, v [1, 1, N, d]`` chunk by chunk (``n_s = chunk``), keeping every step.

    Frame ``k`` holds what the chunk's queries see: ``slots`` (first, last, part) of ``Mem``
    before the chunk, ``segments`` for the heatmap, the ``weights [T, P + T]`` of one softmax
    over ``[slots, chunk]`` and its ``mask``, ``out`` (what ``memory.forward`` returned) and
    ``out_from_weights`` (``weights @ values``: they agree, so the picture is the real thing),
    plus ``slots_after`` and ``nbytes_before / nbytes_after``.
    """
    n, d = q.shape[2], q.shape[3]
    state = memory.init_state(1, k.shape[1], d, dtype=q.dtype)
    frames = []
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        qc, kc, vc = q[:, :, start:stop], k[:, :, start:stop], v[:, :, start:stop]
        keys, values, mask = _held_pairs(memory, state, qc)
        _, slots = slot_layout(memory, state)
        _, weights = attention_reference(qc, torch.cat([keys, kc], 2), torch.cat([values, vc], 2), mask=mask,
                                         return_weights=True)
        out_from_weights = weights @ torch.cat([values, vc], 2)
        with torch.no_grad():
            out, new_state = memory(qc, kc, vc, state)
        segments = [(part, sum(1 for s in slots if s[2] == part)) for part in ("sinks", "CMem", "Mem")]
        frames.append({
            "step": len(frames), "chunk": (start, stop - 1), "slots": slots,
            "segments": [(name, size) for name, size in segments if size] + [("chunk", stop - start)],
            "weights": weights[0, 0], "mask": mask, "out": out, "out_from_weights": out_from_weights,
            "slots_after": slot_layout(memory, new_state)[1],
            "nbytes_before": memory.nbytes(state), "nbytes_after": memory.nbytes(new_state),
        })
        state = new_state
    return frames


def frame_changes(frame: dict) -> dict:
    """What the update after this chunk did: ``evicted`` positions that left ``Mem``, of them the
    ``compressed`` ones (now inside a new ``CMem`` slot), the ``new_cmem`` slots and the
    ``dropped_cmem`` slots that fell out of ``CMem``."""
    before_mem = {a for a, _, part in frame["slots"] if part == "Mem"}
    before_mem |= set(range(frame["chunk"][0], frame["chunk"][1] + 1))
    after_mem = {a for a, _, part in frame["slots_after"] if part in ("Mem", "sinks")}
    evicted = sorted(before_mem - after_mem)
    cmem_before = {(a, b) for a, b, part in frame["slots"] if part == "CMem"}
    cmem_after = {(a, b) for a, b, part in frame["slots_after"] if part == "CMem"}
    new_cmem = sorted(cmem_after - cmem_before)
    compressed = [p for p in evicted if any(a <= p <= b for a, b in new_cmem)]
    return {"evicted": evicted, "compressed": compressed, "new_cmem": new_cmem,
            "dropped_cmem": sorted(cmem_before - cmem_after)}


class MemoryInspector(Explorer):
    r"""Step through a text with a memory model: what ``Mem`` holds, what leaves it, where attention goes.

    The text's tokens get toy vectors (one random vector per word, :func:`toy_qk`), so a query
    attends most to earlier copies of its own word. Each step feeds one chunk of ``n_s``
    tokens: ``out = Att(q_i, [CMem, Mem, chunk])``, then ``Mem = Update(S_kv, Mem_pre)``.

    Args:
        text: the tokens (a string is split on spaces).
        memory: one of ``full, window, sink, segment, compressive, knn``; sizes as keywords
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
            "window": widgets.BoundedIntText(value=s.window, min=1, max=4096, description="window n_c", style=style,
                                             layout=small()),
            "sinks": widgets.BoundedIntText(value=s.sinks, min=0, max=64, description="sinks S", style=style,
                                            layout=small()),
            "mem_len": widgets.BoundedIntText(value=s.mem_len, min=1, max=4096, description="Mem size M", style=style,
                                              layout=small()),
            "cmem_len": widgets.BoundedIntText(value=s.cmem_len, min=1, max=4096, description="CMem size C",
                                               style=style, layout=small()),
            "ratio": widgets.BoundedIntText(value=s.ratio, min=1, max=64, description="ratio c", style=style,
                                            layout=small()),
            "compress": widgets.Dropdown(options=["mean", "max", "conv", "dilated_conv", "most_used"],
                                         value=s.compress, description="f_c", style=style, layout=small()),
            "capacity": widgets.BoundedIntText(value=s.capacity, min=1, max=4096, description="store N", style=style,
                                               layout=small()),
            "top_k": widgets.BoundedIntText(value=s.top_k, min=1, max=4096, description="top k", style=style,
                                            layout=small()),
            "step": widgets.IntSlider(value=s.step, min=0, max=n_steps - 1, description="step", style=style,
                                      continuous_update=True, layout=widgets.Layout(width="420px")),
        }

    def _layout_controls(self):
        c = self.controls
        sizes = [c[name] for name in ("chunk", "window", "sinks", "mem_len", "cmem_len", "ratio", "compress",
                                      "capacity", "top_k")]
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
        s = self.state
        return {
            "full": "full KV cache", "window": f"window n_c = {s.window}", "sink": f"sinks S = {s.sinks} + window "
            f"n_c = {s.window}", "segment": f"segment memory M = {s.mem_len}",
            "compressive": f"compressive M = {s.mem_len}, C = {s.cmem_len}, c = {s.ratio}, f_c = {s.compress}",
            "knn": f"k-NN store N = {s.capacity}, top k = {s.top_k}",
        }[s.memory]

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
            held = ", ".join(f"[{a}..{b}]" for a, b in spans) if name == "CMem" else _ranges([a for a, _ in spans])
            parts.append(f"{name} {size} slot{'s' * (size != 1)}: {held}")
        lines.append("Mem before the chunk: " + ("; ".join(parts) if parts else "empty"))
        lines.append("after the chunk: " + self._change_words(v))
        lines.append(f"memory size: {v['nbytes_before']:,} B before, {v['nbytes_after']:,} B after")
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
            words.append(f"positions {_ranges(compressed)} evicted from Mem and compressed by f_c = "
                         f"{self.state.compress} into CMem slot{'s' * (len(v['new_cmem']) != 1)} {slots}")
        dropped = [p for p in evicted if p not in compressed]
        if dropped:
            words.append(f"positions {_ranges(dropped)} evicted (forgotten)")
        if v["dropped_cmem"]:
            words.append("CMem slot(s) " + ", ".join(f"[{a}..{b}]" for a, b in v["dropped_cmem"]) + " dropped")
        return "; ".join(words)


# ============================================================================ compression playground

SIGNALS = ("smooth", "random")
LEARNED = ("conv", "dilated_conv")


@dataclass(frozen=True)
class CompressionState:
    """``f_c`` and ``c``; the kind of keys (``smooth``: neighbours alike, ``random``: i.i.d.) and how
    many Adam steps train a learned ``f_c`` (``conv``, ``dilated_conv``) on the reconstruction loss."""

    compress: str = "mean"
    ratio: int = 4
    signal: str = "smooth"
    train_steps: int = 0


def update_compression(state: CompressionState, changes: dict, n_pairs: int) -> CompressionState:
    from .memory import COMPRESSIONS

    new = dataclasses.replace(state, **changes)
    if new.compress not in COMPRESSIONS:
        raise ValueError(f"compress={new.compress!r}; expected one of {COMPRESSIONS}")
    if new.ratio < 1 or n_pairs % new.ratio:
        raise ValueError(f"ratio={new.ratio} must be >= 1 and divide the {n_pairs} pairs")
    if new.signal not in SIGNALS:
        raise ValueError(f"signal={new.signal!r}; expected one of {SIGNALS}")
    if new.train_steps < 0:
        raise ValueError(f"train_steps must be >= 0, got {new.train_steps}")
    return new


def playground_data(signal: str, n_pairs: int = 48, n_queries: int = 8, d: int = 8, seed: int = 0):
    """``q [1, 1, T_q, d]``, ``k, v [1, 1, n, d]`` (float64): smooth random curves or i.i.d. noise."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 1, n_queries, d, generator=gen, dtype=torch.float64)
    if signal == "smooth":  # a few slow sinusoids per dimension: neighbouring pairs are alike
        t = torch.arange(n_pairs, dtype=torch.float64)[:, None]
        freq = torch.rand(3, d, generator=gen, dtype=torch.float64) * 0.25
        phase = torch.rand(3, d, generator=gen, dtype=torch.float64) * 6.3
        kv = [(torch.sin(t[:, None] * freq + phase) * 1.5).sum(1) for _ in range(2)]  # [n, d]
        k, v = (x[None, None] for x in kv)
    else:
        k, v = (torch.randn(1, 1, n_pairs, d, generator=gen, dtype=torch.float64) for _ in range(2))
    return q, k, v


def compression_error(q, k, v, compressor, mass=None) -> tuple[float, torch.Tensor]:
    r"""``|| Att(q, K, V) - Att(q, f_c(K), f_c(V)) || / || Att(q, K, V) ||`` and ``f_c(K)``."""
    with torch.no_grad():
        ck, cv = compressor.compress_pairs(k, v, mass)
        exact = attention_reference(q, k, v)
        approx = attention_reference(q, ck, cv)
    return float((approx - exact).norm() / exact.norm()), ck


def _attention_mass(q, k):
    _, w = attention_reference(q, k, k, return_weights=True)
    return w.sum(2)  # [B, H, n]: attention each pair receives from the queries


def train_compressor(compressor, q, k, v, steps: int, lr: float = 0.05):
    """A few Adam steps on :func:`~course_lib.memory.attention_reconstruction_loss` (learned ``f_c`` only)."""
    from .memory import attention_reconstruction_loss

    params = [p for p in compressor.parameters() if p.requires_grad]
    if not params or steps == 0:
        return compressor
    compressor.double()
    opt = torch.optim.Adam(params, lr=lr)
    with torch.enable_grad():  # also where a notebook turned gradients off
        for _ in range(steps):
            opt.zero_grad()
            loss = attention_reconstruction_loss(q, k, v, compressor)
            loss.backward()
            opt.step()
    return compressor


def _compressor(name: str, c: int):
    from .memory import CompressiveMemory

    return CompressiveMemory(mem_len=c, cmem_len=1, ratio=c, compress=name).double()


def error_curves(q, k, v, ratios=(1, 2, 3, 4, 6, 8)) -> dict:
    """``{f_c: [(c, relative error), ...]}`` for every compression function (learned ones as
    initialised: ``conv`` starts as mean pooling)."""
    from .memory import COMPRESSIONS

    mass = _attention_mass(q, k)
    n = k.shape[2]
    return {name + {"conv": " (untrained = mean)", "dilated_conv": " (untrained)"}.get(name, ""):
            [(c, compression_error(q, k, v, _compressor(name, c), mass)[0]) for c in ratios if n % c == 0]
            for name in COMPRESSIONS}


def compression_view(state: CompressionState, q, k, v, curves: dict | None = None) -> dict:
    """Keys before and after ``f_c`` and the relative error of attention outputs; ``curves``
    (from :func:`error_curves`, computed when ``None``; pass ``{}`` to skip) for the error against ``c``."""
    current = train_compressor(_compressor(state.compress, state.ratio), q, k, v, state.train_steps)
    error, ck = compression_error(q, k, v, current, _attention_mass(q, k))
    curves = error_curves(q, k, v) if curves is None else curves
    return {"keys": k[0, 0], "compressed": ck[0, 0], "error": error, "curves": curves}


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
            "compress": widgets.ToggleButtons(options=["mean", "max", "conv", "dilated_conv", "most_used"],
                                              value=s.compress, description="f_c", style={"button_width": "110px"}),
            "ratio": widgets.SelectionSlider(options=_options(ratios, s.ratio), value=s.ratio, description="ratio c",
                                             style=style),
            "signal": widgets.ToggleButtons(options=list(SIGNALS), value=s.signal, description="keys",
                                            style={"button_width": "80px"}),
            "train_steps": widgets.Dropdown(options=_options([0, 50, 200], s.train_steps), value=s.train_steps,
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
