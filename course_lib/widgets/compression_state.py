"""The compression playground's state and view: pure functions, no ipywidgets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..attention import attention_reference
from ..memory import COMPRESSIONS, CompressiveMemory, attention_reconstruction_loss
from .common import check_at_least, check_choice

__all__ = ["SIGNALS", "LEARNED", "CompressionState", "update_compression", "playground_data", "compression_error",
           "train_compressor", "error_curves", "compression_view"]

SIGNALS = ("smooth", "random")


def _compressor(name: str, c: int):
    return CompressiveMemory(mem_len=c, cmem_len=1, ratio=c, compress=name).double()


#: the compression functions with parameters to train
LEARNED = tuple(name for name in COMPRESSIONS if list(_compressor(name, 2).parameters()))


@dataclass(frozen=True)
class CompressionState:
    """``f_c`` and ``c``; the kind of keys (``smooth``: neighbours alike, ``random``: i.i.d.) and how
    many Adam steps train a learned ``f_c`` (``conv``, ``dilated_conv``) on the reconstruction loss."""

    compress: str = "mean"
    ratio: int = 4
    signal: str = "smooth"
    train_steps: int = 0


def update_compression(state: CompressionState, changes: dict, n_pairs: int) -> CompressionState:
    new = dataclasses.replace(state, **changes)
    check_choice("compress", new.compress, COMPRESSIONS)
    if new.ratio < 1 or n_pairs % new.ratio:
        raise ValueError(f"ratio={new.ratio} must be >= 1 and divide the {n_pairs} pairs")
    check_choice("signal", new.signal, SIGNALS)
    check_at_least(new, ("train_steps",), 0)
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
    """A few Adam steps on :func:`~course_lib.memory.attention_reconstruction_loss` (learned ``f_c``
    only), through :func:`course_lib.train.train` with the loss as its hook."""
    import itertools

    from ..train import train

    params = [p for p in compressor.parameters() if p.requires_grad]
    if not params or steps == 0:
        return compressor
    compressor.double()

    def loss_fn(f_c, batch):
        loss = attention_reconstruction_loss(q, k, v, f_c)
        loss.backward()
        return loss.item()

    with torch.enable_grad():  # also where a notebook turned gradients off
        train(compressor, itertools.repeat(()), steps, lr=lr, optimizer=torch.optim.Adam(params, lr=lr),
              schedule="constant", grad_clip=None, device=q.device, progress=False, loss_fn=loss_fn)
    return compressor


def error_curves(q, k, v, ratios=(1, 2, 3, 4, 6, 8)) -> dict:
    """``{f_c: [(c, relative error), ...]}`` for every compression function (learned ones as
    initialised: ``conv`` starts as mean pooling)."""
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
