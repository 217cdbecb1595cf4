r"""The capstone's measurements: a chatbot memory design, measured against a device's budget.

A design is plain data (so it can cross from a learner's kernel to the grader): a dict
``{"name": <registry name>, **sizes}``, with ``"memories": [spec, ...]`` and ``"combine"``
for a ``multi`` memory, for example::

    {"name": "multi", "combine": "gate",
     "memories": [{"name": "window", "window": 32}, {"name": "delta", "beta": "learned"}]}

:func:`build_memory` turns it into a :class:`~course_lib.memory.Memory`. Three measurements
decide whether the design fits the device (:class:`Capstone` holds the device and the limits):

* :func:`state_bytes`: the bytes of the model's state after ``m`` tokens, measured by
  streaming random ``q, k, v`` through one layer's memory (chunks of 1,024 tokens) and
  multiplying by the ``L`` layers (each layer holds its own copy of the memory). A memory
  that is already over the budget stops being streamed there (a full cache at 64k tokens
  costs minutes of attention; its growth is measured by then).
* :func:`decode_ms`: ms per generated token of the (untrained) model at two context lengths
  (:func:`course_lib.cost.measure_decode`, one CPU thread, the best of a few repeats);
  their ratio says whether the cost of a token grows with the conversation.
* :func:`train_recall`: a short, seeded training run of the small ``MemoryLM`` on
  :func:`course_lib.data.long_dialogue` (the user states a fact, chats, and asks for it),
  then the share of held-out conversations whose answer the model gets entirely right.

:func:`measure_design` runs all three; the grader (``09.chatbot_design``) and lesson 09 call it.
A design may hold any registered memory, lesson 10's gated ones too (a learned decay
``{"name": "gated_delta", "alpha": "learned", "beta": "learned"}`` or ``{"name": "decay", "alpha":
"learned"}``: the bytes are streamed with any ``alpha``, :func:`document_reach` decays by the
``alpha`` the layer starts from). The recall runs that lesson 09 shows were made with (one process
per design, three seeds each, :func:`run_seeds`; a few minutes a seed on a quiet 2-core CPU, more on
a shared one)::

    python -m course_lib.experiments.capstone --design "window 32" --seeds 0,1,2 --out docs/results/capstone_window.json
    python -m course_lib.experiments.capstone --design "window 16 + delta, beta = 1" --seeds 0,1,2 \
        --out docs/results/capstone_delta_beta1.json
    python -m course_lib.experiments.capstone --design "window 16 + delta, learned beta" --seeds 0,1,2 \
        --out docs/results/capstone_delta_learned.json
    python -m course_lib.experiments.capstone --design "window 16 + gated delta" --seeds 0,1,2 \
        --out docs/results/capstone_gated_delta.json

Lesson 11's caches sized to the budget (:data:`CACHES`) run the same way, one ``--design`` each,
shipped as ``capstone_kivi4.json``, ``capstone_kivi2.json`` and ``capstone_h2o.json`` (e.g.
``--design "H2O 31, recent 15" --seeds 0,1,2 --out docs/results/capstone_h2o.json``); lesson 09
reads their recall beside the reference's.

Each writes a result file (:func:`course_lib.experiments.results.write_result`), rewritten after every
seed (``"partial": true`` until the last), with one row per seed: the recall after ``SETUP.steps``
steps, the learning curve, and :func:`recall_at`, the same model's recall on conversations whose fact
lies further back than the grade's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import specs

__all__ = ["Capstone", "SETUP", "build_memory", "build_model", "spec_label", "state_bytes", "decode_ms",
           "dialogue_data", "train_recall", "measure_design", "document_reach", "REACH_THRESHOLD", "plot_designs",
           "kv_bytes_per_token", "format_bytes", "recall_of", "one_thread", "DESIGNS", "VARIANTS", "CACHES", "RUNNABLE",
           "run_seeds", "recall_at", "FAR_LENGTHS", "initial_decay", "main"]


@dataclass(frozen=True)
class Capstone:
    """The device, its budget and the measurement settings (all sizes for batch 1).

    The model is small so that the check can train it on a CPU; the budget is scaled to it:
    ``budget`` bytes hold the KV cache of ``budget / kv_bytes_per_token`` tokens.
    """

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4  # tau, d_h = 16
    context: int = 65_536  # the conversation length the budget must hold
    budget: int = 32 * 1024  # bytes of state, all layers, at ``context`` tokens
    decode_contexts: tuple = (1024, 16_384)  # ms/token measured at these m
    max_ms_ratio: float = 1.5  # ms/token at the long context over the short one
    # recall: a short training run on long_dialogue
    dialogue_length: int = 100  # characters of chat before the question (the fact is further back)
    n_facts: int = 1
    n_train: int = 2000
    n_test: int = 100
    steps: int = 500
    batch_size: int = 16
    lr: float = 3e-3
    answer_weight: float = 1.0  # the answer's mean loss is added to the text's mean loss
    segment_len: int = 64  # n_s: evaluation reads each conversation in segments, state carried
    # training reads each conversation in one pass, so the answer's loss reaches the keys of the fact
    min_recall: float = 0.4  # share of held-out conversations answered exactly
    seed: int = 0


SETUP = Capstone()

#: the designs lesson 09 compares (plain data, see :func:`build_memory`)
DESIGNS = {
    "full KV cache": {"name": "full"},
    "window 32": {"name": "window", "window": 32},
    "sinks 8 + window 24": {"name": "sink", "sinks": 8, "window": 24},
    "compressive": {"name": "compressive", "mem_len": 8, "cmem_len": 8, "ratio": 4},
    # the reference design: DeltaNet's learned write strength (lesson 09 measures it against beta = 1)
    "window 16 + delta": {"name": "multi", "combine": "gate",
                          "memories": [{"name": "window", "window": 16}, {"name": "delta", "beta": "learned"}]},
    "window 16 + linear": {"name": "multi", "combine": "gate",
                           "memories": [{"name": "window", "window": 16}, {"name": "linear"}]},
}

#: the two write strengths of the reference design's delta memory, measured against each other
#: (lesson 09 says which one the reference uses, and why), and the gated memories in its place;
#: ``--design`` takes these names too
VARIANTS = {
    "window 16 + delta, beta = 1": {"name": "multi", "combine": "gate",
                                    "memories": [{"name": "window", "window": 16}, {"name": "delta"}]},
    "window 16 + delta, learned beta": {"name": "multi", "combine": "gate",
                                        "memories": [{"name": "window", "window": 16},
                                                     {"name": "delta", "beta": "learned"}]},
    # the gated memories of lesson 10 in the reference design's place: a learned decay alpha_t beside the
    # learned write strength (Gated DeltaNet), and a decay alone (Mamba-2's scalar alpha_t, no delta rule)
    "window 16 + gated delta": {"name": "multi", "combine": "gate",
                                "memories": [{"name": "window", "window": 16},
                                             {"name": "gated_delta", "alpha": "learned", "beta": "learned"}]},
    "window 16 + decay": {"name": "multi", "combine": "gate",
                          "memories": [{"name": "window", "window": 16}, {"name": "decay", "alpha": "learned"}]},
}

#: lesson 11's caches that keep softmax but shrink, sized for this model (``d_h = 16``) to the budget by
#: lesson 11's bisection (:func:`course_lib.experiments.lesson11.recall_designs` with ``n_heads = 4``: at
#: most the bytes of the window of 32, ``2 L 32 d_model`` fp32 = 32 KiB, ``G = R = 8``; a test holds these
#: literals to it): KIVI windows of 4-bit and 2-bit codes (30 and 31 KiB), H2O's heavy hitters (31 pairs,
#: 15 of them recent, and their accumulated attention: 31.97 KiB); and the two that keep every token
#: (a latent of rank ``d_h / 2`` with a rotary part ``d_R = 4``, 96 B a token; a 4-bit cache of every
#: pair, 320 B a token), which grow past the budget within the first few thousand tokens: the
#: chart shows them failing it (they are not trained for the recall files); ``--design`` takes these names
CACHES = {
    "KIVI 4-bit window 56": {"name": "quantized", "bits": 4, "group": 8, "residual": 8, "window": 56},
    "H2O 31, recent 15": {"name": "heavy_hitter", "budget": 31, "recent": 15},
    "KIVI 2-bit window 72": {"name": "quantized", "bits": 2, "group": 8, "residual": 8, "window": 72},
    "latent r = 8, d_R = 4 (grows)": {"name": "latent", "rank": 8, "rope_dim": 4},
    "KIVI 4-bit, every pair (grows)": {"name": "quantized", "bits": 4, "group": 8, "residual": 8},
}
RUNNABLE = {**DESIGNS, **VARIANTS, **CACHES}


def format_bytes(n: float) -> str:
    """``65536 -> '64 KiB'``, ``1536 -> '1.5 KiB'``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{int(n)} B"


def kv_bytes_per_token(setup: Capstone = SETUP, bytes_per_value: int = 4) -> int:
    """``2 L n_g d_h`` values per token (keys and values of every layer), fp32 by default:
    :func:`~course_lib.kv_cache.kv_cache_bytes` of one token."""
    from ..kv_cache import kv_cache_bytes

    return kv_cache_bytes(setup.n_layers, setup.n_heads, setup.d_model // setup.n_heads, 1,
                          bytes_per_value=bytes_per_value)


# ------------------------------------------------------------------- designs as data


def build_memory(spec: dict, setup: Capstone = SETUP):
    """The :class:`~course_lib.memory.Memory` that ``spec`` describes
    (:func:`course_lib.experiments.specs.build_memory`;
    ``n_heads`` of a gated ``multi`` memory is filled in from ``setup``).

    >>> build_memory({"name": "sink", "sinks": 4, "window": 8})
    SinkMemory(sinks=4, window=8, positions='absolute')
    """
    return specs.build_memory(spec, n_heads=setup.n_heads)


spec_label = specs.spec_label


def build_model(memory, setup: Capstone = SETUP):
    """The device's ``MemoryLM`` (``setup``'s sizes, the ASCII vocabulary) with ``memory`` in every layer."""
    from ..data import CharVocab
    from ..models import MemoryLM

    return MemoryLM(len(CharVocab.ascii()), setup.d_model, setup.n_layers, setup.n_heads, memory)


@contextlib.contextmanager
def one_thread():
    """One torch thread inside (timings and training repeat on a shared machine), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------ bytes


@torch.no_grad()
def state_bytes(spec: dict, contexts=(1024, 4096, 16_384, 65_536), setup: Capstone = SETUP, *,
                chunk: int = 1024, stop_above: float | None = None, seed: int = 0) -> list[dict]:
    """Bytes of the whole model's state (``L`` layers, batch 1) after ``m`` tokens, for each ``m``.

    Streams random unit-scale ``q, k, v`` (``[1, tau, chunk, d_h]``) through one layer's memory
    and reads ``nbytes`` at each ``m``; a state's size does not depend on what its vectors hold.
    Streaming stops at the first ``m`` whose bytes exceed ``stop_above`` (default: 4 x the
    budget); the rows stop there. Returns ``[{"context", "nbytes"}]``. One torch thread (:func:`one_thread`):
    on a busy 2-core machine, 64k tokens of a matrix memory took about 6 s so, 40 s with two threads.
    """
    memory = build_memory(spec, setup)
    memory.eval()
    stop_above = 4 * setup.budget if stop_above is None else stop_above
    h, d = setup.n_heads, setup.d_model // setup.n_heads
    gen = torch.Generator().manual_seed(seed)
    state = memory.init_state(1, h, d)
    # a learned write strength or decay: any value, the bytes are the same
    kw = {**({"beta": 1.0} if memory.learns_beta else {}), **({"alpha": 1.0} if memory.learns_alpha else {})}
    pos, rows = 0, []
    with one_thread():
        for m in sorted(int(c) for c in contexts):
            while pos < m:
                t = min(chunk, m - pos)
                q, k, v = (torch.randn(1, h, t, d, generator=gen) for _ in range(3))
                _, state = memory(q, k, v, state, **kw)
                pos += t
            rows.append({"context": m, "nbytes": setup.n_layers * memory.nbytes(state)})
            if rows[-1]["nbytes"] > stop_above:
                break
    return rows


# ------------------------------------------------------------------------ reach

REACH_THRESHOLD = 1e-6  # relative change of the read-out below which a part of the text "has no effect"


@torch.no_grad()
def document_reach(spec: dict, setup: Capstone = SETUP, *, length: int = 16_384, block: int = 256,
                   chunk: int = 1024, readout: int = 64, seed: int = 0, beta: float = 0.5) -> dict[int, float]:
    """How much each quarter of a ``length``-token document still matters at its end.

    Streams random ``q, k, v`` (float64) through one layer's memory; then, for each quarter
    ``j``, replaces the values of its first ``block`` tokens and streams the rest unchanged.
    Returns ``{j: ||out' - out|| / ||out||}`` over the outputs of the last ``readout`` queries:
    0 when that part of the document no longer reaches the memory's read-out. A memory that
    learns its write strength (``DeltaMemory(beta="learned")``, ``learns_beta``) has no input
    ``x_t`` to compute ``beta_t`` from here; it writes with ``beta`` (default 0.5, where
    ``sigma(W_beta x_t)`` starts) at every token. One that learns its decay (``learns_alpha``:
    ``GatedDeltaMemory(alpha="learned")``, ``DecayMemory(alpha="learned")``) decays each head by the
    ``alpha`` its layer starts from (:func:`initial_decay`; half-lives from about 7 to 700 tokens),
    so this is the reach of the untrained decay: training may move ``alpha_t`` towards 1.
    """
    memory = build_memory(spec, setup).to(torch.float64).eval()
    h, d = setup.n_heads, setup.d_model // setup.n_heads
    alpha = initial_decay(spec, setup).to(torch.float64) if memory.learns_alpha else None

    def gates(t):  # this piece's learned gates, [1, H, t] for the decay
        kw = {"beta": beta} if memory.learns_beta else {}
        if alpha is not None:
            kw["alpha"] = alpha[None, :, None].expand(1, h, t)
        return kw

    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, h, length, d, generator=gen, dtype=torch.float64) for _ in range(3))
    starts = [j * length // 4 for j in range(4)]
    cuts = sorted(set(range(0, length, chunk)) | set(starts) | {s + block for s in starts} | {length - readout})
    pieces = list(zip(cuts, cuts[1:] + [length]))

    def stream(state, first, vv):
        out = None
        for a, b in pieces:
            if a >= first:
                out, state = memory(q[:, :, a:b], k[:, :, a:b], vv[:, :, a:b], state, **gates(b - a))
        return out  # the last piece: the read-out queries

    saved, state = {}, memory.init_state(1, h, d, dtype=torch.float64)
    for a, b in pieces:  # the unchanged document, keeping the state where each quarter starts
        if a in starts:
            saved[a] = state
        base, state = memory(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], state, **gates(b - a))
    reach = {}
    for j, s in enumerate(starts):
        vv = v.clone()
        vv[:, :, s:s + block] = torch.randn(1, h, block, d, generator=gen, dtype=torch.float64)
        out = stream(saved[s], s, vv)
        reach[j] = float((out - base).norm() / base.norm())
    return reach


def initial_decay(spec: dict, setup: Capstone = SETUP) -> torch.Tensor:
    """``[H]``: the decay ``alpha = exp(-softplus(b))`` that each head of a design with a learned decay
    starts from (the first layer of :func:`build_model`, input ``x = 0``; ``MemoryLM`` spreads
    ``-log alpha`` from ``1e-3`` to ``1e-1`` over the heads)."""
    with torch.random.fork_rng():  # the weights drawn here leave the caller's random stream as it was
        model = build_model(build_memory(spec, setup), setup)
    w_alpha = model.blocks[0].attn.w_alpha
    if w_alpha is None:
        raise ValueError(f"spec must be a design with a learned decay (alpha='learned'), got {spec_label(spec)}")
    return torch.exp(-F.softplus(w_alpha.bias.detach()))


# ---------------------------------------------------------------------- ms/token


def decode_ms(spec: dict, contexts=None, setup: Capstone = SETUP, *, steps: int = 32, repeats: int = 3,
              seed: int = 0) -> list[dict]:
    """ms per decoded token of the (untrained) model after ``m`` tokens, the best of ``repeats``
    runs of :func:`course_lib.cost.measure_decode` (one thread): ``[{"context", "ms_per_token"}]``.
    A step's time does not depend on the weights, so the model needs no training for this."""
    from ..cost import measure_decode

    contexts = setup.decode_contexts if contexts is None else contexts
    torch.manual_seed(seed)
    model = build_model(build_memory(spec, setup), setup)
    best = {int(m): math.inf for m in contexts}
    with one_thread():
        for r in range(repeats):
            for row in measure_decode(model, list(best), steps=steps, warmup=4, progress=False, seed=seed + r):
                best[row["context"]] = min(best[row["context"]], row["ms_per_token"])
    return [{"context": m, "ms_per_token": ms} for m, ms in best.items()]


# ------------------------------------------------------------------------ recall


def dialogue_data(n: int, setup: Capstone = SETUP, *, seed: int):
    """``(inputs, lm_labels, answer_labels)`` ``[n, T]`` from :func:`course_lib.data.long_dialogue`:
    every next character is a language-model label; ``answer_labels`` keeps only the answer's."""
    from ..data import IGNORE, CharVocab, encode_examples, long_dialogue

    vocab = CharVocab.ascii()
    examples = long_dialogue(n, setup.dialogue_length, seed=seed, n_facts=setup.n_facts)
    x, answer = encode_examples(examples, vocab)
    lengths = torch.tensor([len(e.text) - 1 for e in examples])
    lm = torch.full_like(x, IGNORE)
    lm[:, :-1] = x[:, 1:]
    lm[torch.arange(x.shape[1])[None, :] >= lengths[:, None] - 1] = IGNORE  # no padding as labels
    lm = torch.where(answer != IGNORE, answer, lm)
    return x, lm, answer, examples


def _loss(model, x, y_lm, y_answer, setup):
    from ..data import IGNORE

    n_lm, n_answer = (y_lm != IGNORE).sum(), (y_answer != IGNORE).sum()
    state, total = None, 0.0
    for xs, ys, ya in ((x, y_lm, y_answer),):
        logits, state = model(xs, state)
        flat = logits.flatten(0, 1)
        loss = F.cross_entropy(flat, ys.flatten(), ignore_index=IGNORE, reduction="sum") / n_lm
        if (ya != IGNORE).any():
            loss = loss + setup.answer_weight * F.cross_entropy(
                flat, ya.flatten(), ignore_index=IGNORE, reduction="sum") / n_answer
        extra = getattr(state, "extra_losses", None)
        if extra:
            loss = loss + sum(extra.values())
        loss.backward()
        total += loss.item()
    return total


@torch.no_grad()
def recall_of(model, x, y_answer, setup: Capstone = SETUP) -> torch.Tensor:
    """``[N]`` bool: the greedy prediction of every answer character is right (teacher forcing)."""
    from ..data import IGNORE
    from ..train import forward_segments

    model.eval()
    logits, _ = forward_segments(model, x, setup.segment_len)
    return ((logits.argmax(-1) == y_answer) | (y_answer == IGNORE)).all(dim=1)


#: chat lengths (characters before the question) at which :func:`run_seeds` also tests the trained model
FAR_LENGTHS = (400, 1600, 6400)


@torch.no_grad()
def recall_at(model, lengths=FAR_LENGTHS, setup: Capstone = SETUP, *, batch: int = 25) -> list[dict]:
    """Recall of a model trained with ``setup`` on held-out conversations with longer chats: for each
    ``length`` (characters of small talk before the question, :func:`course_lib.data.long_dialogue`),
    ``setup.n_test`` conversations (seed ``setup.seed + 3``), read in segments as in :func:`recall_of`.
    Returns ``[{"dialogue_length", "distance" (median tokens from the fact to its question), "recall"}]``:
    how far the fact can lie before the recall the grade measures at ``setup.dialogue_length`` is lost."""
    out = []
    with one_thread():
        for length in lengths:
            far = dataclasses.replace(setup, dialogue_length=int(length))
            x, _, y, examples = dialogue_data(setup.n_test, far, seed=setup.seed + 3)
            right = torch.cat([recall_of(model, x[i:i + batch], y[i:i + batch], far)
                               for i in range(0, len(x), batch)])
            gaps = sorted(e.answer_start - (e.fact_start + e.text[e.fact_start:].index(e.answer)) for e in examples)
            out.append({"dialogue_length": int(length), "distance": gaps[len(gaps) // 2],
                        "recall": float(right.float().mean())})
    return out


_RECALL_CACHE: dict = {}


def train_recall(spec: dict, setup: Capstone = SETUP, *, progress: bool = False, log_every: int = 0) -> dict:
    """Train the small ``MemoryLM`` with the design for ``setup.steps`` steps (seeded, one thread,
    the same data for every design) and measure recall on held-out conversations.

    Returns ``{"recall", "recall_curve" (step, recall) if log_every, "seconds", "distance"}``;
    ``distance`` is the median number of tokens between the fact's answer and the question's.
    """
    import json

    from ..train import Batches, train

    key = (json.dumps(spec, sort_keys=True), setup, log_every)
    if key in _RECALL_CACHE:  # the run is deterministic: the same design and setup give the same numbers
        return dict(_RECALL_CACHE[key])
    x, y_lm, y_answer, _ = dialogue_data(setup.n_train, setup, seed=setup.seed + 1)
    xt, _, yt, test = dialogue_data(setup.n_test, setup, seed=setup.seed + 2)
    lengths = (x != 0).sum(1)
    with one_thread():
        torch.manual_seed(setup.seed)
        model = build_model(build_memory(spec, setup), setup)
        model.reset_linear_default()  # PyTorch's width-aware init, the decays where MemoryLM starts them
        curve = []

        def loss_fn(model, batch):  # each batch cut to its longest conversation
            xb, yb, ab, lb = batch
            width = int(lb.max())
            return _loss(model, xb[:, :width], yb[:, :width], ab[:, :width], setup)

        def on_step(step, loss, model):
            if log_every and step % log_every == 0:
                curve.append((step, float(recall_of(model, xt, yt, setup).float().mean())))
                model.train()  # recall_of left it in eval mode

        # AdamW's default weight decay (0.01), a constant learning rate: as the shipped runs were made
        data = Batches(x, y_lm, setup.batch_size, seed=setup.seed, extra=(y_answer, lengths))
        log = train(model, data, setup.steps, lr=setup.lr, weight_decay=0.01, schedule="constant", grad_clip=1.0,
                    device="cpu", progress=progress, desc=spec_label(spec), loss_fn=loss_fn, on_step=on_step)
        seconds = log.seconds
        right = recall_of(model, xt, yt, setup)
    distance = sorted(e.answer_start - (e.fact_start + e.text[e.fact_start:].index(e.answer)) for e in test)
    out = {"recall": float(right.float().mean()), "recall_curve": curve, "seconds": seconds,
           "distance": distance[len(distance) // 2], "model": model}
    _RECALL_CACHE[key] = out
    return dict(out)


# ------------------------------------------------------------------- all at once


def measure_design(spec: dict, setup: Capstone = SETUP, *, recall: bool = True, progress: bool = False) -> dict:
    """Bytes at ``setup.context`` tokens, ms/token at two contexts and (if ``recall`` and the
    design fits the budget) recall after training. Each verdict is in ``"fits"``, ``"flat"``,
    ``"recalls"`` (``None``: not measured)."""
    rows = state_bytes(spec, (1024, 4096, 16_384, setup.context), setup)
    last = rows[-1]
    fits = last["context"] >= setup.context and last["nbytes"] <= setup.budget
    ms = decode_ms(spec, setup=setup)
    ratio = ms[-1]["ms_per_token"] / ms[0]["ms_per_token"]
    out = {"label": spec_label(spec), "bytes": rows, "nbytes": last["nbytes"], "bytes_at": last["context"],
           "fits": fits, "ms": ms, "ms_ratio": ratio, "flat": ratio <= setup.max_ms_ratio,
           "recall": None, "recalls": None}
    if recall and fits:
        r = train_recall(spec, setup, progress=progress)
        out.update(recall=r["recall"], recalls=r["recall"] >= setup.min_recall, train_seconds=r["seconds"],
                   distance=r["distance"])
    return out


def plot_designs(rows: list[dict], setup: Capstone = SETUP):
    """Two panels: state bytes and ms/token against the context ``m`` (log axes), one line per
    design, the budget as a dashed line, the legend to their right. ``rows``: ``{"label", "bytes": [...],
    "ms": [...]}`` as :func:`state_bytes` and :func:`decode_ms` return them. A pure function: returns a
    Figure. Rows past the tenth (matplotlib's ten colours) are drawn dotted with square markers, so no
    two rows of lesson 09's eleven look alike."""
    from ..viz import Figure  # shows itself as a PNG in a notebook

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax_b, ax_t = fig.subplots(1, 2)
    for i, row in enumerate(rows):
        style = {"color": f"C{i % 10}", "marker": "os^"[i // 10 % 3], "linestyle": ("-", ":", "-.")[i // 10 % 3],
                 "label": row["label"]}
        ax_b.plot([r["context"] for r in row["bytes"]], [r["nbytes"] for r in row["bytes"]], **style)
        ax_t.plot([r["context"] for r in row["ms"]], [r["ms_per_token"] for r in row["ms"]], **style)
    ax_b.axhline(setup.budget, color="red", linestyle="--", label=f"budget {format_bytes(setup.budget)}")
    ax_b.set(xscale="log", yscale="log", xlabel="context m (tokens)", ylabel="state bytes (all layers, batch 1)",
             title="bytes (streamed; stopped once 4x over the budget)")
    ax_t.set(xscale="log", xlabel="context m (tokens)", ylabel="ms per generated token (1 thread)",
             title="time per token")
    ax_t.set_ylim(bottom=0)
    fig.legend(*ax_b.get_legend_handles_labels(), loc="outside right upper", fontsize=8)  # beside, not over, the lines
    for ax in (ax_b, ax_t):
        ax.grid(True, which="both", alpha=0.3)
    return fig


def run_seeds(design: str, seeds=(0, 1, 2), setup: Capstone = SETUP, *, log_every: int = 100,
              far=FAR_LENGTHS, on_row=None) -> list[dict]:
    """One row per seed for :data:`RUNNABLE` ``[design]`` (:data:`DESIGNS`, :data:`VARIANTS`,
    :data:`CACHES`): the grade's training run (:func:`train_recall`)
    with ``setup.seed = seed`` (the seed picks the weights' initialisation, the batches and the
    training and test conversations), its recall and its learning curve every ``log_every`` steps,
    and (``far``) the same model's recall on conversations with longer chats (:func:`recall_at`).
    ``on_row(rows)`` is called after each seed (to save partial results)."""
    if design not in RUNNABLE:
        raise ValueError(f"design must be one of {', '.join(map(repr, RUNNABLE))}, got {design!r}")
    spec, rows = RUNNABLE[design], []
    for seed in seeds:
        seeded = dataclasses.replace(setup, seed=int(seed))
        r = train_recall(spec, seeded, log_every=log_every)
        rows.append({"design": design, "label": spec_label(spec), "spec": spec, "seed": int(seed),
                     "recall": r["recall"], "curve": r["recall_curve"], "train_seconds": round(r["seconds"], 1),
                     "distance": r["distance"], "far": recall_at(r["model"], far, seeded) if far else []})
        if on_row is not None:
            on_row(rows)
    return rows


def main(argv=None) -> int:
    """Recall of one of :data:`DESIGNS` after the grade's training run, on several seeds, with its
    learning curves, as a result file (:func:`course_lib.experiments.results.write_result`)."""
    import argparse
    import json
    import shlex
    from pathlib import Path

    from . import results

    parser = argparse.ArgumentParser(prog="python -m course_lib.experiments.capstone", description=main.__doc__)
    parser.add_argument("--design", required=True, choices=list(RUNNABLE))
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=None,
                        help=f"training steps (default the grade's {SETUP.steps}: fewer only to check or time a run)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the seeds already in --out (same design, spec and setup) and run the rest")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    t0, c0 = time.perf_counter(), time.process_time()
    run_setup = SETUP if args.steps is None else dataclasses.replace(SETUP, steps=args.steps)
    setup = {k: v for k, v in dataclasses.asdict(run_setup).items() if k != "seed"}
    command = (f"python -m course_lib.experiments.capstone --design {shlex.quote(args.design)} "
               f"--seeds {','.join(map(str, seeds))} --out {args.out}"
               + ("" if args.steps is None else f" --steps {args.steps}"))

    kept, before = [], {"seconds": 0.0, "cpu_seconds": 0.0}
    if args.resume and args.out.is_file():  # rows of a run cut short, made by the same command
        old = results.read_result(args.out)
        same = (old.get("design"), old.get("spec"), old["setup"]) == (
            args.design, *json.loads(json.dumps([RUNNABLE[args.design], setup])))
        if same:
            kept = [r for r in old["rows"] if r["seed"] in seeds]
            before = {k: old.get(k) or 0.0 for k in before}
    todo = [seed for seed in seeds if seed not in {r["seed"] for r in kept}]

    def save(new, partial=True):  # after every seed, so a run cut short keeps the seeds it finished
        rows = sorted(kept + new, key=lambda r: seeds.index(r["seed"]))
        extra = {"partial": True} if partial and len(rows) < len(seeds) else {}
        results.write_result(args.out, command=command, rows=rows, seeds=[r["seed"] for r in rows], setup=setup,
                             seconds=before["seconds"] + time.perf_counter() - t0, design=args.design,
                             spec=RUNNABLE[args.design],
                             cpu_seconds=round(before["cpu_seconds"] + time.process_time() - c0, 1), **extra)
        return rows

    rows = save(run_seeds(args.design, todo, run_setup, on_row=save) if todo else [], partial=False)
    for row in rows:
        print(f"{args.design} seed {row['seed']}: recall {row['recall']:.0%} ({row['train_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
