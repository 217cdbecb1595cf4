"""Lesson 04's mutants (known-wrong answers, as learners write them) and reference answers."""

from __future__ import annotations

import torch

from course_lib import MovingAverageMemory

from . import choice_mutants, mutant, right, right_value, value_mutant


def _window_pair_by_pair(K_mem, V_mem, k, v, n_c):
    """The window as a queue (the check's reference is WindowMemory): append one pair at a time,
    drop the oldest while more than n_c are held."""
    K, V = K_mem, V_mem
    for t in range(k.shape[2]):
        K, V = torch.cat([K, k[:, :, t:t + 1]], 2), torch.cat([V, v[:, :, t:t + 1]], 2)
        while K.shape[2] > n_c:
            K, V = K[:, :, 1:], V[:, :, 1:]
    return K, V


def _moving_by_memory(x, weights):
    memory = MovingAverageMemory(len(weights), weights=weights)
    out, _ = memory(x, x, x, memory.init_state(x.shape[0], x.shape[1], x.shape[-1], dtype=x.dtype))
    return out[:, :, -1:]


REFERENCES = {
    "04.window_update": _window_pair_by_pair,
    "04.cumulative_average_update": lambda k_bar, v_bar, k, v, i: (k / (i + 1) + k_bar * (i / (i + 1)),
                                                                   v / (i + 1) + v_bar * (i / (i + 1))),
    "04.moving_average": _moving_by_memory,
    "04.is_update_form": "f, d, c, a",
    "04.sink_role": "b",
}

# ---------------------------------------------------------------- 04.window_update


@mutant("04.window_update", hint="never_evicts")
def appends_only(K_mem, V_mem, k, v, n_c):
    return torch.cat([K_mem, k], dim=2), torch.cat([V_mem, v], dim=2)


@mutant("04.window_update", hint="keeps_oldest")
def keeps_the_first(K_mem, V_mem, k, v, n_c):
    return torch.cat([K_mem, k], dim=2)[:, :, :n_c], torch.cat([V_mem, v], dim=2)[:, :, :n_c]


@mutant("04.window_update", hint="off_by_one")
def one_too_few(K_mem, V_mem, k, v, n_c):
    K, V = torch.cat([K_mem, k], dim=2), torch.cat([V_mem, v], dim=2)
    start = max(0, K.shape[2] - n_c + 1)
    return K[:, :, start:], V[:, :, start:]


@mutant("04.window_update", hint="newest_first")
def prepends_new_pairs(K_mem, V_mem, k, v, n_c):
    return torch.cat([k, K_mem], dim=2)[:, :, -n_c:], torch.cat([v, V_mem], dim=2)[:, :, -n_c:]


@mutant("04.window_update", hint="ignores_memory")
def only_the_chunk(K_mem, V_mem, k, v, n_c):
    return k[:, :, -n_c:], v[:, :, -n_c:]


@mutant("04.window_update", hint="modified_input")
def writes_into_the_memory(K_mem, V_mem, k, v, n_c):
    K, V = torch.cat([K_mem, k], dim=2)[:, :, -n_c:], torch.cat([V_mem, v], dim=2)[:, :, -n_c:]
    if K_mem.shape[2]:
        K_mem[:, :, -1] = k[:, :, -1]  # "refresh" the memory in place
    return K, V


@right("04.window_update")
def fifo_of_lists(K_mem, V_mem, k, v, n_c):
    """A.1.1: a FIFO of Python lists, one token at a time (correct under the task's m <= n_c)."""
    ks, vs = list(K_mem.unbind(2)), list(V_mem.unbind(2))
    for t in range(k.shape[2]):
        ks.append(k[:, :, t])
        vs.append(v[:, :, t])
        if len(ks) > n_c:
            ks.pop(0)
            vs.pop(0)
    return torch.stack(ks, 2), torch.stack(vs, 2)


_WINDOW: dict = {}


@mutant("04.window_update", hint="stateful")
def window_kept_between_calls(K_mem, V_mem, k, v, n_c):
    """Keeps its own window from the last call (while the shapes stay the same) instead of K_mem."""
    key = (tuple(K_mem.shape[:2]), K_mem.shape[-1], n_c, K_mem.dtype)
    if _WINDOW.get("key") != key:
        _WINDOW.clear()
        _WINDOW.update(key=key, K=K_mem, V=V_mem)
    K, V = torch.cat([_WINDOW["K"], k], 2)[:, :, -n_c:], torch.cat([_WINDOW["V"], v], 2)[:, :, -n_c:]
    _WINDOW.update(K=K, V=V)
    return K, V


# ---------------------------------------------------------------- 04.cumulative_average_update


@mutant("04.cumulative_average_update", hint="divide_by_i")
def divides_by_i(k_bar, v_bar, k, v, i):
    n = max(i, 1)
    return (k + i * k_bar) / n, (v + i * v_bar) / n


@mutant("04.cumulative_average_update", hint="plain_mean")
def halves(k_bar, v_bar, k, v, i):
    if i == 0:
        return k, v
    return (k + k_bar) / 2, (v + v_bar) / 2


@mutant("04.cumulative_average_update", hint="one_based")
def counts_from_one(k_bar, v_bar, k, v, i):
    if i == 0:
        return k.clone(), v.clone()
    return (k + (i + 1) * k_bar) / (i + 2), (v + (i + 1) * v_bar) / (i + 2)


@mutant("04.cumulative_average_update", hint="weights_swapped")
def weights_the_new_pair(k_bar, v_bar, k, v, i):
    return (i * k + k_bar) / (i + 1), (i * v + v_bar) / (i + 1)


@mutant("04.cumulative_average_update", hint="modified_input")
def updates_in_place(k_bar, v_bar, k, v, i):
    k_bar.mul_(i).add_(k).div_(i + 1)
    v_bar.mul_(i).add_(v).div_(i + 1)
    return k_bar, v_bar


@mutant("04.cumulative_average_update", hint="divide_by_i", name="incremental_divides_by_i")
def incremental_divides_by_i(k_bar, v_bar, k, v, i):
    n = max(i, 1)
    return k_bar + (k - k_bar) / n, v_bar + (v - v_bar) / n


@mutant("04.cumulative_average_update", hint="floor_division")
def floor_division(k_bar, v_bar, k, v, i):
    return (k + i * k_bar) // (i + 1), (v + i * v_bar) // (i + 1)


@right("04.cumulative_average_update")
def lerp(k_bar, v_bar, k, v, i):
    return torch.lerp(k_bar, k, 1 / (i + 1)), torch.lerp(v_bar, v, 1 / (i + 1))


# ---------------------------------------------------------------- 04.moving_average


@mutant("04.moving_average", hint="oldest_weights")
def first_weights(x, weights):
    w = weights[: x.shape[2]].to(x.dtype)
    w = w / w.sum()
    return (x * w[:, None]).sum(dim=2, keepdim=True)


@mutant("04.moving_average", hint="no_renormalise")
def divides_by_all_weights(x, weights):
    w = weights.to(x.dtype)
    return (x * w[-x.shape[2]:, None]).sum(dim=2, keepdim=True) / w.sum()


@mutant("04.moving_average", hint="reversed")
def newest_weight_on_oldest_row(x, weights):
    w = weights[-x.shape[2]:].flip(0).to(x.dtype)
    return (x * (w / w.sum())[:, None]).sum(dim=2, keepdim=True)


@mutant("04.moving_average", hint="dtype")
def float64_weights(x, weights):
    w = weights[-x.shape[2]:]
    return (x * (w / w.sum())[:, None]).sum(dim=2, keepdim=True)


@mutant("04.moving_average", hint="keepdim")
def drops_the_time_axis(x, weights):
    w = weights[-x.shape[2]:].to(x.dtype)
    return torch.einsum("bhtd,t->bhd", x, w / w.sum())


@mutant("04.moving_average", hint="shape", name="sums_over_d")
def sums_over_d(x, weights):
    """Sums over the last axis (D) instead of the time axis: the shape hint, given once."""
    w = weights[-x.shape[2]:].to(x.dtype)
    return (x * (w / w.sum())[:, None]).sum(dim=-1, keepdim=True)


@right("04.moving_average")
def ones_row_matmul(x, weights):
    w = weights[-x.shape[2]:].to(x.dtype)
    return (w / w.sum())[None, None, None, :] @ x


# ---------------------------------------------------------------- questions

value_mutant("04.is_update_form", "every_average", "chose_B", "ABCDF")
value_mutant("04.is_update_form", "top_k_too", "chose_E", "ACDEF")
value_mutant("04.is_update_form", "forgets_the_count", "missing_D", "ACF")
value_mutant("04.is_update_form", "softmax_only", "missing_F", "ACD")
choice_mutants("04.sink_role", instructions="A", positions="C", big_values="D")
right_value("04.is_update_form", "spaced_letters", "a c d f")


# ---------------------------------------------------------------- A.3: mistakes the feedback now names


@mutant("04.cumulative_average_update", hint="one_based", name="incremental_counts_the_new_pair")
def incremental_counts_the_new_pair(k_bar, v_bar, k, v, i):
    """The count n = i + 1 taken to include the new pair already: one token too many in the divisor."""
    n = i + 1
    return k_bar + (k - k_bar) / (n + 1), v_bar + (v - v_bar) / (n + 1)


@mutant("04.cumulative_average_update", hint="new_weight_i")
def lerp_by_i(k_bar, v_bar, k, v, i):
    """The new pair gets weight i in the interpolation, where its share is 1 / (i + 1)."""
    return torch.lerp(k_bar, k, float(i)), torch.lerp(v_bar, v, float(i))


@mutant("04.moving_average", hint="softmax")
def softmax_of_the_weights(x, weights):
    w = weights[-x.shape[2]:].softmax(0).to(x.dtype)
    return (x * w[:, None]).sum(dim=2, keepdim=True)


@mutant("04.moving_average", hint="shifted")
def weights_shifted_by_one(x, weights):
    """weights[-T - 1:][:T]: right for a full window, one step too old otherwise."""
    t = x.shape[2]
    w = weights[-t - 1:][:t].to(x.dtype)
    return (x * (w / w.sum())[:, None]).sum(dim=2, keepdim=True)
