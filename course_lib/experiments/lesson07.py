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
learned gate, with ``g = 1`` (window only) and with ``g = 0`` (linear memory only);
:func:`probe_seeds` does it for several seeds (one plain-data row per seed), :func:`probe_table`
and :func:`plot_probe` show the rows, per seed and as mean and spread over the seeds.

    python -m course_lib.experiments.lesson07 --seeds 0 1 2     # the lesson's run: gates and probe per seed
"""

from __future__ import annotations

import argparse
import time

import torch

from ..data import IGNORE

__all__ = ["copy_and_recall", "infini_lm", "accuracies", "train_and_probe", "PROBES", "probe_seeds", "probe_values",
           "probe_table", "plot_probe"]

PROBES = ("learned", "window only", "memory only")  # the gate as learned, g = 1, g = 0


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


def probe_seeds(seeds=(0, 1, 2), steps: int = 200, *, segment_len: int = 16, device="cpu", **kwargs) -> list[dict]:
    """:func:`train_and_probe` once per seed; one plain-data row per seed::

        {"seed": 0, "gate": [g_h per head], "probe": {"learned": {"copy": .., "recall": ..}, ...},
         "final_loss": .., "seconds": ..}
    """
    rows = []
    for seed in seeds:
        model, log, probe = train_and_probe(steps, seed=seed, segment_len=segment_len, device=device, **kwargs)
        rows.append({"seed": seed, "gate": model.memories[0].gate.detach().cpu().tolist(), "probe": probe,
                     "final_loss": log.losses[-1], "seconds": log.seconds})
    return rows


def probe_values(rows: list[dict], probe: str, kind: str) -> list[float]:
    """The per-seed accuracies of one ``probe`` (see :data:`PROBES`) on one ``kind`` (``copy``/``recall``)."""
    if probe not in PROBES or kind not in ("copy", "recall"):
        raise ValueError(f"probe must be one of {PROBES} and kind 'copy' or 'recall', got {probe!r}, {kind!r}")
    return [row["probe"][probe][kind] for row in rows]


def probe_table(rows: list[dict]) -> str:
    """A Markdown table: each probe's copy and recall accuracy per seed, then mean +- std and the
    range over the seeds (:func:`~course_lib.experiments.results.spread`); last, the learned gates."""
    from .results import spread

    seeds = [row["seed"] for row in rows]
    head = "| gate | answer | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std | min to max |"
    lines = [head, "|" + "---|" * (len(seeds) + 4)]
    for probe in PROBES:
        for kind in ("copy", "recall"):
            vals = probe_values(rows, probe, kind)
            sp = spread(vals)
            lines.append(f"| {probe} | {kind} | " + " | ".join(f"{v:.1%}" for v in vals)
                         + f" | {sp['mean']:.1%} ± {sp['std']:.1%} | {sp['min']:.1%} to {sp['max']:.1%} |")
    gates = spread([g for row in rows for g in row["gate"]])
    per_seed = " | ".join(", ".join(f"{g:.2f}" for g in row["gate"]) for row in rows)
    lines.append(f"| learned $g_h$ | (per head) | {per_seed} | {gates['mean']:.2f} ± {gates['std']:.2f} "
                 f"| {gates['min']:.2f} to {gates['max']:.2f} |")
    return "\n".join(lines)


def plot_probe(rows: list[dict]):
    """Left: the learned ``g`` of each head, one marker per seed. Right: copy and recall accuracy
    with the learned gate, ``g = 1`` and ``g = 0``: bars at the mean over the seeds, a dot per seed."""
    import matplotlib.pyplot as plt

    fig, (ax_g, ax_p) = plt.subplots(1, 2, figsize=(10, 3.4))
    n_heads = len(rows[0]["gate"])
    for j, row in enumerate(rows):
        ax_g.plot([h + 0.12 * (j - (len(rows) - 1) / 2) for h in range(n_heads)], row["gate"], "o", ms=6,
                  label=f"seed {row['seed']}")
    ax_g.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="start: g = 1/2")
    ax_g.set(xlabel="head h", ylabel=r"learned $g = \sigma(w_h)$", ylim=(0, 1), xticks=range(n_heads),
             title="weight on the window (1 - g: linear memory)")
    ax_g.legend(loc="lower right", fontsize=8, ncol=2)
    for j, kind in enumerate(("copy", "recall")):
        xs = [n + 0.38 * j for n in range(len(PROBES))]
        runs = [[100 * v for v in probe_values(rows, p, kind)] for p in PROBES]
        ax_p.bar(xs, [sum(r) / len(r) for r in runs], width=0.36, alpha=0.8,
                 label=f"{kind} (target: {'previous token' if kind == 'copy' else 'the key'})")
        for x, r in zip(xs, runs):
            ax_p.plot([x] * len(r), r, "k.", ms=5)
    ax_p.set_xticks([n + 0.19 for n in range(3)], ["learned g", "g = 1\n(window only)", "g = 0\n(memory only)"])
    ax_p.axhline(100 / 8, color="grey", linestyle=":", linewidth=1)
    ax_p.set(ylabel="accuracy (%)", ylim=(0, 130), yticks=range(0, 101, 20),
             title=f"held-out accuracy, {len(rows)} seeds (dots: each seed)")
    ax_p.legend(loc="upper center", ncol=2, fontsize=8)
    plt.tight_layout()
    plt.show()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.experiments.lesson07",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--segment-len", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows = probe_seeds(args.seeds, args.steps, segment_len=args.segment_len)
    print(probe_table(rows))
    print(f"final loss per seed {[round(r['final_loss'], 3) for r in rows]}; {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
