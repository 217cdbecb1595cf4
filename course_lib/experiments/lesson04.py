r"""Lesson 04's experiments: recall against distance, and whether attention sinks matter.

``recall_by_distance``: one attention head that looks a fact up by its key. Position ``j``
holds a fact ``(k_j, v_j)``; the query at the last position ``i`` is ``k_j`` itself, so
exact attention over ``K_{<=i}`` returns (nearly) ``v_j``. The fact counts as recalled when
the nearest of the text's values to the output is ``v_j``. No training: what is measured
is what the memory still holds at distance ``i - j``.

``sink_experiment``: train a small character ``MemoryLM`` on the standard library's source
with full attention on texts of ``T`` characters, then read longer texts with the same
weights and three memories: ``FullMemory`` (every key, positions never seen in training),
``WindowMemory(n_c = T)`` (evicts the first tokens) and ``SinkMemory(S, T - S)`` (keeps
them, as StreamingLLM). Reports bits per character by position bucket and the attention
mass the trained model puts on key 0 (a sink, if it formed, takes far more than ``1/(i+1)``).

    python -m course_lib.experiments.lesson04 sinks --out docs/results/lesson04_sinks.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..attention import attention_reference, causal_mask
from ..device import seed_everything
from ..memory import FullMemory, SinkMemory, WindowMemory
from ..models import MemoryLM

__all__ = ["recall_by_distance", "train_char_lm", "bpc_by_position", "first_key_attention", "sink_experiment",
           "stored_result", "settings", "LIVE", "FULL", "main"]

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


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


def settings() -> dict:
    """The lesson's live settings, or :data:`FULL` when ``COURSE_SCALE=full`` (for a GPU or a patient CPU)."""
    return dict(FULL if os.environ.get("COURSE_SCALE") == "full" else LIVE)


def sink_experiment(*, steps, d_model, n_layers, n_heads, seq_len, batch_size, eval_len, eval_rows, sinks,
                    max_chars, seed: int = 0, progress: bool = False) -> dict:
    """Train on ``seq_len`` characters, read ``eval_len`` with full / window / sink memories."""
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
    memories = {"full": FullMemory(), f"window n_c={seq_len}": WindowMemory(seq_len),
                f"sinks S={sinks} + window {seq_len - sinks}": SinkMemory(sinks, seq_len - sinks)}
    bucket, half = seq_len, seq_len // 2
    result = {
        "settings": dict(steps=steps, d_model=d_model, n_layers=n_layers, n_heads=n_heads, seq_len=seq_len,
                         batch_size=batch_size, eval_len=eval_len, eval_rows=eval_rows, sinks=sinks,
                         max_chars=max_chars, seed=seed),
        "final_train_loss": round(sum(log.losses[-20:]) / len(log.losses[-20:]), 4),
        "bucket": bucket,
        "bpc": {name: bpc_by_position(model, mem, x, y, bucket) for name, mem in memories.items()},
        "first_key_attention": first_key_attention(model, x[:, :seq_len], slice(seq_len // 2, seq_len)),
        "uniform_first_key_attention": round(sum(1 / (i + 1) for i in range(half, seq_len)) / half, 4),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return result


def stored_result(name: str = "sinks") -> dict:
    """The result file ``docs/results/lesson04_<name>.json`` written by :func:`main`."""
    return json.loads((RESULTS / f"lesson04_{name}.json").read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.experiments.lesson04")
    sub = parser.add_subparsers(dest="command", required=True)
    sinks = sub.add_parser("sinks", help="train a small char LM, then read past its training length")
    sinks.add_argument("--out", default="docs/results/lesson04_sinks.json")
    sinks.add_argument("--quick", action="store_true", help="the lesson's live settings")
    sinks.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = LIVE if args.quick else FULL
    result = sink_experiment(**settings, progress=True)
    result["machine"] = {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads,
                         "command": "python -m course_lib.experiments.lesson04 sinks"
                                    + (" --quick" if args.quick else "")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("bpc", "first_key_attention", "uniform_first_key_attention", "seconds")},
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
