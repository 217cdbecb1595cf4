r"""Data for the course: synthetic recall tasks and a real-text character corpus.

* :func:`mqar`: multi-query associative recall (Zoology, Arora et al. 2023). Key-value
  pairs first, then the keys again as queries; the model must emit each key's value.
  This is the task that separates memories by how much they can *recall*.
* :func:`passkey` and :func:`long_dialogue`: a fact stated early in a long text and asked
  for much later (text examples with the answer's character span).
* :func:`stdlib_corpus`: characters of the Python standard library's own source, which
  ships with every interpreter, so nothing is downloaded; with a train/validation split
  and a :class:`CharVocab`.

Everything takes an explicit ``seed`` and draws from its own ``torch.Generator``: the same
arguments give the same data on every machine (the corpus: with the same Python version).
Labels are ``-100`` (``IGNORE``) wherever nothing is asked, as ``cross_entropy`` expects.
"""

from __future__ import annotations

import math
import sysconfig
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from ._checks import check_positive_int, describe

__all__ = [
    "IGNORE", "mqar", "mqar_gap_probs", "mqar_distance", "MqarAnswers", "mqar_answers",
    "passkey", "long_dialogue", "TextExample", "encode_examples",
    "CharVocab", "Corpus", "stdlib_files", "stdlib_corpus",
]

IGNORE = -100  # label of positions that are not scored


def _generator(seed) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {describe(seed)}")
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------- MQAR


def mqar_gap_probs(n_slots: int, power_a: float = 0.01) -> torch.Tensor:
    """``p(g) ∝ a * g^(a-1)`` for ``g = 1..n_slots``: the chance that a query sits at slot ``g-1``.

    With ``a`` near 0 this is close to ``1/g``: most queries come soon after the pairs,
    a long tail comes much later (Zoology's power law).
    """
    check_positive_int("n_slots", n_slots)
    if not isinstance(power_a, (int, float)) or not 0 < power_a <= 1:
        raise ValueError(f"power_a must be a number in (0, 1], got {power_a!r}")
    g = torch.arange(1, n_slots + 1, dtype=torch.float64)
    p = power_a * g ** (power_a - 1)
    return p / p.sum()


def mqar(n_examples: int, seq_len: int = 64, n_pairs: int = 8, vocab_size: int = 64, *, seed: int,
         power_a: float = 0.01, random_fill: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-query associative recall, as in Zoology's ``multiquery_ar``.

    Each row holds ``n_pairs`` pairs ``k_1 v_1 k_2 v_2 ...`` (distinct keys drawn from
    ``1 .. vocab_size/2 - 1``, distinct values from ``vocab_size/2 .. vocab_size - 1``;
    token 0 is never a key), then ``seq_len - 2 n_pairs`` query positions. Every key is
    asked once, at an even offset ``2 g`` after the pairs, with the slot ``g`` drawn without
    replacement from :func:`mqar_gap_probs` (a power law: most queries come early). The
    label at a query's position is its value (the next token); every other label is
    ``-100``. Positions between queries hold random tokens (``random_fill``) or 0.

    Returns ``(inputs, labels)``, both ``[n_examples, seq_len]`` long tensors.

    >>> x, y = mqar(1, seq_len=16, n_pairs=2, vocab_size=16, seed=0)
    >>> bool((y != -100).sum() == 2)
    True
    """
    check_positive_int("n_examples", n_examples)
    check_positive_int("seq_len", seq_len)
    check_positive_int("n_pairs", n_pairs)
    check_positive_int("vocab_size", vocab_size)
    half = vocab_size // 2
    if n_pairs > half - 1:
        raise ValueError(
            f"n_pairs={n_pairs} distinct keys need vocab_size >= {2 * n_pairs + 2}, got vocab_size={vocab_size} "
            f"(keys come from 1..vocab_size/2 - 1)"
        )
    if seq_len < 4 * n_pairs:
        raise ValueError(
            f"seq_len={seq_len} is too short for n_pairs={n_pairs}: the pairs take {2 * n_pairs} tokens and each "
            f"query needs its own slot of 2 tokens after them, so seq_len must be >= {4 * n_pairs}"
        )
    gen = _generator(seed)
    n, ctx = n_examples, 2 * n_pairs
    keys = 1 + torch.rand(n, half - 1, generator=gen).argsort(dim=1)[:, :n_pairs]  # [N, P] distinct
    values = half + torch.rand(n, vocab_size - half, generator=gen).argsort(dim=1)[:, :n_pairs]  # [N, P]
    n_slots = (seq_len - ctx) // 2
    probs = mqar_gap_probs(n_slots, power_a).expand(n, n_slots)
    gaps = torch.multinomial(probs, n_pairs, replacement=False, generator=gen)  # [N, P] slot of each query
    fill = torch.randint(vocab_size, (n, seq_len), generator=gen)

    inputs = fill if random_fill else torch.zeros(n, seq_len, dtype=torch.long)
    labels = torch.full((n, seq_len), IGNORE, dtype=torch.long)
    inputs[:, 0:ctx:2] = keys
    inputs[:, 1:ctx:2] = values
    where = ctx + 2 * gaps  # [N, P] query positions
    inputs.scatter_(1, where, keys)
    labels.scatter_(1, where, values)
    return inputs, labels


def _int_or_range(name: str, value, minimum: int) -> tuple[int, int]:
    """``value`` as an inclusive range ``(lo, hi)``: an int ``n`` is ``(n, n)``."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        lo = check_positive_int(f"{name}[0]", value[0], minimum=minimum)
        hi = check_positive_int(f"{name}[1]", value[1], minimum=minimum)
        if lo > hi:
            raise ValueError(f"{name} must be an int or a range (lo, hi) with lo <= hi, got {value!r}")
        return lo, hi
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or a range (lo, hi) of ints, got {describe(value)}")
    n = check_positive_int(name, value, minimum=minimum)
    return n, n


def mqar_distance(n_examples: int, n_pairs=8, gap=64, vocab_size: int = 64, *, seed: int, prefix: int = 0,
                  random_fill: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    r"""MQAR with the pairs early and the questions ``gap`` tokens later: recall against distance.

    Each row reads ``[prefix filler] k_1 v_1 ... k_P v_P [gap filler] q_1 q_2 ... q_P``: ``P = n_pairs``
    key-value pairs (distinct keys from ``1 .. vocab_size/2 - 1``, distinct values from
    ``vocab_size/2 .. vocab_size - 1``, as in :func:`mqar`), then exactly ``gap`` filler tokens, then
    every key of the row asked once, in a random order, one after the other. The label at a
    question is its key's value; every other label is ``-100``. The value asked by the ``j``-th
    question lies ``gap + 2 (P - i) + 1 + j`` tokens back (pair ``i``, 1-based, question ``j``, 0-based).

    Filler (``random_fill=True``, Zoology's default) is uniform over the whole vocabulary *except the
    row's own keys*, so it is never mistaken for a key: each key occurs exactly twice in its row (in
    its pair and as its question). Values and other keys may occur in the filler, as in Zoology; a
    memory must learn not to spend its state on them (DeltaNet's learned write strength).
    ``random_fill=False`` fills with token 0, which is never a key.

    ``n_pairs`` and ``gap`` are ints or inclusive ranges ``(lo, hi)``; with a range every row draws
    its own (uniformly), and rows are padded at the front with filler to one length,
    ``prefix + 2 max(P) + max(gap) + max(P)`` (a mix of settings per batch, as Zoology trains).

    Returns ``(inputs, labels)``, both ``[n_examples, T]`` long tensors; :func:`mqar_answers` finds
    every question's pair, distance and source again.

    >>> x, y = mqar_distance(1, n_pairs=2, gap=3, vocab_size=16, seed=0)
    >>> x.shape[1], int((y != -100).sum())
    (9, 2)
    """
    check_positive_int("n_examples", n_examples)
    check_positive_int("vocab_size", vocab_size)
    check_positive_int("prefix", prefix, minimum=0)
    p_lo, p_hi = _int_or_range("n_pairs", n_pairs, 1)
    g_lo, g_hi = _int_or_range("gap", gap, 0)
    half = vocab_size // 2
    if p_hi > half - 1:
        raise ValueError(f"n_pairs={n_pairs!r}: {p_hi} distinct keys need vocab_size >= {2 * p_hi + 2}, got "
                         f"vocab_size={vocab_size} (keys come from 1..vocab_size/2 - 1)")
    gen = _generator(seed)
    n = n_examples
    length = prefix + 3 * p_hi + g_hi
    n_p = torch.randint(p_lo, p_hi + 1, (n,), generator=gen)  # [N] pairs in each row
    gaps = torch.randint(g_lo, g_hi + 1, (n,), generator=gen)  # [N]
    keys = 1 + torch.rand(n, half - 1, generator=gen).argsort(dim=1)[:, :p_hi]  # [N, P_max] distinct
    values = half + torch.rand(n, vocab_size - half, generator=gen).argsort(dim=1)[:, :p_hi]  # [N, P_max]
    order = torch.rand(n, p_hi, generator=gen)
    used = torch.arange(p_hi) < n_p[:, None]  # [N, P_max]: the row's pairs
    order = order.masked_fill(~used, 2.0).argsort(dim=1)  # the row's pairs in a random order, unused last
    if random_fill:
        # uniform over the vocab_size - P tokens that are not the row's keys: draw an index among
        # them and step over every excluded key at or below it (keys sorted ascending)
        fill = torch.randint(1 << 30, (n, length), generator=gen) % (vocab_size - n_p)[:, None]
        excluded = torch.where(used, keys, vocab_size).sort(dim=1).values  # [N, P_max], unused pushed past
        for j in range(p_hi):  # loop over pairs (<= vocab/2), not over tokens
            fill = fill + (fill >= excluded[:, j:j + 1]).long()
    else:
        fill = torch.zeros(n, length, dtype=torch.long)
    inputs, labels = fill, torch.full((n, length), IGNORE, dtype=torch.long)
    start = length - 3 * n_p - gaps  # [N] position of k_1
    i = torch.arange(p_hi)
    rows = torch.arange(n)[:, None].expand(n, p_hi)
    key_pos = (start[:, None] + 2 * i)[used]
    inputs[rows[used], key_pos] = keys[used]
    inputs[rows[used], key_pos + 1] = values[used]
    q_pos = (start + 2 * n_p + gaps)[:, None] + i  # [N, P_max]
    asked = torch.gather(keys, 1, order)
    answer = torch.gather(values, 1, order)
    inputs[rows[used], q_pos[used]] = asked[used]
    labels[rows[used], q_pos[used]] = answer[used]
    return inputs, labels


@dataclass(frozen=True)
class MqarAnswers:
    """Every question of an MQAR batch, in the order of ``(labels != -100).nonzero()``:
    ``row``, ``pos`` (the question's position), ``value_pos`` (where its value was stated),
    ``distance = pos - value_pos`` (tokens back), and, for reading in segments of ``n_s``
    tokens, ``same_segment``: the value lies in the question's own segment
    (``value_pos // n_s == pos // n_s``), where a memory that ``reads_segment`` sees it by plain
    causal attention; otherwise the answer can only come from the state carried between segments."""

    row: torch.Tensor
    pos: torch.Tensor
    value_pos: torch.Tensor
    distance: torch.Tensor
    same_segment: torch.Tensor


def mqar_answers(inputs: torch.Tensor, labels: torch.Tensor, segment_len: int | None = None) -> MqarAnswers:
    """Where each question's value was stated (the token after the key's first occurrence) and
    whether it lies in the question's own segment of ``segment_len`` tokens (``None``: one segment).
    Works for :func:`mqar` and :func:`mqar_distance` rows (in both a key's first occurrence is its pair)."""
    if inputs.ndim != 2 or inputs.shape != labels.shape:
        raise ValueError(f"inputs and labels must be [N, T] of one shape, got {tuple(inputs.shape)} and "
                         f"{tuple(labels.shape)}")
    row, pos = (labels != IGNORE).nonzero(as_tuple=True)
    key = inputs[row, pos]
    first = (inputs[row] == key[:, None]).long().argmax(dim=1)  # first occurrence of the asked key
    value_pos = first + 1
    if not bool((inputs[row, value_pos] == labels[row, pos]).all()):
        raise ValueError("a question's key is not followed by its value at its first occurrence: "
                         "not MQAR rows (or filler that repeats a key before its pair)")
    seg = inputs.shape[1] if segment_len is None else check_positive_int("segment_len", segment_len)
    return MqarAnswers(row, pos, value_pos, pos - value_pos, (value_pos // seg) == (pos // seg))


# ---------------------------------------------------------------------- text tasks


@dataclass(frozen=True)
class TextExample:
    """A text whose last characters answer a question about a fact stated much earlier.

    ``text[answer_start:answer_end] == answer`` (the span to score) and the fact, with the
    same answer in it, starts at ``fact_start``.
    """

    text: str
    answer: str
    answer_start: int
    fact_start: int

    @property
    def answer_end(self) -> int:
        return self.answer_start + len(self.answer)

    @property
    def answer_span(self) -> tuple[int, int]:
        return self.answer_start, self.answer_end


def _pick(gen: torch.Generator, items):
    return items[int(torch.randint(len(items), (1,), generator=gen))]


def _check_fraction(name, value):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


_PASSKEY_INTRO = ("There is an important info hidden inside a lot of irrelevant text. "
                  "Find it and memorize it. I will quiz you about the important information there.\n")
_PASSKEY_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"


def passkey(n_examples: int, length: int = 1000, *, seed: int, depth: float | None = None,
            digits: int = 5) -> list[TextExample]:
    """Passkey retrieval (Mohtashami & Jaggi, 2023): a number hidden in filler text.

    The pass key sentence sits at ``depth`` (0 = start, 1 = end; ``None``: a random depth
    per example) of roughly ``length`` characters of repeated filler; the text ends with
    ``What is the pass key? The pass key is <key>``, and the key is the answer span.
    """
    check_positive_int("n_examples", n_examples)
    check_positive_int("length", length)
    check_positive_int("digits", digits)
    if depth is not None:
        depth = _check_fraction("depth", depth)
    gen = _generator(seed)
    n_fill = max(1, math.ceil((length - len(_PASSKEY_INTRO)) / len(_PASSKEY_FILLER)))
    out = []
    for _ in range(n_examples):
        key = "".join(str(int(d)) for d in torch.randint(10, (digits,), generator=gen))
        where = depth if depth is not None else float(torch.rand((), generator=gen))
        before = round(where * n_fill)
        fact = f"The pass key is {key}. Remember it. {key} is the pass key.\n"
        head = _PASSKEY_INTRO + _PASSKEY_FILLER * before
        text = head + fact + _PASSKEY_FILLER * (n_fill - before) + "What is the pass key? The pass key is "
        out.append(TextExample(text + key, key, len(text), len(head)))
    return out


# (slot, how the user states it, how the user asks, how the assistant answers, choices)
_FACTS = [
    ("cat", "my cat is called {}", "What is my cat called?", "Your cat is called {}",
     ["Miso", "Tofu", "Pixel", "Nori", "Biscuit", "Luna", "Pepper", "Mochi", "Ziggy", "Olive"]),
    ("sister", "my sister lives in {}", "Where does my sister live?", "Your sister lives in {}",
     ["Lisbon", "Oslo", "Nairobi", "Quito", "Hanoi", "Tbilisi", "Dakar", "Perth", "Riga", "Lima"]),
    ("colour", "my favourite colour is {}", "What is my favourite colour?", "Your favourite colour is {}",
     ["teal", "amber", "violet", "crimson", "olive", "indigo", "coral", "mauve", "ochre", "jade"]),
    ("code", "my locker code is {}", "What is my locker code?", "Your locker code is {}",
     ["4812", "7730", "1596", "3264", "9041", "5178", "2683", "6407", "8359", "1120"]),
    ("teacher", "my first teacher was Mrs {}", "What was my first teacher called?",
     "Your first teacher was Mrs {}",
     ["Okafor", "Lindqvist", "Moreau", "Tanaka", "Novak", "Alvarez", "Byrne", "Kowalski", "Haddad", "Silva"]),
    ("train", "my train leaves at {}", "When does my train leave?", "Your train leaves at {}",
     ["7:15", "8:40", "9:05", "10:30", "11:55", "13:20", "14:45", "16:10", "17:35", "19:50"]),
]

_SMALL_TALK_USER = [
    "Can you suggest something to cook tonight?", "What is a good way to start running?",
    "I am thinking about repainting the kitchen.", "Do you know any good board games?",
    "The weather has been strange this week.", "How do I keep basil alive on a windowsill?",
    "I started reading a novel about sailors.", "What should I pack for a weekend trip?",
    "My neighbour plays the trumpet every evening.", "Any tips for writing a short speech?",
    "I might learn to play the ukulele.", "How long should I boil an egg?",
]
_SMALL_TALK_ASSISTANT = [
    "That sounds like a nice plan.", "Start small and keep it simple.", "Many people enjoy that.",
    "A little practice every day helps a lot.", "It depends on what you like, but try a few options.",
    "Good question; there are several easy ways.", "That can be fun with friends.",
    "Take it slowly and see how it goes.", "I would keep a short list and check it off.",
]


def long_dialogue(n_examples: int, length: int = 2000, *, seed: int, n_facts: int = 3) -> list[TextExample]:
    """Long conversations: the user states ``n_facts`` facts early ("my cat is called Miso"),
    small talk follows until the text reaches about ``length`` characters, and then the
    user asks about one of the facts. The text ends with the assistant's answer, whose
    value ("Miso") is the answer span. Plain printable ASCII, so a :class:`CharVocab`
    encodes it.
    """
    check_positive_int("n_examples", n_examples)
    check_positive_int("length", length)
    check_positive_int("n_facts", n_facts)
    if n_facts > len(_FACTS):
        raise ValueError(f"n_facts must be <= {len(_FACTS)} (the kinds of fact there are), got {n_facts}")
    gen = _generator(seed)
    out = []
    for _ in range(n_examples):
        kinds = [_FACTS[int(i)] for i in torch.randperm(len(_FACTS), generator=gen)[:n_facts]]
        answers = [_pick(gen, kind[4]) for kind in kinds]
        text = "User: Hi! A few things about me: "
        fact_starts = []
        for j, (kind, answer) in enumerate(zip(kinds, answers)):
            fact_starts.append(len(text))
            text += kind[1].format(answer) + (", " if j < n_facts - 1 else ".\n")
        text += "Assistant: Thanks, I will remember that.\n"
        while len(text) < length:
            text += f"User: {_pick(gen, _SMALL_TALK_USER)}\nAssistant: {_pick(gen, _SMALL_TALK_ASSISTANT)}\n"
        asked = int(torch.randint(n_facts, (1,), generator=gen))
        kind, answer = kinds[asked], answers[asked]
        reply = kind[3].format(answer)
        text += f"User: {kind[2]}\nAssistant: " + reply
        start = len(text) - len(answer)
        out.append(TextExample(text + ".", answer, start, fact_starts[asked]))
    return out


def encode_examples(examples: list[TextExample], vocab: CharVocab, *, pad_id: int = 0):
    """Text examples -> ``(inputs, labels)`` ``[N, T]`` for next-character prediction.

    ``inputs`` holds each text without its last character, right-padded with ``pad_id``;
    ``labels[n, t]`` is character ``t + 1`` where that character lies in the answer span
    and ``-100`` elsewhere, so accuracy is measured on the answer alone.
    """
    if not examples:
        raise ValueError("examples is empty; expected at least one TextExample")
    width = max(len(e.text) for e in examples) - 1
    inputs = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for n, e in enumerate(examples):
        ids = vocab.encode(e.text)
        inputs[n, : len(ids) - 1] = ids[:-1]
        labels[n, e.answer_start - 1:e.answer_end - 1] = ids[e.answer_start:e.answer_end]
    return inputs, labels


# ------------------------------------------------------------------- character corpus


class CharVocab:
    """Characters <-> integer ids. ``encode(text) -> LongTensor [T]``, ``decode(ids) -> str``.

    Args:
        chars: the alphabet (duplicates removed, order kept).
        unk: a character of the alphabet that stands in for unknown characters; without it,
            encoding an unknown character raises ``ValueError``.

    >>> v = CharVocab("abc")
    >>> v.encode("cab").tolist(), v.decode([0, 1])
    ([2, 0, 1], 'ab')
    """

    def __init__(self, chars, unk: str | None = None):
        if isinstance(chars, str):
            chars = list(chars)
        chars = list(dict.fromkeys(chars))
        if not chars or not all(isinstance(c, str) and len(c) == 1 for c in chars):
            raise ValueError(f"chars must be a non-empty string or list of single characters, got {chars!r:.80}")
        if unk is not None and unk not in chars:
            raise ValueError(f"unk={unk!r} must be one of the vocabulary's characters")
        self.chars = "".join(chars)
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.unk = unk
        codes = np.array([ord(c) for c in chars])
        self._table = np.full(codes.max() + 1, -1, dtype=np.int64)  # code point -> id
        self._table[codes] = np.arange(len(chars))

    @classmethod
    def ascii(cls) -> CharVocab:
        """Tab, newline and the printable ASCII characters (97 in all); ``?`` stands for others."""
        return cls("\t\n" + "".join(chr(c) for c in range(32, 127)), unk="?")

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        """The sorted set of characters in ``text``."""
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.chars)

    def __repr__(self) -> str:
        return f"CharVocab({len(self)} chars)"

    def encode(self, text: str) -> torch.Tensor:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {describe(text)}")
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        ids = np.where(codes < len(self._table), self._table[np.minimum(codes, len(self._table) - 1)], -1)
        unknown = ids < 0
        if unknown.any():
            if self.unk is None:
                bad = sorted({text[i] for i in np.flatnonzero(unknown)[:20]})
                raise ValueError(f"text holds characters outside the vocabulary: {bad!r}; pass unk= to map them")
            ids[unknown] = self.stoi[self.unk]
        return torch.from_numpy(ids)

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        try:
            return "".join(self.chars[i] for i in ids)
        except (IndexError, TypeError) as err:
            raise ValueError(f"ids must be ints in [0, {len(self)}), got {ids!r:.80}") from err


@dataclass
class Corpus:
    """A character corpus split by file: ``train`` and ``val`` texts share no file."""

    train: str
    val: str
    vocab: CharVocab
    train_files: list[str]
    val_files: list[str]

    @cached_property
    def train_ids(self) -> torch.Tensor:
        """``train`` encoded, ``[n_train]`` (computed once)."""
        return self.vocab.encode(self.train)

    @cached_property
    def val_ids(self) -> torch.Tensor:
        return self.vocab.encode(self.val)


def stdlib_files() -> list[Path]:
    """The top-level ``.py`` files of this interpreter's standard library, sorted by name."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))
    if not files:
        raise FileNotFoundError(f"found no .py files in the standard library folder {root}")
    return files


_ALLOWED = set("\t\n" + "".join(chr(c) for c in range(32, 127)))


def _to_ascii(text: str) -> str:
    if all(c in _ALLOWED for c in set(text)):
        return text
    return "".join(c if c in _ALLOWED else "?" for c in text)


def stdlib_corpus(*, seed: int = 0, val_fraction: float = 0.1, max_chars: int | None = None) -> Corpus:
    """Characters of the standard library's source, split into train and validation by file.

    Files (:func:`stdlib_files`) are shuffled with ``seed``; the first ones go to
    validation until it holds ``val_fraction`` of the characters, the rest to training.
    ``max_chars`` caps the total (a cut file is truncated; only the files needed are read). Characters outside printable
    ASCII become ``?``, so the vocabulary is always :meth:`CharVocab.ascii` (97 characters).
    The text differs between Python versions, never between runs.
    """
    val_fraction = _check_fraction("val_fraction", val_fraction)
    if max_chars is not None:
        check_positive_int("max_chars", max_chars)
    gen = _generator(seed)
    files = stdlib_files()
    order = torch.randperm(len(files), generator=gen).tolist()
    texts = ((files[i].name, _to_ascii(files[i].read_text(encoding="utf-8", errors="replace"))) for i in order)
    if max_chars is None:
        texts = list(texts)
        total = sum(len(t) + 2 for _, t in texts)
    else:
        total = max_chars  # read only as many files as the budget needs
    budgets = {"val": round(val_fraction * total), "train": total - round(val_fraction * total)}
    parts: dict[str, list[str]] = {"val": [], "train": []}
    names: dict[str, list[str]] = {"val": [], "train": []}
    split = "val" if budgets["val"] > 0 else "train"
    for name, text in texts:
        if budgets[split] <= 0:
            if split == "train":
                break
            split = "train"
        piece = (text + "\n\n")[: budgets[split]]
        parts[split].append(piece)
        names[split].append(name)
        budgets[split] -= len(piece)
    return Corpus("".join(parts["train"]), "".join(parts["val"]), CharVocab.ascii(), names["train"], names["val"])
