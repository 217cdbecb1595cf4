r"""Lesson 08's long experiments: MQAR recall against distance and state size, and ms/token.

``recall`` and ``capacity`` run :mod:`course_lib.experiments.recall` (the runner behind
``python -m course_lib bench recall`` too; its docstring says what is measured, at which sizes
and why) and write result files in the one schema (:mod:`course_lib.experiments.results`) that
lesson 08 and the README render. ``cost`` times one decoding step of each design's model
(untrained: the time of a step does not depend on the weights) with
:func:`course_lib.cost.measure_decode`.

    python -m course_lib.experiments.lesson08 recall      # docs/results/lesson08_recall.json
    python -m course_lib.experiments.lesson08 capacity    # docs/results/lesson08_capacity.json
    python -m course_lib.experiments.lesson08 recall --quick --out /tmp/r.json   # seconds
    python -m course_lib.experiments.lesson08 cost --out docs/results/lesson08_cost.json
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time

import torch

__all__ = ["recall_rows", "cost_rows", "load_result", "recall_table", "pareto_front", "pareto_front_nd",
           "answer_accuracy", "error_by_age", "ar1_values", "compressed_slots", "age_errors", "live_recall", "main"]


def recall_rows(setup=None, *, only=None, device="cpu", out=None, log=print) -> list[dict]:
    """Train and measure the designs of :func:`course_lib.experiments.recall.distance_designs`
    (recall against distance, equal peak bytes, a learning-rate sweep and seeds) under ``setup``
    (default: the full run); its rows (one per design, lr, seed and gap), also written to ``out``."""
    from . import recall

    only = None if only is None else {x.lower() for x in only}
    return recall.run_distance(setup, only=only, device=device, out=out, progress=False, log=log)["rows"]


def cost_rows(setup=None, contexts=(32, 1024, 4096), *, steps: int = 32, repeats: int = 3, only=None,
              designs=None) -> list[dict]:
    """ms per decoded token of each design's model after ``m`` tokens, for ``m`` in ``contexts``
    (the median of ``repeats`` timings of ``steps`` steps each, one torch thread), and its state
    bytes there. The designs are ``designs`` (records of :func:`course_lib.experiments.recall.design`),
    by default those of the recall benchmark (:func:`course_lib.experiments.recall.distance_designs`),
    untrained."""
    from ..cost import measure_decode
    from . import recall

    s = recall.DistanceSetup.full() if setup is None else setup
    out = []
    for design in recall.distance_designs(s) if designs is None else designs:
        family = design["spec"]["name"]
        if only and family not in only:
            continue
        torch.manual_seed(0)
        model = recall.build_model(design, vocab_size=s.vocab_size, n_layers=s.n_layers, local=s.local)
        runs = [measure_decode(model, contexts, steps=steps, progress=False) for _ in range(repeats)]
        for j, m in enumerate(contexts):
            times = sorted(run[j]["ms_per_token"] for run in runs)
            out.append({"label": design["label"], "family": family, "spec": design["spec"], "context": m,
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


def pareto_front_nd(costs, ties=None) -> list[int]:
    """Indices of the rows of ``costs`` (lower is better in every column) that no other row
    dominates, sorted by the first column, ties by index. ``ties``: per column, differences up to
    this much count as equal (a timing's noise, say), so that a row beats another only where it is
    better by more than that; default 0 in every column."""
    costs = [list(map(float, row)) for row in costs]
    width = len(costs[0]) if costs else 0
    ties = [0.0] * width if ties is None else [float(t) for t in ties]
    if len(ties) != width or any(not t >= 0 for t in ties):
        raise ValueError(f"ties must give one tolerance >= 0 per column ({width}), got {ties}")

    def beats(a, b):
        return (all(x <= y + t for x, y, t in zip(a, b, ties))
                and any(x < y - t for x, y, t in zip(a, b, ties)))

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


def live_recall(families=("window", "delta"), steps: int = 1000, *, gaps=(0, 16, 64), n_pairs: int = 4,
                device="cpu") -> dict:
    """A reduced run of the recall-against-distance benchmark a notebook affords (about 25 s per
    design on 2 CPU cores): :func:`course_lib.experiments.recall.live_distance`. Returns a result
    dict in the shape of the file (``rows``, ``setup``, ``best_lr``)."""
    from . import recall

    return recall.live_distance(families, steps=steps, gaps=gaps, n_pairs=n_pairs, device=device)


def load_result(path) -> dict:
    """A result file (:func:`course_lib.experiments.results.read_result`): a path or a name under
    ``docs/results/`` such as ``"lesson08_recall"``."""
    from .results import read_result

    return read_result(path)


def recall_table(result: dict, value: str = "accuracy") -> str:
    """The recall-against-distance result as a Markdown table (design, d_model, bytes carried and
    at the peak, best lr, accuracy per gap: mean over seeds with min-max): what README.md shows,
    rendered from the same file lesson 08 reads, so the two cannot disagree.
    ``value="from_memory"``: only the answers whose value lies before the question's segment."""
    from .recall import distance_table

    return distance_table(result, value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.experiments.lesson08",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    rec = sub.add_parser("recall", help="MQAR recall against distance at equal peak bytes, lr sweep and seeds")
    cap = sub.add_parser("capacity", help="MQAR recall against the number of pairs and the state size")
    for p, default in ((rec, "docs/results/lesson08_recall.json"), (cap, "docs/results/lesson08_capacity.json")):
        p.add_argument("--quick", action="store_true", help="a tiny run that checks the pipeline (seconds)")
        p.add_argument("--steps", type=int, default=None, help="training steps per run (default: the setup's)")
        p.add_argument("--only", default=None,
                       help="families or labels, separated by ',' (or by ';' when a label holds a comma); default: all")
        p.add_argument("--resume", action="store_true", help="keep the runs already in --out and skip them")
        p.add_argument("--device", default="cpu")
        p.add_argument("--out", default=default)
    cap.add_argument("--jobs", type=int, default=1, help="worker processes of one thread (one run each at a time)")
    cost = sub.add_parser("cost", help="ms/token of each design's model at a few context lengths, as JSON")
    cost.add_argument("--contexts", default="32,1024,4096")
    cost.add_argument("--out", default="docs/results/lesson08_cost.json")
    args = parser.parse_args(argv)

    from . import recall
    from .results import write_result

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    given = argv if argv is not None else sys.argv[1:]
    command = "python -m course_lib.experiments.lesson08 " + " ".join(given)
    log = lambda line: print(line, flush=True)  # noqa: E731
    if args.what in ("recall", "capacity"):
        kind = recall.DistanceSetup if args.what == "recall" else recall.CapacitySetup
        s = kind.quick() if args.quick else kind.full()
        if args.steps is not None:
            s = dataclasses.replace(s, steps=args.steps)
        sep = ";" if args.only and ";" in args.only else ","  # labels hold commas: separate them by ';'
        only = None if args.only is None else {x.strip() for x in args.only.split(sep)}
        runner = recall.run_distance if args.what == "recall" else recall.run_capacity
        jobs = {"jobs": args.jobs} if args.what == "capacity" else {}
        result = runner(s, only=only, out=args.out, command=command, device=args.device, log=log,
                        resume=args.resume, **jobs)
        print(recall.distance_table(result) if args.what == "recall" else recall.capacity_table(result))
    else:
        contexts = tuple(int(x) for x in args.contexts.split(","))
        rows = cost_rows(None, contexts)
        for r in rows:
            print(f"{r['label']:<48} m={r['context']:>6}  {r['ms_per_token']:7.3f} ms/token  {r['nbytes']:>9} B")
        write_result(args.out, command=command, rows=rows, seeds=[0],
                     setup=dataclasses.asdict(recall.DistanceSetup.full()), seconds=time.perf_counter() - t0)
    print(f"wrote {args.out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
