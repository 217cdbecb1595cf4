"""Lesson 11's mutants (known-wrong answers, as learners write them) and reference answers."""

from __future__ import annotations

import torch

from course_lib.memory import heavy_hitters as _library_heavy_hitters

from . import choice_mutants, mutant, right, right_value, value_mutant

# ---------------------------------------------------------------- references (written another way)


def _ref_quantize(x, bits, axis):
    """Move `axis` last, quantise row by row in Python-free torch ops, move it back."""
    y = x.movedim(axis, -1)
    lo, hi = y.min(-1, keepdim=True).values, y.max(-1, keepdim=True).values
    levels = 2 ** bits - 1
    step = (hi - lo) / levels
    step[hi == lo] = 1.0
    q = ((y - lo) / step + 0.0).round().clamp_(0, levels).to(torch.uint8)
    return q.movedim(-1, axis), step.movedim(-1, axis), lo.movedim(-1, axis)


def _ref_dequantize(q, scale, zero):
    return torch.addcmul(zero, q.to(scale.dtype), scale)


REFERENCES = {
    "11.quantize_kv": _ref_quantize,
    "11.dequantize_kv": _ref_dequantize,
    "11.heavy_hitters": _library_heavy_hitters,
    "11.latent_bytes": lambda: 27 * 576 * 32768 * 2,
    "11.cache_or_memory": "a",
    "11.what_grows": " A ",
}


# ---------------------------------------------------------------- 11.quantize_kv

def _minmax(x, axis):
    return x.amin(axis, keepdim=True), x.amax(axis, keepdim=True)


@mutant("11.quantize_kv", hint="wrong_axis")
def quantize_other_axis(x, bits, axis):
    other = -1 if axis == -2 else -2  # statistics over the other dimension
    lo, hi = _minmax(x, other)
    scale = torch.where(hi == lo, torch.ones_like(lo), (hi - lo) / (2 ** bits - 1))
    return ((x - lo) / scale).round().clamp(0, 2 ** bits - 1).to(torch.uint8), scale, lo


@mutant("11.quantize_kv", hint="levels")
def quantize_two_to_the_bits(x, bits, axis):
    lo, hi = _minmax(x, axis)
    scale = (hi - lo) / 2 ** bits
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return ((x - lo) / scale).round().clamp(0, 2 ** bits - 1).to(torch.uint8), scale, lo


@mutant("11.quantize_kv", hint="no_round")
def quantize_truncating(x, bits, axis):
    lo, hi = _minmax(x, axis)
    scale = torch.where(hi == lo, torch.ones_like(lo), (hi - lo) / (2 ** bits - 1))
    return ((x - lo) / scale).to(torch.uint8), scale, lo  # .to(uint8) cuts the fraction off


@mutant("11.quantize_kv", hint="no_round", name="quantize_floor")
def quantize_floor(x, bits, axis):
    lo, hi = _minmax(x, axis)
    scale = torch.where(hi == lo, torch.ones_like(lo), (hi - lo) / (2 ** bits - 1))
    return torch.floor((x - lo) / scale).clamp(0, 2 ** bits - 1).to(torch.uint8), scale, lo


@mutant("11.quantize_kv", hint="symmetric")
def quantize_absmax(x, bits, axis):
    m = x.abs().amax(axis, keepdim=True)
    half = 2 ** (bits - 1)
    scale = m / max(half - 1, 1)
    q = (torch.round(x / scale) + half).clamp(0, 2 ** bits - 1).to(torch.uint8)
    return q, scale, torch.zeros_like(scale)


@mutant("11.quantize_kv", hint="int_zero_point")
def quantize_integer_zero_point(x, bits, axis):
    lo, hi = _minmax(x, axis)
    scale = torch.where(hi == lo, torch.ones_like(lo), (hi - lo) / (2 ** bits - 1))
    zero_point = torch.round(-lo / scale)  # PyTorch's convention: x = (q - zp) * scale
    q = (torch.round(x / scale) + zero_point).clamp(0, 2 ** bits - 1).to(torch.uint8)
    return q, scale, zero_point


@mutant("11.quantize_kv", hint="keepdim")
def quantize_without_keepdim(x, bits, axis):
    lo, hi = x.amin(axis), x.amax(axis)
    scale = torch.where(hi == lo, torch.ones_like(lo), (hi - lo) / (2 ** bits - 1))
    return ((x - lo) / scale).round().clamp(0, 2 ** bits - 1).to(torch.uint8), scale, lo


@mutant("11.quantize_kv", hint="constant_row")
def quantize_dividing_by_zero(x, bits, axis):
    lo, hi = _minmax(x, axis)
    scale = (hi - lo) / (2 ** bits - 1)  # 0 where max == min: NaN codes
    return ((x - lo) / scale).round().clamp(0, 2 ** bits - 1).to(torch.uint8), scale, lo


@mutant("11.quantize_kv", hint="q_dtype")
def quantize_float_codes(x, bits, axis):
    lo, hi = _minmax(x, axis)
    scale = torch.where(hi == lo, torch.ones_like(lo), (hi - lo) / (2 ** bits - 1))
    return ((x - lo) / scale).round().clamp(0, 2 ** bits - 1), scale, lo


@mutant("11.quantize_kv", hint="dtype")
def quantize_float32_scales(x, bits, axis):
    lo, hi = _minmax(x, axis)
    scale = torch.where(hi == lo, torch.ones_like(lo), (hi - lo) / (2 ** bits - 1))
    q = ((x - lo) / scale).round().clamp(0, 2 ** bits - 1).to(torch.uint8)
    return q, scale.float(), lo.float()


@mutant("11.quantize_kv", hint="modified_input")
def quantize_in_place(x, bits, axis):
    lo, hi = _minmax(x, axis)
    scale = torch.where(hi == lo, torch.ones_like(lo), (hi - lo) / (2 ** bits - 1))
    x.sub_(lo).div_(scale)
    return x.round().clamp(0, 2 ** bits - 1).to(torch.uint8), scale, lo


@right("11.quantize_kv")
def quantize_with_masked_fill(x, bits, axis):
    lo = x.min(dim=axis, keepdim=True).values
    rng = x.max(dim=axis, keepdim=True).values - lo
    scale = (rng / (2 ** bits - 1)).masked_fill(rng == 0, 1.0)
    return torch.clamp(torch.round((x - lo) / scale), 0, 2 ** bits - 1).to(torch.uint8), scale, lo


# ---------------------------------------------------------------- 11.dequantize_kv

@mutant("11.dequantize_kv", hint="sign")
def dequantize_minus_zero(q, scale, zero):
    return q.to(scale.dtype) * scale - zero


@mutant("11.dequantize_kv", hint="divide")
def dequantize_dividing(q, scale, zero):
    return q.to(scale.dtype) / scale + zero


@mutant("11.dequantize_kv", hint="zero_scaled")
def dequantize_zero_point_formula(q, scale, zero):
    return (q.to(scale.dtype) + zero) * scale


@mutant("11.dequantize_kv", hint="no_zero")
def dequantize_forgets_zero(q, scale, zero):
    return q.to(scale.dtype) * scale


@mutant("11.dequantize_kv", hint="cast")
def dequantize_as_float32(q, scale, zero):
    return (q * scale + zero).float()


@right("11.dequantize_kv")
def dequantize_promoting(q, scale, zero):
    """uint8 * float promotes to the float: no cast needed."""
    return q * scale + zero


# ---------------------------------------------------------------- 11.heavy_hitters

@mutant("11.heavy_hitters", hint="ignore_recent")
def hh_topk_over_everything(scores, budget, recent):
    if scores.shape[0] <= budget:
        return torch.arange(scores.shape[0])
    return torch.sort(torch.sort(scores, descending=True, stable=True).indices[:budget]).values


@mutant("11.heavy_hitters", hint="recent_from_start")
def hh_recent_are_the_first(scores, budget, recent):
    t = scores.shape[0]
    if t <= budget:
        return torch.arange(t)
    rest = torch.sort(scores[recent:], descending=True, stable=True).indices[:budget - recent] + recent
    return torch.cat([torch.arange(recent), rest]).sort().values


def _picks_the_older_wrong(hint):
    """Register a heavy-hitter mutant whose only mistake is which older positions it keeps: the
    decorated ``heavy(older, budget, recent)`` picks them from ``older = scores[:T - recent]``;
    the short case (T <= budget keeps all) and the recent window around it are right."""
    def register(heavy):
        def answer(scores, budget, recent):
            t = scores.shape[0]
            if t <= budget:
                return torch.arange(t)
            return torch.cat([heavy(scores[:t - recent], budget, recent), torch.arange(t - recent, t)]).sort().values
        answer.__name__ = heavy.__name__
        return mutant("11.heavy_hitters", hint=hint)(answer)
    return register


@_picks_the_older_wrong("budget_plus_recent")
def hh_budget_of_heavy_hitters(older, budget, recent):
    return torch.sort(older, descending=True, stable=True).indices[:budget]


@mutant("11.heavy_hitters", hint="double_count")
def hh_top_then_add_recent(scores, budget, recent):
    t = scores.shape[0]
    if t <= budget:
        return torch.arange(t)
    top = torch.sort(scores, descending=True, stable=True).indices[:budget - recent]
    return torch.tensor(sorted(set(top.tolist()) | set(range(t - recent, t))), dtype=torch.long)


@_picks_the_older_wrong("ties_later")
def hh_ties_to_the_later(older, budget, recent):
    flipped = torch.sort(older.flip(0), descending=True, stable=True).indices  # later first among equals
    return older.shape[0] - 1 - flipped[:budget - recent]


@mutant("11.heavy_hitters", hint="unsorted")
def hh_unsorted(scores, budget, recent):
    t = scores.shape[0]
    if t <= budget:
        return torch.arange(t)
    heavy = torch.sort(scores[:t - recent], descending=True, stable=True).indices[:budget - recent]
    return torch.cat([torch.arange(t - recent, t), heavy])  # recent first, heavy hitters by score


@mutant("11.heavy_hitters", hint="recent_off_by_one")
def hh_window_one_too_wide(scores, budget, recent):
    t = scores.shape[0]
    if t <= budget:
        return torch.arange(t)
    heavy = torch.sort(scores[:t - recent - 1], descending=True, stable=True).indices[:budget - recent]
    return torch.cat([heavy, torch.arange(t - recent - 1, t)]).sort().values


@mutant("11.heavy_hitters", hint="minus_zero")
def hh_negative_slices(scores, budget, recent):
    t = scores.shape[0]
    if t <= budget:
        return torch.arange(t)
    heavy = torch.sort(scores[:-recent], descending=True, stable=True).indices[:budget - recent]
    return torch.cat([heavy, torch.arange(t)[-recent:]]).sort().values if recent else heavy


@mutant("11.heavy_hitters", hint="dtype_long")
def hh_float_positions(scores, budget, recent):
    return _library_heavy_hitters(scores, budget, recent).float()


@mutant("11.heavy_hitters", hint="short_text")
def hh_topk_without_the_short_case(scores, budget, recent):
    t = scores.shape[0]
    heavy = torch.topk(scores[:t - recent], budget - recent).indices  # fails when T <= budget
    return torch.cat([heavy, torch.arange(t - recent, t)]).sort().values


@right("11.heavy_hitters")
def hh_python_loop(scores, budget, recent):
    t = scores.shape[0]
    if t <= budget:
        return torch.arange(t)
    older = sorted(range(t - recent), key=lambda j: (-scores[j].item(), j))  # earlier first among equals
    return torch.tensor(sorted(older[:budget - recent] + list(range(t - recent, t))), dtype=torch.long)


# ---------------------------------------------------------------- questions

L, R, D_R, M = 27, 512, 64, 32_768
value_mutant("11.latent_bytes", "one_layer", "no_layers", (R + D_R) * M * 2)
value_mutant("11.latent_bytes", "keys_and_values", "keys_and_values", 2 * L * (R + D_R) * M * 2)
value_mutant("11.latent_bytes", "per_head", "per_head", L * (16 * R + D_R) * M * 2)
value_mutant("11.latent_bytes", "bits", "bits", L * (R + D_R) * M * 16)
value_mutant("11.latent_bytes", "no_rope", "no_rope", L * R * M * 2)
value_mutant("11.latent_bytes", "the_mha_cache", "mha", 2 * L * 16 * 128 * M * 2)
value_mutant("11.latent_bytes", "in_gib", "wrong_number", L * (R + D_R) * M * 2 / 2 ** 30)
right_value("11.latent_bytes", "as_a_float", 1019215872.0)
choice_mutants("11.cache_or_memory", gated_delta="B", h2o="C", two_bits="D")
choice_mutants("11.what_grows", latent_fixed="B", h2o_grows="C", nothing_grows="D")
