r"""Lesson 08's long experiments: MQAR recall against state bytes, and ms/token, for every memory.

``recall`` runs :mod:`course_lib.bench.recall` (the same designs, data, model and budget as
``python -m course_lib bench recall``) and writes every row, with the setup and the machine,
to a JSON file that lesson 08 plots. ``cost`` times one decoding step of each design's model
(untrained: the time of a step does not depend on the weights) with
:func:`course_lib.cost.measure_decode`.

    python -m course_lib.experiments.lesson08 recall --out docs/results/lesson08_recall.json
    python -m course_lib.experiments.lesson08 cost --out docs/results/lesson08_cost.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

__all__ = ["recall_rows", "cost_rows", "load_result", "recall_table", "pareto_front", "pareto_front_nd",
           "answer_accuracy", "error_by_age", "ar1_values", "compressed_slots", "age_errors", "live_recall", "main"]


def _clean(x):
    """JSON has no NaN: write None."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _machine() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")}


def recall_rows(setup=None, *, only=None, jobs: int = 1, device="cpu", log=print) -> list[dict]:
    """Train and measure the designs of :func:`course_lib.bench.recall.designs` under ``setup``
    (default: the full benchmark), ``jobs`` at a time; rows as dicts (``near``/``far`` are the
    accuracy on pairs asked within the window of ``setup.window`` tokens and beyond)."""
    from ..bench import recall

    s = recall.FULL if setup is None else setup
    only = None if only is None else {x.lower() for x in only}
    rows = recall.run_all(s, device=device, only=only, jobs=jobs, progress=False, log=log)
    return [dataclasses.asdict(r) for r in rows]


def cost_rows(setup=None, contexts=(32, 1024, 4096), *, steps: int = 32, repeats: int = 3, only=None) -> list[dict]:
    """ms per decoded token of each design's model after ``m`` tokens, for ``m`` in ``contexts``
    (the median of ``repeats`` timings of ``steps`` steps each, one torch thread), and its state
    bytes there."""
    from ..bench import recall
    from ..cost import measure_decode

    s = recall.FULL if setup is None else setup
    out = []
    for design in recall.designs(s):
        if only and design.family.lower() not in only:
            continue
        torch.manual_seed(s.seed)
        model = recall.build_model(s, design)
        runs = [measure_decode(model, contexts, steps=steps, progress=False) for _ in range(repeats)]
        for j, m in enumerate(contexts):
            times = sorted(run[j]["ms_per_token"] for run in runs)
            out.append({"label": design.label, "family": design.family, "context": m,
                        "ms_per_token": times[len(times) // 2], "nbytes": runs[0][j]["nbytes"]})
    return out


def pareto_front(nbytes, accuracy) -> list[int]:
    """Indices of the designs that no other design beats: none has ``bytes <=`` and
    ``accuracy >=`` with one of the two strict. Sorted by bytes, ties by index (equal designs
    both stay: neither beats the other).

    >>> pareto_front([4, 2, 2, 8, 4], [0.5, 0.3, 0.3, 0.9, 0.2])
    [1, 2, 0, 3]
    """
    nbytes, accuracy = list(nbytes), list(accuracy)
    if len(nbytes) != len(accuracy):
        raise ValueError(f"nbytes and accuracy must have the same length, got {len(nbytes)} and {len(accuracy)}")
    return pareto_front_nd([[b, -a] for b, a in zip(nbytes, accuracy)])


def pareto_front_nd(costs) -> list[int]:
    """Indices of the rows of ``costs`` (lower is better in every column) that no other row
    dominates, sorted by the first column, ties by index."""
    costs = [list(map(float, row)) for row in costs]

    def beats(a, b):
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    keep = [i for i, c in enumerate(costs) if not any(beats(o, c) for o in costs)]
    return sorted(keep, key=lambda i: (costs[i][0], i))


def answer_accuracy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> float:
    """Accuracy of ``logits.argmax(-1)`` at the positions whose target is not ``ignore_index``.

    ``logits [B, T, V]``, ``targets [B, T]``; a float in [0, 1]."""
    asked = targets != ignore_index
    if not bool(asked.any()):
        raise ValueError(f"no position has a target other than ignore_index={ignore_index}")
    return (logits.argmax(dim=-1)[asked] == targets[asked]).float().mean().item()


def error_by_age(values: torch.Tensor, spans, slot_values: torch.Tensor) -> torch.Tensor:
    """How well a memory keeps each token: ``[T]``, entry ``a`` for the token of age ``a``
    (position ``T - 1 - a``).

    ``values [T, D]`` are the stream's values ``v_0 .. v_{T-1}``; slot ``s`` stands for the
    positions ``spans[s] = (first, last)`` (inclusive) and holds ``slot_values[s]``. A token's
    error is ``|v_j - u_s|^2 / |v_j|^2`` for the slot ``s`` that covers it, and 1 when no slot
    does (forgotten: read back as zero)."""
    t = values.shape[0]
    err = torch.ones(t, dtype=values.dtype, device=values.device)
    for (first, last), u in zip(spans, slot_values):
        v = values[first:last + 1]  # [n, D]
        err[first:last + 1] = ((v - u) ** 2).sum(-1) / (v ** 2).sum(-1)
    return err.flip(0)  # position j -> age T - 1 - j


def ar1_values(n_streams: int, t: int, d: int, rho: float, *, seed: int = 0) -> torch.Tensor:
    """``[n_streams, T, D]`` values with correlation ``rho`` between neighbouring tokens (AR(1),
    unit variance): ``rho = 0`` independent tokens, ``rho -> 1`` a slowly drifting signal."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n_streams, t, d, generator=g, dtype=torch.float64)
    out = torch.empty_like(noise)
    out[:, 0] = noise[:, 0]
    for j in range(1, t):
        out[:, j] = rho * out[:, j - 1] + math.sqrt(1 - rho ** 2) * noise[:, j]
    return out


def compressed_slots(values: torch.Tensor, n_m: int, n_cm: int, c: int):
    """The slots of a compressive FIFO after the stream ``values [..., T, D]``, with ``f_c`` =
    mean pooling and the paper's rule (groups of ``c`` aligned at position 0): the newest ``n_m``
    tokens exactly, the newest ``n_cm`` groups of ``c`` older ones averaged. ``n_m = n_cm = 0``
    is not a memory; ``n_cm = 0`` a window; ``n_m = 0`` uniform compression.
    Returns ``(spans, slot_values [..., S, D])``, oldest first."""
    t = values.shape[-2]
    first_exact = max(0, t - n_m)
    n_groups = first_exact // c  # whole groups before the exact tokens
    spans, slots = [], []
    for g in range(max(0, n_groups - n_cm), n_groups):
        spans.append((g * c, g * c + c - 1))
        slots.append(values[..., g * c:g * c + c, :].mean(-2))
    for j in range(n_groups * c, t):  # a partial group (if any) and the exact tokens stay as they are
        spans.append((j, j))
        slots.append(values[..., j, :])
    return spans, torch.stack(slots, -2)


def age_errors(values: torch.Tensor, n_m: int, n_cm: int, c: int) -> torch.Tensor:
    """:func:`error_by_age` of :func:`compressed_slots`, averaged over the streams of
    ``values [N, T, D]``: ``[T]``."""
    spans, slots = compressed_slots(values, n_m, n_cm, c)
    return torch.stack([error_by_age(v, spans, s) for v, s in zip(values, slots)]).mean(0)


def live_recall(families=("full", "window", "knn"), steps: int = 200, *, n_train: int = 4000, n_test: int = 300,
                device="cpu"):
    """A reduced run of the recall benchmark: the same designs, data and model, fewer steps and
    examples. Returns ``(rows, per_answer)``: rows as in :func:`recall_rows`, and for each
    label ``(gaps, right)``, the gap and correctness of every held-out answer."""
    from ..bench import recall
    from ..data import IGNORE
    from ..train import forward_segments, predict, train

    s = dataclasses.replace(recall.FULL, steps=steps, n_train=n_train, n_test=n_test)
    data, test = recall.task_data(s)
    x, y = test
    gaps = recall.query_gaps(x, y, s.n_pairs)
    rows, per_answer = [], {}
    for design in recall.designs(s):
        if design.family.lower() not in families:
            continue
        torch.manual_seed(s.seed)
        model = recall.build_model(s, design)
        t0 = time.perf_counter()
        train(model, data, s.steps, batch_size=s.batch_size, lr=s.lr, warmup=min(50, s.steps // 10),
              schedule=s.schedule, segment_len=s.segment_len, device=device, seed=s.seed, progress=False)
        seconds = time.perf_counter() - t0
        right = (predict(model, x, segment_len=s.segment_len, device=device).cpu() == y)[y != IGNORE].float()
        near = gaps < s.window
        _, state = forward_segments(model.eval(), x[:1].to(device), s.segment_len)
        rows.append({"label": design.label, "family": design.family, "nbytes": model.state_nbytes(state),
                     "accuracy": right.mean().item(), "near": right[near].mean().item(),
                     "far": right[~near].mean().item(), "seconds": seconds})
        per_answer[design.label] = (gaps, right)
    return rows, per_answer


def load_result(path) -> dict:
    """A result file written by :func:`main` (``rows`` plus ``setup``, ``command``, ``machine``)."""
    return json.loads(Path(path).read_text())


def recall_table(result: dict) -> str:
    """The recall result as a Markdown table (design, bytes, accuracy, gap < window, gap >= window):
    what README.md shows, rendered from the same file lesson 08 reads, so the two cannot disagree."""
    window = result["setup"]["window"]
    lines = [f"| design | bytes | accuracy | gap < {window} | gap >= {window} |", "|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['label']} | {row['nbytes']:,} | {row['accuracy']:.1%} | {row['near']:.1%} | "
                     f"{row['far']:.1%} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.experiments.lesson08",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    rec = sub.add_parser("recall", help="MQAR accuracy against state bytes (bench recall's designs), as JSON")
    rec.add_argument("--steps", type=int, default=None)
    rec.add_argument("--only", default=None, help="comma-separated families (default: all)")
    rec.add_argument("--jobs", type=int, default=2)
    rec.add_argument("--out", default="docs/results/lesson08_recall.json")
    cost = sub.add_parser("cost", help="ms/token of each design's model at a few context lengths, as JSON")
    cost.add_argument("--contexts", default="32,1024,4096")
    cost.add_argument("--out", default="docs/results/lesson08_cost.json")
    args = parser.parse_args(argv)

    from ..bench import recall

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    given = argv if argv is not None else sys.argv[1:]
    result = {"command": "python -m course_lib.experiments.lesson08 " + " ".join(given),
              "machine": _machine()}
    if args.what == "recall":
        s = recall.FULL if args.steps is None else dataclasses.replace(recall.FULL, steps=args.steps)
        only = None if args.only is None else args.only.split(",")
        result["setup"] = dataclasses.asdict(s)
        result["rows"] = recall_rows(s, only=only, jobs=args.jobs, log=lambda line: print(line, flush=True))
        print(recall.format_table([recall.Row(**r) for r in result["rows"]], s))
    else:
        contexts = tuple(int(x) for x in args.contexts.split(","))
        result["setup"] = dataclasses.asdict(recall.FULL)
        result["rows"] = cost_rows(recall.FULL, contexts)
        for r in result["rows"]:
            print(f"{r['label']:<32} m={r['context']:>6}  {r['ms_per_token']:7.3f} ms/token  {r['nbytes']:>9} B")
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_clean(result), indent=1) + "\n")
    print(f"wrote {out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
