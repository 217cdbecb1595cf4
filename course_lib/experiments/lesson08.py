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

__all__ = ["recall_rows", "cost_rows", "load_result", "main"]


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


def load_result(path) -> dict:
    """A result file written by :func:`main` (``rows`` plus ``setup``, ``command``, ``machine``)."""
    return json.loads(Path(path).read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.experiments.lesson08", description=__doc__.split("\n")[0])
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
    result = {"command": "python -m course_lib.experiments.lesson08 " + " ".join(argv if argv is not None else sys.argv[1:]),
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
