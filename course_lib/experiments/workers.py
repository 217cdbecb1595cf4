"""Independent training runs (one design on one seed) in worker processes of one thread each.

A small model trains faster as several one-thread processes side by side than as one process
using every core: the matrices are too small for threads to pay. So the experiments that train
the same task on several seeds (:func:`course_lib.experiments.lesson05.mqar_reach`, lesson 06's
text runs, lesson 08's capacity run) hand their runs to :func:`map_runs`::

    for result in map_runs(train_one_run, [(design, seed) for ...], jobs=2):
        ...                                    # in the order of the items, as each is ready

Each run seeds itself, so its result does not depend on which process ran it, and ``jobs=1``
runs them here, one after the other (what a GPU wants: one process owns it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator

import torch

__all__ = ["default_jobs", "map_runs"]

#: the most worker processes :func:`default_jobs` starts (each holds its own copy of torch, ~300 MB)
MAX_JOBS = 4


def default_jobs(device="cpu", n_runs: int | None = None) -> int:
    """How many worker processes suit ``n_runs`` runs on ``device``: one per core on the CPU (at most
    :data:`MAX_JOBS`, at most ``n_runs``), 1 on a GPU (the runs share it better in one process)."""
    if torch.device(device).type != "cpu":
        return 1
    jobs = min(os.cpu_count() or 1, MAX_JOBS)
    return max(1, min(jobs, n_runs)) if n_runs is not None else jobs


def _one_thread():
    torch.set_num_threads(1)


def map_runs(fn: Callable, items: Iterable, jobs: int = 1) -> Iterator:
    """``fn(item)`` for each item, yielded in the items' order: here when ``jobs <= 1`` (or there is
    one item), else in ``jobs`` spawned processes of one thread each. ``fn`` must be a module-level
    function (a worker imports it by name) and items and results plain data or tensors."""
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"jobs must be a whole number >= 1, got {jobs!r}")
    items = list(items)
    if jobs == 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")  # fork would copy a kernel's threads and locks
    with ProcessPoolExecutor(min(jobs, len(items)), mp_context=context, initializer=_one_thread) as pool:
        yield from pool.map(fn, items)
