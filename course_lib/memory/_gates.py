r"""The gates of the matrix memories and their checks: the write strength ``beta`` and the decay ``alpha``.

Each is fixed (a float), given per call (a tensor, one value per head and token, or per channel
too), or ``"learned"``: the memory then only declares it (``learns_beta``, ``learns_alpha``) and
the attention layer of :class:`~course_lib.models.MemoryLM` computes it from its input ``x_t``
and passes it to ``forward``:

* ``beta_t = sigma(W_beta x_t)`` in ``(0, 1)``, DeltaNet's write strength; allowed ``[0, 2]``
  (the delta rule's ``I - beta k^T k`` keeps the state bounded up to 2);
* ``alpha_t = exp(-softplus(W_alpha x_t + b))`` in ``(0, 1)``, Mamba-2's and Gated DeltaNet's
  decay; allowed ``(0, 1]`` (``1`` keeps everything; ``0`` would have no logarithm, and the
  chunked forms work with ``log alpha``).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from .._checks import check_tensor, describe

__all__ = ["LEARNED", "Gate", "BETA", "ALPHA", "check_gate_option", "check_gate", "per_call"]

LEARNED = "learned"


@dataclass(frozen=True)
class Gate:
    """What a gate may be: its ``name``, the interval, what its values mean and how it is learned."""

    name: str
    low: float
    high: float
    open_low: bool  # low itself excluded
    meaning: str  # what the values mean, for the errors
    formula: str  # the learned parameterisation ("beta_t = sigma(W_beta x_t)") ...
    source: str  # ... and whose it is ("DeltaNet's")

    @property
    def interval(self) -> str:
        return f"{'(' if self.open_low else '['}{self.low:g}, {self.high:g}]"

    def holds(self, lowest: float, highest: float) -> bool:
        """Whether ``[lowest, highest]`` lies in the interval (``False`` for NaN)."""
        above = lowest > self.low if self.open_low else lowest >= self.low
        return bool(above and highest <= self.high)


BETA = Gate("beta", 0.0, 2.0, False, "1 overwrites fully", "beta_t = sigma(W_beta x_t)", "DeltaNet's")
ALPHA = Gate("alpha", 0.0, 1.0, True, "1 keeps everything, smaller forgets faster",
             "alpha_t = exp(-softplus(W_alpha x_t + b))", "Mamba-2's")


def _check_float(gate: Gate, value, expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{gate.name} must be {expected}, got {describe(value)}")
    if not gate.holds(value, value):
        raise ValueError(f"{gate.name} must be in {gate.interval} ({gate.meaning}), got {value}")
    return float(value)


def check_gate_option(gate: Gate, value):
    """A constructor's gate: a float in the gate's interval or ``"learned"``."""
    expected = f"a float in {gate.interval} or {LEARNED!r} ({gate.source} {gate.formula})"
    if isinstance(value, str):
        if value != LEARNED:
            raise ValueError(f"{gate.name} must be {expected}, got str {value!r}")
        return value
    return _check_float(gate, value, expected)


def _shape_text(shapes) -> str:
    return " or ".join(f"[{', '.join(s)}]" for s in shapes)


def check_gate(gate: Gate, value, k: torch.Tensor, shapes=(("B", "H", "T"),)):
    """A gate given to ``forward``: a float, or a tensor of one of ``shapes`` (by the symbols
    ``B, H, T, D`` of ``k [B, H, T, D]``) on ``k``'s device, with values in the gate's interval."""
    kinds = _shape_text(shapes)
    if not isinstance(value, torch.Tensor):
        return _check_float(gate, value, f"a float in {gate.interval} or a {kinds} tensor")
    sizes = dict(zip("BHTD", k.shape))
    allowed = [tuple(sizes[s] for s in shape) for shape in shapes]
    if tuple(value.shape) not in allowed:
        filled = " or ".join(f"[{', '.join(s)}] = {list(a)}" for s, a in zip(shapes, allowed))
        raise ValueError(f"{gate.name} must be a float or a {filled} tensor, got {describe(value)}")
    check_tensor(gate.name, value, floating=True)
    if value.device != k.device:
        raise ValueError(f"{gate.name} is on {value.device} but k is on {k.device}")
    lowest, highest = (float(x) for x in torch.aminmax(value.detach()))
    if not gate.holds(lowest, highest):  # also refuses NaN
        raise ValueError(
            f"{gate.name} must hold values in {gate.interval} ({gate.meaning}; a learned {gate.formula} "
            f"lies in (0, 1)), got a tensor with values from {lowest} to {highest}"
        )
    return value


def per_call(memory, gate: Gate, given, k, shapes=(("B", "H", "T"),)):
    """This call's ``gate``: ``given`` (checked), else the memory's own; a learned one must be given."""
    if given is not None:
        return check_gate(gate, given, k, shapes)
    own = getattr(memory, gate.name)
    if own == LEARNED:
        cls = type(memory).__name__
        raise ValueError(
            f"{gate.name} must be given to a {cls}({gate.name}='learned'): its {gate.formula} "
            f"comes from the layer (MemoryLM computes it); called directly, pass forward(q, k, v, state, "
            f"{gate.name}=...) a float in {gate.interval} or a {_shape_text(shapes)} tensor, got {gate.name}=None"
        )
    return own
