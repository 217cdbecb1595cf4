"""The attention explorer's state and view: pure functions, no ipywidgets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..attention import attention_reference, causal_mask
from .common import check_at_least, check_choice

__all__ = ["MASKS", "DEMO_TEXT", "AttentionState", "update_attention", "attention_mask_for", "attention_view",
           "toy_qk"]

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
    check_choice("mask", new.mask, MASKS)
    if new.window < 1:
        raise ValueError(f"window (n_c) must be >= 1, got {new.window}")
    check_at_least(new, ("sinks",), 0)
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
