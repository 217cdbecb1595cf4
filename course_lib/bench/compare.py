"""``python -m course_lib bench compare``: course_lib beside what a learner would otherwise reach for.

Three comparisons, run in one command so that every ratio comes from one machine at one time:

1. **decode**: greedy decoding with ``MemoryLM`` + ``FullMemory`` against Hugging Face
   transformers' GPT-2 of the same size (random weights from a ``GPT2Config``, nothing
   downloaded) decoding with its own KV cache in a plain forward loop (``use_cache=True``,
   argmax, under ``torch.inference_mode``). Two settings: 768 new tokens after a 1-token
   prompt, and 256 new tokens after a 4,096-token prompt (the prompt's prefill is not timed,
   for either). Target: at least 1.5x GPT-2's tokens/s.
2. **flat cost**: ms/token of fixed-size memories at 16k tokens of context divided by
   ms/token at 1k: at most 1.2; the full KV cache must grow (at least 1.5).
3. **train**: a Compressive Transformer (``MemoryLM`` + ``CompressiveMemory(mem_len=128,
   cmem_len=32, ratio=4, compress="conv")``) against ``compressive-transformer-pytorch`` at the
   same sizes: segments of 128 tokens, batch 8, state carried across segments, cross-entropy
   plus each library's attention-reconstruction loss, AdamW. Twice: with a plain residual like
   MemoryLM's, and with the package's defaults (GRU-gated residuals). Target: at least 1.5x.
   For reference, a third row times the same ``MemoryLM`` with no memory (each segment alone,
   causal attention): the floor, which says how much of the step the memory part costs.

The peers come from the optional extra ``bench`` (``pip install -e '.[bench]'``); without them
the comparisons are skipped and the flat-cost rows still run.

    python -m course_lib bench compare                  # the full run (a few minutes on 2 cores)
    python -m course_lib bench compare --quick          # a tiny smoke run (seconds)
    python -m course_lib bench compare --only decode --device cuda --dtype bfloat16

Timing: every measurement is repeated ``--repeats`` times, course_lib and its peer taking
turns, and the best run of each counts (other processes only ever slow a run down). On the
CPU both libraries run on one thread unless ``--threads`` says otherwise: batch-1 decoding of
a model this small gains little from more, and on a machine shared with other processes a
second thread that has to wait for a busy core makes every timing (and ratio) meaningless.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import platform
import time
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from ..cost import sync as _sync
from ..device import describe_device, pick_device, seed_everything
from ..experiments.results import load_average

SECTIONS = ("decode", "flat", "train")
VOCAB = 256


@dataclass(frozen=True)
class Sizes:
    """Model and run sizes; :data:`FULL` is what the targets are defined for, :data:`QUICK` a smoke run."""

    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    decode: tuple = ((1, 768), (4096, 256))  # (prompt tokens, new tokens)
    flat_contexts: tuple = (1024, 16384)
    flat_steps: int = 64  # timed decoding steps per context
    window: int = 256
    train_batch: int = 8
    segment: int = 128
    mem_len: int = 128
    cmem_len: int = 32
    ratio: int = 4
    train_steps: int = 3  # timed optimiser steps of each library (one segment each), times repeats
    repeats: int = 5  # runs of each measurement, taking turns; the best counts


FULL = Sizes()
QUICK = Sizes(d_model=32, n_layers=2, n_heads=2, decode=((1, 8), (32, 4)), flat_contexts=(16, 64),
              flat_steps=8, window=8, train_batch=2, segment=8, mem_len=8, cmem_len=2, ratio=4,
              train_steps=1, repeats=1)

TARGETS = {"decode": 1.5, "train": 1.5, "flat": 1.2, "grows": 1.5}
AIMS = {"decode": 3.0, "train": 2.0}


@dataclass
class Row:
    """One line of the table: ``ours`` and ``peer`` are tokens/s (or ms/token for flat rows)."""

    section: str
    name: str
    ours: float | None
    peer: float | None
    ratio: float | None
    target: str
    passed: bool | None
    note: str = ""


# ---- helpers -----------------------------------------------------------------------------------


def _peer_versions() -> dict:
    """Installed versions of the peers, ``None`` where one is missing."""
    out = {}
    for dist in ("transformers", "compressive-transformer-pytorch"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_lines(device: torch.device, dtype: torch.dtype) -> list[str]:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    versions = ", ".join(f"{k} {v or 'not installed'}" for k, v in _peer_versions().items())
    return [
        f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}, "
        f"load average {load}",
        f"device: {describe_device(device)}; dtype {str(dtype).removeprefix('torch.')}; "
        f"torch {torch.__version__}, python {platform.python_version()}",
        f"peers: {versions}",
    ]


def _best_of(repeats: int, *runs):
    """Run each callable ``repeats`` times, taking turns; the largest result of each (tokens/s)."""
    best = [0.0] * len(runs)
    for _ in range(repeats):
        for i, run in enumerate(runs):
            best[i] = max(best[i], run())
    return best


# ---- 1. decode -----------------------------------------------------------------------------------


def _gpt2(sizes: Sizes, n_positions: int, device, dtype):
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    transformers.logging.set_verbosity_error()
    config = GPT2Config(vocab_size=VOCAB, n_positions=n_positions, n_embd=sizes.d_model, n_layer=sizes.n_layers,
                        n_head=sizes.n_heads, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).to(device, dtype).eval()


def gpt2_decode(model, prompt: torch.Tensor, new_tokens: int) -> float:
    """GPT-2's greedy decoding with its KV cache in a plain forward loop; tokens/s (prefill not timed)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    key = "cache" if "cache" in params else "past_key_values"  # transformers >= 5.24 renamed it
    device = prompt.device
    with torch.inference_mode():
        past = None
        if prompt.shape[1] > 1:
            out = model(prompt[:, :-1], use_cache=True)
            past = getattr(out, key)
        nxt = prompt[:, -1:]
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            out = model(nxt, use_cache=True, **{key: past})
            past = getattr(out, key)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        _sync(device)
    return new_tokens / (time.perf_counter() - t0)


def ours_decode(model, prompt: torch.Tensor, new_tokens: int) -> float:
    """``MemoryLM.generate`` (greedy) after the same untimed prefill; tokens/s."""
    device = prompt.device
    state = None
    if prompt.shape[1] > 1:
        with torch.no_grad():
            state = model.init_state(prompt.shape[0])
            state.layers = [m.reserve(s, prompt.shape[1] + new_tokens) for m, s in zip(model.memories, state.layers)]
            _, state = model(prompt[:, :-1], state)
    _sync(device)
    t0 = time.perf_counter()
    model.generate(prompt[:, -1:], new_tokens, state=state)  # new_tokens forward passes, as in GPT-2's loop
    _sync(device)
    return new_tokens / (time.perf_counter() - t0)


def bench_decode(sizes: Sizes, device, dtype, log) -> list[Row]:
    from ..models import MemoryLM

    seed_everything(0)
    ours = MemoryLM(VOCAB, sizes.d_model, sizes.n_layers, sizes.n_heads).to(device, dtype).eval()
    longest = max(p + n for p, n in sizes.decode) + 72  # room for the warm-up runs too
    peer = _gpt2(sizes, longest, device, dtype)
    rows = []
    for prompt_len, new in sizes.decode:
        prompt = torch.randint(0, VOCAB, (1, prompt_len), generator=torch.Generator().manual_seed(1)).to(device)
        warm = prompt[:, -min(prompt_len, 64):]
        ours_decode(ours, warm, 8), gpt2_decode(peer, warm, 8)  # first-call costs out of the way
        a, b = _best_of(sizes.repeats, partial(ours_decode, ours, prompt, new), partial(gpt2_decode, peer, prompt, new))
        ratio = a / b
        rows.append(Row("decode", f"decode {new} after {prompt_len}", a, b, ratio,
                        f">= {TARGETS['decode']} (aim {AIMS['decode']})", ratio >= TARGETS["decode"]))
        log(f"  decode {prompt_len}+{new}: course_lib {a:.0f} tok/s, GPT-2 {b:.0f} tok/s ({ratio:.2f}x)")
    return rows


# ---- 2. flat cost -----------------------------------------------------------------------------------


def flat_memories(sizes: Sizes) -> dict:
    from ..memory import CompressiveMemory, DeltaMemory, FullMemory, LinearMemory, SinkMemory, WindowMemory

    w = sizes.window
    return {
        "full": FullMemory(),
        f"window({w})": WindowMemory(w),
        f"sink(4, {w - 4})": SinkMemory(4, w - 4),
        "linear": LinearMemory(),
        "delta(0.5)": DeltaMemory(0.5),
        f"compressive({sizes.mem_len}, {sizes.cmem_len}, {sizes.ratio})": CompressiveMemory(
            sizes.mem_len, sizes.cmem_len, sizes.ratio, "conv"),
    }


@torch.no_grad()
def decode_ms_per_token(model, contexts, steps: int, *, block: int = 8, prefill_chunk: int = 1024) -> list[float]:
    """ms/token of single-token decoding after each context length, measured side by side.

    One state per context is prefilled, then blocks of ``block`` steps are timed, taking turns
    between the contexts so that a busy moment on the machine hits them alike; the best
    block counts. (``block`` a multiple of the compression ratio includes the compressions.)
    """
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    n_blocks = max(1, steps // block)
    total = n_blocks * block + block  # one untimed warm-up block
    states, tokens = [], []
    for m in contexts:
        x = torch.randint(0, model.vocab_size, (1, m + total), generator=gen).to(device)
        state = model.init_state(1)
        state.layers = [mem.reserve(s, m + total) for mem, s in zip(model.memories, state.layers)]
        for start in range(0, m, prefill_chunk):
            _, state = model(x[:, start:min(m, start + prefill_chunk)], state)
        states.append(state)
        tokens.append(x[:, m:])
    times = [[] for _ in contexts]
    for b in range(n_blocks + 1):
        for i in range(len(contexts)):
            _sync(device)
            t0 = time.perf_counter()
            for j in range(b * block, (b + 1) * block):
                _, states[i] = model(tokens[i][:, j:j + 1], states[i])
            _sync(device)
            if b:  # block 0 warms up
                times[i].append((time.perf_counter() - t0) * 1000 / block)
    return [min(t) for t in times]


def bench_flat(sizes: Sizes, device, dtype, log) -> list[Row]:
    from ..models import MemoryLM

    short, long = sizes.flat_contexts
    rows = []
    for name, memory in flat_memories(sizes).items():
        seed_everything(0)
        model = MemoryLM(VOCAB, sizes.d_model, sizes.n_layers, sizes.n_heads, memory).to(device, dtype).eval()
        ms_short, ms_long = decode_ms_per_token(model, [short, long], sizes.flat_steps,
                                                block=max(sizes.ratio, 8))
        ratio = ms_long / ms_short
        if name == "full":
            target, passed = f">= {TARGETS['grows']} (grows)", ratio >= TARGETS["grows"]
        else:
            target, passed = f"<= {TARGETS['flat']}", ratio <= TARGETS["flat"]
        rows.append(Row("flat", name, ms_short, ms_long, ratio, target, passed))
        log(f"  {name}: {ms_short:.2f} ms/token at {short}, {ms_long:.2f} at {long} ({ratio:.2f}x)")
    return rows


# ---- 3. train -----------------------------------------------------------------------------------


def _autocast(device, dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class SegmentTrainer:
    """Trains a model segment by segment on random tokens, carrying its state; times each step.

    ``forward(x, state) -> (logits, state, extra_loss)`` adapts each library's interface.
    """

    def __init__(self, model, forward, sizes: Sizes, device, dtype, seed: int = 2):
        self.model, self.forward, self.sizes, self.device, self.dtype = model, forward, sizes, device, dtype
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        n = sizes.segment * 16 + 1
        self.data = torch.randint(0, VOCAB, (sizes.train_batch, n), generator=torch.Generator().manual_seed(seed))
        self.data = self.data.to(device)
        self.state, self.i = None, 0

    def step(self) -> float:
        """One optimiser step on the next segment; returns its tokens/s."""
        seg = self.sizes.segment
        j = self.i % 16
        self.i += 1
        x, y = self.data[:, j * seg:(j + 1) * seg], self.data[:, j * seg + 1:(j + 1) * seg + 1]
        _sync(self.device)
        t0 = time.perf_counter()
        with _autocast(self.device, self.dtype):
            logits, self.state, extra = self.forward(x, self.state)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten()) + extra
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        _sync(self.device)
        return x.numel() / (time.perf_counter() - t0)


def ours_forward(model, carry_state: bool = True):
    """MemoryLM: cross-entropy plus the compressors' attention-reconstruction loss (as in the paper).

    ``carry_state=False``: every segment starts from an empty state (the no-memory floor)."""

    def forward(x, state):
        logits, state = model(x, state if carry_state else None)
        return logits, state, sum(state.extra_losses.values()) / len(model.memories)

    return forward


def peer_forward(model):
    """compressive-transformer-pytorch: its forward returns the reconstruction loss already averaged."""

    def forward(x, memories):
        logits, memories, aux_loss = model(x, memories=memories)
        return logits, memories, aux_loss.sum()

    return forward


def bench_train(sizes: Sizes, device, dtype, log) -> list[Row]:
    """Ours against the package twice: with a plain residual like MemoryLM's (the strict,
    same-architecture comparison), and with its defaults (GRU-gated residuals), as a learner
    would instantiate it."""
    from compressive_transformer_pytorch import CompressiveTransformer

    from ..memory import CompressiveMemory, FullMemory
    from ..models import MemoryLM

    seed_everything(0)
    memory = CompressiveMemory(sizes.mem_len, sizes.cmem_len, sizes.ratio, "conv")
    models = {"course_lib": MemoryLM(VOCAB, sizes.d_model, sizes.n_layers, sizes.n_heads, memory),
              # the floor: the same transformer with no memory, each segment alone (causal attention)
              "no memory": MemoryLM(VOCAB, sizes.d_model, sizes.n_layers, sizes.n_heads, FullMemory())}
    for label, gated in (("plain residual", False), ("its defaults", True)):
        models[label] = CompressiveTransformer(num_tokens=VOCAB, dim=sizes.d_model, seq_len=sizes.segment,
                                               depth=sizes.n_layers, heads=sizes.n_heads, mem_len=sizes.mem_len,
                                               cmem_len=sizes.cmem_len, cmem_ratio=sizes.ratio,
                                               gru_gated_residual=gated)
    trainers = []
    for label, model in models.items():
        model.to(device).train()
        ours = label in ("course_lib", "no memory")
        forward = ours_forward(model, carry_state=label == "course_lib") if ours else peer_forward(model)
        trainers.append(SegmentTrainer(model, forward, sizes, device, dtype))
    # untimed: until the memories are full and compressing every step
    warm = (sizes.mem_len + sizes.cmem_len * sizes.ratio) // sizes.segment + 2
    for trainer in trainers:
        for _ in range(warm):
            trainer.step()
    # timed: one step each in turn, so that a busy moment hits all alike; the best step counts
    best = _best_of(sizes.train_steps * sizes.repeats, *(trainer.step for trainer in trainers))
    params = {label: sum(p.numel() for p in model.parameters()) / 1e6 for label, model in models.items()}
    log(f"  train: course_lib {best[0]:.0f} tok/s ({params['course_lib']:.2f}M parameters); "
        f"the same model without a memory {best[1]:.0f} tok/s")
    rows = []
    for (label, _), tokens_per_s in zip(list(models.items())[2:], best[2:]):
        ratio = best[0] / tokens_per_s
        log(f"  train: compressive-transformer-pytorch, {label}: {tokens_per_s:.0f} tok/s "
            f"({params[label]:.2f}M parameters), {ratio:.2f}x")
        rows.append(Row("train", f"train vs lucidrains ({label})", best[0], tokens_per_s, ratio,
                        f">= {TARGETS['train']} (aim {AIMS['train']})", ratio >= TARGETS["train"]))
    # for reference: how far the memory part lets us be from the same transformer without one
    plain = best[2]
    rows.append(Row("train", "  no-memory floor vs plain residual", best[1], plain, best[1] / plain,
                    "reference", None))
    return rows


# ---- table, plot, command -----------------------------------------------------------------------------


def format_table(rows: list[Row]) -> str:
    """The side-by-side table (tokens/s) and the flat-cost table (ms/token)."""
    lines = []
    side = [r for r in rows if r.section in ("decode", "train")]
    if side:
        lines += [f"{'side by side (tokens/s)':<40}{'course_lib':>12}{'peer':>12}{'ratio':>8}  {'target':<18}result",
                  "-" * 98]
        for r in side:
            lines.append(f"{r.name:<40}" + _cells(r, "{:>12.0f}"))
    flat = [r for r in rows if r.section == "flat"]
    if flat:
        if lines:
            lines.append("")
        short = "short ctx"
        long = "long ctx"
        lines += [f"{'flat cost (ms/token)':<40}{short:>12}{long:>12}{'ratio':>8}  {'target':<18}result", "-" * 98]
        for r in flat:
            lines.append(f"{r.name:<40}" + _cells(r, "{:>12.2f}"))
    return "\n".join(lines)


def _cells(r: Row, fmt: str) -> str:
    if r.ratio is None:
        return f"{'-':>12}{'-':>12}{'-':>8}  {r.target:<18}skipped: {r.note}"
    verdict = "-" if r.passed is None else "PASS" if r.passed else "FAIL"
    return fmt.format(r.ours) + fmt.format(r.peer) + f"{r.ratio:>7.2f}x  {r.target:<18}{verdict}"


def save_plot(rows: list[Row], path: str, title: str) -> None:
    from matplotlib.figure import Figure

    side = [r for r in rows if r.section in ("decode", "train") and r.ratio is not None]
    flat = [r for r in rows if r.section == "flat"]
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax_side, ax_flat = fig.subplots(1, 2)
    x = range(len(side))
    ax_side.bar([i - 0.2 for i in x], [r.ours for r in side], width=0.4, label="course_lib")
    ax_side.bar([i + 0.2 for i in x], [r.peer for r in side], width=0.4, label="peer (GPT-2 / lucidrains)")
    for i, r in zip(x, side):
        ax_side.annotate(f"{r.ratio:.2f}x", (i, max(r.ours, r.peer)), ha="center", va="bottom")
    ax_side.set_xticks(list(x), [r.name.replace(" after ", "\nafter ").replace(" (", "\n(") for r in side],
                       fontsize=8)
    ax_side.set_yscale("log")
    ax_side.set_ylabel("tokens / s (higher is better)")
    ax_side.set_title("side by side")
    ax_side.legend(fontsize=8)
    names = [r.name for r in flat]
    ax_flat.barh(names, [r.ratio for r in flat],
                 color=["tab:green" if r.passed else "tab:red" for r in flat])
    ax_flat.axvline(TARGETS["flat"], color="k", ls="--", lw=1, label=f"fixed-size memories: <= {TARGETS['flat']}")
    ax_flat.axvline(TARGETS["grows"], color="k", ls=":", lw=1, label=f"full KV cache: >= {TARGETS['grows']}")
    ax_flat.set_xlabel("ms/token at the long context / at the short one")
    ax_flat.set_title("cost per token as the context grows")
    ax_flat.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=120)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: a smoke run in seconds (the targets mean nothing there)")
    parser.add_argument("--only", action="append", choices=SECTIONS, default=None,
                        help="run only this part (repeatable): decode, flat, train")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: pick_device())")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="float16/bfloat16 are meant for CUDA (training then runs under autocast)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for both libraries (default on the CPU: 1, see the module doc)")
    parser.add_argument("--repeats", type=int, default=None, help="runs of each measurement; the best counts")
    parser.add_argument("--out", default="bench_compare.png", help="where to save the plot")
    parser.add_argument("--json", default=None,
                        help="also write the run as a result file (the README's: docs/results/bench_compare.json)")


def run(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else FULL
    if args.repeats is not None:
        if args.repeats < 1:
            raise SystemExit(f"--repeats must be >= 1, got {args.repeats}")
        sizes = Sizes(**{**sizes.__dict__, "repeats": args.repeats})
    device = pick_device(args.device)
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else None)
    if threads is not None:
        if threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    dtype = getattr(torch, args.dtype)
    if dtype == torch.float16 and device.type == "cpu":
        raise SystemExit("--dtype float16 is for GPUs; on the CPU use float32 (or bfloat16)")
    sections = args.only or list(SECTIONS)
    header = machine_lines(device, dtype)
    busy = max(1.0, (os.cpu_count() or 1) - 0.5)  # more than the cores the benchmark leaves free
    if hasattr(os, "getloadavg") and device.type == "cpu" and os.getloadavg()[0] > busy:
        header.append("warning: other processes are using the CPU (see the load average); the timings and "
                      "even the ratios are unreliable: re-run on a quiet machine")
    print("\n".join(["course_lib bench compare" + (" --quick (tiny sizes: the targets mean nothing)"
                                                   if args.quick else "")] + header), flush=True)
    peers = _peer_versions()
    rows: list[Row] = []

    def log(line: str) -> None:
        print(line, flush=True)

    t_start, load_before = time.perf_counter(), load_average()
    for section in sections:
        if section == "decode" and peers["transformers"] is None:
            rows.append(Row("decode", "decode (GPT-2)", None, None, None, f">= {TARGETS['decode']}", None,
                            "pip install -e '.[bench]' (transformers)"))
            continue
        if section == "train" and peers["compressive-transformer-pytorch"] is None:
            rows.append(Row("train", "train compressive", None, None, None, f">= {TARGETS['train']}", None,
                            "pip install -e '.[bench]' (compressive-transformer-pytorch)"))
            continue
        log(f"{section}...")
        rows += {"decode": bench_decode, "flat": bench_flat, "train": bench_train}[section](sizes, device, dtype, log)
    print()
    print(format_table(rows))
    print(f"\n(took {time.perf_counter() - t_start:.0f} s; load average now "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg()) if hasattr(os, 'getloadavg') else 'n/a'})")
    save_plot(rows, args.out, "\n".join(header[:2]))
    print(f"plot saved to {args.out}")
    if args.json:
        _write_json(args, rows, sizes, device, peers, header, load_before, time.perf_counter() - t_start)
        print(f"result file written to {args.json}")
    return 0


def _write_json(args, rows, sizes, device, peers, header, load_before, seconds) -> None:
    import dataclasses
    import shlex
    import sys

    from ..experiments.results import write_result

    argv = sys.argv[1:] if sys.argv and sys.argv[0].endswith("__main__.py") else ["bench", "compare"]
    write_result(args.json, command="python -m course_lib " + shlex.join(argv),
                 rows=[dataclasses.asdict(r) for r in rows], seeds=[2], seconds=seconds, device=device,
                 setup={**dataclasses.asdict(sizes), "dtype": args.dtype, "threads": torch.get_num_threads()},
                 peers=peers, header=header, load_average={"before": load_before, "after": load_average()})


def readme_block(result: dict) -> str:
    """The README's "side by side" paragraph and table, from a ``--json`` result file."""
    peers = ", ".join(f"{name} {version}" for name, version in result["peers"].items() if version) or "none installed"
    load = result.get("load_average") or {}
    loads = [v for v in (load.get("before"), load.get("after")) if v is not None]
    commit = (result.get("commit") or "unknown")[:7] + (" with uncommitted changes" if result.get("dirty") else "")
    lines = [f"`{result['command']}` at commit {commit}: {'; '.join(result['header'][:2])}; peers {peers}"
             + (f"; load average {min(loads):.1f}-{max(loads):.1f} during the run" if loads else "")
             + f"; {result['seconds']:.0f} s. Each measurement is the best of {result['setup']['repeats']} runs, "
             "the two libraries taking turns.", ""]
    side = [r for r in result["rows"] if r["section"] in ("decode", "train")]
    lines += ["| tokens/s | course_lib | peer | ratio | target |", "|---|---|---|---|---|"]
    for r in side:
        if r["ratio"] is None:
            lines.append(f"| {r['name']} | - | - | - | {r['target']}: skipped ({r['note']}) |")
            continue
        verdict = "" if r["passed"] is None or r["passed"] else ": **not met**"
        lines.append(f"| {r['name']} | {r['ours']:.0f} | {r['peer']:.0f} | {r['ratio']:.2f}x | "
                     f"{r['target']}{verdict} |")
    flat = [r for r in result["rows"] if r["section"] == "flat" and r["ratio"] is not None]
    if flat:
        lines += ["", "| flat cost (ms/token) | short context | long context | ratio | target |",
                  "|---|---|---|---|---|"]
        for r in flat:
            verdict = "" if r["passed"] is None or r["passed"] else ": **not met**"
            lines.append(f"| {r['name']} | {r['ours']:.2f} | {r['peer']:.2f} | {r['ratio']:.2f}x | "
                         f"{r['target']}{verdict} |")
    return "\n".join(lines)
