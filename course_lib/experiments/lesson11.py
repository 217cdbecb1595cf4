r"""Lesson 11's long experiments: caches that keep softmax but shrink, beside the fixed-size memories.

Two measurements, each one command that writes a result file:

* ``recall`` (:func:`recall_designs`): lesson 08's recall-against-distance benchmark
  (:mod:`course_lib.experiments.recall`: MQAR with random filler, training gaps 0-16, test gaps 0 to
  4,096, lr 1e-3 and 3e-3 swept on seed 0, seeds 0-2, equal *peak* working memory) on the three ways
  a softmax cache shrinks:

  - *precision*: :class:`~course_lib.memory.QuantizedKVMemory` over a window (KIVI's 4-bit and
    2-bit keys per channel and values per token, the newest ``residual`` pairs in full precision),
    its window as long as the budget allows (:func:`fit`): fewer bits per pair buy more pairs;
  - *which pairs*: :class:`~course_lib.memory.HeavyHitterMemory` (H2O: the ``recent`` newest pairs
    and the most attended older ones), its budget of pairs as large as the bytes allow;
  - *numbers per pair*: :class:`~course_lib.memory.LatentMemory` (multi-head latent attention:
    one latent of rank ``r`` per token), and a 4-bit cache of every pair: both keep every token and
    grow with the context, only slower than the full cache, so they are not held to the budget;
    their bytes at each gap are in the rows.

  The fixed-size designs sit at the peak bytes of lesson 08's window of ``B = 32`` pairs
  (18,432 B). The best fixed-size memories of lessons 05-10 (the delta rule with a learned
  ``beta_t``, the gated delta rule, the window) ran on exactly this setup in lesson 10's file
  (``docs/results/lesson10_recall.json``), so the lesson sets those rows beside these rather than
  training them again.
* ``cost``: ms per decoded token and state bytes against the context (32 to 4,096 tokens) of every
  design of both files, untrained (:func:`course_lib.experiments.lesson08.cost_rows`).

    python -m course_lib.experiments.lesson11 recall --resume   # docs/results/lesson11_recall.json
    python -m course_lib.experiments.lesson11 cost              # docs/results/lesson11_cost.json
    python -m course_lib.experiments.lesson11 recall --quick --out /tmp/r.json   # seconds
"""

from __future__ import annotations

import dataclasses

import torch

from . import recall
from .recall import DistanceSetup, design
from .results import RESULTS

__all__ = ["RECALL_RESULT", "COST_RESULT", "setup", "fit", "layer_bytes", "recall_designs", "cost_designs",
           "run_recall", "run_cost", "main"]

RECALL_RESULT = RESULTS / "lesson11_recall.json"
COST_RESULT = RESULTS / "lesson11_cost.json"
#: lesson 10's file: the best fixed-size memories of lessons 05-10 on the same setup
FIXED_RESULT = RESULTS / "lesson10_recall.json"
#: ``G = R`` of the quantised caches: with a budget of 32 fp32 pairs, the ``R + G - 1`` exact pairs a
#: KIVI cache may hold must leave room for codes (``G = R = 16`` would fill the budget with exact pairs)
GROUP = 8


def setup(quick: bool = False, **changes) -> DistanceSetup:
    """Lesson 08's full distance setup (``quick``: its seconds-long one), with ``changes``."""
    s = DistanceSetup.quick() if quick else DistanceSetup.full()
    return dataclasses.replace(s, **changes) if changes else s


@torch.no_grad()
def layer_bytes(record: dict, *, length: int = 256, cycle: int = 1) -> int:
    """The largest ``nbytes`` of the record's memory (one layer, batch 1, random keys and values of the
    record's heads) after ``length`` to ``length + cycle - 1`` tokens. The designs share the rest of
    the model (the local window of the first layer) and none reads its segment
    (``Memory.reads_segment``), so equal layer bytes are equal peak bytes of the model."""
    from .specs import build_memory

    heads = record["n_heads"]
    d_h = record["d_model"] // heads
    mem = build_memory(record["spec"], n_heads=heads)
    x = torch.randn(1, heads, length + cycle, d_h, generator=torch.Generator().manual_seed(0))
    _, state = mem(x[:, :, :length], x[:, :, :length], x[:, :, :length], mem.init_state(1, heads, d_h))
    most = mem.nbytes(state)
    for i in range(length, length + cycle - 1):
        _, state = mem(x[:, :, i:i + 1], x[:, :, i:i + 1], x[:, :, i:i + 1], state)
        most = max(most, mem.nbytes(state))
    return most


def fit(make, s: DistanceSetup, *, low: int = 1, high: int = 1024, cycle: int = 1, n_heads: int = 2) -> dict:
    """The design ``make(n)`` with the largest ``n`` in ``[low, high]`` whose :func:`layer_bytes` is at
    most those of the window of ``B = s.budget`` pairs (the budget of every fixed-size design; ``n_heads``
    heads of ``d_h = s.d_model / n_heads``); bytes grow with ``n``, so a bisection."""
    limit = layer_bytes(design({"name": "window", "window": s.budget}, n_heads=n_heads, d_model=s.d_model))
    if layer_bytes(make(low), cycle=cycle) > limit:
        raise ValueError(f"even n={low} exceeds the budget of {limit} B")
    while low < high:
        mid = (low + high + 1) // 2
        if layer_bytes(make(mid), cycle=cycle) <= limit:
            low = mid
        else:
            high = mid - 1
    return make(low)


def recall_designs(s: DistanceSetup, *, n_heads: int = 2) -> list[dict]:
    """The designs of the ``recall`` run, in the order they run: 4-bit window, H2O, 2-bit window
    (each as large as the budget allows), then the growing ones (latent rank ``d_h / 2``, a 4-bit
    cache of every pair). Group and residual of the quantised caches: :data:`GROUP`. ``n_heads``
    heads of ``d_h = s.d_model / n_heads`` (2 in the recall run; lesson 06's text task and the
    capstone size the same designs for their own models with it)."""
    d = s.d_model
    d_h = d // n_heads
    group = {"group": GROUP, "residual": GROUP}

    def make(spec):
        return design(spec, n_heads=n_heads, d_model=d)

    def quantized(bits):
        return lambda n: make({"name": "quantized", "bits": bits, **group, "window": n})

    return [
        fit(quantized(4), s, low=GROUP, n_heads=n_heads),
        fit(lambda n: make({"name": "heavy_hitter", "budget": n, "recent": n // 2}), s, low=2, high=64,
            n_heads=n_heads),
        fit(quantized(2), s, low=GROUP, n_heads=n_heads),
        make({"name": "latent", "rank": d_h // 2, "rope_dim": max(2, d_h // 8 * 2)}),
        make({"name": "quantized", "bits": 4, **group}),
    ]


def cost_designs(s: DistanceSetup) -> list[dict]:
    """:func:`recall_designs`, then the full cache, the window and the best fixed-size memories of
    lesson 10's file (delta with learned ``beta_t``, gated delta)."""
    from .lesson10 import GATED

    d = s.d_model
    return recall_designs(s) + [design({"name": "full"}, d_model=d),
                                design({"name": "window", "window": s.budget}, d_model=d),
                                design({"name": "delta", "beta": "learned"}, n_heads=1, d_model=d),
                                design(GATED, n_heads=1, d_model=d)]


def run_recall(s: DistanceSetup | None = None, *, only=None, out=RECALL_RESULT, command: str | None = None,
               device="cpu", progress: bool = True, log=print, resume: bool = False) -> dict:
    """Train and measure :func:`recall_designs` with lesson 08's runner
    (:func:`~course_lib.experiments.recall.run_distance`)."""
    s = setup() if s is None else s
    return recall.run_distance(s, designs=recall_designs(s), only=only, out=out, device=device, progress=progress,
                               log=log, resume=resume, experiment="compressed softmax caches: recall against distance",
                               command=command or "python -m course_lib.experiments.lesson11 recall")


def run_cost(s: DistanceSetup | None = None, contexts=(32, 256, 1024, 4096), *, out=COST_RESULT,
             command: str | None = None, repeats: int = 3) -> dict:
    """ms per token and bytes against the context of :func:`cost_designs` (one thread), written to ``out``."""
    import time

    from .lesson08 import cost_rows
    from .results import write_result

    s = setup() if s is None else s
    t0 = time.perf_counter()
    rows = cost_rows(s, contexts, repeats=repeats, designs=cost_designs(s))
    command = command or "python -m course_lib.experiments.lesson11 cost"
    write_result(out, command=command, rows=rows, seeds=[0], setup=dataclasses.asdict(s),
                 seconds=time.perf_counter() - t0)
    return {"rows": rows}


def main(argv=None) -> int:
    import sys

    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["cost"]:
        import argparse

        parser = argparse.ArgumentParser(
            prog="python -m course_lib.experiments.lesson11 cost",
            description="bytes and ms per decoded token against the context, untrained models, one thread")
        parser.add_argument("--out", default=str(COST_RESULT), help=f"result JSON (default {COST_RESULT})")
        out = parser.parse_args(given[1:]).out  # --help or an unknown option exits here, before any timing
        torch.set_num_threads(1)
        command = "python -m course_lib.experiments.lesson11 cost" + ("" if out == str(COST_RESULT) else
                                                                   f" --out {out}")
        result = run_cost(out=out, command=command)
        for r in result["rows"]:
            print(f"{r['label']:<56} m={r['context']:>5}  {r['ms_per_token']:7.3f} ms/token  {r['nbytes']:>9} B")
        print(f"wrote {out}")
        return 0
    return recall.distance_main(
        argv, prog="python -m course_lib.experiments.lesson11", description=__doc__.split("\n")[0], setup=setup,
        runs={"recall": ("quantised, evicting and latent caches: MQAR recall against distance", RECALL_RESULT,
                         run_recall)})


if __name__ == "__main__":
    raise SystemExit(main())
