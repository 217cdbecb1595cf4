"""Lesson 08's mutants (known-wrong answers, as learners write them) and reference answers."""

from __future__ import annotations

import torch

from course_lib.experiments import lesson08

from . import choice_mutants, mutant, right, value_mutant


def _front_by_sweep(nbytes, accuracy):
    """Another way: sweep the designs by bytes, keeping those as accurate as the best so far
    (all of an equal-bytes group that reach its best)."""
    order = sorted(range(len(nbytes)), key=lambda i: (nbytes[i], -accuracy[i], i))
    front, best = [], float("-inf")
    for i in order:
        same = [j for j in front if nbytes[j] == nbytes[i]]
        if accuracy[i] > best or (same and accuracy[i] == accuracy[same[0]]):
            front.append(i)
            best = max(best, accuracy[i])
    return sorted(front, key=lambda i: (nbytes[i], i))


def _error_by_age_loop(values, spans, slot_values):
    t = values.shape[0]
    err = []
    for age in range(t):
        j = t - 1 - age
        e = torch.ones((), dtype=values.dtype)
        for (first, last), u in zip(spans, slot_values):
            if first <= j <= last:
                e = ((values[j] - u) ** 2).sum() / (values[j] ** 2).sum()
        err.append(e)
    return torch.stack(err)


REFERENCES = {
    "08.pareto_front": _front_by_sweep,
    "08.answer_accuracy": lesson08.answer_accuracy,
    "08.error_by_age": _error_by_age_loop,
    "08.budget_choice": lambda: "b",
    "08.mean_pool_error": 3 / 4,
}

# ---------------------------------------------------------------- 08.pareto_front


def _beats_non_strict(b, a, j, i):
    return b[j] <= b[i] and a[j] >= a[i]


@mutant("08.pareto_front", hint="non_strict")
def pareto_without_strictness(nbytes, accuracy):
    n = len(nbytes)
    keep = [i for i in range(n) if not any(j != i and _beats_non_strict(nbytes, accuracy, j, i) for j in range(n))]
    return sorted(keep, key=lambda i: (nbytes[i], i))


@mutant("08.pareto_front", hint="strict_both")
def pareto_strict_on_both(nbytes, accuracy):
    n = len(nbytes)
    keep = [i for i in range(n) if not any(nbytes[j] < nbytes[i] and accuracy[j] > accuracy[i] for j in range(n))]
    return sorted(keep, key=lambda i: (nbytes[i], i))


@mutant("08.pareto_front", hint="drops_ties")
def pareto_greedy_sweep(nbytes, accuracy):
    order = sorted(range(len(nbytes)), key=lambda i: (nbytes[i], -accuracy[i]))
    front, best = [], float("-inf")
    for i in order:
        if accuracy[i] > best:  # an identical design is not "better", so it is dropped
            front.append(i)
            best = accuracy[i]
    return front


def _correct_set(nbytes, accuracy):
    n = len(nbytes)
    return [i for i in range(n) if not any(
        nbytes[j] <= nbytes[i] and accuracy[j] >= accuracy[i] and (nbytes[j] < nbytes[i] or accuracy[j] > accuracy[i])
        for j in range(n))]


@mutant("08.pareto_front", hint="index_order")
def pareto_in_index_order(nbytes, accuracy):
    return _correct_set(nbytes, accuracy)


@mutant("08.pareto_front", hint="accuracy_order")
def pareto_best_first(nbytes, accuracy):
    return sorted(_correct_set(nbytes, accuracy), key=lambda i: -accuracy[i])


@mutant("08.pareto_front", hint="not_list")
def pareto_as_tensor(nbytes, accuracy):
    return torch.tensor(sorted(_correct_set(nbytes, accuracy), key=lambda i: (nbytes[i], i)))


@mutant("08.pareto_front", hint="accuracy_order", name="pareto_sorted_descending")
def pareto_sorted_descending(nbytes, accuracy):
    return sorted(_correct_set(nbytes, accuracy), key=lambda i: (nbytes[i], i), reverse=True)


@mutant("08.pareto_front", hint="not_list", name="pareto_as_numpy")
def pareto_as_numpy(nbytes, accuracy):
    import numpy as np
    return np.array(sorted(_correct_set(nbytes, accuracy), key=lambda i: (nbytes[i], i)))


@right("08.pareto_front")
def pareto_with_numpy(nbytes, accuracy):
    import numpy as np
    b, a = np.asarray(nbytes), np.asarray(accuracy)
    beaten = ((b[None, :] <= b[:, None]) & (a[None, :] >= a[:, None])
              & ((b[None, :] < b[:, None]) | (a[None, :] > a[:, None]))).any(1)
    return sorted(np.flatnonzero(~beaten).tolist(), key=lambda i: (nbytes[i], i))


# ---------------------------------------------------------------- 08.answer_accuracy


@right("08.answer_accuracy")
def python_division(logits, targets, ignore_index=-100):
    """A.1.2: exact, hits / n in Python (0.33/2 against the float32 reference)."""
    keep = targets.ne(ignore_index)
    hits = torch.where(keep, logits.argmax(-1).eq(targets), torch.zeros_like(keep))
    return float(hits.sum()) / float(keep.sum())


@right("08.answer_accuracy")
def python_loop(logits, targets, ignore_index=-100):
    pred = logits.argmax(dim=2)
    right = total = 0
    for b in range(targets.shape[0]):
        for t in range(targets.shape[1]):
            if targets[b, t].item() != ignore_index:
                total += 1
                right += int(pred[b, t].item() == targets[b, t].item())
    return right / total


@right("08.answer_accuracy")
def double_mean(logits, targets, ignore_index=-100):
    keep = targets != ignore_index
    return (logits.argmax(-1)[keep] == targets[keep]).double().mean().item()


@right("08.answer_accuracy")
def item_over_item(logits, targets, ignore_index=-100):
    keep = targets != ignore_index
    return (logits.argmax(-1)[keep] == targets[keep]).sum().item() / keep.sum().item()


@mutant("08.answer_accuracy", hint="integer_division")
def accuracy_floor_division(logits, targets, ignore_index=-100):
    keep = targets != ignore_index
    return (logits.argmax(-1)[keep] == targets[keep]).sum().item() // keep.sum().item()


@mutant("08.answer_accuracy", hint="soft")
def accuracy_soft(logits, targets, ignore_index=-100):
    keep = targets != ignore_index
    p = logits.softmax(-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return p[keep].mean().item()


@mutant("08.answer_accuracy", hint="counts_ignored")
def accuracy_over_every_position(logits, targets, ignore_index=-100):
    pred = logits.argmax(dim=-1)
    return (pred == targets).float().mean().item()


@mutant("08.answer_accuracy", hint="ignored_right")
def accuracy_ignored_count_as_right(logits, targets, ignore_index=-100):
    pred = logits.argmax(dim=-1)
    ok = (pred == targets) | (targets == ignore_index)
    return ok.float().mean().item()


@mutant("08.answer_accuracy", hint="hardcoded_ignore")
def accuracy_fixed_ignore_index(logits, targets, ignore_index=-100):
    mask = targets != -100
    return (logits.argmax(-1)[mask] == targets[mask]).float().mean().item()


@mutant("08.answer_accuracy", hint="argmax_dim")
def accuracy_argmax_over_time(logits, targets, ignore_index=-100):
    pred = logits.argmax(dim=1)
    mask = targets != ignore_index
    return (pred == targets)[mask].float().mean().item()


@mutant("08.answer_accuracy", hint="not_float")
def accuracy_as_tensor(logits, targets, ignore_index=-100):
    mask = targets != ignore_index
    return (logits.argmax(-1)[mask] == targets[mask]).float().mean()


@mutant("08.answer_accuracy", hint="percent")
def accuracy_in_percent(logits, targets, ignore_index=-100):
    mask = targets != ignore_index
    return 100 * (logits.argmax(-1)[mask] == targets[mask]).float().mean().item()


@mutant("08.answer_accuracy", hint="shifted")
def accuracy_shifted_like_training(logits, targets, ignore_index=-100):
    pred, tgt = logits[:, :-1].argmax(-1), targets[:, 1:]
    mask = tgt != ignore_index
    return (pred[mask] == tgt[mask]).float().mean().item()


# ---------------------------------------------------------------- 08.error_by_age


def _per_position(values, spans, slot_values, *, fill=1.0, relative=True, squared=True, inclusive=True):
    err = torch.full((values.shape[0],), fill, dtype=values.dtype)
    for (first, last), u in zip(spans, slot_values):
        stop = last + 1 if inclusive else last
        diff = ((values[first:stop] - u) ** 2).sum(-1)
        if relative:
            diff = diff / (values[first:stop] ** 2).sum(-1)
        err[first:stop] = diff if squared else diff.sqrt()
    return err


@mutant("08.error_by_age", hint="by_position")
def age_indexed_by_position(values, spans, slot_values):
    return _per_position(values, spans, slot_values)


@mutant("08.error_by_age", hint="forgotten_zero")
def age_forgotten_is_zero(values, spans, slot_values):
    return _per_position(values, spans, slot_values, fill=0.0).flip(0)


@mutant("08.error_by_age", hint="absolute")
def age_absolute_error(values, spans, slot_values):
    return _per_position(values, spans, slot_values, relative=False).flip(0)


@mutant("08.error_by_age", hint="not_squared")
def age_norm_ratio(values, spans, slot_values):
    return _per_position(values, spans, slot_values, squared=False).flip(0)


@mutant("08.error_by_age", hint="exclusive_last")
def age_span_end_exclusive(values, spans, slot_values):
    return _per_position(values, spans, slot_values, inclusive=False).flip(0)


@mutant("08.error_by_age", hint="off_by_one")
def age_counted_from_one(values, spans, slot_values):
    t = values.shape[0]
    per_pos = _per_position(values, spans, slot_values)
    out = torch.ones_like(per_pos)
    for age in range(1, t):
        out[age] = per_pos[t - age]  # the newest token given age 1
    return out


# ---------------------------------------------------------------- questions

choice_mutants("08.budget_choice", window_exact="A", xl_carried_bytes="C")
value_mutant("08.budget_choice", "retrieval", "chose_D", lambda: "d")
value_mutant("08.budget_choice", "a_name", "invalid_choice", "delta")

value_mutant("08.mean_pool_error", "kept_share", "one_over_c", 0.25)
value_mutant("08.mean_pool_error", "own_part_only", "squared", lambda: 0.5625)
value_mutant("08.mean_pool_error", "percent", "percent", 75)
value_mutant("08.mean_pool_error", "c_squared", "one_minus_c_squared", 15 / 16)


# ---------------------------------------------------------------- A.3: mistakes the feedback now names


@mutant("08.pareto_front", hint="sorts_inputs")
def pareto_sorts_the_callers_lists(bytes_, accuracy):
    """Sorts the caller's lists in place by bytes, then returns positions in the sorted lists
    (a TypeError when the designs come as tuples)."""
    order = sorted(range(len(bytes_)), key=lambda i: (bytes_[i], i))
    bytes_[:] = [bytes_[i] for i in order]
    accuracy[:] = [accuracy[i] for i in order]
    n = len(bytes_)
    return [r for r in range(n)
            if not any(bytes_[s] <= bytes_[r] and accuracy[s] >= accuracy[r]
                       and (bytes_[s] < bytes_[r] or accuracy[s] > accuracy[r]) for s in range(n))]


@mutant("08.error_by_age", hint="slot_norm")
def error_relative_to_the_slot(values, spans, slot_values):
    err = torch.ones(values.shape[0], dtype=values.dtype)
    for (first, last), u in zip(spans, slot_values):
        v = values[first:last + 1]
        err[first:last + 1] = ((v - u) ** 2).sum(-1) / (u ** 2).sum()
    return err.flip(0)
