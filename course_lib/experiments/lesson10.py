r"""Lesson 10's long experiments: gated memories and hybrids on MQAR recall against distance.

Both run lesson 08's recall-against-distance benchmark (:mod:`course_lib.experiments.recall`: its
task, model, training, learning-rate sweep, seeds, equal *peak* working memory and result schema;
its docstring says why each is what it is), on other designs:

* ``recall`` (:func:`recall_designs`): the fixed-size memories of lessons 05-09 (linear attention,
  the delta rule with ``beta = 1`` and with DeltaNet's learned ``beta_t``, a window, compressive
  memory, as :func:`~course_lib.experiments.recall.distance_designs` makes them) against the gated
  ones of lesson 10: a decay memory with Mamba-2's learned ``alpha_t = exp(-softplus(W x_t + b))``
  and the gated delta rule with learned ``alpha_t`` and ``beta_t`` (Gated DeltaNet). Both gated
  memories hold the delta memory's state: one head of ``d_h = 64``, a ``64 x 64`` matrix, the
  bytes of a window of 32 pairs of two heads of 32 (the budget ``B = 32``). No full cache: the
  question is which *fixed-size* memory keeps a fact across random filler.
* ``hybrid`` (:func:`hybrid_designs`): five-layer models, the local window of 4 tokens at the
  bottom (the runner's stand-in for the short convolution) and four memory layers above it:

  - ``G G G W``: three gated-delta layers and one window (softmax) layer on top, the 3:1 ratio of
    Qwen3-Next (Gated DeltaNet : gated attention) and Kimi Linear (KDA : MLA), whose attention
    layer is every fourth;
  - ``G G G G``: all gated delta;
  - ``W W W W``: all window.

  Every layer has one head of ``d_h = 64`` (``d_model = 64``), so each memory layer holds the same
  bytes: a gated delta ``64 x 64`` matrix, or a window of ``n_c = 32`` keys and values of 64 (one
  head here rather than the recall run's two of 32: ``MemoryLM`` gives every layer the same head
  count, and one head is what the gated layers need). The three models have equal peak bytes.

**Budget (what was chosen and why).** Lesson 08's full distance setup unchanged (4 pairs, random
filler, training gaps 0-16, test gaps 0 to 4,096, 1,000 steps of batch 32, segments of 16, lr 1e-3
and 3e-3 swept on seed 0, seeds 0-2, 128 test rows per gap), so the rows of the designs both runs
share can be set beside lesson 08's (they agree with its file within the seed spread). Both full
runs had to finish in about two hours on the shared 2-core machine (load average 4-10 from other
jobs), one process each. Measured first (one run of 1,000 steps): the gated delta model took about
95 s on an idle core and 131-226 s under that load, the five-layer models 52-497 s (the all-window
one the fastest). The ``recall`` run took 2,658 s (7 designs x 4 runs). The ``hybrid`` file was made
in two steps: first at lr 1e-3 only (``--lrs 0.001 --resume``, 9 runs, 1,825 s), then ``--resume``
with the setup's two rates added the three 3e-3 runs on seed 0 (491 s): each model stayed on the
plateau there (6-8% validation accuracy on seed 0 against 35-52% at 1e-3), so every design's best
rate is 1e-3 and the file is what one ``hybrid --resume`` from scratch would write. In the
``recall`` sweep too 3e-3 left every matrix memory on the plateau (gated delta, decay, delta,
linear: 6-10% validation accuracy).

**Live runs.** :func:`live_recall` and :func:`live_hybrid` run the full task at a reduced budget.
Measured (seed 0, lr 1e-3, 2 or 4 pairs, 64 rows at gaps 0, 64, 256, load average 4-5): 300 steps of
the gated delta model took 31-35 s and stayed near the plateau (20-29% at gap 0, chance beyond); 300
steps of the G G G W hybrid took 71 s (17% at gap 0). The learning happens between 400 and 1,000
steps (43% at gap 0 after 400 steps; 97% after 1,000), so a notebook that must finish in seconds
shows the shipped files and reruns ``--quick`` (the pipeline, numbers meaningless), not a reduced
training.

Numbers come from :func:`run_recall` / :func:`run_hybrid` and the result files they write,
``docs/results/lesson10_recall.json`` and ``docs/results/lesson10_hybrid.json``, each with its
command. ``--quick`` is a seconds-long run that checks the pipeline (the tests, a notebook's
rerun); :func:`live_recall` and :func:`live_hybrid` are reduced trainings (one seed, one rate,
short gaps; what they cost is below). Tables and plots are lesson 08's
(:func:`~course_lib.experiments.recall.distance_table`, :func:`~course_lib.experiments.recall.plot_distance`),
read through :func:`recall_table` and :func:`plot_recall`.

    python -m course_lib.experiments.lesson10 recall --resume      # docs/results/lesson10_recall.json
    python -m course_lib.experiments.lesson10 hybrid --resume      # docs/results/lesson10_hybrid.json
    python -m course_lib.experiments.lesson10 recall --quick --out /tmp/r.json   # seconds
"""

from __future__ import annotations

import dataclasses

from . import recall
from .recall import DistanceSetup, design, layered_design
from .results import RESULTS, read_result

__all__ = ["RECALL_RESULT", "HYBRID_RESULT", "RECALL_FAMILIES", "GATED", "setup", "recall_designs",
           "hybrid_designs", "run_recall", "run_hybrid", "live_recall", "live_hybrid", "load_result",
           "recall_table", "plot_recall", "main"]

RECALL_RESULT = RESULTS / "lesson10_recall.json"
HYBRID_RESULT = RESULTS / "lesson10_hybrid.json"

#: the earlier designs :func:`recall_designs` takes from lesson 08's runner
RECALL_FAMILIES = ("delta", "window", "linear", "compressive")
#: Gated DeltaNet's memory with both gates learned
GATED = {"name": "gated_delta", "alpha": "learned", "beta": "learned"}


def setup(quick: bool = False, **changes) -> DistanceSetup:
    """The task, model and budget: lesson 08's full distance setup (``quick``: its seconds-long
    one), with ``changes`` (e.g. ``steps``)."""
    s = DistanceSetup.quick() if quick else DistanceSetup.full()
    return dataclasses.replace(s, **changes) if changes else s


def recall_designs(s: DistanceSetup) -> list[dict]:
    """The designs of the ``recall`` run, in the order they run (the gated ones first, so a run
    cut short keeps them): gated delta and decay (learned ``alpha``; one head of ``d_h = d_model``,
    the delta memory's state), then delta with learned and with fixed ``beta``, window, linear and
    compressive as :func:`~course_lib.experiments.recall.distance_designs` builds them."""
    d = s.d_model
    gated = [design(GATED, n_heads=1, d_model=d), design({"name": "decay", "alpha": "learned"}, n_heads=1, d_model=d)]
    older = [r for r in recall.distance_designs(s) if r["spec"]["name"] in RECALL_FAMILIES]
    first = [r for r in older if r["spec"] == {"name": "delta", "beta": "learned"}]
    return gated + first + [r for r in older if r not in first]


def hybrid_designs(s: DistanceSetup) -> list[dict]:
    """``G G G W`` (3 gated delta : 1 window), ``G G G G`` and ``W W W W``, each four memory layers
    of one head of ``d_h = d_model`` above the local window; the window holds ``n_c = d_model / 2``
    keys and values per layer, the bytes of one ``d_h x d_h`` gated delta matrix."""
    if s.local < 1:
        raise ValueError(f"the hybrids keep the local window at the bottom: local must be >= 1, got {s.local}")
    n_c, d = s.d_model // 2, s.d_model
    window = {"name": "window", "window": n_c}
    return [layered_design([GATED, GATED, GATED, window], d_model=d, family="hybrid",
                           label=f"hybrid G G G W (W: n_c={n_c}), d_h={d}"),
            layered_design([GATED] * 4, d_model=d, family="gated_delta", label=f"all gated delta G G G G, d_h={d}"),
            layered_design([window] * 4, d_model=d, family="window", label=f"all window W W W W (n_c={n_c}), d_h={d}")]


def run_recall(s: DistanceSetup | None = None, *, only=None, out=RECALL_RESULT, command: str | None = None,
               device="cpu", progress: bool = True, log=print, resume: bool = False) -> dict:
    """Train and measure :func:`recall_designs` with lesson 08's runner
    (:func:`~course_lib.experiments.recall.run_distance`: lr sweep on seed 0, the other seeds at
    the best, rows written after every run, ``resume`` keeps the runs done)."""
    s = setup() if s is None else s
    return recall.run_distance(s, designs=recall_designs(s), only=only, out=out, device=device, progress=progress,
                               log=log, resume=resume, experiment="gated memories: recall against distance",
                               command=command or "python -m course_lib.experiments.lesson10 recall")


def run_hybrid(s: DistanceSetup | None = None, *, only=None, out=HYBRID_RESULT, command: str | None = None,
               device="cpu", progress: bool = True, log=print, resume: bool = False) -> dict:
    """Train and measure :func:`hybrid_designs` as :func:`run_recall` does its designs."""
    s = setup() if s is None else s
    return recall.run_distance(s, designs=hybrid_designs(s), only=only, out=out, device=device, progress=progress,
                               log=log, resume=resume, experiment="hybrids: recall against distance",
                               command=command or "python -m course_lib.experiments.lesson10 hybrid")


def _live(designs_of, labels_or_families, *, steps: int, gaps, n_pairs: int, device) -> dict:
    s = setup(n_pairs=n_pairs, eval_gaps=tuple(gaps), steps=steps, lrs=(1e-3,), seeds=(0,), n_val=16, n_test=64)
    designs = [d for d in designs_of(s) if recall._family(d) in labels_or_families or d["label"] in labels_or_families]
    if not designs:
        raise ValueError(f"no design of {[recall._family(d) for d in designs_of(s)]} is among {labels_or_families!r}")
    return recall.run_distance(s, designs=designs, device=device, progress=False, log=lambda line: None)


def live_recall(families=("gated_delta",), *, steps: int = 1000, gaps=(0, 64, 256), n_pairs: int = 4,
                device="cpu") -> dict:
    """The reduced ``recall`` run a notebook affords: the full run's task, model and training for
    the designs of ``families`` (``"delta"``: both delta memories), one seed (0), lr 1e-3, short
    gaps, 64 test rows per gap. A result dict in the file's shape."""
    return _live(recall_designs, set(families), steps=steps, gaps=gaps, n_pairs=n_pairs, device=device)


def live_hybrid(families=("hybrid",), *, steps: int = 1000, gaps=(0, 64, 256), n_pairs: int = 4,
                device="cpu") -> dict:
    """The reduced ``hybrid`` run: as :func:`live_recall`, for the hybrids of ``families``
    (``hybrid``, ``gated_delta``, ``window``)."""
    return _live(hybrid_designs, set(families), steps=steps, gaps=gaps, n_pairs=n_pairs, device=device)


def load_result(path) -> dict:
    """A result file: a path or a name under ``docs/results/`` such as ``"lesson10_recall"``."""
    return read_result(path)


def recall_table(result: dict, value: str = "accuracy") -> str:
    """Either result as lesson 08's Markdown table (:func:`~course_lib.experiments.recall.distance_table`):
    design, bytes carried and at the peak, best lr, accuracy per gap (mean over seeds, min-max)."""
    return recall.distance_table(result, value)


def plot_recall(result: dict, value: str = "accuracy", title: str | None = None):
    """Either result as lesson 08's figure (:func:`~course_lib.experiments.recall.plot_distance`)."""
    return recall.plot_distance(result, value, title)


def main(argv=None) -> int:
    return recall.distance_main(
        argv, prog="python -m course_lib.experiments.lesson10", description=__doc__.split("\n")[0], setup=setup,
        runs={"recall": ("gated and earlier memories: MQAR recall against distance", RECALL_RESULT, run_recall),
              "hybrid": ("a window layer among gated-delta layers, against all-gated and all-window, on MQAR "
                         "recall against distance", HYBRID_RESULT, run_hybrid)})


if __name__ == "__main__":
    raise SystemExit(main())
