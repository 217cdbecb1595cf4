r"""Lesson 05's experiments: what a fixed matrix memory can hold, and MQAR at equal peak bytes.

* :func:`read_back`: write ``n`` associations ``(k_j, v_j)`` into a ``d x d_v`` matrix memory
  and read every one back with its own key. Three memories:

  - ``"sum"``: the plain outer-product memory ``S = sum_j k^_j^T v_j`` with unit keys,
    read as ``k^ S`` (fast weights without a feature map);
  - ``"linear"``: :class:`~course_lib.memory.LinearMemory`'s state, ``S = sum phi(k_j)^T v_j``,
    ``z = sum phi(k_j)``, read as ``phi(k) S / (phi(k) . z)`` with ``phi = elu + 1``;
  - ``"delta"``: :class:`~course_lib.memory.DeltaMemory`'s state after the delta rule
    ``S_j = S_{j-1} + beta k^_j^T (v_j - k^_j S_{j-1})``, read as ``k^ S``.

* :func:`capacity` sweeps ``n`` for random or orthogonal keys and reports the mean cosine
  similarity between what is read and what was written: over all pairs, over the newest
  ones and over the oldest ones.

* :func:`recall_at`, :func:`recall_threshold`, :func:`capacity_sweep`: recall with a discrete
  read-out (the nearest of ``V`` candidate values), no training: how many random-key pairs a
  ``d x d_v`` state holds at >= 90% recall, against :func:`capacity_law` ``d d_v / (4 ln V)``.

* :func:`mqar_reach`: window, Transformer-XL and Compressive memories trained on MQAR (the recall
  benchmark's task) on several seeds, with their carried and peak bytes, accuracy per answer with
  its gap and whether the answer lay in the query's own segment.

* :func:`rotary_recall` (``python -m course_lib.experiments.lesson05 rotary``, a result file): a delta
  memory with and without rotary keys on MQAR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

__all__ = ["read_back", "capacity", "recall_at", "recall_threshold", "capacity_law", "capacity_sweep",
           "orthogonal_keys", "MqarSetup", "mqar_designs", "mqar_reach", "accuracy_by_gap",
           "rotary_recall", "main"]

KINDS = ("sum", "linear", "delta")


def read_back(kind: str, K: torch.Tensor, V: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Write the rows of ``K [B, n, d]``, ``V [B, n, d_v]`` in order, then read with every key:
    returns ``[B, n, d_v]`` (row ``j`` is what the memory returns for ``k_j``)."""
    from ..memory import delta_rule_chunked
    from ..memory.linear import phi

    if kind == "sum":
        kn = F.normalize(K, dim=-1)
        return kn @ (kn.transpose(-2, -1) @ V)
    k, v = K[:, None], V[:, None]  # [B, 1, n, d]: one head
    if kind == "linear":
        f = phi(K)  # [B, n, d]
        S, z = f.transpose(-2, -1) @ V, f.sum(1)  # S = sum phi(k_j)^T v_j [B, d, d_v], z = sum phi(k_j) [B, d]
        return (f @ S) / (f @ z[..., None])
    if kind == "delta":
        _, S = delta_rule_chunked(k, k, v, beta)
        return F.normalize(K, dim=-1) @ S[:, 0]
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def orthogonal_keys(batch: int, n: int, d: int, *, generator=None, dtype=torch.float64) -> torch.Tensor:
    """``[batch, n, d]`` keys: the first ``min(n, d)`` orthonormal, the rest random unit vectors."""
    a = torch.randn(batch, d, d, generator=generator, dtype=dtype)
    q, _ = torch.linalg.qr(a)  # columns orthonormal
    keys = q.transpose(-2, -1)[:, : min(n, d)]
    if n > d:
        extra = F.normalize(torch.randn(batch, n - d, d, generator=generator, dtype=dtype), dim=-1)
        keys = torch.cat([keys, extra], 1)
    return keys


def capacity(d: int, ns, *, kinds=KINDS, keys: str = "random", reps: int = 32, recent: int = 8,
             seed: int = 0) -> dict:
    """Mean cosine(read, written) against ``n`` for each memory: ``{kind: {"all", "newest", "oldest"}}``,
    each a list over ``ns`` (``newest``/``oldest``: the ``recent`` newest / oldest pairs)."""
    gen = torch.Generator().manual_seed(seed)
    out = {kind: {"all": [], "newest": [], "oldest": []} for kind in kinds}
    for n in ns:
        if keys == "random":
            K = torch.randn(reps, n, d, generator=gen, dtype=torch.float64)
        elif keys == "orthogonal":
            K = orthogonal_keys(reps, n, d, generator=gen)
        else:
            raise ValueError(f"keys must be 'random' or 'orthogonal', got {keys!r}")
        V = torch.randn(reps, n, d, generator=gen, dtype=torch.float64)
        for kind in kinds:
            cos = F.cosine_similarity(read_back(kind, K, V), V, dim=-1)  # [reps, n]
            out[kind]["all"].append(cos.mean().item())
            out[kind]["newest"].append(cos[:, -recent:].mean().item())
            out[kind]["oldest"].append(cos[:, :recent].mean().item())
    return out


def recall_at(kind: str, d: int, d_v: int, n: int, n_values: int, *, reps: int | None = None, seed: int = 0,
              keys: str = "random") -> float:
    """Recall with a discrete read-out: write ``n`` pairs ``(k_j, v_j)`` into a ``d x d_v`` memory
    (``kind`` as in :func:`read_back`), the values drawn from a codebook of ``V = n_values`` random
    unit vectors of ``d_v`` numbers, then decode every read ``k_j S`` to its nearest codebook entry
    (largest dot product). Returns the fraction of pairs decoded right, over ``reps`` memories
    (``None``: enough memories for about 1,024 pairs in all, at least 2); the codebook is
    shared by them."""
    if reps is None:
        reps = max(2, -(-1024 // n)) if isinstance(n, int) and n > 0 else 1
    if keys not in ("random", "orthogonal"):
        raise ValueError(f"keys must be 'random' or 'orthogonal', got {keys!r}")
    for name, value in (("d", d), ("d_v", d_v), ("n", n), ("n_values", n_values), ("reps", reps)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    gen = torch.Generator().manual_seed(seed)
    if keys == "random":
        K = torch.randn(reps, n, d, generator=gen, dtype=torch.float64)
    else:
        K = orthogonal_keys(reps, n, d, generator=gen)
    book = F.normalize(torch.randn(n_values, d_v, generator=gen, dtype=torch.float64), dim=-1)  # [V, d_v]
    idx = torch.randint(n_values, (reps, n), generator=gen)  # which value each pair stores
    V = book[idx]  # [reps, n, d_v]
    guess = (read_back(kind, K, V) @ book.T).argmax(-1)  # nearest value  [reps, n]
    return (guess == idx).double().mean().item()


def recall_threshold(kind: str, d: int, d_v: int, n_values: int, *, threshold: float = 0.9, reps: int | None = None,
                     seed: int = 0, n_max: int = 4096) -> int:
    """The largest ``n`` (up to ``n_max``) at which :func:`recall_at` is still ``>= threshold``,
    found by bisection (recall falls with ``n``); ``0`` if even one pair is decoded worse."""
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    ok = lambda n: recall_at(kind, d, d_v, n, n_values, reps=reps, seed=seed) >= threshold  # noqa: E731
    if not ok(1):
        return 0
    lo, hi = 1, 2
    while hi <= n_max and ok(hi):
        lo, hi = hi, 2 * hi
    if hi > n_max:
        return n_max if ok(n_max) else _bisect(ok, lo, n_max)
    return _bisect(ok, lo, hi)


def _bisect(ok, lo: int, hi: int) -> int:
    """Largest n in [lo, hi) with ok(n), given ok(lo) and not ok(hi)."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def capacity_law(d: int, d_v: int, n_values: int) -> float:
    """``d d_v / (4 ln V)``: the number of random-key pairs a ``d x d_v`` sum memory holds before
    nearest-value decoding among ``V`` values fails (cross-talk SNR ``sqrt(d d_v / (2 (n - 1)))``
    against the ``sqrt(2 ln V)`` that the largest of ``V`` wrong scores reaches)."""
    return d * d_v / (4 * math.log(n_values))


def capacity_sweep(configs, *, kinds=("sum", "delta", "linear"), threshold: float = 0.9, reps: int | None = None,
                   seed: int = 0) -> list[dict]:
    """:func:`recall_threshold` for each ``(d, d_v, V)`` of ``configs`` and each memory: rows
    ``{"kind", "d", "d_v", "V", "n_star", "law"}`` (``law``: :func:`capacity_law`)."""
    rows = []
    for d, d_v, n_values in configs:
        for kind in kinds:
            n_star = recall_threshold(kind, d, d_v, n_values, threshold=threshold, reps=reps, seed=seed)
            rows.append({"kind": kind, "d": d, "d_v": d_v, "V": n_values, "n_star": n_star,
                         "law": capacity_law(d, d_v, n_values)})
    return rows


# ------------------------------------------------------------------------------ MQAR


@dataclass(frozen=True)
class MqarSetup:
    """The recall benchmark's MQAR task (4 pairs in 32 tokens, segments of ``n_s = 16``) with
    ``slots`` key/value slots per head in the memory layer (``n_c`` of a window, ``n_m`` of
    Transformer-XL, ``n_m + n_cm`` of the compressive memory). ``random_fill``: random tokens between
    the queries (Zoology's default) or token 0."""

    steps: int = 300
    slots: int = 8
    ratio: int = 2  # c of the compressive design (n_m = n_cm = slots / 2)
    random_fill: bool = True


def mqar_designs(s: MqarSetup, segment_len: int) -> dict:
    """The designs of :func:`mqar_reach` as plain-data specs (:mod:`.specs`): ``window`` (``n_c`` =
    ``slots``: the same carried bytes as XL), ``window_peak`` (``n_c = slots + n_s``: the same *peak*
    working memory as XL, whose queries also see their whole segment), ``xl`` and ``compressive``."""
    half = s.slots // 2
    return {"window": {"name": "window", "window": s.slots},
            "window_peak": {"name": "window", "window": s.slots + segment_len},
            "xl": {"name": "segment", "mem_len": s.slots},
            "compressive": {"name": "compressive", "mem_len": half, "cmem_len": half, "ratio": s.ratio,
                            "compress": "mean"}}


def mqar_reach(s: MqarSetup = MqarSetup(), designs=("window", "xl", "compressive"), *, seeds=(0,), device="cpu",
               progress=False, jobs: int = 1) -> dict:
    """Train each design (its memory in the second layer; the first is a 4-token window, as in
    ``bench recall``) on MQAR, once per seed (the seed sets the initialisation and the order of the
    batches; the data are the same). Returns

    * ``gaps`` ``[n_answers]``: tokens back from each test answer's query to the asked value;
    * ``same_segment`` ``[n_answers]`` bool: the value lies in the query's own segment of ``n_s``
      tokens (a segment memory sees it there in full), else only a memory can bring it;
    * ``designs``: per design its ``label``, ``spec``, carried-state bytes ``nbytes``, peak working
      memory ``peak_nbytes`` (:meth:`~course_lib.models.MemoryLM.peak_nbytes`: the carried state plus
      the segment a segment memory attends to), ``right_seeds`` ``[n_seeds, n_answers]`` (which answers
      each seed's model got right) and ``right`` (the first seed's).

    ``device``: where to train (the lessons pass ``pick_device()``); ``jobs``: worker processes of one
    thread each (:func:`~course_lib.experiments.workers.map_runs`; the lessons pass
    :func:`~course_lib.experiments.workers.default_jobs`), each training one (design, seed)."""
    from ..bench.recall import FULL, query_gaps, task_data
    from ..data import IGNORE
    from .specs import spec_label
    from .workers import map_runs

    setup = replace(FULL, steps=s.steps, window=s.slots, random_fill=s.random_fill)
    specs = mqar_designs(s, setup.segment_len)
    unknown = [d for d in designs if d not in specs]
    if unknown:
        raise ValueError(f"designs must be among {', '.join(specs)}, got {unknown}")
    data, (x, y) = task_data(setup)
    gaps = query_gaps(x, y, setup.n_pairs)
    rows, pos = (y != IGNORE).nonzero(as_tuple=True)
    same = (pos - gaps) // setup.segment_len == pos // setup.segment_len
    out = {"gaps": gaps, "same_segment": same, "segment_len": setup.segment_len, "steps": s.steps,
           "seeds": list(seeds), "random_fill": s.random_fill, "designs": {}}
    runs = [(setup, name, specs[name], seed, data, (x, y), device, progress) for name in designs for seed in seeds]
    done = iter(map_runs(_reach_run, runs, jobs))
    for name in designs:
        spec = specs[name]
        results = [next(done) for _ in seeds]
        right = [r["right"] for r in results]
        out["designs"][name] = {"label": spec_label(spec) + (" (Transformer-XL)" if name == "xl" else ""),
                                "spec": spec, "nbytes": results[0]["nbytes"], "peak_nbytes": results[0]["peak_nbytes"],
                                "right_seeds": torch.stack(right), "right": right[0]}
    return out


def _reach_run(args) -> dict:
    """One (design, seed) of :func:`mqar_reach`, here or in a worker: which test answers it got right,
    and its model's carried and peak bytes."""
    from ..bench.recall import Design, build_model
    from ..data import IGNORE
    from ..device import seed_everything
    from ..train import forward_segments, predict, train
    from .specs import build_memory, spec_label

    setup, name, spec, seed, data, (x, y), device, progress = args
    design = Design(spec_label(spec), spec["name"], lambda: build_memory(spec, n_heads=setup.n_heads))
    seed_everything(seed)
    model = build_model(setup, design)
    train(model, data, setup.steps, batch_size=setup.batch_size, lr=setup.lr,
          warmup=min(50, setup.steps // 10), schedule=setup.schedule, segment_len=setup.segment_len,
          device=device, seed=seed, progress=progress, desc=f"{name} seed {seed}")
    pred = predict(model, x, segment_len=setup.segment_len, device=device)
    with torch.no_grad():
        _, state = forward_segments(model.eval(), x[:1].to(device), setup.segment_len)
    return {"right": (pred == y)[y != IGNORE].cpu(), "nbytes": model.state_nbytes(state),
            "peak_nbytes": model.peak_nbytes(state, setup.segment_len)}


def accuracy_by_gap(gaps: torch.Tensor, right: torch.Tensor, edges) -> list[float]:
    """Accuracy of the answers whose gap lies in ``[edges[i], edges[i+1])``, for each bin (NaN if empty)."""
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (gaps >= lo) & (gaps < hi)
        out.append(right[sel].float().mean().item() if sel.any() else float("nan"))
    return out


# ------------------------------------------------------------------------------ rotary keys in a delta memory


#: the recall benchmark's task with a delta memory of d_h = 8 (d_model 16, 2 heads) in the second layer,
#: pinned here so that the result file stays reproducible when the benchmark's defaults move
ROTARY_TASK = dict(vocab_size=64, seq_len=32, n_pairs=4, segment_len=16, d_model=16, n_layers=2, n_heads=2,
                   local=4, window=8, steps=2000, batch_size=32, lr=1e-3, schedule="constant",
                   n_train=20_000, n_test=500)


def rotary_recall(*, seeds=(0, 1, 2), steps: int | None = None, random_fill: bool = True, beta="learned",
                  device="cpu", progress=False, log=None) -> list[dict]:
    """MQAR accuracy of the same delta-memory model with its memory's keys and queries rotated by
    position (``uses_rotary = True``, as a softmax layer's) and without (the course's default), on
    each seed: rows ``{"rotary", "seed", "accuracy", "seconds"}``. The data are the same for every
    seed (test set included); the seed sets the initialisation and the order of the batches."""
    import time

    from ..bench.recall import Design, Setup, build_model, task_data
    from ..data import IGNORE
    from ..device import seed_everything
    from ..memory import DeltaMemory
    from ..train import predict, train

    setup = Setup(**{**ROTARY_TASK, "random_fill": random_fill, **({} if steps is None else {"steps": steps})})
    data, (x, y) = task_data(setup)
    rows = []
    for rotary in (True, False):
        for seed in seeds:
            def make(rotary=rotary):
                memory = DeltaMemory(beta)
                memory.uses_rotary = rotary  # this instance only: MemoryLM rotates its q, k when True
                return memory
            seed_everything(seed)
            model = build_model(setup, Design(f"delta d_h=8 rotary={rotary}", "delta", make))
            first = model.blocks[0].attn  # build_model swapped in a local window: it takes no beta
            if first.w_beta is not None and not first.memory.learns_beta:
                first.w_beta = None
            t0 = time.perf_counter()
            train(model, data, setup.steps, batch_size=setup.batch_size, lr=setup.lr,
                  warmup=min(50, setup.steps // 10), schedule=setup.schedule, segment_len=setup.segment_len,
                  device=device, seed=seed, progress=progress, desc=f"rotary={rotary} seed {seed}")
            pred = predict(model, x, segment_len=setup.segment_len, device=device)
            acc = (pred == y)[y != IGNORE].float().mean().item()
            rows.append({"rotary": rotary, "seed": seed, "accuracy": acc, "seconds": time.perf_counter() - t0})
            if log:
                log(f"rotary={rotary} seed={seed}: {100 * acc:.1f}% ({rows[-1]['seconds']:.0f} s)")
    return rows


# ------------------------------------------------------------------------------ command line


def main(argv=None) -> int:
    """Lesson 05's long run, written as a result file (docs/results/lesson05_rotary.json)::

        python -m course_lib.experiments.lesson05 rotary --out docs/results/lesson05_rotary.json

    (about 10 minutes on 2 CPU cores: 2 x 3 models of 2,000 steps)."""
    import argparse
    import time

    from .results import RESULTS, write_result

    parser = argparse.ArgumentParser(prog="python -m course_lib.experiments.lesson05", description=main.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    rot = sub.add_parser("rotary", help="a delta memory with and without rotary keys, on MQAR")
    rot.add_argument("--out", default=str(RESULTS / "lesson05_rotary.json"))
    rot.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    rot.add_argument("--steps", type=int, default=ROTARY_TASK["steps"])
    rot.add_argument("--random-fill", action="store_true", help="random tokens between the queries (default: 0)")
    rot.add_argument("--beta", default="1.0", help="the delta rule's write strength: a float or 'learned'")
    rot.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    beta = args.beta if args.beta == "learned" else float(args.beta)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows = rotary_recall(seeds=args.seeds, steps=args.steps, random_fill=args.random_fill, beta=beta,
                         device=args.device, log=print)
    command = ("python -m course_lib.experiments.lesson05 rotary" + (" --random-fill" if args.random_fill else "")
               + (f" --beta {args.beta}" if args.beta != "1.0" else "")
               + (f" --steps {args.steps}" if args.steps != ROTARY_TASK["steps"] else ""))
    setup = {**ROTARY_TASK, "steps": args.steps, "random_fill": args.random_fill, "beta": beta,
             "memory": "delta in layer 2 (d_h = 8), local window of 4 in layer 1"}
    path = write_result(args.out, command=command, rows=rows, seeds=args.seeds, setup=setup,
                        seconds=time.perf_counter() - t0, device=args.device)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
