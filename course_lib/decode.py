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
  on the transposed copy ``W_beta^T`` and an in-place sigmoid (a learned decay likewise,
  ``alpha_t = exp(-softplus(W_alpha x_t + b))``); a memory that rotates its keys
  itself (``Memory.rotates_itself``) gets ``q, k`` unrotated and a
  :class:`~course_lib.memory.base.Rotation` over the plan's rotary tables, as in ``models.py``;
* on a CPU, GELU on torch's native kernel: oneDNN's costs ~10 us per call whatever the size
  (more than the whole activation of one token), so :class:`native_cpu_kernels` switches
  oneDNN off for the step and gives the switch back.

A :class:`DecodePlan` holds what every step needs, looked up once: :func:`prepare` builds it
and rebuilds it when the model changed (an optimizer step, ``load_state_dict``, ``.to()``, a
parameter or submodule assigned anywhere in the model; not a write into ``p.data``, which
bypasses the version counter: change parameters in place under ``torch.no_grad()`` instead).
Each call (every one-token ``forward``, once per ``generate``) compares what the plan was
made from (:class:`Sources`: each module's parameters and submodules by identity, each
parameter's storage and version counter) with the model, in a few microseconds; it watches only
that model: importing the course installs no hook into ``nn.Module`` and turns no global
switch. ``MemoryLM.forward`` takes this path
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
from operator import attrgetter, is_

import torch
import torch.nn.functional as F
from torch import nn

from .attention import repeat_kv
from .memory.base import Rotation

__all__ = ["DecodePlan", "LayerPlan", "Sources", "applies", "prepare", "step", "native_cpu_kernels"]


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
    alpha_t: torch.Tensor | None = None  # [C, H]: W_alpha^T of a memory with learns_alpha, else None
    alpha_b: torch.Tensor | None = None  # [H]: its bias b


_data_ptr, _version = torch.Tensor.data_ptr, attrgetter("_version")


@dataclass(frozen=True, slots=True)
class Sources:
    """What a plan was made from, in the form :func:`_current` compares in a few C-level passes.

    Local to one model: its own modules' dictionaries, nothing installed into ``nn.Module``.
    The dictionaries are held, not the modules, so the model itself stays collectable (plans
    are kept by a weak reference to it)."""

    module_dicts: list  # every module's ``_modules`` dict (the live one) ...
    module_copies: list  # ... and a copy of it, made with the plan
    param_dicts: tuple  # every module's ``_parameters`` dict ...
    param_counts: list  # ... and its length then
    owners: tuple  # one entry per (module, parameter name), tied weights in each of their modules:
    names: tuple  # the ``_parameters`` dict, the name, ...
    held: tuple  # ... and the parameter (or None) it held
    params: tuple  # the parameters, each once ...
    data_ptrs: list  # ... their storage's address ...
    versions: list  # ... and version counter then
    keep: tuple  # ``p.detach()``: keeps each old storage alive, so no new tensor can take its address

    @classmethod
    def of(cls, model: nn.Module) -> Sources:
        modules = list(model.modules())
        owners = [(m._parameters, name, p) for m in modules for name, p in m._parameters.items()]
        params = tuple(model.parameters())
        return cls(
            module_dicts=[m._modules for m in modules], module_copies=[dict(m._modules) for m in modules],
            param_dicts=tuple(m._parameters for m in modules), param_counts=[len(m._parameters) for m in modules],
            owners=tuple(d for d, _, _ in owners), names=tuple(n for _, n, _ in owners),
            held=tuple(p for _, _, p in owners), params=params, data_ptrs=[p.data_ptr() for p in params],
            versions=[p._version for p in params], keep=tuple(p.detach() for p in params),
        )


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
    sources: Sources  # what the plan was made from: checked by _current before every step


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


_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its DecodePlan


def applies(model) -> bool:
    """The fast step computes ``model``'s forward when no autograd graph is recorded and no dropout is active."""
    return not torch.is_grad_enabled() and not (model.training and model.blocks[0].drop.p > 0)


def _current(plan: DecodePlan) -> bool:
    """Nothing the plan was made from changed (see :class:`Sources`): every module of the
    model holds the same submodules and the same parameter objects as then, each on the same
    storage at the same version counter. Only this model's own modules are looked at, each
    comparison iterated in C: a few microseconds for the benchmark's model of 54 modules.
    Parameters compare by ``is``: a tensor's ``==`` compares values."""
    w = plan.sources
    return (w.module_dicts == w.module_copies  # dicts of modules compare by identity (no nn.Module.__eq__)
            and list(map(len, w.param_dicts)) == w.param_counts  # no parameter added or removed
            and all(map(is_, map(dict.get, w.owners, w.names), w.held))  # none reassigned (`is`, not ==)
            and list(map(_data_ptr, w.params)) == w.data_ptrs  # same storage (.to(), .float(), p.data = ...)
            and list(map(_version, w.params)) == w.versions)  # no in-place update (optimizer, load_state_dict)


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
                alpha_t=None if attn.w_alpha is None else t(attn.w_alpha.weight),
                alpha_b=None if attn.w_alpha is None else attn.w_alpha.bias,
            ))
        head_t = t(model.head.weight)
    cos, sin = model.rotary.rolled_tables(end, head_t.device, head_t.dtype)
    return DecodePlan(
        layers=tuple(layers), embed=model.embed.weight, ln_f=(model.ln_f.weight, model.ln_f.bias, model.ln_f.eps),
        head_t=head_t, head_b=model.head.bias, cos=cos, sin=sin, end=cos.shape[0],
        cpu=head_t.device.type == "cpu", sources=Sources.of(model),
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
        if lp.beta_t is None and lp.alpha_t is None and not lp.rotates_itself:
            o, mem_state = lp.attend(q, k, v, mem_state)  # [B, H, 1, d_h]
        else:
            kwargs = {"rotary": Rotation(plan.cos, plan.sin, pos)} if lp.rotates_itself else {}
            if lp.beta_t is not None:  # beta_t = sigma(W_beta x_t) [B, H, 1]: one new tensor, as a fixed beta's fill
                kwargs["beta"] = torch.addmm(lp.beta_b, xn, lp.beta_t).sigmoid_().view(b, -1, 1)
            if lp.alpha_t is not None:  # alpha_t = exp(-softplus(W_alpha x_t + b)) [B, H, 1]
                kwargs["alpha"] = F.softplus(torch.addmm(lp.alpha_b, xn, lp.alpha_t)).neg_().exp_().view(b, -1, 1)
            o, mem_state = lp.attend(q, k, v, mem_state, **kwargs)
        new_layers.append(mem_state)
        x = torch.addmm(x, o.reshape(b, h * d), lp.out_t)  # x + W_o o
        a = torch.layer_norm(x, shape, *lp.ln2)
        x = x + torch.addmm(lp.mlp_out_b, lp.act(torch.addmm(lp.mlp_in_b, a, lp.mlp_in_t)), lp.mlp_out_t)
    x = torch.layer_norm(x, shape, *plan.ln_f)
    logits = torch.mm(x, plan.head_t) if plan.head_b is None else torch.addmm(plan.head_b, x, plan.head_t)
    return logits.view(b, 1, -1), type(state)(pos + 1, state.batch, new_layers)
