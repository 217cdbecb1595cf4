r"""Lesson 07's experiment: an Infini-attention-style layer learns its gate ``g`` per head.

The task needs a local memory and a long-term one at once. A sequence starts with a key
``x_0`` (one of ``n_keys`` tokens); then come random tokens, some of them the query token
``?``. At an ordinary position the target is the previous token (a copy: the window sees
it); at a ``?`` the target is the key ``x_0``, which lies far outside the window once the
text is read in segments (only the long-term memory still holds it)::

    x:  k  a  b  ?  c  d  ?  e ...      y:  -  -  b  k  ?  c  k  ? ...   (y_i = x_{i-1}, or k at a "?")

:func:`infini_lm` is a one-layer :class:`~course_lib.models.MemoryLM` whose attention is
``MultiMemory([WindowMemory(n_c), LinearMemory()], combine="gate")``:
``out_i = g Att(q_i, window) + (1 - g) phi(q_i) S_i / (phi(q_i) . z_i)``, ``g = sigmoid(w_h)``
per head. :func:`train_and_probe` trains it and measures each kind of answer with the
learned gate, with ``g = 1`` (window only) and with ``g = 0`` (linear memory only).

    python -m course_lib.experiments.lesson07 --steps 300      # prints the gate and the probe
"""

from __future__ import annotations

import argparse
import time

import torch

from ..data import IGNORE

__all__ = ["copy_and_recall", "infini_lm", "accuracies", "train_and_probe"]


def copy_and_recall(n: int, length: int = 32, vocab_size: int = 32, n_keys: int = 8, p_query: float = 0.25, *,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)``, ``[n, length]`` each: copy the previous token, or recall the key at a ``?``.

    Keys are tokens ``0 .. n_keys - 1``; the query token ``?`` is ``vocab_size - 1``; other
    tokens come from ``n_keys .. vocab_size - 2``. Labels are ``-100`` at positions 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    query = vocab_size - 1
    x = torch.randint(n_keys, query, (n, length), generator=g)
    key = torch.randint(0, n_keys, (n,), generator=g)
    x[:, 0] = key
    asked = torch.rand(n, length, generator=g) < p_query
    asked[:, :2] = False
    x[asked] = query
    y = torch.full((n, length), IGNORE, dtype=torch.long)
    y[:, 2:] = x[:, 1:-1]  # copy the previous token
    y[asked] = key[:, None].expand(n, length)[asked]  # at a "?": the key x_0
    return x, y


def infini_lm(vocab_size: int = 32, d_model: int = 32, n_heads: int = 4, window: int = 4, long_term=None):
    """One layer whose attention mixes a window of ``window`` tokens and ``long_term``
    (default a :class:`~course_lib.memory.LinearMemory`) through a learned gate per head."""
    from ..memory import LinearMemory, MultiMemory, WindowMemory
    from ..models import MemoryLM

    memory = MultiMemory([WindowMemory(window), long_term or LinearMemory()], combine="gate", n_heads=n_heads)
    return MemoryLM(vocab_size, d_model, 1, n_heads, memory=memory)


@torch.no_grad()
def accuracies(model, data, segment_len: int, gate_logit=None) -> dict:
    """Accuracy on copies and on recalls; ``gate_logit`` (a float) overrides every ``w_h``
    for the measurement (``+inf``: ``g = 1``, the window alone; ``-inf``: the long-term memory alone)."""
    from ..train import predict

    x, y = data
    gate = model.memories[0].gate_logit
    saved = gate.detach().clone()
    if gate_logit is not None:
        gate.fill_(gate_logit)
    try:
        pred = predict(model, x, segment_len=segment_len, device=gate.device).cpu()
    finally:
        gate.copy_(saved)
    right = pred == y
    recall = x == model.vocab_size - 1  # the "?" positions
    labelled = y != IGNORE
    return {"copy": right[labelled & ~recall].float().mean().item(),
            "recall": right[labelled & recall].float().mean().item()}


def train_and_probe(steps: int = 300, *, seed: int = 0, segment_len: int = 8, lr: float = 1e-2, n_heads: int = 4,
                    device="cpu", progress: bool = False) -> tuple:
    """Train :func:`infini_lm` on :func:`copy_and_recall`; returns ``(model, log, probe)`` with
    ``probe = {"learned": ..., "window only": ..., "memory only": ...}`` accuracies on held-out data."""
    from ..device import seed_everything
    from ..train import train

    seed_everything(seed)
    model = infini_lm(n_heads=n_heads)
    log = train(model, copy_and_recall(4000, seed=seed + 1), steps, batch_size=32, lr=lr, warmup=10,
                schedule="constant", segment_len=segment_len, device=device, seed=seed, progress=progress,
                desc="infini")
    test = copy_and_recall(500, seed=seed + 2)
    probe = {"learned": accuracies(model, test, segment_len),
             "window only": accuracies(model, test, segment_len, float("inf")),
             "memory only": accuracies(model, test, segment_len, float("-inf"))}
    return model, log, probe


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.experiments.lesson07",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model, log, probe = train_and_probe(args.steps, seed=args.seed)
    print("g per head:", [round(g, 3) for g in model.memories[0].gate.tolist()])
    for name, acc in probe.items():
        print(f"{name:<12} copy {acc['copy']:.1%}  recall {acc['recall']:.1%}")
    print(f"final loss {log.losses[-1]:.3f}; {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
