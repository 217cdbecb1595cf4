"""The small base every explorer stands on: controls -> ``set(**changes)`` -> new state ->
picture and readout (the only module here, with the explorers, that imports ipywidgets)."""

from __future__ import annotations

import abc
import base64
import dataclasses
import html

import ipywidgets as widgets

from .. import viz
from .common import FRONTEND_NOTE, has_widget_frontend, with_option

__all__ = ["Explorer", "slider"]


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
                    control.options = with_option(options, value)
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


def slider(value, lo, hi, description, step=1, **kw):
    return widgets.IntSlider(value=value, min=lo, max=hi, step=step, description=description, continuous_update=True,
                             style={"description_width": "initial"}, **kw)
