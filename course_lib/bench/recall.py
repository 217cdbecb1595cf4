r"""``python -m course_lib bench recall``: MQAR accuracy against memory bytes, for every memory.

Multi-query associative recall (Zoology, Arora et al. 2023) asks a model to return the
value of each key it saw earlier. How much a memory can *recall* is what separates the
designs: the full KV cache keeps every pair; a window forgets whatever lies further back
than ``n_c`` tokens; a fixed ``d_h x d_h`` matrix (linear attention, the delta rule) holds
a limited number of associations, the delta rule with less interference.

Every design trains the same small :class:`~course_lib.models.MemoryLM` on the same MQAR
data (4 pairs in 32 tokens, vocabulary 64) with the same budget (2,000 steps), then reports its accuracy
at the answers of held-out sequences against the bytes its state holds after one sequence
(all layers, batch 1). Each model reads every sequence in segments of ``n_s = 16`` tokens
with its state carried across (stop-gradient between segments, as Transformer-XL trains),
so segment, compressive and k-NN memories work as designed. The fixed-size memories get
comparable budgets (about ``n_c = 8`` key/value slots per head); linear and delta memories
are swept over ``d_model`` (state ``tau d_h^2`` per layer), as Zoology sweeps model width.
The table splits the accuracy by how far back the asked pair lies (``gap < n_c`` or not).

What the run shows (and why it was set up this way, each point measured):

* full attention ~100%; a window is ~100% on pairs within ``n_c`` and fails beyond; sinks
  add the first pair; Transformer-XL and the Compressive Transformer reach further for the
  same bytes; k-NN retrieval recalls everything it stores.
* the delta rule beats linear attention at every size and both rise with the state, once
  their keys are not rotated by position (``Memory.uses_rotary``: with rotary keys a delta
  memory of ``d_h = 8`` stayed at the plateau, 23%, against 81% without). Linear attention
  needs the 2,000 steps: at 1,000 it had not reliably left the plateau.
  Linear attention (``phi = elu + 1``) learns slowly: every stored pair keeps a positive
  weight, so singling one out needs features near zero for all others. With 8 pairs in 64
  tokens it stays at the "copy some value" plateau (accuracy ``1/n_pairs``) for the whole
  budget, hence 4 pairs; its learning rate must stay at 1e-3 and constant (3e-3, or a
  cosine decay, freezes it on that plateau), hence the constant schedule for every design.
* the first layer of every model is a short window (``local`` = 4 tokens): it binds each
  value to the key before it, the job of the short convolution in Zoology's and DeltaNet's
  models; the memory under test sits in the other layer. Without it linear and delta
  models never leave the plateau within the budget.
* weights start at PyTorch's width-aware default (``std ~ 1/sqrt(3 fan_in)``), not at
  GPT-2's 0.02, which at ``d_model = 64`` kept even full attention on the plateau for
  thousands of steps (with the default init it solves the task in 250).
* the gaps between queries hold token 0 (``random_fill=False``); with random tokens there
  (Zoology's default) a delta memory with a fixed ``beta`` spends its state on them and
  needs several times the budget.

    python -m course_lib bench recall             # the full run (about 8 minutes on 2 CPU cores)
    python -m course_lib bench recall --quick     # a tiny smoke run (seconds)
    python -m course_lib bench recall --only full,window,delta --steps 2000
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass, field, replace
from functools import partial

import torch

__all__ = ["Setup", "Design", "Row", "designs", "train_design", "run_all", "format_table", "plot_recall",
           "add_arguments", "run", "QUICK", "FULL"]


@dataclass(frozen=True)
class Setup:
    """Task, model and training budget shared by every design."""

    vocab_size: int = 64
    seq_len: int = 32
    n_pairs: int = 4
    random_fill: bool = False  # tokens between the queries: 0 (False) or random (Zoology's default)
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


@dataclass
class Row:
    label: str
    family: str
    nbytes: int
    accuracy: float
    near: float  # accuracy on queries whose key lies within the window (gap < n_c)
    far: float  # accuracy on the others
    seconds: float
    extra: dict = field(default_factory=dict)


def designs(s: Setup) -> list[Design]:
    """Every registered memory whose output depends on the query (the averages cannot recall),
    at its ``example(window)``: the fixed-size ones hold about ``window`` key/value slots per head.
    Memories whose state is set by ``d_h`` (linear, delta) are swept over ``d_model`` instead."""
    from ..memory import REGISTERED

    out = []
    for cls in REGISTERED:
        if not cls.uses_query:
            continue
        make = partial(cls.example, s.window, n_heads=s.n_heads)
        label = make().label()
        if cls.sized_by_head_dim:
            out += [Design(f"{label} d_h={d // s.n_heads}", cls.name, make, d_model=d) for d in s.sweep]
        else:
            out.append(Design(label, cls.name, make))
    return out


def _reinit(model) -> None:
    """PyTorch's default (width-aware) initialisation for the linear layers, see the module docstring."""
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.reset_parameters()


def build_model(s: Setup, design: Design):
    from ..memory import WindowMemory
    from ..models import MemoryLM

    model = MemoryLM(s.vocab_size, design.d_model or s.d_model, s.n_layers, s.n_heads, design.make())
    if s.local:
        model.blocks[0].attn.memory = WindowMemory(s.local)
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


def train_design(s: Setup, design: Design, data, test, *, device, progress=True) -> Row:
    """Train one design on ``data`` and measure it on ``test``; returns a :class:`Row`."""
    from ..data import IGNORE
    from ..train import forward_segments, predict, train

    torch.manual_seed(s.seed)
    model = build_model(s, design).to(device)
    t0 = time.perf_counter()
    train(model, data, s.steps, batch_size=s.batch_size, lr=s.lr, warmup=min(50, s.steps // 10),
          schedule=s.schedule, segment_len=s.segment_len, device=device, seed=s.seed, progress=progress,
          desc=design.label)
    seconds = time.perf_counter() - t0
    x, y = test
    pred = predict(model, x, segment_len=s.segment_len, device=device)
    asked = y != IGNORE
    right = (pred == y)[asked].float()  # [n_answers], in nonzero() order
    near = query_gaps(x, y, s.n_pairs) < s.window
    _, state = forward_segments(model.eval(), x[:1].to(device), s.segment_len)
    return Row(design.label, design.family, model.state_nbytes(state), right.mean().item(),
               _mean(right[near]), _mean(right[~near]), seconds)


def _mean(x: torch.Tensor) -> float:
    return x.mean().item() if x.numel() else math.nan


def _train_in_worker(s: Setup, label: str, device: str) -> Row:
    """One design in a worker process (designs hold lambdas, so workers rebuild them by label)."""
    torch.set_num_threads(1)  # one core per worker: small models gain nothing from more threads
    design = next(d for d in designs(s) if d.label == label)
    data, test = task_data(s)
    return train_design(s, design, data, test, device=torch.device(device), progress=False)


def run_all(s: Setup, *, device=None, only=None, jobs: int = 1, progress=True, log=print) -> list[Row]:
    """Train and measure every design of :func:`designs` (or those whose family is in ``only``),
    ``jobs`` at a time in worker processes (``jobs=1``: here, one after the other)."""
    from ..device import pick_device

    device = pick_device() if device is None else torch.device(device)
    todo = [d for d in designs(s) if not only or d.family.lower() in only]

    def report(row):
        log(f"  {row.label:<32} acc {row.accuracy:6.1%}  bytes {row.nbytes:>8}  ({row.seconds:.0f} s)")
        return row

    if jobs <= 1:
        data, test = task_data(s)
        return [report(train_design(s, d, data, test, device=device, progress=progress)) for d in todo]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    rows = {}
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_train_in_worker, s, d.label, str(device)) for d in todo]
        for future in as_completed(futures):
            row = report(future.result())
            rows[row.label] = row
    return [rows[d.label] for d in todo]


def format_table(rows: list[Row], s: Setup) -> str:
    head = (f"{'design':<32}{'bytes/seq':>11}{'accuracy':>10}{f'gap<{s.window}':>10}"
            f"{f'gap>={s.window}':>10}{'train s':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.label:<32}{r.nbytes:>11}{_pct(r.accuracy):>10}{_pct(r.near):>10}{_pct(r.far):>10}"
                     f"{r.seconds:>9.0f}")
    return "\n".join(lines)


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.1f}%"


FAMILY_COLOURS = {"full": "black", "window": "tab:blue", "sink": "tab:cyan", "linear": "tab:orange",
                  "delta": "tab:red", "segment": "tab:green", "compressive": "tab:purple", "knn": "tab:brown",
                  "multi": "tab:pink"}  # a family not listed gets matplotlib's next colour


def plot_recall(rows: list[Row], s: Setup, title: str | None = None):
    """Accuracy against memory bytes (log x), one labelled point per design; sweeps joined by lines.
    A pure function: returns a ``matplotlib.figure.Figure``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.subplots()
    placed = []  # (log10 bytes, accuracy %) of the labels written so far
    for family in dict.fromkeys(r.family for r in rows):
        pts = sorted((r.nbytes, r.accuracy, r.label) for r in rows if r.family == family)
        colour = FAMILY_COLOURS.get(family)
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", color=colour, label=family,
                linestyle="-" if len(pts) > 1 else "none")
        for nbytes, acc, label in pts:
            x, y = math.log10(max(nbytes, 1)), 100 * acc
            shift = next(d for d in (0, -6, 6, -12, 12, -18, 18, -24, 24, -30)
                         if all(abs(x - px) > 0.25 or abs(y + d - py) > 4.5 for px, py in placed))
            placed.append((x, y + shift))
            ax.annotate(label, (nbytes, y), textcoords="offset points", xytext=(6, 2 + 2.5 * shift), fontsize=8,
                        color=colour)
    ax.set_xscale("log")
    ax.set_ylim(-3, 110)
    ax.set_xlabel("memory bytes per sequence (model state after the sequence, all layers, batch 1)")
    ax.set_ylabel("MQAR accuracy at the answers (%)")
    ax.set_title(title or f"MQAR: {s.n_pairs} pairs, {s.seq_len} tokens, vocabulary {s.vocab_size}, "
                          f"segments of {s.segment_len}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a tiny run that only checks the pipeline (seconds)")
    parser.add_argument("--steps", type=int, default=None, help=f"training steps per design (default {FULL.steps})")
    parser.add_argument("--only", default=None,
                        help="comma-separated families to run, e.g. 'full,window,delta' (default: all)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="designs trained at once in worker processes, one core each "
                             "(default: the CPU cores, up to 8, on the CPU; 1 on a GPU or with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: pick_device())")
    parser.add_argument("--out", default="bench_recall.png", help="where to save the plot (PNG)")


def default_jobs(device: torch.device, *, quick: bool = False) -> int:
    if quick or device.type != "cpu":
        return 1
    return max(1, min(os.cpu_count() or 1, 8))


def run(args: argparse.Namespace) -> int:
    from ..device import describe_device, pick_device

    s = QUICK if args.quick else FULL
    s = replace(s, seed=args.seed, **({"steps": args.steps} if args.steps is not None else {}))
    only = {x.strip().lower() for x in args.only.split(",")} if args.only else None
    device = pick_device(args.device)
    jobs = args.jobs if args.jobs is not None else default_jobs(device, quick=args.quick)
    print(f"recall benchmark (MQAR) on {describe_device(device)}, torch {torch.__version__}: "
          f"{s.n_pairs} pairs in {s.seq_len} tokens, vocabulary {s.vocab_size}, segments of {s.segment_len}; "
          f"MemoryLM d_model {s.d_model}, {s.n_layers} layers (first: window of {s.local}), "
          f"{s.steps} steps of {s.batch_size}; {jobs} at a time")
    t0 = time.perf_counter()
    rows = run_all(s, device=device, only=only, jobs=jobs, log=lambda line: print(line, flush=True))
    print(format_table(rows, s))
    fig = plot_recall(rows, s)
    fig.savefig(args.out, dpi=120)
    print(f"plot saved to {args.out}; total {time.perf_counter() - t0:.0f} s")
    return 0
