r"""Exercises of lesson 08, capacity and trade-offs.

* ``08.pareto_front``: the designs no other design beats on bytes and accuracy, sorted by bytes
* ``08.answer_accuracy``: accuracy of the argmax at the labelled positions
* ``08.error_by_age``: how well a memory's slots keep each token, against the token's age
* ``08.budget_choice``: a design for a byte budget, from a measured table (multiple choice)
* ``08.mean_pool_error``: the error mean pooling leaves on independent tokens (a number)

The references are in :mod:`course_lib.experiments.lesson08` (``pareto_front``,
``answer_accuracy``, ``error_by_age``, ``compressed_slots``).
"""

from __future__ import annotations

import numbers

import torch

from ...experiments.lesson08 import answer_accuracy, compressed_slots, error_by_age, pareto_front
from ..compare import call_keeping_inputs, expect_close, expect_number, expect_tensor, number_tolerance, randn, seeded
from ..core import Check, Mistake, code_exercise, type_name
from ..questions import choice_exercise, number_exercise
from ._common import check_factory

# ---------------------------------------------------------------- 08.pareto_front

PARETO_HINTS = {
    "non_strict": "A design beats another only if it is at least as good on both counts AND strictly better "
                  "on one: two identical designs do not beat each other, so both stay on the front.",
    "strict_both": "A design with fewer bytes and the SAME accuracy (or the same bytes and a higher accuracy) "
                   "beats it too: 'beats' needs <= and >= on both, with one of them strict, not both strict.",
    "drops_ties": "Identical designs (same bytes, same accuracy) both belong on the front: neither beats "
                  "the other. Keep every index, not only the first of a tie.",
    "index_order": "Sort the front by bytes (fewest first), not by index.",
    "accuracy_order": "Sort the front by bytes ASCENDING, fewest bytes first (on the front that is also the least "
                      "accurate first): you sorted it the other way round (reverse=True, or by accuracy from the "
                      "highest).",
    "tie_order": "Designs with equal bytes go in index order.",
    "sorts_inputs": "Do not sort the caller's bytes and accuracy in place (.sort(), b[:] = ...): the inputs may be "
                    "tuples, the caller's lists must stay as they were, and the indices you return must be "
                    "positions in the ORIGINAL order. Sort a list of indices instead: sorted(range(n), key=...).",
    "not_list": "Return a Python list of int indices (positions in the input sequences), not a numpy array "
                "or a tensor (.tolist() converts either).",
    "wrong_values": "Keep index i unless some j has bytes[j] <= bytes[i] and accuracy[j] >= accuracy[i] "
                    "with one of the two strict; then sort the kept indices by (bytes, index).",
}


def _as_indices(got):
    if isinstance(got, torch.Tensor) or not isinstance(got, (list, tuple)):
        raise Mistake("not_list", f"got {type_name(got)}")
    if not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in got):
        raise Mistake("not_list", "an element is not an int")
    return [int(i) for i in got]


def _pareto_models(b, a):
    n = range(len(b))
    front = pareto_front(b, a)
    rank = {i: r for r, i in enumerate(sorted(n, key=lambda i: (b[i], i)))}

    def kept(beats):
        return [i for i in n if not any(beats(j, i) for j in n if j != i)]

    non_strict = kept(lambda j, i: b[j] <= b[i] and a[j] >= a[i])
    strict_both = kept(lambda j, i: b[j] < b[i] and a[j] > a[i])
    dropped, seen = [], set()
    for i in front:
        if (b[i], a[i]) not in seen:
            dropped.append(i)
            seen.add((b[i], a[i]))
    models = {
        "accuracy_order#descending": sorted(front, key=lambda i: (b[i], i), reverse=True),
        "accuracy_order#descending_ties_in_order": sorted(front, key=lambda i: (-b[i], i)),
        "non_strict": sorted(non_strict, key=lambda i: (b[i], i)),
        "strict_both": sorted(strict_both, key=lambda i: (b[i], i)),
        "drops_ties": dropped,
        "index_order": sorted(front),
        "accuracy_order": sorted(front, key=lambda i: (-a[i], i)),
        "tie_order": sorted(front, key=lambda i: (b[i], -i)),
    }
    ranks = sorted(rank[i] for i in front)  # positions in the lists sorted by bytes, as if sorted in place
    return {"sorts_inputs": ranks, **models} if ranks != sorted(front) else models


@check_factory
def _pareto_check(fn, b, a, *, as_tuple=False):
    got = _as_indices(fn(tuple(b) if as_tuple else list(b), tuple(a) if as_tuple else list(a)))
    want = pareto_front(b, a)
    if got == want:
        return
    for key, model in _pareto_models(b, a).items():
        if model != want and got == model:
            raise Mistake(key.split("#")[0])
    raise Mistake("wrong_values")


def _random_designs(seed, n):
    g = seeded(seed)
    b = torch.randint(1, 12, (n,), generator=g).mul(512).tolist()
    a = torch.randint(0, 11, (n,), generator=g).div(10).tolist()
    return b, a


PARETO = code_exercise(
    id="08.pareto_front", title="The Pareto front of bytes and accuracy",
    hints=PARETO_HINTS, error_hints={r"can only convert an array of size 1 to a Python scalar": "not_list",
                                     r"'tuple' object (has no attribute 'sort'|does not support item assignment)":
                                         "sorts_inputs"},
    checks=[
        Check("four designs, all on the front, given out of order",
              _pareto_check([4096, 2048, 8192, 1024], [0.5, 0.3, 0.9, 0.1])),
        Check("a design beaten by one with the same bytes and higher accuracy", _pareto_check([2048, 2048, 4096],
                                                                                              [0.3, 0.5, 0.4])),
        Check("a design beaten by one with fewer bytes and the same accuracy", _pareto_check([1024, 3072, 6144],
                                                                                             [0.7, 0.7, 0.9])),
        Check("two identical designs both stay", _pareto_check([6144, 1024, 6144, 512], [0.8, 0.45, 0.8, 0.2])),
        Check("equal bytes on the front go in index order", _pareto_check([3072, 1024, 1024], [0.9, 0.4, 0.4])),
        Check("one design", _pareto_check([18432], [0.99])),
        Check("30 random designs (tuples in, ties included)", _pareto_check(*_random_designs(101, 30), as_tuple=True)),
        Check("the 12 designs of the lesson's benchmark table",
              _pareto_check([18432, 6144, 6144, 1088, 3200, 10496, 1024, 3072, 10240, 6144, 6144, 10240],
                            [0.999, 0.543, 0.594, 0.454, 0.868, 0.995, 0.811, 0.995, 0.997, 0.706, 0.817, 1.0])),
    ],
)

# ---------------------------------------------------------------- 08.answer_accuracy

ACCURACY_HINTS = {
    "counts_ignored": "Divide by the number of labelled positions only (targets != ignore_index), not by "
                      "every position B * T.",
    "ignored_right": "Leave the ignored positions out entirely: they are neither right nor wrong.",
    "hardcoded_ignore": "Use the ignore_index argument, not a fixed -100.",
    "argmax_dim": "Take the argmax over the vocabulary, the last axis of logits [B, T, V] (dim=-1).",
    "shifted": "targets are already aligned with logits (the target of position t is at targets[:, t]): "
               "do not shift them by one.",
    "percent": "Return a fraction between 0 and 1, not a percentage.",
    "not_float": "Return a Python float (.item() of a 0-d tensor).",
    "not_number": "Return a Python float between 0 and 1.",
    "integer_division": "Divide with /, not //: the number of right answers // the number of labelled positions "
                        "is 0 unless every answer is right (on integer tensors // floors too).",
    "soft": "Count a labelled position as right (1) when the argmax of its logits equals its target, else 0: "
            "not the probability the model gives the target.",
    "wrong_number": "pred = logits.argmax(-1); keep = targets != ignore_index; accuracy = the number of kept "
                    "positions where pred == targets, divided by the number of kept positions (a float in [0, 1]).",
}


def _accuracy_models(logits, targets, ignore_index):
    pred = logits.argmax(-1)
    keep = targets != ignore_index
    right = (pred == targets).double()
    hits, n = int((pred == targets)[keep].sum()), int(keep.sum())
    soft = logits.double().softmax(-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    models = {  # hardcoded_ignore first: with ignore_index = -1 it gives the same number as counts_ignored
        "integer_division": float(hits // n),
        "hardcoded_ignore": right[targets != -100].mean().item() if bool((targets != -100).any()) else -1.0,
        "counts_ignored": right.mean().item(),
        "ignored_right": ((pred == targets) | ~keep).float().mean().item(),
        "shifted": ((pred[:, :-1] == targets[:, 1:]) & keep[:, 1:]).float().sum().item()
        / max(1, keep[:, 1:].sum().item()),
        "percent": 100 * right[keep].mean().item(),
        "soft": soft[keep].mean().item(),
    }
    if logits.shape[1] == logits.shape[2]:  # T == V: argmax over the time axis gives a [B, V] result
        wrong = logits.argmax(1)
        models["argmax_dim"] = (wrong == targets)[keep].float().mean().item()
    return models


@check_factory
def _accuracy_check(fn, seed, b, t, v, *, ignore_index=-100, p_ignore=0.5, dtype=torch.float64, sharp=False):
    gen = seeded(seed)
    logits = randn(gen, b, t, v, dtype=dtype)
    targets = torch.randint(0, v, (b, t), generator=gen)
    if sharp:  # make the model right often, so accuracies are far from 0
        hit = torch.rand(b, t, generator=gen) < 0.7
        logits = logits + 6 * torch.nn.functional.one_hot(targets, v).to(dtype) * hit[..., None].to(dtype)
    ignored = torch.rand(b, t, generator=gen) < p_ignore
    ignored.view(-1)[0] = False  # at least one labelled position
    targets = targets.masked_fill(ignored, ignore_index)
    args = (logits, targets) if ignore_index == -100 else (logits, targets, ignore_index)
    got = call_keeping_inputs(fn, *args)
    if isinstance(got, torch.Tensor):
        raise Mistake("not_float", f"got a tensor of shape {tuple(got.shape)}")
    keep = targets != ignore_index
    # exact, in float64: hits / n. An answer computed in float32 (.float().mean()) may differ by
    # float32 rounding, so the tolerance is float32's, and float64 or Python division is exact.
    want = int((logits.argmax(-1) == targets)[keep].sum()) / int(keep.sum())
    assert abs(want - answer_accuracy(logits, targets, ignore_index)) <= 1e-6 * want
    models = {k: m for k, m in _accuracy_models(logits, targets, ignore_index).items() if abs(m - want) > 1e-6}
    expect_number(got, want, models, rel_tol=number_tolerance(torch.float32))


ACCURACY = code_exercise(
    id="08.answer_accuracy", title="Accuracy at the answers",
    hints=ACCURACY_HINTS,
    checks=[
        Check("B = 3, T = 8, V = 10, about half the positions ignored", _accuracy_check(111, 3, 8, 10, sharp=True)),
        Check("ignore_index = -1 given as an argument", _accuracy_check(112, 2, 9, 6, ignore_index=-1, sharp=True)),
        Check("T = V = 7 (an argmax over the wrong axis still has a shape)", _accuracy_check(113, 4, 7, 7, sharp=True)),
        Check("most positions ignored (as in MQAR)", _accuracy_check(114, 4, 32, 64, p_ignore=0.85, sharp=True)),
        Check("float32 logits", _accuracy_check(115, 2, 6, 5, dtype=torch.float32, sharp=True)),
        Check("a single labelled position (B = 1, T = 1)", _accuracy_check(116, 1, 1, 4, p_ignore=0.0)),
    ],
)

# ---------------------------------------------------------------- 08.error_by_age

AGE_HINTS = {
    "by_position": "Index the result by age, not by position: entry a is the token at position T - 1 - a "
                   "(the newest token has age 0; torch.flip the per-position errors).",
    "forgotten_zero": "A token that no slot covers is forgotten: its error is 1 (read back as zero), not 0.",
    "absolute": "Divide by |v_j|^2: the error is relative, |v_j - u_s|^2 / |v_j|^2.",
    "slot_norm": "Divide by |v_j|^2, the token's own squared norm, not the slot's |u_s|^2: the error is relative "
                 "to what was stored, |v_j - u_s|^2 / |v_j|^2.",
    "not_squared": "Use squared norms: |v_j - u_s|^2 / |v_j|^2, not |v_j - u_s| / |v_j|.",
    "exclusive_last": "A span (first, last) includes last: the slot covers positions first .. last, "
                      "that is values[first:last + 1].",
    "off_by_one": "The newest token, at position T - 1, has age 0: age a is position T - 1 - a, not T - a.",
    "shape": "Return one error per token: a [T] tensor.",
    "wrong_values": "err = ones(T); for each slot s with span (first, last): err[first..last] = "
                    "|v_j - u_s|^2 / |v_j|^2 (sum over D); then flip, so that entry a is age a.",
}


def _age_models(values, spans, slots):
    t = values.shape[0]

    def per_position(rel=True, squared=True, fill=1.0, inclusive=True, by_slot=False):
        err = torch.full((t,), fill, dtype=values.dtype)
        for (first, last), u in zip(spans, slots):
            v = values[first:last + (1 if inclusive else 0)]
            num = ((v - u) ** 2).sum(-1)
            den = (u ** 2).sum(-1).expand(v.shape[0]) if by_slot else (v ** 2).sum(-1)
            e = num / den if rel else num
            err[first:first + v.shape[0]] = e if squared else e.sqrt()
        return err

    return {
        "by_position": lambda: per_position(),
        "forgotten_zero": lambda: per_position(fill=0.0).flip(0),
        "absolute": lambda: per_position(rel=False).flip(0),
        "slot_norm": lambda: per_position(by_slot=True).flip(0),
        "not_squared": lambda: per_position(squared=False).flip(0),
        "exclusive_last": lambda: per_position(inclusive=False).flip(0),
        "off_by_one": lambda: torch.roll(per_position().flip(0), 1),
        "off_by_one#other": lambda: torch.roll(per_position().flip(0), -1),
    }


@check_factory
def _age_check(fn, seed, t, d, n_m, n_cm, c, *, dtype=torch.float64, scale=1.0):
    gen = seeded(seed)
    values = randn(gen, t, d, dtype=dtype, scale=scale)
    spans, slots = compressed_slots(values, n_m, n_cm, c)
    got = call_keeping_inputs(fn, values, list(spans), slots)
    expect_tensor(got, (t,), dtype, shape_text="[T]")
    expect_close(got, error_by_age(values, spans, slots), _age_models(values, spans, slots))


ERROR_BY_AGE = code_exercise(
    id="08.error_by_age", title="Reconstruction error against token age",
    hints=AGE_HINTS,
    checks=[
        Check("T = 20, D = 4: 4 exact tokens, 3 slots of c = 4, the 4 oldest forgotten",
              _age_check(121, 20, 4, 4, 3, 4)),
        Check("a window of 5 over T = 12: exact, then forgotten", _age_check(122, 12, 3, 5, 0, 1)),
        Check("uniform compression: 6 slots of c = 3 cover all T = 18", _age_check(123, 18, 5, 0, 6, 3)),
        Check("values of scale 10 (the error is relative)", _age_check(124, 16, 4, 4, 2, 6, scale=10.0)),
        Check("float32 values", _age_check(125, 15, 6, 3, 4, 3, dtype=torch.float32)),
        Check("T = 1, one exact slot", _age_check(126, 1, 3, 1, 0, 1)),
    ],
)

# ---------------------------------------------------------------- questions

BUDGET_CHOICE = choice_exercise(
    id="08.budget_choice",
    title="A design for facts 64 tokens back, from the measured table",
    options={
        "A": "window n_c = 32: its answers within reach are exact, 98% at gap 16, and no state is simpler to "
             "reason about.",
        "B": "delta with a learned beta: at the same peak bytes it still answers 82% at gap 64, where every slot "
             "memory of the budget is at chance.",
        "C": "Transformer-XL n_m = 16: it carries only 10,240 bytes between segments, so it leaves room in the "
             "budget, and it answers 100% at gap 16.",
        "D": "k-NN N = 16: retrieval keeps the pairs it stores exactly, so it is the safe choice for facts.",
    },
    correct="B",
    wrong_hints={
        "A": "The facts are 64 tokens back and the window holds 32: at gap 64 it answers 3%, chance. Exact within "
             "reach is no help beyond it.",
        "C": "Its peak is 18,432 bytes like the others (it also holds the segment it reads), and at gap 64 it "
             "answers 3%: its memory of 16 pairs plus a segment of 16 ends before the facts.",
        "D": "It keeps exactly what it stores, but its store holds the last 16 pairs: at gap 64 the facts are gone "
             "(3%).",
    },
)

MEAN_POOL = number_exercise(
    id="08.mean_pool_error",
    title="What mean pooling leaves of independent tokens",
    correct=0.75,
    mistakes={"one_over_c": 0.25, "one_minus_c_squared": 1 - 1 / 16, "squared": (1 - 1 / 4) ** 2,
              "percent": 75.0, "no_loss": 0.0, "all_lost": 1.0},
    hints={
        "not_number": "Answer with a number between 0 and 1.",
        "one_over_c": "That is the share of v_j that the mean keeps (v_j / c); the error is what it loses.",
        "one_minus_c_squared": "Count the (c - 1) other tokens' contribution: each adds 1/c^2 of a token's "
                               "energy to the error, besides the (1 - 1/c)^2 of v_j itself.",
        "squared": "(1 - 1/c)^2 is only v_j's own part of the error; the other c - 1 tokens in the group "
                   "add (c - 1)/c^2.",
        "percent": "Answer with a fraction, not a percentage.",
        "no_loss": "The mean of independent tokens is not any of them: some of each token is lost.",
        "all_lost": "The mean still holds v_j / c of each token, so not everything is lost.",
        "wrong_number": "v_j - u = (1 - 1/c) v_j - (1/c) (sum of the c - 1 others); take expected squared "
                        "norms of independent unit-variance tokens and divide by E|v_j|^2.",
    },
    unit="fraction",
)

EXERCISES = [PARETO, ACCURACY, ERROR_BY_AGE, BUDGET_CHOICE, MEAN_POOL]
