"""``python -m course_lib bench decode``: ms/token and memory bytes against context length.

A ``MemoryLM`` (vocabulary 256, d_model 256, 4 layers, 4 heads by default) is prefilled
with ``m`` random tokens, then single-token decoding steps are timed. The full KV cache
grows with ``m`` in bytes and in time per token; a fixed-size memory stays flat.

    python -m course_lib bench decode                       # FullMemory, 1k..64k tokens
    python -m course_lib bench decode --memory window --memory linear
    python -m course_lib bench decode --memory all --contexts 1024,16384
    python -m course_lib bench decode --memory full --memory window --memory linear --memory compressive \
        --contexts 1024,4096,16384,65536 --steps 16 --repeats 5 --json docs/results/bench_decode.json  # README

``--json`` writes the run as a result file (:mod:`course_lib.experiments.results`: the command,
commit, machine and its load average, one row per memory and context); :func:`decode_table`
renders the README's table from it, so the README never carries a typed timing.

The same run also times a hand-written decoding loop against ``generate`` (``--loop-tokens``,
0 to skip; :func:`measure_loop`): ``model(tok, state)`` token by token under
``torch.inference_mode()`` takes the same one-token step as ``generate``, and its tokens/s over
``generate``'s should stay near 1. A state the loop does not ``reserve`` stays branchable: a
memory that holds slots writes it in place and keeps the few slots it overwrites, copying its
buffer once per ``n_slots`` slots written rather than at every token
(:mod:`course_lib.memory._slots`); ``generate`` reserves, keeping nothing. The table shows the
loop both ways.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from .._checks import check_positive_int
from ..cost import measure_decode, sync
from ..device import describe_device, pick_device, seed_everything
from ..experiments.results import load_average
from ..memory import MEMORIES, memory_class

#: every memory gets ``example(DEFAULT_SLOTS)``: about this many key/value slots per head
#: (comparable budgets; the registry says what that means for each memory)
DEFAULT_SLOTS = 256
DEFAULT_CONTEXTS = "1024,2048,4096,8192,16384,32768,65536"
#: the hand-written loop against generate: new tokens after a prompt of LOOP_PROMPT tokens
LOOP_TOKENS, LOOP_PROMPT = 64, 8


def build_memory(name: str, n_heads: int = 4):
    """The memory called ``name`` at this benchmark's budget of slots."""
    return memory_class(name).example(DEFAULT_SLOTS, n_heads=n_heads)


def memory_names() -> list[str]:
    """Every registered memory, in registry order."""
    return list(MEMORIES)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--memory", action="append", default=None, choices=[*MEMORIES, "all"],
                        help="memory name (repeatable) or 'all'; default: full")
    parser.add_argument("--contexts", default=DEFAULT_CONTEXTS,
                        help=f"comma-separated context lengths m (default {DEFAULT_CONTEXTS})")
    parser.add_argument("--steps", type=int, default=32, help="timed decoding steps per context")
    parser.add_argument("--repeats", type=int, default=1,
                        help="measure each memory this many times and keep the fastest per context "
                             "(timeit's rule: noise only ever adds time; default 1)")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: pick_device())")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (default 1: steady timings on a shared machine; 0: torch's)")
    parser.add_argument("--out", default="bench_decode.png", help="where to save the plot")
    parser.add_argument("--json", default=None,
                        help="also write the run as a result file (e.g. docs/results/bench_decode.json)")
    parser.add_argument("--loop-tokens", type=int, default=LOOP_TOKENS,
                        help=f"also time a hand-written loop model(tok, state) against generate over this many "
                             f"new tokens after a {LOOP_PROMPT}-token prompt (default {LOOP_TOKENS}; 0: skip)")


def run(args: argparse.Namespace) -> int:
    from ..models import MemoryLM

    names = args.memory or ["full"]
    if "all" in names:
        names = memory_names()
    contexts = [int(x) for x in args.contexts.split(",") if x.strip()]
    if args.loop_tokens < 0:
        raise ValueError(f"--loop-tokens must be >= 0 (0: skip the loop against generate), got {args.loop_tokens}")
    device = pick_device(args.device)
    dtype = getattr(torch, args.dtype)
    if device.type == "cpu" and args.threads > 0:
        torch.set_num_threads(args.threads)
    print(f"decode benchmark on {describe_device(device)}, torch {torch.__version__}, {args.dtype}; "
          f"MemoryLM(vocab 256, d_model {args.d_model}, {args.layers} layers, {args.heads} heads), batch 1")
    results, loops = {}, {}
    started, load_before = time.perf_counter(), load_average()
    for name in names:
        seed_everything(0)
        model = MemoryLM(256, args.d_model, args.layers, args.heads, build_memory(name, args.heads)).to(device, dtype)
        t0 = time.perf_counter()
        runs = [measure_decode(model, contexts, steps=args.steps) for _ in range(max(1, args.repeats))]
        results[name] = [min(per_context, key=lambda r: r["ms_per_token"]) for per_context in zip(*runs)]
        if args.loop_tokens:
            loops[name] = measure_loop(model, args.loop_tokens, repeats=max(LOOP_REPEATS, args.repeats))
        print(f"  {name}: measured in {time.perf_counter() - t0:.1f} s")
    print(format_table(results))
    if loops:
        print()
        print(format_loop_table(loops, args.loop_tokens, max(LOOP_REPEATS, args.repeats)))
    save_plot(results, args.out)
    print(f"plot saved to {args.out}")
    if args.json:
        _write_json(args, results, device, load_before, time.perf_counter() - started, loops)
        print(f"result file written to {args.json}")
    return 0


def _write_json(args, results: dict, device, load_before, seconds: float, loops: dict | None = None) -> None:
    import shlex
    import sys

    from ..experiments.results import write_result

    rows = [{"memory": name, "label": build_memory(name, args.heads).label(), "context": r["context"],
             "ms_per_token": r["ms_per_token"], "nbytes": r["nbytes"]} for name, rows in results.items() for r in rows]
    argv = [a for a in sys.argv[1:]] if sys.argv and sys.argv[0].endswith("__main__.py") else []
    command = "python -m course_lib " + (shlex.join(argv) if argv else "bench decode")
    write_result(args.json, command=command, rows=rows, seeds=[0], seconds=seconds, device=device,
                 setup={"d_model": args.d_model, "layers": args.layers, "heads": args.heads, "steps": args.steps,
                        "dtype": args.dtype, "threads": args.threads, "repeats": args.repeats, "vocab": 256, "batch": 1,
                        "slots": DEFAULT_SLOTS, "loop_tokens": args.loop_tokens, "loop_prompt": LOOP_PROMPT},
                 load_average={"before": load_before, "after": load_average()},
                 loop_vs_generate=[{"memory": name, **row} for name, row in (loops or {}).items()])


#: the loop against generate: at least this many rounds (the three timed in turn in each)
LOOP_REPEATS = 11


def measure_loop(model, new_tokens: int = LOOP_TOKENS, *, prompt: int = LOOP_PROMPT, repeats: int = LOOP_REPEATS,
                 seed: int = 0) -> dict:
    """Tokens/s of ``model.generate(idx, new_tokens)`` (greedy, batch 1) and of the loop a reader
    writes for it, ``model(tok, state)`` token by token under ``torch.inference_mode()``: plain,
    and with each layer's state reserved first (``memory.reserve``, as ``generate`` does).

    The three are timed in turn, ``repeats`` rounds, and the fastest of each is kept (noise only
    adds time). Returns ``{"generate", "loop", "reserved_loop"}`` in tokens/s, the two ratios
    ``loop / generate`` and ``reserved_loop / generate``, and ``same_tokens``: whether both
    loops chose generate's tokens (they compute the same steps).

    A ratio is the median over the rounds of the round's own ratio (paired: the three runs of a
    round are back to back, so a machine that slows down for a while slows all three), not the
    ratio of two fastest runs taken minutes apart: on a shared 2-core VM the latter moved between
    0.69 and 0.97 for the same code, the paired median by a few hundredths."""
    from ..models import LMState

    for name, value in (("new_tokens", new_tokens), ("prompt", prompt), ("repeats", repeats)):
        check_positive_int(name, value)
    model.eval()
    device = next(model.parameters()).device
    idx = torch.randint(0, model.vocab_size, (1, prompt), generator=torch.Generator().manual_seed(seed)).to(device)

    def loop(reserve: bool):
        with torch.inference_mode():
            state = model.init_state(1)
            if reserve:
                state = LMState(0, 1, [m.reserve(s, prompt + new_tokens) for m, s in zip(model.memories, state.layers)])
            logits, state = model(idx, state)
            out = [idx]
            for _ in range(new_tokens - 1):  # generate's count: the last token is chosen, not run
                nxt = logits[:, -1].argmax(-1, keepdim=True)
                out.append(nxt)
                logits, state = model(nxt, state)
            out.append(logits[:, -1].argmax(-1, keepdim=True))
            return torch.cat(out, dim=1)

    runs = {"generate": lambda: model.generate(idx, new_tokens), "loop": lambda: loop(False),
            "reserved_loop": lambda: loop(True)}
    tokens = {name: run_once() for name, run_once in runs.items()}  # warm-up: plan, rotary tables, allocator
    rounds = []  # {name: seconds} per round
    for _ in range(repeats):
        timed = {}
        for name, run_once in runs.items():
            sync(device)
            t0 = time.perf_counter()
            run_once()
            sync(device)
            timed[name] = time.perf_counter() - t0
        rounds.append(timed)
    row = {name: new_tokens / min(r[name] for r in rounds) for name in runs}
    for name in ("loop", "reserved_loop"):  # tokens/s ratio of the round = generate's time / the loop's
        row[f"{name} / generate"] = statistics.median(r["generate"] / r[name] for r in rounds)
    row["same_tokens"] = all(torch.equal(t, tokens["generate"]) for t in tokens.values())
    return row


def format_loop_table(loops: dict, new_tokens: int, repeats: int) -> str:
    """The hand-written loop against generate, one line per memory (rows of :func:`measure_loop`)."""
    lines = [f"hand loop / generate: tokens/s of model(tok, state) under torch.inference_mode() over generate's "
             f"({new_tokens} new tokens after a {LOOP_PROMPT}-token prompt, batch 1, {repeats} rounds: "
             "tokens/s the fastest, ratios the median of each round's own; reserved: the state reserved first, "
             "as generate does)",
             f"{'memory':<20}{'generate':>10}{'loop':>10}{'reserved':>10}{'loop/gen':>10}{'reserved/gen':>14}"]
    for name, r in loops.items():
        lines.append(f"{name:<20}{r['generate']:>10.0f}{r['loop']:>10.0f}{r['reserved_loop']:>10.0f}"
                     f"{r['loop / generate']:>10.2f}{r['reserved_loop / generate']:>14.2f}"
                     + ("" if r["same_tokens"] else "  (different tokens!)"))
    return "\n".join(lines)


def decode_summary(result: dict) -> str:
    """One sentence saying how the result file was made: command, commit, machine, load
    (:func:`~course_lib.bench._made.how_made`, with this benchmark's sizes)."""
    from ._made import how_made

    s = result["setup"]
    return how_made(result, f"{s['threads']} torch thread(s), {s['dtype']}, "
                            f"`MemoryLM(vocab {s['vocab']}, d_model {s['d_model']}, {s['layers']} layers, "
                            f"{s['heads']} heads)`, batch 1, {s['steps']} timed steps per entry, the fastest of "
                            f"{s.get('repeats', 1)} runs")


def decode_table(result: dict) -> str:
    """The README's Markdown table from a ``--json`` result file: ms/token at each context, the
    longest over the shortest, and the bytes at the longest."""
    from ..experiments.capstone import format_bytes

    contexts = sorted({r["context"] for r in result["rows"]})
    by = {}
    for r in result["rows"]:
        by.setdefault(r["memory"], {"label": r["label"]})[r["context"]] = r
    head = ("| ms/token at m = | " + " | ".join(f"{m:,}" for m in contexts)
            + f" | {contexts[-1]:,} / {contexts[0]:,} | bytes at {contexts[-1]:,} |")
    lines = [head, "|" + "---|" * (len(contexts) + 3)]
    for name, cols in by.items():
        label = "full KV cache" if name == "full" else cols["label"]
        ms = [cols[m]["ms_per_token"] for m in contexts]
        lines.append(f"| {label} | " + " | ".join(f"{x:.2f}" for x in ms)
                     + f" | {ms[-1] / ms[0]:.2f} | {format_bytes(cols[contexts[-1]]['nbytes'])} |")
    return "\n".join(lines)


def format_table(results: dict) -> str:
    contexts = sorted({row["context"] for rows in results.values() for row in rows})
    head = f"{'memory':<20}" + "".join(f"{m:>10}" for m in contexts) + f"{'ratio':>8}"
    lines = ["ms/token against context length m (ratio = ms at the longest / ms at the shortest)", head]
    for name, rows in results.items():
        ms = {r["context"]: r["ms_per_token"] for r in rows}
        ratio = ms[contexts[-1]] / ms[contexts[0]]
        lines.append(f"{name:<20}" + "".join(f"{ms[m]:>10.2f}" for m in contexts) + f"{ratio:>8.2f}")
    lines += ["", "memory bytes per sequence (all layers) against context length m", head[:-8]]
    for name, rows in results.items():
        nb = {r["context"]: r["nbytes"] for r in rows}
        lines.append(f"{name:<20}" + "".join(f"{_human(nb[m]):>10}" for m in contexts))
    return "\n".join(lines)


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def log_log_axes(ax, xlabel: str, ylabel: str) -> None:
    """A benchmark's axes: lengths in powers of 2 across, a log scale up, a light grid."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)


def save_plot(results: dict, path: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_ms, ax_bytes = fig.subplots(1, 2)
    for name, rows in results.items():
        m = [r["context"] for r in rows]
        ax_ms.plot(m, [r["ms_per_token"] for r in rows], marker="o", label=name)
        ax_bytes.plot(m, [max(r["nbytes"], 1) for r in rows], marker="o", label=name)
    for ax, ylabel in ((ax_ms, "ms per token"), (ax_bytes, "memory bytes (all layers)")):
        log_log_axes(ax, "context length m (tokens)", ylabel)
    ax_ms.set_title("decoding cost per token")
    ax_bytes.set_title("memory size")
    ax_bytes.legend(fontsize=8)
    fig.savefig(path, dpi=120)
