r"""``python -m course_lib bench chunked``: how recurrences train in parallel, measured.

For each matrix memory (linear, delta, decay, gated delta) one training step of its memory
alone, forward and backward (``sum(out^2)`` back to ``q, k, v`` and the gates), is timed in its
forms against the text length ``T``:

* ``recurrent``: the token loop, the equation as written (``*_recurrent``): ``T`` small steps;
* ``chunked``: the chunkwise-parallel form (``*_chunked``, chunks of ``C`` tokens): matmuls inside
  a chunk, the state passed between chunks (WY/UT for the delta rules);
* ``parallel`` (linear and decay): the whole text as one masked attention, ``O(T^2)`` work and
  memory (``linear_attention_parallel``, ``decay_parallel``).

The gates are per head and token, as a learned model gives them: ``alpha_t`` in ``(0.9, 1)`` for
decay and gated delta, ``beta_t`` in ``(0, 1)`` for delta and gated delta. Every form computes the same
numbers (``tests/test_memory_linear.py``, ``tests/test_memory_gated.py``).

Reported per memory, form and ``T``: tokens/s (``B T`` over the fastest of ``--repeats`` timed
steps after one warm-up: noise only ever adds time; a memory's forms take turns, one step each per
round, so a burst of load from other users falls on all of them) and the **peak memory growth** of the step:
the most bytes live at once above what was allocated before it (inputs and gates), from the **torch
profiler on the CPU** (``profile_memory=True``: every allocation and free of the step, summed in
time order; :func:`peak_bytes`), measured after all the timings, in untimed runs (the token loop up
to ``--profile-loop-up-to``, see :data:`PROFILE_LOOP_UP_TO`). The summary gives
the chunked form's speed over the recurrence's at every ``T`` (the target: at least 5x at
``T = 2,048`` on 2 CPU cores) and how the peak grows from one ``T`` to the next (linear: x2 per
doubling; the parallel form: x4).

    python -m course_lib bench chunked                                 # T = 256 .. 2048 (about 5 minutes)
    python -m course_lib bench chunked --T 256,512,1024,2048 --repeats 3 --json docs/results/bench_chunked.json
    python -m course_lib bench chunked --T 16,32 --batch 1 --heads 1 --head-dim 4 --chunk 8 --repeats 1  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from .._checks import check_positive_int
from ._made import how_made

__all__ = ["FORMS", "MEMORY_NAMES", "add_arguments", "growth", "measure", "parse_lengths", "peak_bytes", "ratios",
           "readme_block", "run"]

DEFAULT_T = "256,512,1024,2048"
MEMORY_NAMES = ("linear", "delta", "decay", "gated_delta")
#: the token loop's memory is profiled up to this T. Its backward frees a [B, H, T, D] gradient
#: (``select_backward``) per token and input; between those the profiler's own small records split
#: glibc's freed blocks, and at T = 2,048 (B 4, H 4, d_h 32) the process grew to 11-22 GB of heap for a
#: 168 MiB peak and once ran out of memory on a shared 23 GB machine. The loop's peak doubles exactly
#: with T up to here (the summary shows it), as its autograd graph keeps one state per token.
PROFILE_LOOP_UP_TO = 1024


def _forms():
    from ..memory import (
        decay_chunked,
        decay_parallel,
        decay_recurrent,
        delta_rule_chunked,
        delta_rule_recurrent,
        gated_delta_chunked,
        gated_delta_recurrent,
        linear_attention_chunked,
        linear_attention_parallel,
        linear_attention_recurrent,
    )

    # memory -> form -> f(q, k, v, gates, chunk) -> (out, S, ...); the gates each memory takes
    return {
        "linear": ((), {"recurrent": lambda q, k, v, g, c: linear_attention_recurrent(q, k, v),
                        "chunked": lambda q, k, v, g, c: linear_attention_chunked(q, k, v, chunk_size=c),
                        "parallel": lambda q, k, v, g, c: linear_attention_parallel(q, k, v)}),
        "delta": (("beta",), {"recurrent": lambda q, k, v, g, c: delta_rule_recurrent(q, k, v, g["beta"]),
                              "chunked": lambda q, k, v, g, c: delta_rule_chunked(q, k, v, g["beta"], chunk_size=c)}),
        "decay": (("alpha",), {"recurrent": lambda q, k, v, g, c: decay_recurrent(q, k, v, g["alpha"]),
                               "chunked": lambda q, k, v, g, c: decay_chunked(q, k, v, g["alpha"], chunk_size=c),
                               "parallel": lambda q, k, v, g, c: decay_parallel(q, k, v, g["alpha"])}),
        "gated_delta": (("alpha", "beta"), {
            "recurrent": lambda q, k, v, g, c: gated_delta_recurrent(q, k, v, g["alpha"], g["beta"]),
            "chunked": lambda q, k, v, g, c: gated_delta_chunked(q, k, v, g["alpha"], g["beta"], chunk_size=c)}),
    }


FORMS = ("recurrent", "chunked", "parallel")


def _inputs(gates, b, h, t, d, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same numbers on every device
    q, k, v = (torch.randn(b, h, t, d, generator=g).to(device) for _ in range(3))
    made = {"alpha": (0.9 + 0.1 * torch.rand(b, h, t, generator=g)).to(device),
            "beta": torch.rand(b, h, t, generator=g).to(device)}
    leaves = [q, k, v, *(made[name] for name in gates)]
    for x in leaves:
        x.requires_grad_()
    return q, k, v, {name: made[name] for name in gates}, leaves


def _step(f, q, k, v, gates, chunk, leaves):
    """One training step of the memory: forward, ``sum(out^2)``, backward to the leaves."""
    out = f(q, k, v, gates, chunk)[0]
    loss = out.pow(2).sum()
    torch.autograd.grad(loss, leaves)


def measure(name: str, t: int, *, batch: int, heads: int, head_dim: int, chunk: int, repeats: int,
            forms: tuple[str, ...] | None = None, device="cpu") -> dict:
    """``{form: seconds}``, the fastest of ``repeats`` timed steps of each form (after one warm-up each).

    The forms take turns, one step each per round, on the same inputs: a burst of load from a
    machine's other users falls on every form alike, not on whichever happened to run then. On a GPU
    the clock is read after the device's queued work is done (:func:`~course_lib.cost.sync`)."""
    from ..cost import sync

    device = torch.device(device)
    gate_names, steps = _forms()[name]
    q, k, v, gates, leaves = _inputs(gate_names, batch, heads, t, head_dim, device=device)
    chosen = list(steps) if forms is None else list(forms)
    for form in chosen:
        _step(steps[form], q, k, v, gates, chunk, leaves)
    best = dict.fromkeys(chosen, float("inf"))
    for _ in range(repeats):
        for form in chosen:
            sync(device)
            t0 = time.perf_counter()
            _step(steps[form], q, k, v, gates, chunk, leaves)
            sync(device)
            best[form] = min(best[form], time.perf_counter() - t0)
    return best


def peak_bytes(name: str, form: str, t: int, *, batch: int, heads: int, head_dim: int, chunk: int,
               device="cpu") -> int:
    """The most bytes live at once during one step, above those live before it (inputs and gates).

    On a CUDA device, the caching allocator's own count: ``torch.cuda.max_memory_allocated`` over the
    step, less what was allocated before it.

    The torch profiler records every allocation and free of the step (``profile_memory=True``);
    their running sum in time order is the bytes the step holds, and its maximum the peak. This is
    the number ``export_memory_timeline`` gives (all categories summed; ``tests/test_bench_chunked.py``
    checks they agree) without the stacks and shapes the timeline needs, which made the token loop
    at ``T = 2,048`` take minutes to profile."""
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(device)
    gate_names, forms = _forms()[name]
    q, k, v, gates, leaves = _inputs(gate_names, batch, heads, t, head_dim, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        _step(forms[form], q, k, v, gates, chunk, leaves)
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _step(forms[form], q, k, v, gates, chunk, leaves)
    changes = sorted(((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                      if e.name() == "[memory]"), key=lambda change: change[0])
    live = peak = 0
    for _, nbytes in changes:
        live += nbytes
        peak = max(peak, live)
    return int(peak)


def timeline_peak_bytes(name: str, form: str, t: int, *, batch: int, heads: int, head_dim: int,
                        chunk: int) -> int:
    """:func:`peak_bytes` from the profiler's memory timeline (``export_memory_timeline``): slow,
    kept to check :func:`peak_bytes` against."""
    import warnings

    from torch.profiler import ProfilerActivity, profile

    gate_names, forms = _forms()[name]
    q, k, v, gates, leaves = _inputs(gate_names, batch, heads, t, head_dim)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        _step(forms[form], q, k, v, gates, chunk, leaves)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated in favour of a CUDA-only API
        path = os.path.join(tmp, "timeline.json")
        prof.export_memory_timeline(path, device="cpu")
        with open(path) as f:
            _, sizes = json.load(f)
    totals = [sum(at) for at in sizes] or [0]
    return int(max(totals) - totals[0])


def parse_lengths(text: str) -> list[int]:
    """``"256,512"`` -> ``[256, 512]``; anything but comma-separated ints >= 1 is an error naming ``--T``."""
    parts = [x.strip() for x in str(text).split(",") if x.strip()]
    try:
        lengths = [int(x) for x in parts]
    except ValueError:
        lengths = []
    if not lengths or any(t < 1 for t in lengths):
        raise ValueError(f"--T must be comma-separated text lengths >= 1 (e.g. {DEFAULT_T}), got {text!r}")
    return lengths


def ratios(rows: list[dict], over: str = "recurrent", of: str = "chunked") -> dict:
    """``{memory: {T: tokens/s of `of` / tokens/s of `over`}}`` from the rows."""
    speed = {(r["memory"], r["form"], r["T"]): r["tokens_per_s"] for r in rows}
    out: dict = {}
    for (name, form, t), value in speed.items():
        if form == of and (name, over, t) in speed:
            out.setdefault(name, {})[t] = value / speed[(name, over, t)]
    return out


def growth(rows: list[dict]) -> dict:
    """``{memory: {form: [peak(T_i+1) / peak(T_i) ...]}}``: x2 per doubling of ``T`` is linear."""
    out: dict = {}
    for r in sorted(rows, key=lambda r: r["T"]):
        if r.get("peak_bytes"):
            out.setdefault(r["memory"], {}).setdefault(r["form"], []).append(r["peak_bytes"])
    return {name: {form: [round(b / a, 2) for a, b in zip(peaks, peaks[1:])] for form, peaks in forms.items()}
            for name, forms in out.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--T", default=DEFAULT_T, help=f"comma-separated text lengths (default {DEFAULT_T})")
    parser.add_argument("--memory", action="append", default=None, choices=MEMORY_NAMES,
                        help="memory (repeatable); default: all four")
    parser.add_argument("--batch", type=int, default=4, help="B (default 4)")
    parser.add_argument("--heads", type=int, default=4, help="H (default 4)")
    parser.add_argument("--head-dim", type=int, default=32, help="d_h = d_v (default 32)")
    parser.add_argument("--chunk", type=int, default=64, help="C, the chunk length (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps, the fastest kept (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default 2; 0: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda: where the steps run")
    parser.add_argument("--no-memory", action="store_true", help="skip the profiler's peak memory")
    parser.add_argument("--profile-loop-up-to", type=int, default=PROFILE_LOOP_UP_TO,
                        help="profile the token loop's memory up to this T (default "
                             f"{PROFILE_LOOP_UP_TO}; see PROFILE_LOOP_UP_TO)")
    parser.add_argument("--out", default="bench_chunked.png", help="where to save the plot")
    parser.add_argument("--json", default=None,
                        help="also write the run as a result file (e.g. docs/results/bench_chunked.json)")


def run(args: argparse.Namespace) -> int:
    from ..device import describe_device
    from ..experiments.results import load_average

    lengths = parse_lengths(args.T)
    sizes = dict(batch=check_positive_int("--batch", args.batch), heads=check_positive_int("--heads", args.heads),
                 head_dim=check_positive_int("--head-dim", args.head_dim),
                 chunk=check_positive_int("--chunk", args.chunk))
    repeats = check_positive_int("--repeats", args.repeats)
    check_positive_int("--threads", args.threads, minimum=0)
    check_positive_int("--profile-loop-up-to", args.profile_loop_up_to, minimum=0)
    names = args.memory or list(MEMORY_NAMES)
    from ..device import pick_device

    device = pick_device(args.device)
    threads_before = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(f"chunked-training benchmark on {describe_device(device)}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, float32; B {args.batch}, H {args.heads}, d_h {args.head_dim}, "
          f"C {args.chunk}; forward + backward of one memory")
    started, load_before = time.perf_counter(), load_average()
    rows = []
    try:
        for name in names:
            t0 = time.perf_counter()
            for t in lengths:
                for form, seconds in measure(name, t, repeats=repeats, device=device, **sizes).items():
                    rows.append({"memory": name, "form": form, "T": t, "seconds": seconds,
                                 "tokens_per_s": args.batch * t / seconds, "peak_bytes": None})
            print(f"  {name}: timed in {time.perf_counter() - t0:.0f} s")
        if not args.no_memory:  # after every timing: the profiler's heap never sits under a timed step
            t0 = time.perf_counter()
            for r in rows:
                if r["form"] != "recurrent" or r["T"] <= args.profile_loop_up_to:
                    r["peak_bytes"] = peak_bytes(r["memory"], r["form"], r["T"], device=device, **sizes)
            print(f"  peak memory profiled in {time.perf_counter() - t0:.0f} s")
    finally:
        torch.set_num_threads(threads_before)
    summary = {"chunked_over_recurrent": ratios(rows), "peak_growth_per_step_of_T": growth(rows)}
    print(format_table(rows, lengths))
    print()
    print(format_summary(summary, lengths))
    save_plot(rows, args.out, device=device)
    print(f"plot saved to {args.out}")
    if args.json:
        _write_json(args, rows, summary, sizes, repeats, load_before, time.perf_counter() - started, device)
        print(f"result file written to {args.json}")
    return 0


def format_table(rows: list[dict], lengths: list[int]) -> str:
    head = f"{'memory':<12} {'form':<10} " + " ".join(f"{'T=' + str(t):>22}" for t in lengths)
    lines = ["tokens/s (peak memory growth, MiB; -: not profiled) against T", head]
    by = {(r["memory"], r["form"], r["T"]): r for r in rows}
    profiled = any(r["peak_bytes"] is not None for r in rows)  # else --no-memory: no column at all
    for name, form in dict.fromkeys((r["memory"], r["form"]) for r in rows):
        cells = []
        for t in lengths:
            r = by[(name, form, t)]
            mib = "" if not profiled else " (-)" if r["peak_bytes"] is None else f" ({r['peak_bytes'] / 2**20:.1f})"
            cells.append(f"{r['tokens_per_s']:>12,.0f}{mib:>10}")
        lines.append(f"{name:<12} {form:<10} " + " ".join(cells))
    return "\n".join(lines)


def format_summary(summary: dict, lengths: list[int]) -> str:
    lines = ["chunked over recurrent (tokens/s ratio)"]
    for name, by_t in summary["chunked_over_recurrent"].items():
        lines.append(f"  {name:<12} " + "  ".join(f"T={t}: {by_t[t]:.1f}x" for t in lengths))
    if summary["peak_growth_per_step_of_T"]:
        lines.append("peak memory growth from one T to the next (x2 per doubling is linear)")
        for name, forms in summary["peak_growth_per_step_of_T"].items():
            lines.append(f"  {name:<12} " + "  ".join(f"{form}: {steps}" for form, steps in forms.items()))
    return "\n".join(lines)


def save_plot(rows: list[dict], path: str, device=None) -> None:
    from matplotlib.figure import Figure

    from .decode import log_log_axes

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_speed, ax_mem = fig.subplots(1, 2)
    for name, form in dict.fromkeys((r["memory"], r["form"]) for r in rows):
        mine = sorted((r for r in rows if (r["memory"], r["form"]) == (name, form)), key=lambda r: r["T"])
        style = {"recurrent": ":", "chunked": "-", "parallel": "--"}[form]
        ts = [r["T"] for r in mine]
        ax_speed.plot(ts, [r["tokens_per_s"] for r in mine], style, marker="o", label=f"{name} {form}")
        profiled = [r for r in mine if r["peak_bytes"]]
        if profiled:
            ax_mem.plot([r["T"] for r in profiled], [r["peak_bytes"] / 2**20 for r in profiled], style, marker="o",
                        label=f"{name} {form}")
    for ax, ylabel in ((ax_speed, "tokens/s (forward + backward)"), (ax_mem, "peak memory growth (MiB)")):
        log_log_axes(ax, "text length T (tokens)", ylabel)
    ax_speed.set_title("training speed")
    cuda = device is not None and torch.device(device).type == "cuda"
    ax_mem.set_title("memory (CUDA allocator)" if cuda else "memory (torch profiler, CPU)")
    ax_speed.legend(fontsize=7, ncol=2)
    fig.savefig(path, dpi=120)


def command_of(args: argparse.Namespace) -> str:
    """The command that repeats this run: ``python -m course_lib bench chunked`` and every option that
    differs from its default (rebuilt from the parsed options, so it is right however ``main`` was called)."""
    import shlex

    defaults = argparse.ArgumentParser()
    add_arguments(defaults)
    words = ["bench", "chunked"]
    for action in defaults._actions:
        if action.dest == "help" or getattr(args, action.dest) == action.default:
            continue
        value, flag = getattr(args, action.dest), action.option_strings[0]
        if isinstance(value, bool):
            words.append(flag)
        elif isinstance(value, list):
            words += [w for item in value for w in (flag, str(item))]
        else:
            words += [flag, str(value)]
    return "python -m course_lib " + shlex.join(words)


def _write_json(args, rows, summary, sizes, repeats, load_before, seconds, device=None) -> None:
    from ..experiments.results import load_average, write_result

    device = torch.device("cpu") if device is None else torch.device(device)
    measure = ("torch.cuda.max_memory_allocated over the step, less the bytes allocated before it"
               if device.type == "cuda" else
               "torch profiler (CPU, profile_memory): the peak of the running sum of "
               "the step's allocations and frees, bytes above those live before it")
    write_result(args.json, command=command_of(args), rows=rows, seeds=[0],
                 seconds=seconds, device=device,
                 setup={**sizes, "repeats": repeats, "threads": args.threads, "dtype": "float32", "T": args.T,
                        "timing": "the forms of a memory take turns, one step each per round, on the same inputs; "
                                  "the fastest of the rounds is kept",
                        "profile_loop_up_to": args.profile_loop_up_to,
                        "memory_measure": measure},
                 load_average={"before": load_before, "after": load_average()}, summary=summary)


def readme_block(result: dict) -> str:
    """README's block for a result file of this benchmark: how it was made, then per memory the
    chunked form's speed over the token loop's at each ``T`` and the peak's growth per doubling."""
    s = result["setup"]
    head = how_made(result, f"{s['threads']} threads, {s['dtype']}; B {s['batch']}, H {s['heads']}, "
                            f"d_h {s['head_dim']}, C {s['chunk']}; the fastest of {s['repeats']} rounds")
    ratio, growth_ = result["summary"]["chunked_over_recurrent"], result["summary"]["peak_growth_per_step_of_T"]
    lengths = sorted({int(t) for by_t in ratio.values() for t in by_t})
    lines = [head, "", "| chunked over token loop (tokens/s) | " + " | ".join(f"T = {t:,}" for t in lengths)
             + " | peak growth per doubling of T: chunked | parallel |",
             "|---|" + "---|" * (len(lengths) + 2)]
    for name, by_t in ratio.items():
        steps = growth_.get(name, {})
        par = ", ".join(f"{x:.2f}" for x in steps["parallel"]) if "parallel" in steps else "-"
        lines.append(f"| {name} | " + " | ".join(f"{by_t[str(t)]:.1f}x" for t in lengths)
                     + f" | {', '.join(f'{x:.2f}' for x in steps.get('chunked', []))} | {par} |")
    return "\n".join(lines)
