"""``python -m course_lib bench decode``: ms/token and memory bytes against context length.

A ``MemoryLM`` (vocabulary 256, d_model 256, 4 layers, 4 heads by default) is prefilled
with ``m`` random tokens, then single-token decoding steps are timed. The full KV cache
grows with ``m`` in bytes and in time per token; a fixed-size memory stays flat.

    python -m course_lib bench decode                       # FullMemory, 1k..64k tokens
    python -m course_lib bench decode --memory window --memory linear
    python -m course_lib bench decode --memory all --contexts 1024,16384
"""

from __future__ import annotations

import argparse
import time

import torch

from ..cost import measure_decode
from ..device import describe_device, pick_device, seed_everything
from ..memory import MEMORIES, memory_class

#: every memory gets ``example(DEFAULT_SLOTS)``: about this many key/value slots per head
#: (comparable budgets; the registry says what that means for each memory)
DEFAULT_SLOTS = 256
DEFAULT_CONTEXTS = "1024,2048,4096,8192,16384,32768,65536"


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
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: pick_device())")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (default 1: steady timings on a shared machine; 0: torch's)")
    parser.add_argument("--out", default="bench_decode.png", help="where to save the plot")


def run(args: argparse.Namespace) -> int:
    from ..models import MemoryLM

    names = args.memory or ["full"]
    if "all" in names:
        names = memory_names()
    contexts = [int(x) for x in args.contexts.split(",") if x.strip()]
    device = pick_device(args.device)
    dtype = getattr(torch, args.dtype)
    if device.type == "cpu" and args.threads > 0:
        torch.set_num_threads(args.threads)
    print(f"decode benchmark on {describe_device(device)}, torch {torch.__version__}, {args.dtype}; "
          f"MemoryLM(vocab 256, d_model {args.d_model}, {args.layers} layers, {args.heads} heads), batch 1")
    results = {}
    for name in names:
        seed_everything(0)
        model = MemoryLM(256, args.d_model, args.layers, args.heads, build_memory(name, args.heads)).to(device, dtype)
        t0 = time.perf_counter()
        results[name] = measure_decode(model, contexts, steps=args.steps)
        print(f"  {name}: measured in {time.perf_counter() - t0:.1f} s")
    print(format_table(results))
    save_plot(results, args.out)
    print(f"plot saved to {args.out}")
    return 0


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


def save_plot(results: dict, path: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_ms, ax_bytes = fig.subplots(1, 2)
    for name, rows in results.items():
        m = [r["context"] for r in rows]
        ax_ms.plot(m, [r["ms_per_token"] for r in rows], marker="o", label=name)
        ax_bytes.plot(m, [max(r["nbytes"], 1) for r in rows], marker="o", label=name)
    for ax, ylabel in ((ax_ms, "ms per token"), (ax_bytes, "memory bytes (all layers)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length m (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_ms.set_title("decoding cost per token")
    ax_bytes.set_title("memory size")
    ax_bytes.legend(fontsize=8)
    fig.savefig(path, dpi=120)
