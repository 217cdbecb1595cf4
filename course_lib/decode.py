r"""The one-token decoding step of :class:`~course_lib.models.MemoryLM`: the same numbers, fewer ops.

``models.py`` is the model to read. Generating text runs it once per new token with ``T = 1``,
and for one token most of the time goes to fixed costs: dispatching about fifteen small ops
per layer and reading the weights. This module computes the same function with less of both:

* weights laid out for a matrix-vector product: ``x W^T`` with a transposed copy
  ``W^T [in, out]`` reads memory row by row, several times faster on a CPU once the weights
  outgrow the cache (GPT-2 stores its weights that way);
* direct functional calls (``torch.layer_norm``, ``torch.addmm`` with the residual added by the
  GEMM), the rotary rotation as a roll (:func:`~course_lib.models.apply_rotary_rolled`), one row of the
  rotary tables per step;
* each memory called through ``forward_unchecked``: the caller checked its input once; a
  memory that learns its write strength gets ``beta_t = sigma(W_beta x_t)`` from one ``addmm``
  on the transposed copy ``W_beta^T`` and an in-place sigmoid; a memory that rotates its keys
  itself (``Memory.rotates_itself``) gets ``q, k`` unrotated and a
  :class:`~course_lib.memory.base.Rotation` over the plan's rotary tables, as in ``models.py``;
* on a CPU, GELU on torch's native kernel: oneDNN's costs ~10 us per call whatever the size
  (more than the whole activation of one token), so :class:`native_cpu_kernels` switches
  oneDNN off for the step and gives the switch back.

A :class:`DecodePlan` holds what every step needs, looked up once: :func:`prepare` builds it
and rebuilds it when a parameter changed (an optimizer step, a new parameter or submodule,
``.to()``; not a write through ``p.data``, which bypasses the version counter: change
parameters in place under ``torch.no_grad()`` instead). ``MemoryLM.forward`` takes this path
for one token whenever no gradient is recorded and no dropout is active, so a hand-written
decoding loop gets the step that ``generate`` uses
(checked once per call: the token ids, the state, the plan). ``generate`` also runs under
``torch.inference_mode()``, which skips autograd's bookkeeping: a loop under
``torch.no_grad()`` is about a tenth slower per token, one under ``torch.inference_mode()`` as
fast (the states it returns are then inference tensors, usable only under inference mode).
``tests/test_decode.py`` holds the step to the blocks in float64.
"""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .attention import repeat_kv
from .memory.base import Rotation

__all__ = ["DecodePlan", "LayerPlan", "applies", "prepare", "step", "native_cpu_kernels"]


@dataclass(frozen=True, slots=True)
class LayerPlan:
    """One block laid out for a one-token step; ``*_t`` are transposed copies ``W^T [in, out]``,
    ``ln*`` are ``(weight, bias, eps)``."""

    n_heads: int  # tau
    n_kv_heads: int  # n_g
    head_dim: int  # d_h
    repeat_kv: bool  # the memory takes one key/value head per query head
    rotate: bool  # Memory.uses_rotary (and not rotates_itself): q, k rotated here by their position
    rotates_itself: bool  # Memory.rotates_itself: q, k left unrotated, the memory gets rotary=Rotation(...)
    attend: Callable  # memory.forward_unchecked: (q, k, v, state) -> (out, state)
    ln1: tuple
    qkv_t: torch.Tensor  # [C, (tau + 2 n_g) d_h]
    out_t: torch.Tensor  # [C, C]
    ln2: tuple
    mlp_in_t: torch.Tensor  # [C, d_ff]
    mlp_in_b: torch.Tensor
    act: Callable
    mlp_out_t: torch.Tensor  # [d_ff, C]
    mlp_out_b: torch.Tensor
    beta_t: torch.Tensor | None = None  # [C, H]: W_beta^T of a memory with learns_beta, else None
    beta_b: torch.Tensor | None = None  # [H]: its bias


@dataclass(frozen=True, slots=True)
class DecodePlan:
    """Everything a one-token step reads, for positions ``< end``."""

    layers: tuple[LayerPlan, ...]
    embed: torch.Tensor  # [vocab, C]
    ln_f: tuple
    head_t: torch.Tensor  # [C, vocab]
    head_b: torch.Tensor | None
    cos: torch.Tensor  # [>= end, d_h]: rotary tables, rows by position
    sin: torch.Tensor  # (-sin, sin) halves, see models.apply_rotary_rolled
    end: int
    cpu: bool
    # what the copies were made from: (parameter, a reference to its storage, version counter)
    sources: tuple
    registrations: int


class native_cpu_kernels:
    """Inside: oneDNN switched off (torch's private switch), given back on exit, also on an error.

    The decoding step's GELU then runs on torch's native kernel: same function, no ~10 us of
    oneDNN setup per call. Only the CPU is affected.
    """

    __slots__ = ("_before",)

    def __enter__(self):
        self._before = torch._C._get_mkldnn_enabled()
        torch._C._set_mkldnn_enabled(False)
        return self

    def __exit__(self, *exc_info):
        torch._C._set_mkldnn_enabled(self._before)
        return False


# Any parameter or submodule assigned anywhere (``lm.head.weight = ...``, ``lm.blocks[0] = ...``)
# counts here, so a plan knows when a parameter it copied may have been replaced.
_registrations = 0


def _registered(*_):
    global _registrations
    _registrations += 1


nn.modules.module.register_module_parameter_registration_hook(_registered)
nn.modules.module.register_module_module_registration_hook(_registered)

_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its DecodePlan


def applies(model) -> bool:
    """The fast step computes ``model``'s forward when no autograd graph is recorded and no dropout is active."""
    return not torch.is_grad_enabled() and not (model.training and model.blocks[0].drop.p > 0)


def _current(plan: DecodePlan) -> bool:
    # same object (else a registration) + same storage (kept alive by the plan, so no other
    # tensor can take its address) + same version counter (in-place updates) = same numbers
    return plan.registrations == _registrations and all(
        p.data_ptr() == ref.data_ptr() and p._version == version for p, ref, version in plan.sources)


def prepare(model, end: int) -> DecodePlan:
    """The plan of ``model`` for steps at positions ``< end``: the cached one if nothing changed."""
    plan = _plans.get(model)
    if plan is None or not _current(plan):
        plan = _build(model, end)
        _plans[model] = plan
    elif plan.end < end:
        cos, sin = model.rotary.rolled_tables(end, plan.head_t.device, plan.head_t.dtype)
        plan = dataclasses.replace(plan, cos=cos, sin=sin, end=cos.shape[0])
        _plans[model] = plan
    return plan


def _functional(act: nn.Module) -> Callable:
    """The activation as a plain function (no module call per step)."""
    if type(act) is nn.GELU:
        return partial(F.gelu, approximate=act.approximate)
    return act


def _build(model, end: int) -> DecodePlan:
    params = tuple(model.parameters())
    with torch.no_grad(), torch.inference_mode(False):  # the copies outlive generate's inference mode
        def t(w):
            return w.detach().t().contiguous()

        layers = []
        for block in model.blocks:
            attn, (mlp_in, act, mlp_out) = block.attn, block.mlp
            layers.append(LayerPlan(
                n_heads=attn.n_heads, n_kv_heads=attn.n_kv_heads, head_dim=attn.head_dim,
                repeat_kv=attn.mem_heads != attn.n_kv_heads,
                rotate=attn.memory.uses_rotary and not attn.memory.rotates_itself,
                rotates_itself=attn.memory.rotates_itself,
                attend=attn.memory.forward_unchecked,
                ln1=(block.ln1.weight, block.ln1.bias, block.ln1.eps),
                qkv_t=t(attn.qkv.weight), out_t=t(attn.out.weight),
                ln2=(block.ln2.weight, block.ln2.bias, block.ln2.eps),
                mlp_in_t=t(mlp_in.weight), mlp_in_b=mlp_in.bias, act=_functional(act),
                mlp_out_t=t(mlp_out.weight), mlp_out_b=mlp_out.bias,
                beta_t=None if attn.w_beta is None else t(attn.w_beta.weight),
                beta_b=None if attn.w_beta is None else attn.w_beta.bias,
            ))
        head_t = t(model.head.weight)
    cos, sin = model.rotary.rolled_tables(end, head_t.device, head_t.dtype)
    return DecodePlan(
        layers=tuple(layers), embed=model.embed.weight, ln_f=(model.ln_f.weight, model.ln_f.bias, model.ln_f.eps),
        head_t=head_t, head_b=model.head.bias, cos=cos, sin=sin, end=cos.shape[0],
        cpu=head_t.device.type == "cpu", sources=tuple((p, p.detach(), p._version) for p in params),
        registrations=_registrations,
    )


def step(plan: DecodePlan, idx: torch.Tensor, state):
    """``MemoryLM.forward`` for one token ``idx [B, 1]`` at ``state.pos < plan.end``, without
    autograd and without argument checks (the caller checked): ``(logits [B, 1, vocab], state)``."""
    with native_cpu_kernels() if plan.cpu else contextlib.nullcontext():
        return _layers(plan, idx, state)


def _layers(plan: DecodePlan, idx, state):
    b, pos = idx.shape[0], state.pos
    shape = plan.embed.shape[1:]  # (C,): layer norms over the model width
    cos, sin = plan.cos[pos], plan.sin[pos]  # [d_h]: this position's rotary rows
    x = torch.embedding(plan.embed, idx.view(b))  # [B, C]: one token per row, 2-D throughout
    new_layers = []
    for lp, mem_state in zip(plan.layers, state.layers):
        h, g, d = lp.n_heads, lp.n_kv_heads, lp.head_dim
        xn = torch.layer_norm(x, shape, *lp.ln1)
        qkv = torch.mm(xn, lp.qkv_t)  # [B, (h + 2g) d_h]
        qk, v = qkv.view(b, h + 2 * g, 1, d).split((h + g, g), dim=1)  # [B, heads, 1, d_h]
        if lp.rotate:
            qk = qk * cos + qk.roll(d // 2, dims=-1) * sin  # models.apply_rotary_rolled, q and k together
        q, k = qk.split((h, g), dim=1)
        if lp.repeat_kv:
            k, v = repeat_kv(k, h // g), repeat_kv(v, h // g)
        if lp.beta_t is None and not lp.rotates_itself:
            o, mem_state = lp.attend(q, k, v, mem_state)  # [B, H, 1, d_h]
        else:
            kwargs = {"rotary": Rotation(plan.cos, plan.sin, pos)} if lp.rotates_itself else {}
            if lp.beta_t is not None:  # beta_t = sigma(W_beta x_t) [B, H, 1]: one new tensor, as a fixed beta's fill
                kwargs["beta"] = torch.addmm(lp.beta_b, xn, lp.beta_t).sigmoid_().view(b, -1, 1)
            o, mem_state = lp.attend(q, k, v, mem_state, **kwargs)
        new_layers.append(mem_state)
        x = torch.addmm(x, o.reshape(b, h * d), lp.out_t)  # x + W_o o
        a = torch.layer_norm(x, shape, *lp.ln2)
        x = x + torch.addmm(lp.mlp_out_b, lp.act(torch.addmm(lp.mlp_in_b, a, lp.mlp_in_t)), lp.mlp_out_t)
    x = torch.layer_norm(x, shape, *plan.ln_f)
    logits = torch.mm(x, plan.head_t) if plan.head_b is None else torch.addmm(plan.head_b, x, plan.head_t)
    return logits.view(b, 1, -1), type(state)(pos + 1, state.batch, new_layers)
