r"""Lesson 04's experiments: recall against distance, and whether attention sinks matter.

``recall_by_distance``: one attention head that looks a fact up by its key. Position ``j``
holds a fact ``(k_j, v_j)``; the query at the last position ``i`` is ``k_j`` itself, so
exact attention over ``K_{<=i}`` returns (nearly) ``v_j``. The fact counts as recalled when
the nearest of the text's values to the output is ``v_j``. No training: what is measured
is what the memory still holds at distance ``i - j``.

``sink_experiment``: train a small character ``MemoryLM`` on the standard library's source
with full attention on texts of ``T`` characters, then read longer texts with the same
weights and four memories: ``FullMemory`` (every key, positions never seen in training),
``WindowMemory(n_c = T)`` (evicts the first tokens), and ``SinkMemory(S, T - S)`` (keeps
them) with absolute positions and with StreamingLLM's positions within the cache
(``positions="cache"``: a sink is then never further than ``T - 1`` from its query, as in
training). Reports bits per character by position bucket and the attention mass the trained
model puts on key 0 (a sink, if it formed, takes far more than ``1/(i+1)``). The full run
trains one model per seed of :data:`SEEDS` (about 8 minutes each on one CPU thread)::

    python -m course_lib.experiments.lesson04 sinks      # writes docs/results/lesson04_sinks.json
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

from ..attention import attention_reference, causal_mask
from ..device import seed_everything
from ..memory import FullMemory, SinkMemory, WindowMemory
from ..models import MemoryLM
from . import results

__all__ = ["recall_by_distance", "train_char_lm", "bpc_by_position", "first_key_attention", "sink_memories",
           "sink_experiment", "rows_of", "as_result", "bpc_by_seed", "per_seed", "plot_sinks", "stored_result",
           "settings",
           "LIVE", "FULL", "SEEDS", "main"]


@torch.no_grad()
def recall_by_distance(memory, distances, *, trials: int = 64, d: int = 32, seed: int = 0) -> list[float]:
    """Fraction of ``trials`` in which ``memory`` recalls a fact at each distance ``i - j``.

    Every trial is a text of ``max(distances) + 1`` random unit-norm keys and random values
    ``[1, 1, N, d]``; the last query is the fact's key scaled by ``12 sqrt(d)`` (a sharp look-up).
    """
    distances = [int(x) for x in distances]
    n = max(distances) + 1
    gen = torch.Generator().manual_seed(seed)
    out = []
    for dist in distances:
        k = F.normalize(torch.randn(trials, 1, n, d, generator=gen, dtype=torch.float64), dim=-1)
        v = torch.randn(trials, 1, n, d, generator=gen, dtype=torch.float64)
        q = F.normalize(torch.randn(trials, 1, n, d, generator=gen, dtype=torch.float64), dim=-1)
        j = n - 1 - dist
        q[:, :, -1] = k[:, :, j] * math.sqrt(d) * 12  # the look-up: the fact's key, scaled score 12
        o, _ = memory(q, k, v, memory.init_state(trials, 1, d, dtype=torch.float64))
        o = o[:, 0, -1]  # [trials, d]: the last query's output
        nearest = torch.cdist(o[:, None], v[:, 0])[:, 0].argmin(-1)  # [trials]
        out.append(float((nearest == j).double().mean()))
    return out


def train_char_lm(ids: torch.Tensor, vocab_size: int, *, steps: int, d_model: int = 64, n_layers: int = 2,
                  n_heads: int = 4, seq_len: int = 64, batch_size: int = 32, lr: float = 3e-3, seed: int = 0,
                  progress: bool = False):
    """A ``MemoryLM`` with full attention trained on windows of ``seq_len`` characters of ``ids``."""
    from ..train import TextBatches, train

    seed_everything(seed)
    model = MemoryLM(vocab_size, d_model, n_layers, n_heads)
    batches = TextBatches(ids, batch_size, seq_len, seed=seed)
    log = train(model, batches, steps=steps, lr=lr, warmup=min(50, steps // 10),
                device="cpu", progress=progress, seed=seed)
    return model.eval(), log


def _with_memory(model: MemoryLM, memory) -> MemoryLM:
    """The same weights behind another memory (memories without parameters only)."""
    other = MemoryLM(model.vocab_size, model.d_model, model.n_layers, model.n_heads, memory=memory,
                     n_kv_heads=model.n_kv_heads)
    other.load_state_dict(model.state_dict())
    return other.eval()


@torch.no_grad()
def bpc_by_position(model: MemoryLM, memory, x: torch.Tensor, y: torch.Tensor, bucket: int) -> list[float]:
    """Bits per character of ``model`` read through ``memory`` on ``x, y [N, T]``, averaged over
    buckets of ``bucket`` positions (``T`` a multiple of ``bucket``)."""
    logits, _ = _with_memory(model, memory)(x)
    nll = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(0) / math.log(2)  # [T]
    return [round(float(b), 4) for b in nll.view(-1, bucket).mean(1)]


@torch.no_grad()
def first_key_attention(model: MemoryLM, x: torch.Tensor, positions: slice) -> list[float]:
    """Per layer: the mean attention weight that queries at ``positions`` put on key 0 (full
    attention, all heads), beside ``1 / (i + 1)``, what a uniform softmax would give it."""
    captured = []
    hooks = [m.register_forward_hook(lambda mod, args, out: captured.append(args[:2])) for m in model.memories]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    t = x.shape[1]
    out = []
    for q, k in captured:
        _, w = attention_reference(q, k, k, causal_mask(t, t), return_weights=True)  # [B, H, T, T]
        out.append(round(float(w[:, :, positions, 0].mean()), 4))
    return out


LIVE = dict(steps=300, d_model=64, n_layers=2, n_heads=4, seq_len=64, batch_size=32, eval_len=512, eval_rows=16,
            sinks=4, max_chars=400_000)
FULL = dict(steps=1200, d_model=128, n_layers=2, n_heads=4, seq_len=64, batch_size=32, eval_len=1024, eval_rows=32,
            sinks=4, max_chars=2_000_000)
SEEDS = (0, 1, 2)  # the full run: one model per seed
COMMAND = "python -m course_lib.experiments.lesson04 sinks"


def settings() -> dict:
    """The lesson's live settings, or :data:`FULL` when ``COURSE_SCALE=full`` (for a GPU or a patient CPU)."""
    return dict(results.pick(LIVE, FULL))


def sink_memories(seq_len: int, sinks: int) -> dict:
    """The memories the trained model is read through, by label: the full cache, a window of
    ``n_c = T``, and ``S`` sinks plus a window of ``T - S`` with absolute positions and with
    StreamingLLM's positions within the cache (the same ``S + n_c = T`` slots)."""
    memories = [FullMemory(), WindowMemory(seq_len), SinkMemory(sinks, seq_len - sinks),
                SinkMemory(sinks, seq_len - sinks, positions="cache")]
    return {m.label(): m for m in memories}


def sink_experiment(*, steps, d_model, n_layers, n_heads, seq_len, batch_size, eval_len, eval_rows, sinks,
                    max_chars, seed: int = 0, progress: bool = False) -> dict:
    """Train on ``seq_len`` characters, read ``eval_len`` with full / window / sink memories.

    Returns ``{"settings", "final_train_loss", "bucket", "bpc": {label: [bpc per bucket]},
    "first_key_attention": [per layer], "uniform_first_key_attention", "window_cache_max_diff",
    "seconds"}``. ``window_cache_max_diff``: the largest difference, in bits per character per
    bucket, between the window and the same window read with positions within the cache
    (``SinkMemory(0, T, positions="cache")``): rotary scores depend on ``i - j`` only, and a
    window key's distance is the same in the cache as in the text, so it is rounding.
    """
    from ..data import stdlib_corpus
    from ..train import TextBatches

    corpus = stdlib_corpus(seed=seed, max_chars=max_chars)
    ids, val = corpus.train_ids, corpus.val_ids
    vocab_size = int(max(ids.max(), val.max())) + 1
    t0 = time.perf_counter()
    model, log = train_char_lm(ids, vocab_size, steps=steps, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                               seq_len=seq_len, batch_size=batch_size, seed=seed, progress=progress)
    x, y = TextBatches.rows(val, eval_len)
    x, y = x[:eval_rows], y[:eval_rows]
    memories = sink_memories(seq_len, sinks)
    bucket, half = seq_len, seq_len // 2
    bpc = {name: bpc_by_position(model, mem, x, y, bucket) for name, mem in memories.items()}
    window_cache = bpc_by_position(model, SinkMemory(0, seq_len, positions="cache"), x, y, bucket)
    window = bpc[WindowMemory(seq_len).label()]
    return {
        "settings": dict(steps=steps, d_model=d_model, n_layers=n_layers, n_heads=n_heads, seq_len=seq_len,
                         batch_size=batch_size, eval_len=eval_len, eval_rows=eval_rows, sinks=sinks,
                         max_chars=max_chars, seed=seed),
        "final_train_loss": round(sum(log.losses[-20:]) / len(log.losses[-20:]), 4),
        "bucket": bucket,
        "bpc": bpc,
        "first_key_attention": first_key_attention(model, x[:, :seq_len], slice(seq_len // 2, seq_len)),
        "uniform_first_key_attention": round(sum(1 / (i + 1) for i in range(half, seq_len)) / half, 4),
        "window_cache_max_diff": max(abs(a - b) for a, b in zip(window, window_cache)),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def rows_of(run: dict) -> list[dict]:
    """The rows of one :func:`sink_experiment` run for a result file: one per memory, with its seed."""
    seed = run["settings"]["seed"]
    first = {"final_train_loss": run["final_train_loss"], "first_key_attention": run["first_key_attention"],
             "uniform_first_key_attention": run["uniform_first_key_attention"],
             "window_cache_max_diff": run["window_cache_max_diff"], "seconds": run["seconds"]}
    return [{"seed": seed, "label": label, "bpc": bpc, **first} for label, bpc in run["bpc"].items()]


def as_result(runs: list[dict]) -> dict:
    """Live runs in the shape of the stored result (``rows``, ``seeds``, ``setup``, ``bucket``)."""
    setup = {k: v for k, v in runs[0]["settings"].items() if k != "seed"}
    return {"command": None, "seeds": [r["settings"]["seed"] for r in runs], "setup": setup,
            "bucket": runs[0]["bucket"], "rows": [row for r in runs for row in rows_of(r)]}


def bpc_by_seed(result: dict) -> dict:
    """``{label: [[bpc per bucket] per seed]}`` from a result's rows (labels in their first order)."""
    out: dict = {}
    for row in result["rows"]:
        out.setdefault(row["label"], []).append(row["bpc"])
    return out


def per_seed(result: dict, key: str) -> list:
    """One value of ``key`` per seed (the rows of a seed repeat it for each memory)."""
    seen = {}
    for row in result["rows"]:
        seen.setdefault(row["seed"], row[key])
    return list(seen.values())


def plot_sinks(result: dict, title: str):
    """Left: bits per character by bucket for each memory (mean over the seeds, a band from the
    lowest to the highest seed). Right: each sink variant minus the window, bucket by bucket."""
    import matplotlib.pyplot as plt

    bucket, seq_len, bpc = result["bucket"], result["setup"]["seq_len"], bpc_by_seed(result)
    labels = list(bpc)
    styles = dict(zip(labels, ["-", "o-", "s--", "^:"]))
    colors = dict(zip(labels, ["black", "tab:blue", "tab:orange", "tab:green"]))
    fig, (ax, ax_d) = plt.subplots(1, 2, figsize=(12, 3.8))
    for name, runs in bpc.items():
        starts = [bucket * n for n in range(len(runs[0]))]
        cols = list(zip(*runs))
        ax.plot(starts, [sum(c) / len(c) for c in cols], styles[name], color=colors[name], label=name, ms=4)
        if len(runs) > 1:
            ax.fill_between(starts, [min(c) for c in cols], [max(c) for c in cols], color=colors[name], alpha=0.12)
    window = bpc[labels[1]]
    for name in labels[2:]:
        diff = [[s - w for s, w in zip(run, win)] for run, win in zip(bpc[name], window)]
        ax_d.plot(starts, [sum(c) / len(c) for c in zip(*diff)], styles[name], color=colors[name],
                  label=f"{name} minus window", ms=4)
    ax_d.axhline(0, color="grey", lw=0.8)
    for a in (ax, ax_d):
        a.axvline(seq_len, color="grey", lw=0.8)
        a.set(xlabel=f"position (start of a bucket of {bucket})")
    ax.set(ylabel="bits per character", title=title)
    ax_d.set(ylabel="bits per character, minus the window's", title="the sinks against the window")
    ax.legend(fontsize=8)
    ax_d.legend(fontsize=8)
    plt.tight_layout()
    plt.show()


def stored_result(name: str = "sinks") -> dict:
    """The result file ``docs/results/lesson04_<name>.json`` written by :func:`main`."""
    return results.read_result(f"lesson04_{name}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.experiments.lesson04")
    sub = parser.add_subparsers(dest="command", required=True)
    sinks = sub.add_parser("sinks", help="train small char LMs (one per seed), then read past their training length")
    sinks.add_argument("--out", default=str(results.RESULTS / "lesson04_sinks.json"))
    sinks.add_argument("--quick", action="store_true", help="the lesson's live settings")
    sinks.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    sinks.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    chosen = LIVE if args.quick else FULL
    t0 = time.perf_counter()
    runs = [sink_experiment(**chosen, seed=seed, progress=True) for seed in args.seeds]
    command = COMMAND + (" --quick" if args.quick else "")
    if list(args.seeds) != list(SEEDS):
        command += " --seeds " + " ".join(map(str, args.seeds))
    results.write_result(args.out, command=command, rows=[row for r in runs for row in rows_of(r)],
                         seeds=args.seeds, setup=dict(chosen), seconds=time.perf_counter() - t0,
                         bucket=runs[0]["bucket"])
    for r in runs:
        print(json.dumps({k: r[k] for k in ("bpc", "first_key_attention", "uniform_first_key_attention",
                                            "window_cache_max_diff", "seconds")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
