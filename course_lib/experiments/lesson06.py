r"""Lesson 06's experiments: the Compressive Transformer against Transformer-XL and a window,
at equal carried bytes (the peak working memory of each is recorded beside it).

* :func:`run_text`: character-level language models on the standard library's source
  (:func:`course_lib.data.stdlib_corpus`), bits per character on held-out files, several
  seeds. Every design keeps 32 key/value slots per head and layer:

  - window ``n_c = 32``;
  - Transformer-XL, ``n_m = 32`` (the previous segments' last 32 pairs);
  - Compressive Transformer, ``n_m = 16`` pairs plus ``n_cm = 16`` compressed slots with
    ``c = 4`` (the paper's rule exactly: segments of ``n_s = 16 = n_m``, so each segment
    pushes its 16 oldest pairs out of ``Mem`` into ``16 / 4 = 4`` slots of ``CMem``; reach
    ``n_m + c n_cm = 80`` tokens before the segment), one run per ``f_c``: ``mean``,
    ``max``, ``conv`` (the paper's ``Conv1d(d_h, d_h, c, stride=c)``), ``conv_shared`` (c
    scalar taps shared by every channel, the course's earlier filter), ``dilated_conv`` (full
    channel maps), all three trained by the attention-reconstruction loss only, and
    ``most_used`` (the pairs of highest average attention).

  Lesson 11's caches that keep softmax but shrink (:func:`cache_spec`), sized for this model by
  lesson 11's own bisection (:func:`course_lib.experiments.lesson11.recall_designs`: ``d_h = 32``,
  the window's 32 pairs per head and layer, 16,384 B a layer, as the bound, ``G = R = 8``):

  - ``kivi4`` / ``kivi2``: a KIVI window of 4-bit / 2-bit codes, ``n_c`` as long as the window's
    bytes allow (64 / 80 tokens, 15,744 B a layer);
  - ``h2o``: H2O's heavy hitters, ``B_h = 31`` pairs of which ``n_r = 15`` recent (16,120 B a layer:
    the accumulated attention is counted);
  - the growing ones, not held to the budget (their bytes after a held-out row are in the rows):
    ``latent`` (multi-head latent attention, rank ``r = 16`` and a rotary part ``d_R = 8``: 96 B a
    token and layer) and ``kivi4_all`` (a 4-bit cache of every pair: 144 B a token and layer, plus
    up to 15 exact pairs), with ``full``, the float cache of every pair (512 B a token and layer),
    beside them: what they shrink. And the capstone's reference design at the window's carried bytes
    (lessons 07-10): ``window_delta``, a window of ``n_c = 16`` gated with a delta memory of
    ``d_h x d_h = 32 x 32`` floats per head (DeltaNet's learned ``beta_t``: the bytes of 16 pairs),
    and ``window_gated_delta``, lesson 10's gated delta rule in its place.

  Equal *carried* bytes (``nbytes``: 32 slots per head and layer; most-used also keeps the
  attention each slot received). Each row also gives ``peak_nbytes``, the peak working memory
  (:meth:`~course_lib.memory.Memory.peak_nbytes`): Transformer-XL and the compressive memory
  also attend to their whole segment of ``n_s`` pairs, the window does not. So one more design,
  ``window_peak``, a window of ``n_c = 32 + n_s = 48``, has the same *peak* as those.

  The learned compressors get their gradient only from
  :func:`~course_lib.memory.attention_reconstruction_loss`, added to the language-model
  loss after every segment (the rest of the model gets no gradient from it).

* :func:`mqar_reach` (from :mod:`.lesson05`): the MQAR recall task of ``bench recall`` with
  window, Transformer-XL and Compressive memories of the same carried bytes, accuracy by how far back
  the asked pair lies (the lesson runs it live).

Command (the shipped result ``docs/results/lesson06_text.json``)::

    python -m course_lib.experiments.lesson06 text              # every design x 3 seeds, one core each (--jobs)
    python -m course_lib.experiments.lesson06 text --quick      # seconds: checks the pipeline
    python -m course_lib.experiments.lesson06 text --steps 150 --seeds 0 --designs window,xl,conv
    python -m course_lib.experiments.lesson06 text --resume --jobs 1   # finish an interrupted run
    python -m course_lib.experiments.lesson06 text --designs window,xl,mean,window_delta,window_gated_delta,\
        kivi4,h2o,kivi2,latent,kivi4_all,full --jobs 12 --resume --out docs/results/lesson11_text.json
        # (one line) lesson 11's caches beside lesson 06's best and the capstone's reference

(the corpus is the running Python's standard library, so lesson 11's caches run in a file of their
own, with the window, Transformer-XL and the mean compressor again beside them on the same Python;
``--resume`` refuses a file made with another Python.)

``--resume`` keeps every row of ``--out`` made with the same setup and runs only the missing
design x seed pairs (each row records the ``commit`` it was made at).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["TextSetup", "TEXT_FULL", "TEXT_QUICK", "DESIGNS", "CACHES", "design_spec", "cache_spec",
           "make_memory_for", "compressor_taps",
           "train_text", "run_text", "summarise", "paired", "plot_text",
           "extra_loss", "MqarSetup", "mqar_reach", "accuracy_by_gap", "main"]

RESULT = Path(__file__).resolve().parents[2] / "docs" / "results" / "lesson06_text.json"


@dataclass(frozen=True)
class TextSetup:
    """Corpus, model and budget shared by every design of :func:`run_text`."""

    max_chars: int = 2_000_000  # of the standard library's source (10% held out, by file)
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    seq_len: int = 256  # tokens per training row, read in segments of n_s
    segment_len: int = 16  # n_s
    slots: int = 32  # key/value slots per head and layer, for every design
    ratio: int = 4  # c
    steps: int = 300
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 30
    eval_rows: int = 64  # held-out rows of seq_len characters
    seeds: tuple = (0, 1, 2)


TEXT_FULL = TextSetup()
TEXT_QUICK = TextSetup(max_chars=100_000, seq_len=64, steps=3, batch_size=4, eval_rows=2, seeds=(0,))

#: design name -> (label, memory family); compressive designs are named by their f_c
DESIGNS = {
    "window": "window n_c = 32",
    "xl": "Transformer-XL n_m = 32",
    "window_peak": "window n_c = 48 (the others' peak)",
    "mean": "compressive, mean",
    "max": "compressive, max",
    "conv_shared": "compressive, shared-tap conv + recon. loss",
    "conv": "compressive, conv + recon. loss",
    "dilated_conv": "compressive, dilated conv + recon. loss",
    "most_used": "compressive, most-used",
    # lesson 11's caches (:func:`cache_spec`); the bytes are those of TEXT_FULL's model, per layer
    "kivi4": "KIVI 4-bit window n_c = 64 (15,744 B/layer)",
    "h2o": "H2O B_h = 31, n_r = 15 (16,120 B/layer)",
    "kivi2": "KIVI 2-bit window n_c = 80 (15,744 B/layer)",
    "latent": "latent r = 16, d_R = 8 (grows 96 B/token/layer)",
    "kivi4_all": "KIVI 4-bit, every pair (grows 144 B/token/layer)",
    # the capstone's reference design at the same carried bytes (lessons 07-10): 16 pairs + a d_h x d_h delta
    # matrix per head (DeltaNet's learned beta_t), and lesson 10's gated delta rule in its place
    "window_delta": "window n_c = 16 + delta, learned beta",
    "window_gated_delta": "window n_c = 16 + gated delta",
    # what the growing caches shrink: every pair in float32 (grows 512 B/token/layer)
    "full": "full cache, every pair (grows 512 B/token/layer)",
}

#: lesson 11's designs among :data:`DESIGNS` -> their place in
#: :func:`course_lib.experiments.lesson11.recall_designs`
CACHES = {"kivi4": 0, "h2o": 1, "kivi2": 2, "latent": 3, "kivi4_all": 4}


@functools.lru_cache(maxsize=8)
def _caches(slots: int, d_model: int, n_heads: int) -> tuple:
    from . import lesson11

    s = lesson11.setup(budget=slots, d_model=d_model)
    return tuple(json.dumps(r["spec"]) for r in lesson11.recall_designs(s, n_heads=n_heads))


def cache_spec(name: str, s: TextSetup) -> dict:
    """The spec of lesson 11's cache ``name`` (one of :data:`CACHES`) for ``s``'s model, sized as
    lesson 11 sizes it (:func:`course_lib.experiments.lesson11.recall_designs`, a bisection on
    :func:`~course_lib.experiments.lesson11.layer_bytes`): the fixed-size ones hold at most the bytes
    of a window of ``s.slots`` pairs per head and layer, the growing ones are lesson 11's latent
    (rank ``d_h / 2``) and 4-bit cache of every pair."""
    if name not in CACHES:
        raise ValueError(f"name must be one of lesson 11's caches {', '.join(CACHES)}, got {name!r}")
    return json.loads(_caches(s.slots, s.d_model, s.n_heads)[CACHES[name]])


def design_spec(name: str, s: TextSetup) -> dict:
    """The plain-data spec (:mod:`.specs`) of design ``name`` with ``s.slots`` slots (half of them
    compressed for the compressive designs)."""
    if name == "window":
        return {"name": "window", "window": s.slots}
    if name == "xl":
        return {"name": "segment", "mem_len": s.slots}
    if name == "window_peak":  # the peak working memory of XL and compressive: s.slots carried + a segment
        return {"name": "window", "window": s.slots + s.segment_len}
    if name == "full":  # every pair, uncompressed: what lesson 11's growing caches are measured against
        return {"name": "full"}
    if name in ("window_delta", "window_gated_delta"):  # d_h^2 floats = the bytes of d_h / 2 pairs per head
        d_h = s.d_model // s.n_heads
        matrix = ({"name": "delta", "beta": "learned"} if name == "window_delta"
                  else {"name": "gated_delta", "alpha": "learned", "beta": "learned"})
        return {"name": "multi", "combine": "gate",
                "memories": [{"name": "window", "window": s.slots - d_h // 2}, matrix]}
    if name not in DESIGNS:
        raise ValueError(f"design must be one of {', '.join(DESIGNS)}, got {name!r}")
    if name in CACHES:
        return cache_spec(name, s)
    # d_h given, so that the learned channel maps are made at once
    return {"name": "compressive", "mem_len": s.slots // 2, "cmem_len": s.slots // 2, "ratio": s.ratio,
            "compress": name, "head_dim": s.d_model // s.n_heads}


def make_memory_for(name: str, s: TextSetup):
    """The memory of design ``name``: :func:`~course_lib.experiments.specs.build_memory` of its spec."""
    from .specs import build_memory

    return build_memory(design_spec(name, s), n_heads=s.n_heads)  # a gated multi memory learns a gate per head


def extra_loss(model, state):
    """The extra training losses of a forward (the compressors' attention-reconstruction loss),
    summed over layers; ``None`` when there is none."""
    losses = getattr(state, "extra_losses", None)  # returned with the state, where the model does so
    if losses is None:
        losses = [getattr(m, "last_reconstruction_loss", None) for m in model.memories]
    losses = [x for x in (losses.values() if isinstance(losses, dict) else losses) if x is not None]
    return sum(losses) if losses else None


def compressor_taps(memory, tensor: str = "k") -> dict | None:
    """What a learned key (``tensor="k"``) or value (``"v"``) compressor does to each position ``a``
    of a group, read from its outputs:
    ``taps[a]`` = the mean diagonal of its linear map ``E_a`` (the weight a channel gives its own
    value at position ``a``; mean pooling: ``1 / c``), and ``off_diagonal`` = the share of
    ``sum_a ||E_a||^2`` off the diagonal (0 for mean pooling and for ``conv_shared``).
    ``None`` for a compressor with nothing to learn, and for a memory that is no compressor (lesson
    11's latent cache learns its projections, but compresses no pairs)."""
    if not hasattr(memory, "compress_pairs") or not list(memory.parameters()):
        return None
    c, d = memory.ratio, memory.head_dim or 1  # conv_shared: one tap per position, whatever d_h
    with torch.no_grad():
        p = next(memory.parameters())
        eye = torch.eye(d, dtype=p.dtype, device=p.device)
        zero = torch.zeros(1, d, c, d, dtype=p.dtype, device=p.device)
        which = {"k": 0, "v": 1}[tensor]
        base = memory.compress_pairs(zero, zero)[which]  # [1, d, 1, d]: the bias
        taps, off, total = [], 0.0, 0.0
        for a in range(c):
            x = zero.clone()
            x[0, :, a] = eye  # "head" i holds e_i at position a
            e = (memory.compress_pairs(x, x)[which] - base)[0, :, 0]  # row i = E_a e_i
            taps.append(float(e.diagonal().mean()))
            total += float((e**2).sum())
            off += float((e**2).sum() - (e.diagonal() ** 2).sum())
    return {"taps": taps, "off_diagonal": off / total if total else 0.0}


def _compressor_taps(model) -> list[dict]:
    return [t for t in (compressor_taps(m) for m in model.memories) if t is not None]


def train_text(name: str, seed: int, s: TextSetup = TEXT_FULL, *, corpus=None, progress: bool = False) -> dict:
    """Train design ``name`` with ``seed`` on the corpus; returns its held-out bits per character,
    state bytes, seconds, and the learned compressor's key filters before and after training."""
    from ..data import IGNORE, stdlib_corpus
    from ..device import seed_everything
    from ..models import MemoryLM
    from ..train import TextBatches, evaluate, forward_segments, train

    corpus = stdlib_corpus(max_chars=s.max_chars) if corpus is None else corpus
    seed_everything(seed)
    vocab = len(corpus.vocab)
    model = MemoryLM(vocab, s.d_model, s.n_layers, s.n_heads, make_memory_for(name, s))
    before = _compressor_taps(model)
    recon = []
    n_seg = math.ceil(s.seq_len / s.segment_len)

    def loss_fn(model, batch):
        """Each segment's mean cross-entropy and reconstruction loss, over ``n_seg`` (the objective
        of the shipped runs, kept as it was summed); the reconstruction losses are logged."""
        x, y = batch
        state, total = None, 0.0
        for xs, ys in zip(x.split(s.segment_len, 1), y.split(s.segment_len, 1)):
            logits, state = model(xs, state)
            loss = F.cross_entropy(logits.flatten(0, 1), ys.flatten(), ignore_index=IGNORE) / n_seg
            extra = extra_loss(model, state)
            if extra is not None:
                recon.append(float(extra.detach()))
                loss = loss + extra / n_seg
            loss.backward()
            total += float(loss.detach())
        return total

    # AdamW's default weight decay (0.01) and the cosine schedule, as the shipped runs were made
    log = train(model, TextBatches(corpus.train_ids, s.batch_size, s.seq_len, seed=seed), s.steps, lr=s.lr,
                weight_decay=0.01, warmup=s.warmup, schedule="cosine", grad_clip=1.0, device="cpu",
                progress=progress, desc=name, loss_fn=loss_fn)
    seconds = log.seconds
    val = TextBatches.rows(corpus.val_ids, s.seq_len)
    val = (val[0][: s.eval_rows], val[1][: s.eval_rows])
    result = evaluate(model, val, batch_size=16, segment_len=s.segment_len, device="cpu")
    with torch.no_grad():
        _, state = forward_segments(model, val[0][:1], s.segment_len)
    from ..experiments.results import commit

    return {"design": name, "label": DESIGNS[name], "spec": design_spec(name, s), "seed": seed, "bpc": result["bpc"],
            "nbytes": model.state_nbytes(state), "peak_nbytes": model.peak_nbytes(state, s.segment_len),
            "seconds": seconds, "commit": commit()[0],
            "parameters": sum(p.numel() for p in model.parameters()),
            "recon_loss_first": recon[0] if recon else None, "recon_loss_last": recon[-1] if recon else None,
            "taps_before": before, "taps_after": _compressor_taps(model)}


def _worker(args):
    name, seed, s = args
    return train_text(name, seed, s)


def run_text(s: TextSetup = TEXT_FULL, designs=None, *, jobs: int = 2, log=print, done=(), on_row=None) -> list[dict]:
    """Every design x seed of ``s`` (``jobs`` worker processes, one core each), seed by seed.
    ``done``: rows from an earlier, interrupted run (their design and seed are skipped);
    ``on_row(rows)`` is called after each run (to save partial results)."""
    designs = list(DESIGNS) if designs is None else list(designs)
    rows = list(done)
    have = {(r["design"], r["seed"]) for r in rows}
    todo = [(name, seed, s) for seed in s.seeds for name in designs if (name, seed) not in have]

    def report(row):
        rows.append(row)
        log(f"  {row['label']:<42} seed {row['seed']}  bpc {row['bpc']:.4f}  ({row['seconds']:.0f} s)")
        if on_row is not None:
            on_row(rows)

    from .workers import map_runs

    for row in map_runs(_worker, todo, jobs):
        report(row)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Per design: mean bits per character, sample standard deviation over seeds, seeds, bytes."""
    out = []
    for name in dict.fromkeys(r["design"] for r in rows):
        bpc = [r["bpc"] for r in rows if r["design"] == name]
        mean = sum(bpc) / len(bpc)
        std = math.sqrt(sum((b - mean) ** 2 for b in bpc) / (len(bpc) - 1)) if len(bpc) > 1 else None
        first = next(r for r in rows if r["design"] == name)
        out.append({"design": name, "label": first["label"], "bpc": mean, "std": std, "n": len(bpc),
                    "nbytes": first["nbytes"]})
    return out


def paired(rows: list[dict], reference: str = "window") -> list[dict]:
    """Per design, its bits per character minus ``reference``'s on the same seed (same initial
    weights and batches): the mean and sample standard deviation of that difference, and on how
    many seeds it was positive (the design worse)."""
    by = {(r["design"], r["seed"]): r["bpc"] for r in rows}
    out = []
    for name in dict.fromkeys(r["design"] for r in rows):
        diffs = [by[name, s] - by[reference, s] for (d, s) in by if d == name and (reference, s) in by]
        mean = sum(diffs) / len(diffs)
        std = math.sqrt(sum((x - mean) ** 2 for x in diffs) / (len(diffs) - 1)) if len(diffs) > 1 else None
        out.append({"design": name, "diff": mean, "std": std, "worse": sum(x > 0 for x in diffs), "n": len(diffs)})
    return out


def text_table(result: dict, reference: str = "window") -> str:
    """A Markdown table of a text result file: per design its carried and peak bytes (all layers,
    after a held-out row), bits per character (mean ± sample s.d. over seeds) and its difference
    from ``reference`` on the same seed (mean ± s.d., and on how many seeds it was worse). README
    and lesson 11 render the shipped file with it, so their numbers cannot disagree."""
    rows = result["rows"]
    diff = {d["design"]: d for d in paired(rows, reference)}
    first = {}
    for r in rows:
        first.setdefault(r["design"], r)
    lines = ["| design | carried bytes | peak bytes | bits/char | minus the window, same seed | worse on |",
             "|---|---|---|---|---|---|"]
    for r in summarise(rows):
        d, f = diff[r["design"]], first[r["design"]]
        versus = "(the reference)" if r["design"] == reference else f"{d['diff']:+.3f} ± {d['std'] or 0:.3f}"
        worse = "" if r["design"] == reference else f"{d['worse']} of {d['n']} seeds"
        lines.append(f"| {r['label']} | {f['nbytes']:,} | {f['peak_nbytes']:,} | {r['bpc']:.3f} ± {r['std'] or 0:.3f} "
                     f"| {versus} | {worse} |")
    return "\n".join(lines)


def plot_text(summary: list[dict], title: str = ""):
    """Bits per character per design, mean and one standard deviation over seeds (a pure function)."""
    from ..viz import Figure  # shows itself as a PNG in a notebook

    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax = fig.subplots()
    colours = {"window": "tab:blue", "window_peak": "tab:cyan", "xl": "tab:green", "full": "tab:gray",
               **dict.fromkeys(CACHES, "tab:orange")}
    for y, r in enumerate(summary):  # points with error bars: no bar drawn from an arbitrary axis origin
        ax.errorbar(r["bpc"], y, xerr=r["std"] or 0, fmt="o", ms=7, capsize=4,
                    color=colours.get(r["design"], "tab:purple"))
    ax.set_yticks(range(len(summary)), [r["label"] for r in summary])
    ax.invert_yaxis()
    lo = min(r["bpc"] - (r["std"] or 0) for r in summary)
    hi = max(r["bpc"] + (r["std"] or 0) for r in summary)
    pad = max(0.01, 0.15 * (hi - lo))
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_xlabel("held-out bits per character (lower is better): mean ± 1 s.d. over seeds")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return fig


# MQAR where reach matters: shared with lesson 05
from .lesson05 import MqarSetup, accuracy_by_gap, mqar_reach  # noqa: E402

# ------------------------------------------------------------------------------ command line


def _add_text_args(p):
    p.add_argument("--quick", action="store_true", help="a tiny run that checks the pipeline (seconds)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--designs", default=None, help=f"comma-separated, from {','.join(DESIGNS)}")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--resume", action="store_true", help="keep the runs already in --out (same setup) and do the rest")
    p.add_argument("--out", default=str(RESULT), help="result JSON (default docs/results/lesson06_text.json)")


def _minor(version: str | None) -> str | None:
    """``"3.11.7" -> "3.11"``."""
    return None if not version else ".".join(version.split(".")[:2])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.experiments.lesson06",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_text_args(sub.add_parser("text", help="bits per character on the stdlib corpus, every design x seed"))
    args = parser.parse_args(argv)
    from .results import read_result, write_result

    s = TEXT_QUICK if args.quick else TEXT_FULL
    if args.steps is not None:
        s = replace(s, steps=args.steps)
    if args.seeds:
        s = replace(s, seeds=tuple(int(x) for x in args.seeds.split(",")))
    designs = args.designs.split(",") if args.designs else None
    for name in designs or ():
        if name not in DESIGNS:
            parser.error(f"--designs: {name!r} is not one of {', '.join(DESIGNS)}")
    command = "python -m course_lib.experiments.lesson06 text" + (" --quick" if args.quick else "")
    for flag in ("steps", "seeds"):
        if getattr(args, flag) is not None:
            command += f" --{flag} {getattr(args, flag)}"
    print(f"{command}{f' --designs {args.designs}' if designs else ''}: {s}", flush=True)

    def command_for(rows):
        """The command that makes the file as it is (made in parts when resumed): ``--designs`` names the
        designs of its rows, in the order of :data:`DESIGNS`, unless it holds them all."""
        held = [d for d in DESIGNS if any(r["design"] == d for r in rows)]
        if len(held) == len(DESIGNS) or not (held or designs):
            return command
        return command + f" --designs {','.join(held or designs)}"

    out = Path(args.out)
    done = []
    if args.resume and out.is_file():
        old = read_result(out)
        made, here = _minor(old.get("machine", {}).get("python")), _minor(platform.python_version())
        if made is not None and made != here:  # the corpus is the running Python's own source
            parser.error(f"--resume: {out} was made with Python {made} and this is Python {here}; the text task's "
                         f"corpus (the standard library's source) differs between Python versions, so its rows and "
                         f"these would not compare: resume with Python {made}, or write a new --out")
        if old["setup"] == json.loads(json.dumps(asdict(s))):
            done = old["rows"]  # every row of the same setup is kept; only the missing runs are made
    order = list(DESIGNS)
    t0 = time.perf_counter()

    def save(rows):
        rows = sorted(rows, key=lambda r: (r["seed"], order.index(r["design"])))
        write_result(out, command=command_for(rows), rows=rows, seeds=s.seeds, setup=asdict(s),
                     seconds=sum(r["seconds"] for r in rows),
                     workers=f"{args.jobs} worker process(es) of 1 thread",
                     last_invocation="python -m course_lib.experiments.lesson06 " + " ".join(argv or sys.argv[1:]),
                     summary=summarise(rows))

    todo = designs if designs is not None else list(DESIGNS)
    torch.set_num_threads(1)  # --jobs 1: the one run here on one thread, as in a worker
    rows = run_text(s, todo, jobs=args.jobs, log=lambda line: print(line, flush=True), done=done, on_row=save)
    save(rows)
    for r in summarise(read_result(out)["rows"]):
        print(f"{r['label']:<42} {r['bpc']:.4f} ± {r['std'] or 0:.4f} (n = {r['n']}, {r['nbytes']} B)")
    print(f"saved {args.out}; this run {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
