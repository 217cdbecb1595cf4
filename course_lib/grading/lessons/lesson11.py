r"""Exercises of lesson 11, shrinking the cache without leaving softmax.

* ``11.quantize_kv``: asymmetric min-max quantisation to ``b`` bits over one dimension (KIVI: keys per
  channel, ``axis=-2``; values per token, ``axis=-1``), returning ``(q, scale, zero)``
* ``11.dequantize_kv``: its inverse, ``q scale + zero``
* ``11.heavy_hitters``: the positions H2O keeps: the ``recent`` newest and the heaviest older ones
* ``11.latent_bytes``: the bytes of a multi-head latent cache (DeepSeek-V2) for one configuration (a number)
* ``11.cache_or_memory``: a quantised cache or a fixed-size memory for a scenario (multiple choice)
* ``11.what_grows``: which compressed caches still grow with the context (multiple choice)

References: :func:`course_lib.memory.quantize_kv`, :func:`course_lib.memory.dequantize_kv`,
:func:`course_lib.memory.heavy_hitters` and :func:`course_lib.kv_cache.latent_cache_bytes` (the one owner of
each formula; the mistake models here are the library's formulas with one thing changed).
"""

from __future__ import annotations

import torch

from ...kv_cache import latent_cache_bytes
from ...memory import dequantize_kv, heavy_hitters, quantize_kv
from ..compare import call_keeping_inputs, close, expect_close, expect_tensor, randn, seeded, twice
from ..core import Check, Mistake, code_exercise, type_name
from ..questions import choice_exercise, number_exercise
from ._common import check_factory

# torch's error when two shapes do not broadcast (min/max taken without keepdim=True)
BROADCAST_ERROR = r"size of tensor a \(\d+\) must match the size of tensor b \(\d+\)"


# ---------------------------------------------------------------- 11.quantize_kv

_quantize_ref = quantize_kv  # (q, scale, zero): min-max over axis, scale 1 where max == min
_dequantize_ref = dequantize_kv  # q.to(scale.dtype) * scale + zero


QUANT_HINTS = {
    "not_triple": "Return three tensors: (q, scale, zero), in that order.",
    "keepdim": "Take min and max with keepdim=True (x.amin(axis, keepdim=True)): scale and zero keep x's "
               "number of dimensions with size 1 along axis, so they broadcast against x along the right axis.",
    "wrong_axis": "The statistics run over the wrong dimension: min and max over dimension `axis` only "
                  "(keys per channel: axis=-2, over the tokens; values per token: axis=-1, over the channels), "
                  "so scale and zero have size 1 along axis and x's size elsewhere.",
    "levels": "b bits give 2^b codes 0 .. 2^b - 1, so the range max - min is cut into 2^b - 1 steps: "
              "scale = (max - min) / (2**bits - 1), not / 2**bits (then max never gets the top code).",
    "symmetric": "This is symmetric (absmax) quantisation, zero fixed at 0 and scale from max |x|: it wastes "
                 "codes when the numbers are not centred on 0. Use the asymmetric min-max form: "
                 "scale = (max - min) / (2**bits - 1), zero = min.",
    "constant_row": "Where max == min (a constant row) (max - min) / (2^b - 1) is 0 and (x - zero) / 0 is NaN: "
                    "set scale = 1 there (torch.where(hi == lo, torch.ones_like(lo), ...)), so q = 0 and the "
                    "round trip returns min exactly.",
    "int_zero_point": "zero is a float, the minimum itself (x's dtype): x^ = q scale + zero. An integer zero-point "
                      "round(-min / scale) belongs to the other convention, x^ = (q - zp) scale; do not mix the two.",
    "wrong_zero": "zero = min over axis (keepdim=True), in x's dtype.",
    "wrong_scale": "scale = (max - min) / (2**bits - 1) over axis (keepdim=True), and 1 where max == min.",
    "no_round": "Round to the nearest code: q = round((x - zero) / scale). Flooring (torch.floor, or .to(torch.uint8) "
                "straight from a float, which truncates) loses up to a whole step instead of half of one.",
    "no_clamp": "Clamp the codes to [0, 2**bits - 1] before converting to uint8: outside that range uint8 wraps "
                "around (256 becomes 0).",
    "round_trip": "The round trip dequantize(quantize(x)) must stay within scale / 2 of x: q = round((x - zero) / "
                  "scale) with scale = (max - min) / (2**bits - 1) and zero = min.",
    "wrong_q": "q = round((x - zero) / scale), clamped to [0, 2**bits - 1], as torch.uint8.",
    "q_dtype": "q holds the integer codes: return it as torch.uint8 (.to(torch.uint8) after rounding and "
               "clamping), not as a float tensor: the point is to store 1 byte (or fewer bits) per number.",
    "dtype": "scale and zero keep x's dtype (float64 in, float64 out): no .float() and no fixed dtype=.",
    "shape": "q has x's shape; scale and zero have x's shape with size 1 along axis.",
}


def _absmax_scales(x, bits, axis):
    """The scales a symmetric (absmax) quantiser uses, in the ways learners write it."""
    m = x.abs().amax(axis, keepdim=True)
    half = 2 ** (bits - 1)
    return {"sym_top": m / (2 ** bits - 1), "sym_half": m / max(half - 1, 1), "sym_pow": m / half,
            "sym_range": 2 * m / (2 ** bits - 1)}


def _scale_models(x, bits, axis):
    lo, hi = x.amin(axis, keepdim=True), x.amax(axis, keepdim=True)
    models = {"levels": lambda: torch.where(hi == lo, torch.ones_like(lo), (hi - lo) / 2 ** bits),
              "constant_row": lambda: (hi - lo) / (2 ** bits - 1)}
    models.update({f"symmetric#{k}": (lambda s=s: s) for k, s in _absmax_scales(x, bits, axis).items()})
    return models


def _zero_models(x, bits, axis):
    lo = x.amin(axis, keepdim=True)
    scale = _quantize_ref(x, bits, axis)[1]
    return {"int_zero_point#neg": lambda: torch.round(-lo / scale),
            "int_zero_point#pos": lambda: torch.round(lo / scale),
            "symmetric#zero": lambda: torch.zeros_like(lo)}


def _q_models(x, bits, axis):
    _, scale, lo = _quantize_ref(x, bits, axis)
    y = (x - lo) / scale
    return {"no_round#floor": lambda: y.floor(), "no_round#ceil": lambda: y.ceil()}


def _stat_shape(shape, axis):
    s = list(shape)
    s[axis] = 1
    return tuple(s)


def _expect_quantized(got, x, bits, axis):
    """``got`` is ``(q, scale, zero)`` for ``x``: shapes, then scale, zero and q against the reference (the
    first mistake model each matches names the hint), then the dtypes."""
    if not isinstance(got, (tuple, list)) or len(got) != 3 or not all(isinstance(t, torch.Tensor) for t in got):
        raise Mistake("not_triple", f"got {type_name(got)}")
    q, scale, zero = got
    expect_tensor(q, tuple(x.shape), shape_text="q: x's shape [B, H, T, D]")
    want_stat = _stat_shape(x.shape, axis)
    for name, t in (("scale", scale), ("zero", zero)):
        if tuple(t.shape) != want_stat:
            reduced = tuple(n for i, n in enumerate(x.shape) if i != axis % x.dim())
            if tuple(t.shape) == reduced:
                raise Mistake("keepdim", f"{name} has shape {tuple(t.shape)}")
            if any(tuple(t.shape) == _stat_shape(x.shape, a) for a in range(x.dim()) if a != axis % x.dim()):
                raise Mistake("wrong_axis", f"{name} has shape {tuple(t.shape)}, expected {want_stat}")
            raise Mistake("shape", f"{name} has shape {tuple(t.shape)}, expected {want_stat}")
    want_q, want_scale, want_zero = _quantize_ref(x, bits, axis)
    expect_close(scale, want_scale, _scale_models(x, bits, axis), fallback="wrong_scale")
    expect_close(zero, want_zero, _zero_models(x, bits, axis), fallback="wrong_zero")
    got_q = q.to(torch.float64)
    if not close(got_q, want_q.to(torch.float64)):
        if bool((got_q > 2 ** bits - 1).any()) or bool((got_q < 0).any()):
            raise Mistake("no_clamp")
        expect_close(got_q, want_q.to(torch.float64), _q_models(x, bits, axis), fallback="wrong_q")
    if q.dtype != torch.uint8:
        raise Mistake("q_dtype", f"got {q.dtype}")
    for name, t in (("scale", scale), ("zero", zero)):
        if t.dtype != x.dtype:
            raise Mistake("dtype", f"{name} is {t.dtype} for {x.dtype} inputs")


def _kv_input(gen, b, h, t, d, dtype, constant=()):
    """``[B, H, T, D]`` keys or values with a few large channels (as real keys have) and, for each
    ``(axis, index)`` in ``constant``, a constant row along ``axis`` (all numbers equal)."""
    x = randn(gen, b, h, t, d)
    x[..., 0] *= 6.0  # an outlier channel
    x = x + 0.5  # not centred on 0: symmetric quantisation is visibly worse
    for axis, index in constant:
        if axis == -1:
            x[:, :, index, :] = 1.25  # one token whose numbers are all equal
        else:
            x[:, :, :, index] = -0.75  # one channel equal on every token
    return x.to(dtype)


@check_factory
def _quantize_check(fn, seed, b, h, t, d, bits, axis, *, dtype=torch.float64, constant=(), round_trip=False):
    gen = seeded(seed)
    x = _kv_input(gen, b, h, t, d, dtype, constant)
    got = call_keeping_inputs(fn, x, bits, axis)
    _expect_quantized(got, x, bits, axis)
    if round_trip:
        q, scale, zero = got
        err = (_dequantize_ref(q, scale, zero) - x).abs()
        if not bool((err <= scale / 2 * (1 + 1e-6) + 1e-12).all()):
            raise Mistake("round_trip")


def _sized_check(check, seed, b, h, t, d, bits, axis):
    """``Check`` of ``check(seed, b, h, t, d, bits, axis)``, labelled with the sizes it runs on (one source)."""
    side = "keys per channel (axis = -2)" if axis == -2 else "values per token (axis = -1)"
    return Check(f"{side}, {bits} bits, B = {b}, H = {h}, T = {t}, D = {d}", check(seed, b, h, t, d, bits, axis))


QUANTIZE_KV = code_exercise(
    id="11.quantize_kv", title="Min-max quantisation of keys and values", hints=QUANT_HINTS,
    error_hints={BROADCAST_ERROR: "keepdim"},
    checks=[
        _sized_check(_quantize_check, 1101, 2, 3, 7, 5, 4, -2),
        _sized_check(_quantize_check, 1102, 2, 3, 7, 5, 4, -1),
        Check("8 bits, keys (axis = -2), B = 1, H = 2, T = 33, D = 6, float32 in, float32 scale and zero out",
              _quantize_check(1103, 1, 2, 33, 6, 8, -2, dtype=torch.float32)),
        Check("2 bits, values (axis = -1), B = 3, H = 1, T = 9, D = 4", _quantize_check(1104, 3, 1, 9, 4, 2, -1)),
        Check("1 bit, keys (axis = -2): two codes, min and max (B = 1, H = 1, T = 5, D = 3)",
              _quantize_check(1105, 1, 1, 5, 3, 1, -2)),
        Check("a constant row: token 2 has all its numbers equal, max == min (values, axis = -1, 4 bits)",
              _quantize_check(1106, 2, 2, 6, 5, 4, -1, constant=[(-1, 2)])),
        Check("a constant channel: channel 1 equal on every token (keys, axis = -2, 2 bits)",
              _quantize_check(1107, 1, 2, 8, 3, 2, -2, constant=[(-2, 1)])),
        Check("T = D = 6, B = H = 1 (a square, where missing keepdim still broadcasts), values, 4 bits",
              _quantize_check(1108, 1, 1, 6, 6, 4, -1)),
        Check("the round trip: |dequantize(quantize(x)) - x| <= scale / 2 (keys, 3 bits, T = 50, D = 8)",
              _quantize_check(1109, 1, 2, 50, 8, 3, -2, round_trip=True)),
        Check("called twice on the same inputs (values, 4 bits, B = 1, H = 2, T = 4, D = 3): the same result",
              twice(_quantize_check(1110, 1, 2, 4, 3, 4, -1))),
    ],
)

# ---------------------------------------------------------------- 11.dequantize_kv

DEQUANT_HINTS = {
    "sign": "zero is the minimum, added back: x^ = q scale + zero, not q scale - zero.",
    "divide": "scale is the size of one step: multiply the codes by it, x^ = q scale + zero, not q / scale.",
    "zero_scaled": "zero is already in x's units (the minimum), not in codes: x^ = q scale + zero, "
                   "not (q + zero) scale.",
    "no_zero": "Add zero back: x^ = q scale + zero; without it every number is shifted by the minimum.",
    "no_scale": "Multiply the codes by scale: x^ = q scale + zero; q + zero adds whole codes to the minimum.",
    "cast": "x^ has scale's dtype (float64 scales give float64 numbers): cast the codes with q.to(scale.dtype) "
            "and do not convert the result with .float().",
    "dtype": "x^ has scale's dtype: cast q with q.to(scale.dtype) before multiplying.",
    "shape": "x^ has q's shape [B, H, T, D]: scale and zero broadcast along the axis they were taken over.",
    "wrong_values": "x^ = q.to(scale.dtype) * scale + zero.",
}


def _dequant_models(q, scale, zero):
    qf = q.to(scale.dtype)
    return {"sign": lambda: qf * scale - zero, "divide": lambda: qf / scale + zero,
            "zero_scaled": lambda: (qf + zero) * scale, "no_zero": lambda: qf * scale,
            "no_scale": lambda: qf + zero}


@check_factory
def _dequantize_check(fn, seed, b, h, t, d, bits, axis, *, dtype=torch.float64, constant=()):
    gen = seeded(seed)
    q, scale, zero = _quantize_ref(_kv_input(gen, b, h, t, d, dtype, constant), bits, axis)
    got = call_keeping_inputs(fn, q, scale, zero)
    if isinstance(got, torch.Tensor) and got.is_floating_point() and got.dtype != dtype \
            and tuple(got.shape) == tuple(q.shape) and close(got, _dequantize_ref(q, scale, zero)):
        raise Mistake("cast", f"got {got.dtype} for {dtype} scales")
    expect_tensor(got, tuple(q.shape), dtype, shape_text="[B, H, T, D]")
    expect_close(got, _dequantize_ref(q, scale, zero), _dequant_models(q, scale, zero))


DEQUANTIZE_KV = code_exercise(
    id="11.dequantize_kv", title="Reading quantised keys and values back", hints=DEQUANT_HINTS,
    checks=[
        _sized_check(_dequantize_check, 1121, 2, 3, 7, 5, 4, -2),
        _sized_check(_dequantize_check, 1122, 1, 2, 9, 4, 2, -1),
        Check("8 bits, float32 scale and zero: float32 out (keys, T = 20, D = 6)",
              _dequantize_check(1123, 1, 2, 20, 6, 8, -2, dtype=torch.float32)),
        Check("a constant row (scale 1, q 0): the minimum comes back exactly (values, 4 bits)",
              _dequantize_check(1124, 2, 1, 5, 3, 4, -1, constant=[(-1, 0)])),
        Check("called twice on the same inputs (keys, 3 bits, B = 1, H = 1, T = 4, D = 2): the same result",
              twice(_dequantize_check(1125, 1, 1, 4, 2, 3, -2))),
    ],
)

# ---------------------------------------------------------------- 11.heavy_hitters

HH_HINTS = {
    "ignore_recent": "Keep the recent window first: the `recent` newest positions T - recent .. T - 1 are always "
                     "kept, and only the remaining budget - recent slots go to the heaviest OLDER positions. "
                     "A top-k over all T positions drops the newest tokens whenever they have low scores.",
    "recent_from_start": "`recent` counts from the END: the newest positions T - recent .. T - 1 "
                         "(torch.arange(T - recent, T)), not the first ones 0 .. recent - 1.",
    "budget_plus_recent": "budget is the total number of pairs kept, the recent window included: keep `recent` "
                          "newest plus budget - recent heavy hitters, budget in all.",
    "double_count": "A top-k over all positions, then the recent ones added: when some of the top scores lie in the "
                    "recent window they are counted twice and fewer than budget pairs are kept. Choose the heavy "
                    "hitters among the older positions 0 .. T - recent - 1 only.",
    "ties_later": "Between equal scores keep the EARLIER position: sort with stable=True in descending order "
                  "(torch.sort(scores, descending=True, stable=True)); yours keeps the later one.",
    "unsorted": "Return the kept positions sorted ascending (oldest first): .sort().values at the end.",
    "recent_off_by_one": "Off by one at the window's edge: the recent window is T - recent .. T - 1 (torch.arange("
                         "T - recent, T), `recent` positions), and the candidates are 0 .. T - recent - 1 "
                         "(scores[:T - recent]).",
    "minus_zero": "recent = 0 breaks negative slicing: scores[:-0] is EMPTY and x[-0:] is everything. Slice with "
                  "the explicit length, scores[:T - recent] and torch.arange(T - recent, T).",
    "short_text": "When T <= budget everything fits: return torch.arange(T) (there is nothing to evict, and a "
                  "top-k of more than T elements fails).",
    "dtype_long": "Return positions as a torch.long tensor (torch.arange and .indices give long; no .float()).",
    "not_1d": "Return a 1-D tensor of kept positions.",
    "shape": "Keep min(T, budget) positions.",
    "wrong_positions": "Keep the `recent` newest positions T - recent .. T - 1 and, among 0 .. T - recent - 1, the "
                       "budget - recent with the largest scores (ties: the earlier position); return them sorted.",
}


def _ranked(scores, descending_later=False):
    """Positions of ``scores`` by descending score; ties toward the earlier (or, mistaken, the later) one."""
    order = sorted(range(scores.shape[0]), key=lambda j: (-float(scores[j]), -j if descending_later else j))
    return torch.tensor(order, dtype=torch.long)


def _hh_model(scores, budget, recent, *, ties_later=False, recent_start=None, n_heavy=None, older_stop=None):
    t = scores.shape[0]
    if t <= budget:
        return torch.arange(t)
    start = t - recent if recent_start is None else recent_start
    stop = t - recent if older_stop is None else older_stop
    heavy = _ranked(scores[:stop], ties_later)[:budget - recent if n_heavy is None else n_heavy]
    return torch.cat([heavy, torch.arange(start, t)]).unique().sort().values


def _hh_models(scores, budget, recent):
    t = scores.shape[0]
    top_all = _ranked(scores)
    models = {
        "ignore_recent": lambda: top_all[:budget].sort().values,
        "recent_from_start": lambda: torch.cat([torch.arange(recent), recent + _ranked(scores[recent:])[
            :budget - recent]]).sort().values,
        "budget_plus_recent": lambda: _hh_model(scores, budget, recent, n_heavy=budget),
        "double_count": lambda: torch.cat([top_all[:budget - recent], torch.arange(t - recent, t)]).unique(),
        "ties_later": lambda: _hh_model(scores, budget, recent, ties_later=True),
        "recent_off_by_one#extra": lambda: _hh_model(scores, budget, recent, recent_start=t - recent - 1,
                                                     older_stop=t - recent - 1),
        "recent_off_by_one#gap": lambda: _hh_model(scores, budget, recent, older_stop=t - recent - 1),
        "recent_off_by_one#late": lambda: _hh_model(scores, budget, recent, recent_start=t - recent + 1),
    }
    if recent == 0:
        models["minus_zero#empty"] = lambda: torch.zeros(0, dtype=torch.long)
        models["minus_zero#all"] = lambda: torch.arange(t)
    return models


def _expect_positions(got, scores, budget, recent):
    if not isinstance(got, torch.Tensor):
        raise Mistake("not_tensor", f"got {type_name(got)}")
    if got.dim() != 1:
        raise Mistake("not_1d", f"got shape {tuple(got.shape)}")
    want = heavy_hitters(scores, budget, recent)
    g = got.detach().to(torch.float64)
    models = {k: (lambda f=f: f().to(torch.float64)) for k, f in _hh_models(scores, budget, recent).items()}
    if not close(g, want.to(torch.float64)):
        if close(g.sort().values, want.to(torch.float64)):
            raise Mistake("unsorted")
        for key, model in models.items():  # also unsorted versions of a mistake
            try:
                candidate = model()
            except Exception:
                continue
            if close(g.sort().values, candidate):
                raise Mistake(key.split("#")[0])
        if tuple(got.shape) != tuple(want.shape):
            raise Mistake("shape", f"got {got.shape[0]} positions, expected {want.shape[0]}")
        raise Mistake("wrong_positions")
    if got.dtype != torch.long:
        raise Mistake("dtype_long", f"got {got.dtype}")


def _scores(gen, t, dtype, kind):
    s = torch.rand(t, generator=gen, dtype=torch.float64)
    if kind == "sink":
        s[0] += 5.0  # attention piles on the first token
    if kind == "ties":
        s = (s * 3).floor()  # values 0, 1, 2: many ties
    if kind == "recent_heavy":
        s[-3:] += 10.0  # the largest scores are among the newest
        s[2] += 4.0
    return s.to(dtype)


@check_factory
def _hh_check(fn, seed, t, budget, recent, *, dtype=torch.float32, kind="random"):
    scores = _scores(seeded(seed), t, dtype, kind)
    got = call_keeping_inputs(fn, scores, budget, recent)
    _expect_positions(got, scores, budget, recent)


HEAVY_HITTERS = code_exercise(
    id="11.heavy_hitters", title="H2O: which pairs to keep", hints=HH_HINTS,
    error_hints={r"selected index k out of range|k \(\d+\) is too big|out of range": "short_text"},
    checks=[
        Check("T = 10, budget = 6, recent = 2, the first token a sink", _hh_check(1131, 10, 6, 2, kind="sink")),
        Check("recent = 0: heavy hitters only (T = 9, budget = 4)", _hh_check(1132, 9, 4, 0)),
        Check("recent = budget: a window of the newest (T = 12, budget = 5, recent = 5)", _hh_check(1133, 12, 5, 5)),
        Check("T = 4 <= budget = 6: every position kept", _hh_check(1134, 4, 6, 2)),
        Check("T = budget = 5: every position kept", _hh_check(1135, 5, 5, 1)),
        Check("ties: scores 0, 1 or 2, the earlier of equal scores kept (T = 14, budget = 6, recent = 2)",
              _hh_check(1136, 14, 6, 2, kind="ties")),
        Check("the largest scores lie in the recent window (T = 11, budget = 6, recent = 3): none counted twice",
              _hh_check(1137, 11, 6, 3, kind="recent_heavy")),
        Check("a long text: T = 500, budget = 64, recent = 16, float64 scores",
              _hh_check(1138, 500, 64, 16, dtype=torch.float64, kind="sink")),
        Check("called twice on the same inputs (T = 8, budget = 4, recent = 1): the same result",
              twice(_hh_check(1139, 8, 4, 1))),
    ],
)

# ---------------------------------------------------------------- 11.latent_bytes

# DeepSeek-V2-Lite's attention: 27 layers, 16 heads of d_h = 128, latent rank r = 512 and a decoupled rotary
# key of d_R = 64 per token and layer, fp16, one sequence of m = 32,768 tokens.
LAYERS, HEADS, HEAD_DIM, RANK, ROPE, CONTEXT, FP16 = 27, 16, 128, 512, 64, 32_768, 2


_latent_bytes = latent_cache_bytes  # L (r + d_R) m batch b

LATENT = _latent_bytes(LAYERS, RANK, CONTEXT, rope_dim=ROPE)

LATENT_BYTES = number_exercise(
    id="11.latent_bytes",
    title="The bytes of a latent cache",
    correct=LATENT,
    mistakes={
        "no_layers": LATENT / LAYERS,
        "keys_and_values": 2 * LATENT,
        "per_head#rank": _latent_bytes(LAYERS, HEADS * RANK, CONTEXT, rope_dim=ROPE),
        "per_head#both": HEADS * LATENT,
        "bits": 8 * LATENT,
        "no_rope": _latent_bytes(LAYERS, RANK, CONTEXT),
        "mha": 2 * LAYERS * HEADS * HEAD_DIM * CONTEXT * FP16,
    },
    hints={
        "no_layers": "Every layer has its own latent cache: multiply by the L = 27 layers.",
        "keys_and_values": "The latent c_t is ONE vector per token and layer from which both keys and values are "
                           "decoded: no factor 2 for keys and values (and fp16 is 2 bytes, counted once).",
        "per_head": "The latent is shared by all heads: r + d_R numbers per token and layer, not tau r (each head "
                    "decodes its own keys and values from the same c_t).",
        "bits": "fp16 is 2 BYTES per number (16 bits): count bytes, not bits.",
        "no_rope": "Add the decoupled rotary key: d_R = 64 more numbers per token and layer, cached beside the latent.",
        "mha": "That is the full MHA cache 2 L tau d_h m b. The latent cache stores L (r + d_R) m b.",
        "wrong_number": "Per token and layer the cache holds r + d_R numbers (the latent and the rotary key, shared by "
                        "all heads): L (r + d_R) m b bytes with b = 2 for fp16.",
    },
    unit="bytes",
)

# ---------------------------------------------------------------- questions

CACHE_OR_MEMORY = choice_exercise(
    id="11.cache_or_memory",
    title="A quantised cache or a fixed-size memory",
    options={
        "A": "A 4-bit quantised cache (KIVI): about 2.1 GiB at 64k tokens fits the budget, and every token, "
             "the code included, stays readable to softmax.",
        "B": "A gated delta memory in every layer: a fixed 32 MiB whatever the length, and its learned "
             "write gate can store the code strongly enough to last.",
        "C": "H2O eviction down to 2,048 pairs per layer: a fixed 256 MiB, keeping the tokens that have "
             "received the most attention, the code among them.",
        "D": "A 2-bit quantised cache: about half the 4-bit bytes, leaving room in the budget, with the same "
             "recall of every token, the code included.",
    },
    correct="A",
    wrong_hints={
        "B": "A fixed-size memory must forget: lessons 08 and 10 measured recall of a fact fading with distance "
             "and nothing left by 4,096 tokens; 50k is far beyond. The budget holds a cache that keeps every token, "
             "so there is no need to give up exact recall.",
        "C": "Eviction scores a pair by the attention it has received SO FAR: the code gets little attention "
             "until the question about it comes, 50k tokens later, and by then it was evicted and cannot be "
             "brought back.",
        "D": "2 bits leave 4 codes per group: the rounding step is range / 3 instead of range / 15, five times "
             "coarser, so an exact digit is at more risk; and the budget already holds 4 bits, so halving the "
             "bytes buys nothing this scenario needs.",
    },
)

WHAT_GROWS = choice_exercise(
    id="11.what_grows",
    title="Which compressed caches still grow",
    options={
        "A": "The 4-bit and the latent caches grow linearly with m, on a smaller slope than fp16; the H2O "
             "cache stays at its budget of pairs.",
        "B": "The 4-bit cache grows linearly with m; the latent cache is a fixed rank-r summary and the H2O "
             "cache stays at its budget of pairs.",
        "C": "All three grow linearly with m: H2O must keep an accumulated score for every token it has "
             "seen to decide what to evict next.",
        "D": "None grows: each stores a fixed fraction of the fp16 cache, and a fixed fraction of the "
             "cache is a fixed size per layer.",
    },
    correct="A",
    wrong_hints={
        "B": "The latent c_t is one vector PER TOKEN (rank r is its width, not a number of slots): L (r + d_R) m b "
             "bytes, linear in m like the KV cache, only with a smaller slope.",
        "C": "H2O keeps scores only for the pairs it holds (at most budget of them); an evicted pair's score is "
             "dropped with it. Its cache, scores included, stays at its budget.",
        "D": "A fixed fraction of something that grows still grows: 4 bits are a quarter of fp16 at every m, so "
             "the 4-bit cache grows linearly too, as does the latent cache.",
    },
)

EXERCISES = [QUANTIZE_KV, DEQUANTIZE_KV, HEAVY_HITTERS, LATENT_BYTES, CACHE_OR_MEMORY, WHAT_GROWS]
