r"""Average memories: the whole context squeezed into one key/value pair (the book's 1x2 memory).

Attending to a single pair gives its value whatever the query (a softmax over one key is
``1``), so the output is the averaged value::

    Att(q_i, (k_bar, v_bar)) = v_bar

``MovingAverageMemory(window=n_c, weights=beta)``: the (weighted) mean of ``v_j`` over the
window ``j in [i-n_c+1, i]``; ``weights[-1]`` weighs the newest token. Before ``n_c`` tokens
exist the mean runs over the ``m = i + 1`` tokens there are, with the newest ``m`` weights
renormalised. To slide the window exactly the state keeps the newest ``n_c - 1`` values.

``CumulativeAverageMemory()``: the mean of everything so far, updated in ``O(1)``::

    Mem_i = ((k_i, v_i) + i Mem_{i-1}) / (i + 1)

so token ``j``'s share shrinks as ``1 / (i + 1)`` (dilution).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_positive_int
from ._state import StateMeta, check_input, meta_of, new_meta
from .base import Memory

__all__ = ["MovingAverageMemory", "CumulativeAverageMemory", "MovingAverageState", "CumulativeAverageState"]


@dataclass
class MovingAverageState(StateMeta):
    """``values [B, H, n_c - 1, D_v]``: the newest values, oldest first (zeros before the text starts)."""

    values: torch.Tensor
    length: int


@dataclass
class CumulativeAverageState(StateMeta):
    """``k_mean [B, H, 1, D]``, ``v_mean [B, H, 1, D_v]``: the mean pair of ``length`` tokens."""

    k_mean: torch.Tensor
    v_mean: torch.Tensor
    length: int


class MovingAverageMemory(Memory):
    """Output = (weighted) mean of the values in the window of ``n_c`` tokens.

    Args:
        window: ``n_c >= 1``.
        weights: ``None`` (plain mean) or ``n_c`` non-negative weights, oldest first, so
            ``weights[-1]`` is the newest token's (it must be ``> 0``).

    >>> mem = MovingAverageMemory(window=2)
    >>> v = torch.tensor([1.0, 3.0, 7.0]).view(1, 1, 3, 1)
    >>> mem(v, v, v, mem.init_state(1, 1, 1))[0].flatten().tolist()
    [1.0, 2.0, 5.0]
    """

    name = "moving_average"
    title = "moving average"
    symbols = {"window": "n_c"}
    uses_query = False

    def __init__(self, window: int, weights=None):
        super().__init__()
        self.window = check_positive_int("window", window)
        if weights is None:
            w = torch.ones(window, dtype=torch.float64)
        else:
            w = torch.as_tensor(weights, dtype=torch.float64).detach().cpu()
            if w.shape != (window,):
                raise ValueError(f"weights must hold window={window} numbers, got shape {tuple(w.shape)}")
            if not torch.isfinite(w).all() or (w < 0).any() or w[-1] <= 0:
                raise ValueError(f"weights must be finite and >= 0 with weights[-1] > 0, got {w.tolist()}")
        self.register_buffer("weights", w, persistent=False)

    @classmethod
    def example_sizes(cls, slots=8, *, n_heads=2):
        return {"window": slots}

    def cost_per_token(self, config, context: int) -> dict:
        """The newest ``n_c - 1`` values per head, ``L tau (n_c - 1) d_h b`` bytes; the weighted mean
        over the window, ``2 L tau n_c d_h`` FLOPs."""
        L, tau, d, w = config.n_layers, config.n_heads, config.head_dim, self.window
        return {"bytes": L * tau * (w - 1) * d * config.bytes_per_value, "flops": 2 * L * tau * w * d}

    def init_state(self, batch, n_heads, head_dim, *, device=None, dtype=None, v_dim=None):
        meta = new_meta(batch, n_heads, head_dim, device=device, dtype=dtype, v_dim=v_dim)
        values = torch.zeros(batch, n_heads, self.window - 1, meta["v_dim"], device=meta["device"],
                             dtype=meta["dtype"])
        return MovingAverageState(**meta, values=values, length=0)

    def forward(self, q, k, v, state):
        """:func:`course_lib.memory.reference.moving_average_reference` is the rule."""
        check_input(self, q, k, v, state, MovingAverageState)
        n, t, w = state.length, v.shape[2], self.window
        x = torch.cat([state.values, v], dim=2)  # [B, H, n_c - 1 + T, D_v]: positions n-n_c+1 .. n+T-1
        exists = (torch.arange(n - w + 1, n + t, device=v.device) >= 0).to(v.dtype)  # [n_c - 1 + T]
        weights = self.weights.to(device=v.device, dtype=v.dtype) * exists.unfold(0, w, 1)  # [T, n_c]
        weights = weights / weights.sum(-1, keepdim=True)  # renormalise over the tokens there are
        out = torch.einsum("bhtdw,tw->bhtd", x.unfold(2, w, 1), weights)  # window of query r: x[r : r+n_c]
        values = x[:, :, x.shape[2] - (w - 1):].detach().clone()
        return out, MovingAverageState(**meta_of(state), values=values, length=n + t)


class CumulativeAverageMemory(Memory):
    """Output = mean of ``v_0..v_i``; the state is the mean pair ``(k_bar, v_bar)`` and the count.

    >>> mem = CumulativeAverageMemory()
    >>> v = torch.tensor([1.0, 3.0, 8.0]).view(1, 1, 3, 1)
    >>> mem(v, v, v, mem.init_state(1, 1, 1))[0].flatten().tolist()
    [1.0, 2.0, 4.0]
    """

    name = "cumulative_average"
    title = "cumulative average"
    uses_query = False
    sized_by_head_dim = True

    def cost_per_token(self, config, context: int) -> dict:
        """The mean pair per head, ``2 L tau d_h b`` bytes; updating the mean, ``2 L tau d_h`` FLOPs."""
        L, tau, d = config.n_layers, config.n_heads, config.head_dim
        return {"bytes": 2 * L * tau * d * config.bytes_per_value, "flops": 2 * L * tau * d}

    def init_state(self, batch, n_heads, head_dim, *, device=None, dtype=None, v_dim=None):
        meta = new_meta(batch, n_heads, head_dim, device=device, dtype=dtype, v_dim=v_dim)
        kw = dict(device=meta["device"], dtype=meta["dtype"])
        return CumulativeAverageState(**meta, k_mean=torch.zeros(batch, n_heads, 1, head_dim, **kw),
                                      v_mean=torch.zeros(batch, n_heads, 1, meta["v_dim"], **kw), length=0)

    def forward(self, q, k, v, state):
        """:func:`course_lib.memory.reference.cumulative_average_reference` is the rule."""
        check_input(self, q, k, v, state, CumulativeAverageState)
        n, t = state.length, v.shape[2]
        count = torch.arange(n + 1, n + t + 1, device=v.device, dtype=v.dtype)[:, None]  # [T, 1]: i + 1
        out = (n * state.v_mean + v.cumsum(2)) / count  # [B, H, T, D_v]
        k_mean = (n * state.k_mean + k.sum(2, keepdim=True)) / (n + t)
        return out, CumulativeAverageState(**meta_of(state), k_mean=k_mean.detach(),
                                           v_mean=out[:, :, -1:].detach().clone(), length=n + t)

