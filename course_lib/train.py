r"""Training and evaluation loops for :class:`~course_lib.models.MemoryLM`.

* :func:`train` minimises the cross-entropy at the labelled positions (``labels != -100``)
  with AdamW, warmup and cosine decay, gradient clipping, a progress bar, and atomic
  checkpoints that resume exactly (model, optimizer, step, random number generators).
* :func:`evaluate` reports the loss, bits per character ``loss / ln 2`` and the accuracy
  at the labelled positions (for MQAR: the answers only).

Long sequences can be fed *segment by segment* (``segment_len=n_s``), carrying the model's
state from one segment to the next, as Transformer-XL does. Memories store their state
detached (stop-gradient), so each segment's backward pass ends at the memory and the
graph of earlier segments is freed; :func:`train` checks this on its first step.

Extra losses: a memory may return training losses of its own with its state (a learned
compressor's attention-reconstruction loss, ``LMState.extra_losses``); :func:`train` adds
them to the cross-entropy (summed over layers, averaged over the segments of a batch), so a
``CompressiveMemory(compress="conv")`` trains its ``f_c`` through the ordinary loop.

Progress bars come from ``tqdm.auto`` (a widget in Jupyter) and stay silent when the
environment variable ``CI`` or ``COURSE_QUIET`` is set.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ._checks import check_positive_int, check_tensor, describe
from .data import IGNORE
from .device import pick_device
from .memory.base import state_tensors
from .models import LMState

__all__ = [
    "quiet", "progress_bar", "Batches", "Stages", "TextBatches", "TrainLog", "train", "evaluate", "forward_segments",
    "predict", "lr_at", "save_checkpoint", "load_checkpoint",
]


def quiet() -> bool:
    """True when ``CI`` or ``COURSE_QUIET`` is set to anything but an empty string: progress
    bars stay silent (stored notebook outputs must be reproducible)."""
    return bool(os.environ.get("CI") or os.environ.get("COURSE_QUIET"))


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs):
    """``tqdm.auto.tqdm``, disabled when :func:`quiet` or ``enabled=False``."""
    return tqdm(iterable, disable=quiet() or not enabled, **kwargs)


# ------------------------------------------------------------------------- batches


def _check_pair(inputs, labels):
    check_tensor("inputs", inputs, ndim=2)
    check_tensor("labels", labels, ndim=2)
    if inputs.shape != labels.shape:
        raise ValueError(f"inputs and labels must have one shape, got {tuple(inputs.shape)} and {tuple(labels.shape)}")


class Batches:
    """Endless random minibatches of rows of ``(inputs, labels)`` ``[N, T]``, drawn with a
    seeded generator whose state goes into checkpoints (so a resumed run sees the same batches).

    ``extra``: more tensors with the same rows (``[N, ...]``, e.g. a second set of labels), drawn
    with the same rows and returned after ``(x, y)``.
    """

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int, *, seed: int = 0,
                 extra: tuple = ()):
        _check_pair(inputs, labels)
        for i, t in enumerate(extra):
            check_tensor(f"extra[{i}]", t)
            if t.shape[0] != inputs.shape[0]:
                raise ValueError(f"extra[{i}] has {t.shape[0]} rows but inputs have {inputs.shape[0]}")
        self.inputs, self.labels, self.extra = inputs, labels, tuple(extra)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        return self

    def __next__(self):
        rows = torch.randint(self.inputs.shape[0], (self.batch_size,), generator=self.generator)
        return (self.inputs[rows], self.labels[rows], *(t[rows] for t in self.extra))

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class Stages:
    """A curriculum: ``steps[0]`` batches from ``sources[0]``, then ``steps[1]`` from ``sources[1]``,
    ..., the last source for ever (its ``steps`` entry is ignored). One :func:`train` call, one
    optimiser, whatever the stage: e.g. MQAR with few pairs first, where the model leaves the
    plateau quickly, then the full mix (lesson 08's capacity run).

        data = Stages([Batches(*easy, 32, seed=0), Batches(*mix, 32, seed=0)], [750, None])
    """

    def __init__(self, sources, steps):
        sources, steps = list(sources), list(steps)
        if not sources or len(sources) != len(steps):
            raise ValueError(f"sources and steps must be two lists of one length >= 1, got {len(sources)} and "
                             f"{len(steps)}")
        for i, n in enumerate(steps[:-1]):
            check_positive_int(f"steps[{i}]", n)
        self.sources, self.steps, self.taken = sources, steps, 0

    def __iter__(self):
        return self

    def __next__(self):
        stage, before = 0, 0
        while stage < len(self.sources) - 1 and self.taken >= before + self.steps[stage]:
            before += self.steps[stage]
            stage += 1
        self.taken += 1
        return next(self.sources[stage])

    def state_dict(self) -> dict:
        return {"taken": self.taken, "sources": [getattr(s, "state_dict", dict)() for s in self.sources]}

    def load_state_dict(self, state: dict) -> None:
        self.taken = state["taken"]
        for source, st in zip(self.sources, state["sources"]):
            if hasattr(source, "load_state_dict"):
                source.load_state_dict(st)


class TextBatches(Batches):
    """Endless random windows of a long text ``ids [n]``: ``inputs = ids[s:s+T]``,
    ``labels = ids[s+1:s+T+1]`` (next-character prediction at every position)."""

    def __init__(self, ids: torch.Tensor, batch_size: int, seq_len: int, *, seed: int = 0):
        check_tensor("ids", ids, ndim=1)
        self.seq_len = check_positive_int("seq_len", seq_len)
        if ids.numel() < seq_len + 1:
            raise ValueError(f"ids holds {ids.numel()} tokens; seq_len={seq_len} needs at least {seq_len + 1}")
        self.ids = ids
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.generator = torch.Generator().manual_seed(seed)

    def __next__(self):
        starts = torch.randint(self.ids.numel() - self.seq_len, (self.batch_size, 1), generator=self.generator)
        rows = starts + torch.arange(self.seq_len + 1)  # [B, T+1]
        windows = self.ids[rows]
        return windows[:, :-1], windows[:, 1:]

    @staticmethod
    def rows(ids: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Non-overlapping windows covering ``ids`` (the tail that does not fill one is dropped),
        as ``(inputs, labels)`` ``[N, seq_len]``: for evaluating on a whole text."""
        check_tensor("ids", ids, ndim=1)
        check_positive_int("seq_len", seq_len)
        n = (ids.numel() - 1) // seq_len
        if n < 1:
            raise ValueError(f"ids holds {ids.numel()} tokens; seq_len={seq_len} needs at least {seq_len + 1}")
        x = ids[: n * seq_len].view(n, seq_len)
        y = ids[1 : n * seq_len + 1].view(n, seq_len)
        return x, y


# ------------------------------------------------------------------- forward, loss


def forward_segments(model, inputs: torch.Tensor, segment_len: int | None = None, state=None):
    """Run ``inputs [B, T]`` through ``model`` in segments of ``n_s = segment_len`` tokens,
    carrying the state; returns ``(logits [B, T, V], state)``. ``None``: one segment."""
    logits = []
    for x in _segments(inputs, segment_len):
        out, state = model(x, state)
        logits.append(out)
    return torch.cat(logits, dim=1), state


def _segments(x: torch.Tensor, segment_len: int | None):
    if segment_len is None:
        return [x]
    check_positive_int("segment_len", segment_len)
    return x.split(segment_len, dim=1)


def _check_detached(state) -> None:
    if any(t.requires_grad for t in state_tensors(state)):
        raise ValueError(
            "the model's state holds tensors that require grad: a memory stored its state without "
            ".detach(), so segments would backpropagate into each other and the graph would grow "
            "without bound; memories must store detached tensors (see course_lib.memory.base)"
        )


def _batch_loss(model, x, y, segment_len, *, backward: bool, check: bool = False):
    """Mean cross-entropy over the labelled positions of ``x``, correct predictions, their count,
    and the extra losses (summed over layers, averaged over segments). With ``backward`` the
    gradient of ``cross-entropy + extra`` is accumulated segment by segment (each segment's
    graph freed at once)."""
    n_scored = int((y != IGNORE).sum())
    if n_scored == 0:
        if backward:
            raise ValueError("a batch has no labelled positions (all labels are -100); nothing to learn from")
        return 0.0, 0, 0, 0.0
    segments = list(zip(_segments(x, segment_len), _segments(y, segment_len)))
    total, correct, extra_total, state = 0.0, 0, 0.0, None
    for xs, ys in segments:
        logits, state = model(xs, state)
        if check:
            _check_detached(state)
        # a MemoryLM's memories may add losses of their own (0 when they computed none)
        extra = sum(state.extra_losses.values()) / len(segments) if isinstance(state, LMState) else 0.0
        scored = ys != IGNORE
        loss = 0.0
        if scored.any():
            loss = F.cross_entropy(logits.flatten(0, 1), ys.flatten(), ignore_index=IGNORE, reduction="sum")
            total += loss.item()
            correct += int((logits.argmax(-1) == ys)[scored].sum())
        objective = loss / n_scored + extra
        if backward and torch.is_tensor(objective) and objective.requires_grad:
            objective.backward()
        extra_total += extra.item() if torch.is_tensor(extra) else extra
    return total / n_scored, correct, n_scored, extra_total


def lr_at(step: int, steps: int, lr: float, warmup: int = 0, schedule: str = "cosine", min_ratio: float = 0.1):
    """Learning rate at ``step`` (0-based): linear warmup, then cosine decay to ``min_ratio * lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


# --------------------------------------------------------------------- checkpoints


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, model, optimizer=None, *, step: int = 0, data=None, extra: dict | None = None) -> Path:
    """Write model, optimizer, ``step``, random-generator states (torch's and ``data``'s) and
    ``extra`` to ``path`` atomically: a temporary file in the same folder, then ``os.replace``,
    so a crash never leaves a half-written checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": step,
        "rng": _rng_state(),
        "data": data.state_dict() if hasattr(data, "state_dict") else None,
        "extra": extra or {},
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path, model, optimizer=None, *, data=None, restore_rng: bool = True) -> dict:
    """Load what :func:`save_checkpoint` wrote into ``model`` (and ``optimizer``, ``data``);
    restores the random generators too. Returns ``{"step", "extra"}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    device = next(model.parameters()).device
    payload = torch.load(path, map_location=device, weights_only=True)
    model.load_state_dict(payload["model"])
    if optimizer is not None:
        if payload["optimizer"] is None:
            raise ValueError(f"checkpoint {path} holds no optimizer state; pass optimizer=None")
        optimizer.load_state_dict(payload["optimizer"])
    if data is not None and payload["data"] is not None and hasattr(data, "load_state_dict"):
        data.load_state_dict({k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in payload["data"].items()})
    if restore_rng:
        rng = payload["rng"]
        _set_rng_state({"torch": rng["torch"].cpu(), **({"cuda": rng["cuda"]} if "cuda" in rng else {})})
    return {"step": payload["step"], "extra": payload["extra"]}


# ------------------------------------------------------------------------- loops


@dataclasses.dataclass
class TrainLog:
    """What :func:`train` did: the cross-entropy of every step (resumed runs include the earlier
    steps) and, per step, the extra losses that were added to it (0 when the model has none)."""

    losses: list[float]
    step: int
    seconds: float
    extra_losses: list[float] = dataclasses.field(default_factory=list)


def train(model, data, steps: int, *, batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 0.0,
          warmup: int = 0, schedule: str = "cosine", grad_clip: float | None = 1.0, segment_len: int | None = None,
          optimizer=None, device=None, seed: int = 0, checkpoint=None, checkpoint_every: int | None = None,
          progress: bool = True, desc: str = "train", loss_fn=None, on_step=None) -> TrainLog:
    """Train ``model`` for ``steps`` optimizer steps; returns a :class:`TrainLog`.

    Args:
        data: ``(inputs, labels)`` ``[N, T]`` (sampled as :class:`Batches` with ``batch_size``
            and ``seed``), or any iterator of ``(x, y)`` batches such as :class:`TextBatches`.
            Exact resumption needs an iterator with ``state_dict`` (both classes here have one).
        lr, warmup, schedule: peak learning rate; linear warmup steps; ``"cosine"`` decay to
            ``lr / 10`` or ``"constant"`` (see :func:`lr_at`).
        segment_len: ``n_s``; feed each batch in segments of this many tokens, carrying the
            state (stop-gradient between segments). ``None``: the whole sequence at once.
        optimizer: defaults to AdamW; ``train`` sets its learning rate every step.
        device: defaults to :func:`~course_lib.device.pick_device`; the model is moved there.
        checkpoint: a path. If it exists, training resumes from it (model, optimizer, step,
            random generators, data order); it is (re)written every ``checkpoint_every`` steps
            and at the end.
        loss_fn: the loss hook, for an experiment whose objective is not the cross-entropy of
            ``(x, y)`` read in segments: ``loss_fn(model, batch) -> float`` gets the batch (every
            tensor on ``device``), accumulates the gradient of its objective (``backward``, segment
            by segment if it likes) and returns the loss to log. Default: the cross-entropy plus the
            memories' extra losses, in segments of ``segment_len``.
        on_step: ``on_step(step, loss, model)`` after every optimizer step (a probe, a curve);
            ``step`` counts from 1.

    This is the course's one optimisation loop: the lessons, the benchmarks and the capstone
    all train through it.
    """
    check_positive_int("steps", steps, minimum=0)
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    if checkpoint_every is not None:
        check_positive_int("checkpoint_every", checkpoint_every)
    device = pick_device() if device is None else torch.device(device)
    model.to(device)
    if isinstance(data, tuple):
        data = Batches(*data, batch_size, seed=seed)
    elif not hasattr(data, "__next__"):
        raise TypeError(f"data must be a tuple (inputs, labels) or an iterator of (x, y) batches, got {describe(data)}")
    if optimizer is None:
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses, extra_losses, start = [], [], 0
    if checkpoint is not None and Path(checkpoint).is_file():
        info = load_checkpoint(checkpoint, model, optimizer, data=data)
        start, losses = info["step"], list(info["extra"].get("losses", []))
        extra_losses = list(info["extra"].get("extra_losses", []))

    def save(step):
        save_checkpoint(checkpoint, model, optimizer, step=step, data=data,
                        extra={"losses": losses, "extra_losses": extra_losses})

    model.train()
    t0 = time.perf_counter()
    bar = progress_bar(total=steps, initial=start, desc=desc, enabled=progress)
    for step in range(start, steps):
        batch = tuple(t.to(device) for t in next(data))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup, schedule)
        optimizer.zero_grad(set_to_none=True)
        if loss_fn is None:
            loss, _, _, extra = _batch_loss(model, *batch[:2], segment_len, backward=True, check=step == start)
        else:
            loss, extra = float(loss_fn(model, batch)), 0.0
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        losses.append(loss)
        extra_losses.append(extra)
        if on_step is not None:
            on_step(step + 1, loss, model)
        bar.update(1)
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{loss:.3f}")
        if checkpoint is not None and checkpoint_every is not None and (step + 1) % checkpoint_every == 0:
            save(step + 1)
    bar.close()
    if checkpoint is not None:
        save(max(steps, start))
    return TrainLog(losses, max(steps, start), time.perf_counter() - t0, extra_losses)


@torch.no_grad()
def evaluate(model, data, *, batch_size: int = 64, segment_len: int | None = None, device=None,
             max_batches: int | None = None, progress: bool = False, desc: str = "eval") -> dict:
    """Loss, bits per character and accuracy at the labelled positions (``labels != -100``).

    ``data``: ``(inputs, labels)`` ``[N, T]`` (every row once, in order) or an iterable of
    ``(x, y)`` batches (stopped after ``max_batches``). Returns ``{"loss", "bpc",
    "accuracy", "n_scored"}``; ``bpc = loss / ln 2`` (bits per token; per character for a
    character model).
    """
    device = pick_device() if device is None else torch.device(device)
    model.to(device)
    if isinstance(data, tuple):
        _check_pair(*data)
        check_positive_int("batch_size", batch_size)
        data = zip(data[0].split(batch_size), data[1].split(batch_size))
    was_training = model.training
    model.eval()
    total, correct, count = 0.0, 0, 0
    for b, (x, y) in enumerate(progress_bar(data, enabled=progress, desc=desc)):
        if max_batches is not None and b >= max_batches:
            break
        loss, right, n, _ = _batch_loss(model, x.to(device), y.to(device), segment_len, backward=False)
        total, correct, count = total + loss * n, correct + right, count + n
    model.train(was_training)
    if count == 0:
        raise ValueError("data held no labelled positions (labels != -100) to evaluate")
    loss = total / count
    return {"loss": loss, "bpc": loss / math.log(2), "accuracy": correct / count, "n_scored": count}


@torch.no_grad()
def predict(model, inputs: torch.Tensor, *, batch_size: int = 64, segment_len: int | None = None,
            device=None) -> torch.Tensor:
    """Greedy next-token predictions ``argmax logits`` for every position, ``[N, T]`` on the CPU."""
    check_tensor("inputs", inputs, ndim=2)
    device = pick_device() if device is None else torch.device(device)
    model.to(device)
    was_training = model.training
    model.eval()
    out = [forward_segments(model, x.to(device), segment_len)[0].argmax(-1).cpu() for x in inputs.split(batch_size)]
    model.train(was_training)
    return torch.cat(out)
