"""Helpers for writing checks: seeded inputs, output validation, and naming the mistake.

A check computes the reference result and, when the learner's result differs, the results
of the known mistakes on the same inputs (``mistake models``); the first model that the
learner's result matches names the hint. Nothing here ever prints a value.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping

import torch

from .core import Mistake, type_name

__all__ = ["seeded", "randn", "heads_view", "expect_tensor", "close", "expect_close", "expect_number",
           "call_keeping_inputs", "expect_answer", "expect_mask", "make", "probe", "run_beside", "grads", "twice",
           "number_tolerance"]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(gen: torch.Generator, *shape: int, dtype=torch.float64, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64).mul_(scale).to(dtype)


def heads_view(gen: torch.Generator, b: int, h: int, t: int, d: int, dtype=torch.float64) -> torch.Tensor:
    """A non-contiguous ``[B, H, T, D]`` tensor laid out as ``[B, T, H, D]`` (what splitting
    heads produces): ``.view`` across the B, H, T axes fails on it, ``.reshape`` works."""
    x = randn(gen, b, t, h, d, dtype=dtype).transpose(1, 2)
    assert not x.is_contiguous()
    return x


def tolerance(dtype: torch.dtype) -> dict:
    return {"rtol": 1e-9, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}


def number_tolerance(dtype: torch.dtype | None = None) -> float:
    """The relative tolerance for a number computed in ``dtype``: a Python float (``None``) or
    float64 is compared to 1e-9; a float32 result may carry float32 rounding (about 6e-8 per
    operation), so 1e-6; float16 and bfloat16 1e-2."""
    if dtype is None or dtype == torch.float64:
        return 1e-9
    return 1e-6 if dtype == torch.float32 else 1e-2


def twice(run: Callable) -> Callable:
    """A check that runs ``run(answer)`` twice on the same inputs: an answer that passes the first
    time and not the second keeps state between calls (hint ``stateful``)."""
    def both(answer):
        run(answer)
        try:
            run(answer)
        except Mistake:
            raise Mistake("stateful", "the first call passed, the second, on the same inputs, did not") from None
    return both


def close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Same shape and values (NaN equal to NaN, so a NaN-producing mistake can be recognised)."""
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return False
    if want.dtype == torch.bool or got.dtype == torch.bool:
        return got.dtype == want.dtype and bool(torch.equal(got, want))
    tol = tolerance(want.dtype if want.dtype == got.dtype else torch.float32)
    return bool(torch.allclose(got.detach().to(torch.float64).cpu(), want.to(torch.float64).cpu(),
                               equal_nan=True, **tol))


def expect_tensor(got, shape: tuple, dtype: torch.dtype | None = None, *, shape_text: str = "") -> torch.Tensor:
    """Raise :class:`Mistake` unless ``got`` is a tensor of ``shape`` (and ``dtype``)."""
    if not isinstance(got, torch.Tensor):
        raise Mistake("not_tensor", f"got {type_name(got)}")
    if tuple(got.shape) != tuple(shape):
        want = f"expected {shape_text} = {tuple(shape)}" if shape_text else f"expected {tuple(shape)}"
        raise Mistake("shape", f"got {tuple(got.shape)}, {want}")
    if dtype is not None and got.dtype != dtype:
        raise Mistake("dtype", f"got {got.dtype} for {dtype} inputs")
    return got


def make(answer, factory, *args, **kwargs):
    """``factory(*args, **kwargs)``, built where ``answer`` lives.

    For an object the learner's code receives and the check inspects afterwards (a cache it
    appends to, a model it trains): when the grade command calls the answer in the learner's
    sandboxed kernel, the object is built there too (``factory`` must be importable, such as a
    course_lib class) and the check gets a proxy whose attributes and methods return data."""
    from .grader.remote import RemoteObject  # remote imports this module

    if isinstance(answer, RemoteObject):
        return answer._session.make(factory, args, kwargs)
    return factory(*args, **kwargs)


PROBES: dict[tuple[str, str], Callable] = {}


def probe(fn: Callable) -> Callable:
    """Register ``fn`` as a probe: ``fn(answer, args, *rest)`` calls ``answer(*args)`` and returns
    data about it (gradients, ``requires_grad``, whether a state was detached).

    Under the grade command a probe never runs in the learner's kernel, whose modules the
    notebook can replace: the grader runs it in a fresh sandboxed interpreter
    (:mod:`course_lib.grading.grader.probe`) on the answer rebuilt from its source, and checks that
    the rebuilt answer gives the kernel's values for ``args``. In the learner's own notebook
    it runs beside the answer. ``fn`` must be a module-level function of an importable module."""
    fn.__course_probe__ = True
    PROBES[(fn.__module__, fn.__qualname__)] = fn
    return fn


def run_beside(answer, probe_fn, args, *rest, **kwargs):
    """``probe_fn(answer, args, *rest, **kwargs)`` for a registered :func:`probe`; returns its data."""
    if not getattr(probe_fn, "__course_probe__", False):
        raise TypeError(f"run_beside needs a function registered with compare.probe, got {probe_fn!r}")
    return make(answer, probe_fn, answer, args, *rest, **kwargs)


@probe
def grads(fn, inputs, weight):
    """A probe for :func:`run_beside`: ``(out, [d (out * weight).sum() / d x for x in inputs])``,
    with each input a fresh leaf that requires grad (None where no gradient reached it)."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*leaves)
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        return out.detach() if isinstance(out, torch.Tensor) else out, [None] * len(leaves)
    (out * weight).sum().backward()
    return out.detach(), [None if x.grad is None else x.grad.detach() for x in leaves]


def call_keeping_inputs(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, raising ``modified_input`` if it changed a tensor argument in place
    (the checks compute the reference from the same tensors afterwards)."""
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    before = [t.clone() for t in tensors]
    out = fn(*args, **kwargs)
    for t, b in zip(tensors, before):
        if not torch.equal(t, b):
            raise Mistake("modified_input")
    return out


def expect_close(got: torch.Tensor, want: torch.Tensor, models: Mapping[str, Callable[[], torch.Tensor]] = (),
                 fallback: str = "wrong_values") -> None:
    """Pass when ``got`` matches ``want``; otherwise raise the key of the first mistake model
    that ``got`` matches, then ``nonfinite`` for inf/NaN, then ``fallback``. Several models
    may share one hint: ``"key#variant"`` raises ``key``."""
    if close(got, want):
        return
    for key, model in dict(models).items():
        try:
            candidate = model()
        except Exception:  # a model that cannot run on these inputs simply does not match
            continue
        if close(got, candidate):
            raise Mistake(key.split("#")[0])
    if got.is_floating_point() and not bool(torch.isfinite(got).all()):
        raise Mistake("nonfinite")
    raise Mistake(fallback)


def expect_answer(fn, args: tuple, shape: tuple, dtype: torch.dtype, reference: Callable,
                  models: Callable | None = None, *, shape_text: str = "") -> torch.Tensor:
    """The usual tensor check: ``fn(*args)`` leaves its inputs as they were (:func:`call_keeping_inputs`),
    returns a tensor of ``shape`` and ``dtype`` (:func:`expect_tensor`) and matches ``reference(*args)``;
    otherwise the first of the mistake models ``models(*args)`` that it matches names the hint
    (:func:`expect_close`). The reference and the models are computed after the call, from the same inputs."""
    got = call_keeping_inputs(fn, *args)
    expect_tensor(got, shape, dtype, shape_text=shape_text)
    expect_close(got, reference(*args), () if models is None else models(*args))
    return got


def expect_mask(got, want: torch.Tensor, models: Mapping[str, Callable[[], torch.Tensor]] = ()) -> None:
    """A boolean attention mask ``[t_q, t_k]``: the shape of ``want`` (hint ``shape``), dtype bool (hint
    ``dtype_bool``), then the values, the mistake ``models`` naming the hint (:func:`expect_close`)."""
    expect_tensor(got, tuple(want.shape), shape_text="[t_q, t_k]")
    if got.dtype != torch.bool:
        raise Mistake("dtype_bool", f"got {got.dtype}")
    expect_close(got, want, models)


def expect_number(got, want: float, models: Mapping[str, float] = (), *, integer: bool = False,
                  fallback: str = "wrong_number", rel_tol: float = 1e-9) -> None:
    """Numeric answers: pass when equal to ``want`` (relative ``rel_tol``, 1e-9 unless the answer may
    be computed in float32: see :func:`number_tolerance`), else name the mistake: the first of the
    ``models`` it matches, then ``rounded`` for the right value rounded or cut to a few digits
    (126 for 126.03, 0.667 for 2/3), then ``fallback``.

    With ``integer=True`` the answer must also be an int (hint ``not_int``)."""
    if isinstance(got, bool) or not isinstance(got, numbers.Real):
        raise Mistake("not_number", f"got {type_name(got)}")
    value = float(got)
    if math.isclose(value, want, rel_tol=rel_tol, abs_tol=0.0) or (want == 0 and value == 0):
        if integer and not isinstance(got, numbers.Integral):
            raise Mistake("not_int", f"got {type_name(got)}")
        return
    for key, candidate in dict(models).items():
        if math.isclose(value, candidate, rel_tol=rel_tol, abs_tol=1e-12):
            raise Mistake(key.split("#")[0])
    if integer and not isinstance(got, numbers.Integral):
        raise Mistake("not_int", f"got {type_name(got)}")
    if not integer and _rounded(value, want):
        raise Mistake("rounded", f"got {value:.10g}")
    raise Mistake(fallback)


def _rounded(value: float, want: float) -> bool:
    """``value`` is ``want`` rounded (or cut) to 2..8 significant digits, and differs from it."""
    if not math.isfinite(value) or not math.isfinite(want) or want == 0:
        return False
    for digits in range(2, 9):
        exponent = math.floor(math.log10(abs(want))) - digits + 1
        step = 10.0 ** exponent
        for short in (round(want / step) * step, math.trunc(want / step) * step):
            if short != want and math.isclose(value, short, rel_tol=1e-12, abs_tol=0.0):
                return True
    return False
