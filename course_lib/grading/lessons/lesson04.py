r"""Exercises of lesson 04, memory-based attention.

* ``04.window_update``: the window's ``Update``: the newest ``min(m + T, n_c)`` pairs, oldest first
* ``04.cumulative_average_update``: ``Mem_i = ((k_i, v_i) + i Mem_{i-1}) / (i + 1)``
* ``04.moving_average``: the weighted mean of a window's rows, the newest weights renormalised
* ``04.is_update_form``: which memories are a fixed-size ``Update(S_kv, Mem_pre)`` (a set of letters)
* ``04.sink_role``: why keeping the first tokens repairs window attention (multiple choice)

The references are :class:`course_lib.WindowMemory`, :class:`course_lib.CumulativeAverageMemory`
and :class:`course_lib.MovingAverageMemory`.
"""

from __future__ import annotations

import torch

from ... import CumulativeAverageMemory, MovingAverageMemory, WindowMemory
from ..compare import call_keeping_inputs, close, expect_close, expect_tensor, heads_view, randn, seeded, twice
from ..core import Check, Exercise, Mistake, code_exercise, echo, type_name
from ..questions import answer_value, choice_exercise
from ._common import check_factory

# ---------------------------------------------------------------- 04.window_update

WINDOW_HINTS = {
    "not_pair": "Return a pair (K, V) of tensors.",
    "never_evicts": "Drop the oldest pairs once there are more than n_c: keep only the newest n_c "
                    "(slice [..., -n_c:, :] along the time axis).",
    "keeps_oldest": "Keep the NEWEST n_c pairs (the end of the time axis), not the first ones.",
    "off_by_one": "The window holds exactly n_c pairs (the newest token included): check the slice bounds.",
    "newest_first": "Keep the pairs oldest first, as they came: new pairs go at the end (torch.cat([K_mem, k], 2)).",
    "ignores_memory": "Start from the memory: append the new pairs to K_mem, V_mem before cutting to n_c.",
    "swapped": "Return (K, V): the keys first, then the values.",
    "shape": "The result holds min(m + T, n_c) pairs: shape [B, H, min(m + T, n_c), D].",
    "wrong_values": "K = the newest min(m + T, n_c) rows of torch.cat([K_mem, k], dim=2), oldest first (V alike).",
}


def _window_ref(K, V, k, v, n_c):
    """The reference: WindowMemory fed the memory's pairs, then the new ones; its spans give the kept rows."""
    mem = WindowMemory(n_c)
    state = mem.init_state(K.shape[0], K.shape[1], K.shape[-1], dtype=K.dtype, v_dim=V.shape[-1])
    allk, allv = torch.cat([K, k], 2), torch.cat([V, v], 2)
    _, state = mem(allk, allk, allv, state)
    rows = [first for first, _ in mem.spans(state)]
    return allk[:, :, rows], allv[:, :, rows]


def _window_models(K, V, k, v, n_c):
    allk, allv = torch.cat([K, k], 2), torch.cat([V, v], 2)
    n = allk.shape[2]
    return {
        "never_evicts": (allk, allv),
        "keeps_oldest": (allk[:, :, :n_c], allv[:, :, :n_c]),
        "off_by_one#short": (allk[:, :, n - n_c + 1:], allv[:, :, n - n_c + 1:]) if n_c > 1 else None,
        "off_by_one#long": (allk[:, :, max(0, n - n_c - 1):], allv[:, :, max(0, n - n_c - 1):]),
        "newest_first": (allk[:, :, max(0, n - n_c):].flip(2), allv[:, :, max(0, n - n_c):].flip(2)),
        "newest_first#prepend": (torch.cat([k, K], 2)[:, :, -n_c:], torch.cat([v, V], 2)[:, :, -n_c:]),
        "ignores_memory": (k[:, :, -n_c:], v[:, :, -n_c:]),
    }


@check_factory
def _window_check(fn, seed, b, h, m, t, d, n_c, *, dtype=torch.float64, non_contiguous=False):
    gen = seeded(seed)
    make = (lambda n: heads_view(gen, b, h, n, d, dtype)) if non_contiguous else \
        (lambda n: randn(gen, b, h, n, d, dtype=dtype))
    K, V, k, v = make(m), make(m), make(t), make(t)
    got = call_keeping_inputs(fn, K, V, k, v, n_c)
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise Mistake("not_pair", f"got {type_name(got)}")
    gk, gv = got
    want_k, want_v = _window_ref(K, V, k, v, n_c)
    if isinstance(gk, torch.Tensor) and isinstance(gv, torch.Tensor) and close(gk, want_v) and close(gv, want_k) \
            and not close(gk, want_k):
        raise Mistake("swapped")
    for key, pair in _window_models(K, V, k, v, n_c).items():
        if pair is not None and not close(pair[0], want_k) and close(gk, pair[0]) and close(gv, pair[1]):
            raise Mistake(key.split("#")[0])
    expect_tensor(gk, tuple(want_k.shape), dtype, shape_text="[B, H, min(m + T, n_c), D]")
    expect_tensor(gv, tuple(want_v.shape), dtype, shape_text="[B, H, min(m + T, n_c), D]")
    expect_close(gk, want_k)
    expect_close(gv, want_v)


WINDOW_UPDATE = code_exercise(
    id="04.window_update", title="The window memory's Update",
    hints=WINDOW_HINTS,
    checks=[
        Check("m = 3 pairs held, one new token, n_c = 5: nothing leaves yet", _window_check(401, 1, 1, 3, 1, 4, 5)),
        Check("m = 4, one new token, n_c = 4: the oldest pair leaves", _window_check(402, 1, 2, 4, 1, 4, 4)),
        Check("an empty memory (m = 0) and a chunk of T = 3, n_c = 5", _window_check(403, 2, 2, 0, 3, 4, 5)),
        Check("m = 2 and a chunk of T = 7 longer than n_c = 4", _window_check(404, 1, 2, 2, 7, 3, 4)),
        Check("n_c = 1, m = 1, T = 2: only the newest pair stays", _window_check(405, 2, 1, 1, 2, 4, 1)),
        Check("m = 6, T = 5, n_c = 6, B = 2, H = 3, float32",
              _window_check(406, 2, 3, 6, 5, 4, 6, dtype=torch.float32)),
        Check("non-contiguous inputs (views of [B, T, H, D]), m = 4, T = 2, n_c = 4",
              _window_check(407, 2, 3, 4, 2, 4, 4, non_contiguous=True)),
        Check("called twice on the same inputs (m = 2, T = 3, n_c = 4, H = 3, D = 2): the same result both times",
              twice(_window_check(408, 1, 3, 2, 3, 2, 4))),
    ],
)

# ---------------------------------------------------------------- 04.cumulative_average_update

CUMAVG_HINTS = {
    "not_pair": "Return a pair (k_bar, v_bar) of tensors.",
    "divide_by_i": "Divide by i + 1, the number of tokens 0..i, not by i (at i = 0 that divides by zero).",
    "plain_mean": "Weigh the old mean by i: it averages i tokens, the new pair is one. (k + k_bar) / 2 "
                  "gives the newest token half of the weight.",
    "weights_swapped": "The old mean gets weight i and the new pair weight 1: (k_i + i * k_bar) / (i + 1).",
    "one_based": "Positions count from 0: before token i the memory averages i tokens (not i + 1), so "
                 "Mem_i = ((k_i, v_i) + i Mem_{i-1}) / (i + 1).",
    "swapped": "Return (k_bar, v_bar): the keys' mean first, then the values'.",
    "floor_division": "Divide with /, not //: floor division rounds every coordinate of the mean down.",
    "new_weight_i": "The new pair's share of the mean is 1 / (i + 1), not i: Mem_i = Mem_{i-1} + "
                    "((k_i, v_i) - Mem_{i-1}) / (i + 1), that is torch.lerp(k_bar, k, 1 / (i + 1)).",
    "wrong_values": "Mem_i = ((k_i, v_i) + i * Mem_{i-1}) / (i + 1), for keys and values alike.",
}


def _cumavg_models(kb, vb, k, v, i):
    return {
        "divide_by_i": ((k + i * kb) / i, (v + i * vb) / i) if i > 0 else None,
        "divide_by_i#incremental": (kb + (k - kb) / i, vb + (v - vb) / i) if i > 0 else None,
        "floor_division": ((k + i * kb) // (i + 1), (v + i * vb) // (i + 1)),
        "plain_mean": ((k + kb) / 2, (v + vb) / 2),
        "weights_swapped": ((i * k + kb) / (i + 1), (i * v + vb) / (i + 1)),
        "one_based": ((k + (i + 1) * kb) / (i + 2), (v + (i + 1) * vb) / (i + 2)),
        "one_based#incremental": (kb + (k - kb) / (i + 2), vb + (v - vb) / (i + 2)),
        "one_based#same_count": ((k + (i + 1) * kb) / (i + 1), (v + (i + 1) * vb) / (i + 1)),
        "new_weight_i": (kb + i * (k - kb), vb + i * (v - vb)),
    }


def _cumavg_expect(got, want, models, dtype, shape):
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise Mistake("not_pair", f"got {type_name(got)}")
    gk, gv = got
    if isinstance(gk, torch.Tensor) and close(gk, want[1]) and close(gv, want[0]) and not close(gk, want[0]):
        raise Mistake("swapped")
    for key, pair in models.items():
        if pair is not None and not close(pair[0], want[0]) and close(gk, pair[0]) and close(gv, pair[1]):
            raise Mistake(key.split("#")[0])
    expect_tensor(gk, shape, dtype, shape_text="[B, H, 1, D]")
    expect_tensor(gv, shape, dtype, shape_text="[B, H, 1, D]")
    expect_close(gk, want[0])
    expect_close(gv, want[1])


@check_factory
def _cumavg_step_check(fn, seed, i, b=1, h=2, d=4, *, dtype=torch.float64):
    gen = seeded(seed)
    kb, vb, k, v = (randn(gen, b, h, 1, d, dtype=dtype) for _ in range(4))
    got = call_keeping_inputs(fn, kb, vb, k, v, i)
    want = ((k + i * kb) / (i + 1), (v + i * vb) / (i + 1))
    _cumavg_expect(got, want, _cumavg_models(kb, vb, k, v, i), dtype, (b, h, 1, d))


@check_factory
def _cumavg_stream_check(fn, seed, n, b=2, h=3, d=4, *, dtype=torch.float64):
    """Feed n positions from i = 0 (the first memory is garbage, to be ignored) and compare with
    CumulativeAverageMemory's state, i.e. the batch mean of everything so far."""
    gen = seeded(seed)
    ks, vs = randn(gen, b, h, n, d, dtype=dtype), randn(gen, b, h, n, d, dtype=dtype)
    kb, vb = randn(gen, b, h, 1, d, dtype=dtype, scale=100.0), randn(gen, b, h, 1, d, dtype=dtype, scale=100.0)
    mem = CumulativeAverageMemory()
    state = mem.init_state(b, h, d, dtype=dtype)
    for i in range(n):
        k, v = ks[:, :, i:i + 1], vs[:, :, i:i + 1]
        _, state = mem(k, k, v, state)
        want = (state.k_mean, state.v_mean)
        got = call_keeping_inputs(fn, kb, vb, k, v, i)
        _cumavg_expect(got, want, _cumavg_models(kb, vb, k, v, i), dtype, (b, h, 1, d))
        kb, vb = got


CUMULATIVE_AVERAGE_UPDATE = code_exercise(
    id="04.cumulative_average_update", title="The cumulative average as a recursion",
    hints=CUMAVG_HINTS,
    error_hints={r"division by zero|divide by zero": "divide_by_i"},
    checks=[
        Check("one step at i = 3", _cumavg_step_check(411, 3)),
        Check("i = 0: the result is the new pair, whatever Mem_{-1} holds", _cumavg_step_check(412, 0)),
        Check("i = 1: the mean of two pairs", _cumavg_step_check(413, 1)),
        Check("20 steps from i = 0 equal the batch mean at every step (B = 2, H = 3)", _cumavg_stream_check(414, 20)),
        Check("i = 999: dilution, the new pair weighs 1/1000", _cumavg_step_check(415, 999, b=2, h=1, d=3)),
        Check("float32 in, float32 out", _cumavg_step_check(416, 5, dtype=torch.float32)),
    ],
)

# ---------------------------------------------------------------- 04.moving_average

MOVING_HINTS = {
    "oldest_weights": "With T < len(weights) rows, use the NEWEST T weights, weights[-T:] "
                      "(weights[-1] is the newest token's), not the first T.",
    "no_renormalise": "Divide by the sum of the weights you used, so that they sum to 1: with T < len(weights) "
                      "the last T weights alone do not.",
    "reversed": "weights are oldest first, like the rows of x: weights[-1] goes with the newest row x[:, :, -1].",
    "plain_mean": "Use the weights: a plain mean gives every row the same weight.",
    "softmax": "Normalise the weights by dividing by their sum, w / w.sum(): a softmax exponentiates them "
               "first, which changes their ratios (weights 1 and 2 become e and e^2).",
    "shifted": "The newest T weights are weights[-T:], ending with weights[-1] (the newest row's): your "
               "window of weights is shifted one step toward the oldest.",
    "dtype": "Keep x's dtype: the weights come as float64, and float32 * float64 gives float64; cast them "
             "first with weights.to(x.dtype).",
    "keepdim": "Keep the time axis: return [B, H, 1, D] (sum with keepdim=True).",
    "wrong_values": "out = sum_r w_r x[:, :, r] with w = weights[-T:] / weights[-T:].sum(), T = x.shape[2].",
}


def _moving_models(x, w):
    t = x.shape[2]
    def mean(weights):
        weights = weights.to(x.dtype)
        return (x * weights[:, None]).sum(2, keepdim=True)
    last = w[-t:]
    models = {
        "oldest_weights": lambda: mean(w[:t] / w[:t].sum()),
        "no_renormalise": lambda: mean(last / w.sum()),
        "no_renormalise#raw": lambda: mean(last),
        "reversed": lambda: mean(last.flip(0) / last.sum()),
        "reversed#all": lambda: mean(w.flip(0)[-t:] / w.flip(0)[-t:].sum()),
        "plain_mean": lambda: x.mean(2, keepdim=True),
        "softmax": lambda: mean(last.softmax(0)),
        "softmax#all": lambda: mean(w.softmax(0)[-t:]),
        "softmax#all_renormalised": lambda: mean(w.softmax(0)[-t:] / w.softmax(0)[-t:].sum()),
    }
    if t < len(w):  # the window of weights one step toward the oldest: weights[-T - 1:-1]
        models["shifted"] = lambda: mean(w[-t - 1:-1] / w[-t - 1:-1].sum())
    return models


def _moving_ref(x, w):
    """MovingAverageMemory(window=len(w), weights=w) over the T rows: its output at the last row."""
    mem = MovingAverageMemory(len(w), weights=w)
    b, h, t, d = x.shape
    out, _ = mem(x, x, x, mem.init_state(b, h, d, dtype=x.dtype))
    return out[:, :, -1:]


@check_factory
def _moving_check(fn, seed, b, h, t, d, weights, *, dtype=torch.float64, non_contiguous=False):
    gen = seeded(seed)
    x = heads_view(gen, b, h, t, d, dtype) if non_contiguous else randn(gen, b, h, t, d, dtype=dtype)
    w = torch.tensor(weights, dtype=torch.float64)
    got = call_keeping_inputs(fn, x, w)
    want = _moving_ref(x, w)
    if isinstance(got, torch.Tensor) and tuple(got.shape) == (b, h, d) and close(got.unsqueeze(2), want):
        raise Mistake("keepdim")
    expect_tensor(got, (b, h, 1, d), dtype, shape_text="[B, H, 1, D]")
    expect_close(got, want, _moving_models(x, w))


MOVING_AVERAGE = code_exercise(
    id="04.moving_average", title="A weighted moving average",
    hints=MOVING_HINTS,
    checks=[
        Check("4 rows, weights [1, 2, 3, 4]", _moving_check(421, 1, 1, 4, 3, [1.0, 2.0, 3.0, 4.0])),
        Check("uniform weights over a full window of 5 (a plain mean)", _moving_check(422, 2, 2, 5, 4, [1.0] * 5)),
        Check("3 rows, weights [0.5, 1, 3, 2, 8] (use and renormalise the newest 3)",
              _moving_check(423, 1, 2, 3, 4, [0.5, 1.0, 3.0, 2.0, 8.0])),
        Check("2 rows, decaying weights 0.6^age over a window of 6",
              _moving_check(424, 2, 1, 2, 3, [0.6 ** a for a in range(5, -1, -1)])),
        Check("1 row: the output is that row", _moving_check(425, 1, 3, 1, 4, [3.0, 1.0, 2.0])),
        Check("float32 rows with float64 weights: the output stays float32",
              _moving_check(426, 2, 2, 4, 4, [1.0, 1.0, 2.0, 3.0], dtype=torch.float32)),
        Check("non-contiguous x (a view of [B, T, H, D])",
              _moving_check(427, 2, 3, 3, 4, [4.0, 3.0, 2.0, 1.0], non_contiguous=True)),
    ],
)

# ---------------------------------------------------------------- 04.is_update_form

UPDATE_FORM_OPTIONS = {
    "A": "the exponential moving average: k_bar_i = beta k_bar_{i-1} + (1 - beta) k_i, and v_bar_i alike",
    "B": "the median of v_0, ..., v_i, coordinate by coordinate",
    "C": "the last n_c pairs (K_{[i-n_c+1, i]}, V_{[i-n_c+1, i]})",
    "D": "the mean of (k_0, v_0), ..., (k_i, v_i), kept with the count i + 1",
    "E": "the n_c past pairs with the highest score q_i k_j^T for the current query q_i",
    "F": "linear attention's (mu_i, nu_i)",
}
UPDATE_FORM_CORRECT = "ACDF"
UPDATE_FORM_HINTS = {
    "invalid": "Answer with a string of letters from A-F, such as \"AB\" (order and case do not matter).",
    "missing_A": "A is one: the new k_bar needs only k_bar_{i-1} and k_i, and it is one pair.",
    "missing_C": "C is one: append (k_i, v_i) to the previous window and drop its oldest pair; n_c pairs.",
    "missing_D": "D is one: Mem_i = ((k_i, v_i) + i Mem_{i-1}) / (i + 1) needs the previous mean and the count.",
    "missing_F": "F is one: mu_i = mu_{i-1} + phi(k_i)^T v_i and nu_i = nu_{i-1} + phi(k_i)^T, a fixed d x (d_v + 1).",
    "chose_B": "B is not: the new median cannot be computed from the old median and v_i alone; "
               "it needs every past value, a memory that grows with i.",
    "chose_E": "E is not: which pairs score highest depends on q_i, unknown when older pairs arrived, so "
               "every past pair must be kept to choose among them (a k-NN memory's store, lesson 07).",
}


def _update_form_run(answer):
    value = answer_value(answer)
    if not isinstance(value, str) or not value.strip():
        raise Mistake("invalid", f"got {echo(value)}")
    letters = set(value.replace(",", "").replace(" ", "").upper())
    if not letters <= set(UPDATE_FORM_OPTIONS):
        raise Mistake("invalid", f"got {echo(value)}")
    for letter in "BE":
        if letter in letters:
            raise Mistake(f"chose_{letter}")
    for letter in UPDATE_FORM_CORRECT:
        if letter not in letters:
            raise Mistake(f"missing_{letter}")


IS_UPDATE_FORM = Exercise(
    id="04.is_update_form",
    title="Which memories are a fixed-size Update(S_kv, Mem_pre)?",
    kind="question",
    points=1,
    hints=UPDATE_FORM_HINTS,
    checks=[Check("your letters", _update_form_run)],
    options=dict(UPDATE_FORM_OPTIONS),
)

SINK_ROLE = choice_exercise(
    id="04.sink_role",
    title="Why do four kept tokens repair window attention?",
    options={
        "A": "The first tokens hold the instructions of the prompt, which every later token needs to read again.",
        "B": "A softmax must spend all of its weight; trained heads park the surplus on the first tokens.",
        "C": "The first tokens reset the rotary positions, so the window's relative distances stay small.",
        "D": "The first tokens have the largest value vectors, so they dominate every attention output.",
    },
    correct="B",
    wrong_hints={
        "A": "StreamingLLM found that the CONTENT of the first tokens hardly matters: four newline tokens "
             "serve as well. What matters is that some always-visible key takes the surplus weight.",
        "C": "Keeping a token changes nothing about the positions of the others: the sinks repair the "
             "softmax's weights, not the positional encoding.",
        "D": "Sinks get large attention WEIGHTS, typically with small values: they absorb weight while adding "
             "little to the output, which is exactly their role.",
    },
)

EXERCISES = [WINDOW_UPDATE, CUMULATIVE_AVERAGE_UPDATE, MOVING_AVERAGE, IS_UPDATE_FORM, SINK_ROLE]
