r"""``python -m course_lib bench recall``: MQAR recall against distance, every memory at equal peak bytes.

A thin front to :mod:`course_lib.experiments.recall` (the runner behind
``python -m course_lib.experiments.lesson08 recall`` and its result file): multi-query associative
recall with the pairs early, ``gap`` random filler tokens (never a key), then every key asked;
trained on short gaps, measured at gaps up to 4,096 tokens, each sequence read in segments of
``n_s = 16`` tokens with the state carried. Every fixed-size design holds the same *peak* working
memory (state + the segment a segment/compressive/k-NN memory attends to); each design gets the
better of two learning rates on a validation set, then 3 seeds; the table gives the mean and
min-max over the seeds per gap, and the accuracy can be split into answers from the question's
own segment and from the memory. What was chosen, and why, is in that module's docstring.

    python -m course_lib bench recall                  # the full run (45-60 minutes on a shared 2-core CPU)
    python -m course_lib bench recall --quick          # a tiny smoke run (seconds)
    python -m course_lib bench recall --only full,window,delta --steps 500

The rest of this module is the short task of lessons 05 and 06 (``Setup``: 4 pairs in 32 tokens,
queries at power-law gaps, random filler by default as in Zoology), kept for those lessons'
live runs: :func:`task_data`, :func:`build_model`, :func:`query_gaps`.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace

import torch

__all__ = ["Setup", "Design", "build_model", "query_gaps", "task_data", "add_arguments", "run", "QUICK", "FULL"]


@dataclass(frozen=True)
class Setup:
    """Task, model and training budget shared by every design."""

    vocab_size: int = 64
    seq_len: int = 32
    n_pairs: int = 4
    random_fill: bool = True  # tokens between the queries: random (Zoology's default) or 0 (False)
    segment_len: int = 16  # n_s
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    local: int = 4  # window of the first layer (0: every layer uses the memory under test)
    window: int = 8  # n_c of the window-like designs: the budget in slots
    sweep: tuple = (16, 32, 64)  # d_model swept for linear and delta (d_h = d_model / n_heads, state tau d_h^2)
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    schedule: str = "constant"  # after a short warmup; see lr_at in course_lib.train
    n_train: int = 20_000
    n_test: int = 500
    seed: int = 0


FULL = Setup()
QUICK = Setup(vocab_size=16, seq_len=16, n_pairs=2, segment_len=8, d_model=16, n_layers=2, n_heads=2, local=2,
              window=4, sweep=(8, 16), steps=3, batch_size=8, n_train=64, n_test=16)


@dataclass(frozen=True)
class Design:
    """One model of the comparison: ``label``, its ``family`` (the registry name) and how to build its memory."""

    label: str
    family: str
    make: object  # () -> Memory
    d_model: int | None = None  # None: Setup.d_model


def _reinit(model) -> None:
    """PyTorch's default (width-aware) initialisation for the linear layers, see the module docstring
    (a learned decay keeps the start ``MemoryLM`` gives it: :meth:`MemoryLM.reset_linear_default`)."""
    model.reset_linear_default()


def build_model(s: Setup, design: Design):
    """The two-layer model of lessons 05/06: a window of ``s.local`` tokens in the first layer
    (its attention layer built for that window, so a learned write strength stays with the
    memory under test), ``design``'s memory in the others, PyTorch's default initialisation."""
    from ..memory import WindowMemory
    from ..models import MemoryAttention, MemoryLM

    d_model = design.d_model or s.d_model
    model = MemoryLM(s.vocab_size, d_model, s.n_layers, s.n_heads, design.make())
    if s.local:
        model.blocks[0].attn = MemoryAttention(d_model, s.n_heads, s.n_heads, WindowMemory(s.local))
    _reinit(model)
    return model


def query_gaps(inputs: torch.Tensor, labels: torch.Tensor, n_pairs: int) -> torch.Tensor:
    """For every answer position, how far back its value token lies: ``[n_answers]``
    (in the order of ``(labels != -100).nonzero()``)."""
    from ..data import IGNORE

    rows, pos = (labels != IGNORE).nonzero(as_tuple=True)
    keys = inputs[:, 0:2 * n_pairs:2]  # [N, P]
    j = (keys[rows] == inputs[rows, pos][:, None]).float().argmax(dim=1)  # index of the pair asked
    return pos - (2 * j + 1)


def task_data(s: Setup):
    """``(train, test)`` MQAR sets, each ``(inputs, labels)``, from ``s`` alone (seeded)."""
    from ..data import mqar

    train_data = mqar(s.n_train, s.seq_len, s.n_pairs, s.vocab_size, seed=s.seed + 1, random_fill=s.random_fill)
    test = mqar(s.n_test, s.seq_len, s.n_pairs, s.vocab_size, seed=s.seed + 2, random_fill=s.random_fill)
    return train_data, test


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a tiny run that only checks the pipeline (seconds)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: the full setup's)")
    parser.add_argument("--only", default=None,
                        help="comma-separated families or labels to run, e.g. 'full,window,delta' (default: all)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: the setup's, 0,1,2)")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: pick_device())")
    parser.add_argument("--json", default=None, help="also write the result file here (the lesson08 schema)")
    parser.add_argument("--out", default="bench_recall.png", help="where to save the plot (PNG)")


def run(args: argparse.Namespace) -> int:
    from ..device import describe_device, pick_device
    from ..experiments import recall

    s = recall.DistanceSetup.quick() if args.quick else recall.DistanceSetup.full()
    if args.steps is not None:
        s = replace(s, steps=args.steps)
    if args.seeds:
        s = replace(s, seeds=tuple(int(x) for x in args.seeds.split(",")))
    only = {x.strip() for x in args.only.split(",")} if args.only else None
    device = pick_device(args.device)
    print(f"recall benchmark (MQAR against distance) on {describe_device(device)}, torch {torch.__version__}: "
          f"{s.n_pairs} pairs, random filler, trained on gaps {s.train_gap[0]}-{s.train_gap[1]}, measured at gaps "
          f"{', '.join(map(str, s.eval_gaps))}; segments of {s.segment_len}; peak budget {s.budget} pairs per head; "
          f"lrs {', '.join(f'{x:g}' for x in s.lrs)}, seeds {', '.join(map(str, s.seeds))}, {s.steps} steps each",
          flush=True)
    t0 = time.perf_counter()
    result = recall.run_distance(s, only=only, out=args.json, device=device,
                                 command="python -m course_lib bench recall", log=lambda line: print(line, flush=True))
    print(recall.distance_table(result))
    print("\nanswers whose value lies before the question's segment (only the carried state can answer):")
    print(recall.distance_table(result, "from_memory"))
    recall.plot_distance(result).savefig(args.out, dpi=120)
    print(f"plot saved to {args.out}; total {time.perf_counter() - t0:.0f} s")
    return 0
