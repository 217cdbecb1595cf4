r"""``MemoryLM``: a small decoder-only transformer whose every layer attends through a memory.

Each layer ``l`` computes ``q_i, k_i, v_i`` from its input, rotates ``q_i`` and ``k_i`` by
their *absolute* position ``i`` (rotary embeddings, so cached keys never need recomputing;
not for memories read by content alone, ``Memory.uses_rotary = False``: linear and delta),
and returns ``Att(q_i, Mem_l)`` where ``Mem_l`` is that layer's own copy of the memory::

    h   = x + W_o Att(q_i, Mem_l)         Mem_l = Update(S_kv, Mem_l_pre)
    out = h + MLP(LayerNorm(h))

The model's state is the token position reached so far plus one memory state per layer,
so a long text can be processed chunk by chunk (or token by token) with exactly the same
result as in one pass, for every memory whose semantics do not depend on the chunking.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_positive_int, check_tensor, describe
from .attention import repeat_kv
from .memory import FullMemory, Memory

__all__ = ["MemoryLM", "LMState", "Rotary", "apply_rotary"]


@dataclass
class LMState:
    """Where a :class:`MemoryLM` stands: ``pos`` tokens seen, one memory state per layer."""

    pos: int
    batch: int
    layers: list = field(default_factory=list)

    def nbytes(self, model: MemoryLM) -> int:
        return model.state_nbytes(self)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs ``(x_j, x_{j+D/2})`` by angle ``pos * theta_j``: ``x*cos + rotate_half(x)*sin``."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def _apply_rotary_rolled(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """:func:`apply_rotary` in fewer ops: ``rotate_half(x) * sin == roll(x, D/2) * signed_sin``
    with ``signed_sin = (-sin_{:D/2}, sin_{D/2:})`` (negation is exact, so the numbers are the same)."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


class Rotary(nn.Module):
    """cos/sin tables for rotary position embeddings, grown on demand (positions are unbounded)."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {head_dim}")
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._cos = self._sin = self._signed_sin = None

    def tables(self, end: int, device, dtype):
        if self._cos is None or self._cos.shape[0] < end or self._cos.device != device or self._cos.dtype != dtype:
            size = 256
            while size < end:
                size *= 2
            with torch.inference_mode(False):  # the tables outlive this call: keep them usable by autograd
                self._make_tables(size, device, dtype)
        return self._cos, self._sin

    def _make_tables(self, size: int, device, dtype) -> None:
        t = torch.arange(size, dtype=torch.float64, device=self.inv_freq.device)
        angles = torch.outer(t, self.inv_freq)  # [T, D/2]
        angles = torch.cat([angles, angles], dim=-1)  # [T, D]
        self._cos = angles.cos().to(device=device, dtype=dtype)
        self._sin = angles.sin().to(device=device, dtype=dtype)
        half = self._sin.shape[-1] // 2
        self._signed_sin = torch.cat([-self._sin[:, :half], self._sin[:, half:]], dim=-1)  # (-sin, sin)

    def rolled_tables(self, end: int, device, dtype):
        """``(cos, signed_sin)`` ``[T_max, D]`` for :func:`_apply_rotary_rolled`."""
        self.tables(end, device, dtype)
        return self._cos, self._signed_sin

    def forward(self, q, k, start: int):
        return self.rotate(q, start), self.rotate(k, start)

    def rotate(self, x, start: int):
        """``x [..., T, D]`` at positions ``start .. start + T - 1``, rotated."""
        t = x.shape[-2]
        cos, sin = self.rolled_tables(start + t, x.device, x.dtype)
        return _apply_rotary_rolled(x, cos[start:start + t], sin[start:start + t])


def _functional(act: nn.Module):
    """The activation as a plain function (skips the module call in the decoding step)."""
    if type(act) is nn.GELU:
        return partial(F.gelu, approximate=act.approximate)
    return act


class MemoryAttention(nn.Module):
    """Multi-head attention through a memory: ``Att(q_i, Mem)`` with ``Mem`` in the state."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, memory: Memory):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, (n_heads + 2 * n_kv_heads) * self.head_dim, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.memory = memory
        # memories that cannot take fewer key/value heads see them repeated per query head
        self.mem_heads = n_kv_heads if memory.supports_gqa else n_heads

    def forward(self, x, rotary: Rotary, pos: int, mem_state):
        b, t, _ = x.shape
        h, g, d = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.qkv(x).view(b, t, h + 2 * g, d).transpose(1, 2)  # [B, h+2g, T, d_h]
        qk, v = qkv.split([h + g, g], dim=1)
        if self.memory.uses_rotary:
            qk = rotary.rotate(qk, pos)  # q and k rotated together: half the ops
        q, k = qk.split([h, g], dim=1)
        if self.mem_heads != g:
            k, v = repeat_kv(k, h // g), repeat_kv(v, h // g)
        out, mem_state = self.memory(q, k, v, mem_state)  # [B, H, T, d_h]
        return self.out(out.transpose(1, 2).reshape(b, t, h * d)), mem_state


class Block(nn.Module):
    def __init__(self, d_model, n_heads, n_kv_heads, d_ff, memory, dropout):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = MemoryAttention(d_model, n_heads, n_kv_heads, memory)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, rotary, pos, mem_state):
        a, mem_state = self.attn(self.ln1(x), rotary, pos, mem_state)
        x = x + self.drop(a)
        x = x + self.drop(self.mlp(self.ln2(x)))
        return x, mem_state


class MemoryLM(nn.Module):
    """A decoder-only language model with a pluggable memory in every layer.

    Args:
        vocab_size, d_model, n_layers, n_heads: the usual sizes (``tau = n_heads`` heads of
            ``d_h = d_model / n_heads``).
        memory: a :class:`~course_lib.memory.Memory`; every layer gets its own deep copy.
        n_kv_heads: key/value heads ``n_g`` (GQA); defaults to ``n_heads`` (MHA).
        d_ff: MLP width (default ``4 * d_model``); dropout; rope_base.

    >>> lm = MemoryLM(vocab_size=16, d_model=32, n_layers=2, n_heads=4)
    >>> logits, state = lm(torch.zeros(1, 5, dtype=torch.long))
    >>> tuple(logits.shape), state.pos
    ((1, 5, 16), 5)
    """

    def __init__(self, vocab_size, d_model, n_layers, n_heads, memory: Memory | None = None, *,
                 n_kv_heads=None, d_ff=None, dropout=0.0, rope_base=10000.0, tie_weights=True):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("d_model", d_model),
                            ("n_layers", n_layers), ("n_heads", n_heads)):
            check_positive_int(name, value)
        n_kv_heads = n_heads if n_kv_heads is None else check_positive_int("n_kv_heads", n_kv_heads)
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={n_kv_heads}")
        memory = FullMemory() if memory is None else memory
        if not isinstance(memory, Memory):
            raise TypeError(f"memory must be a course_lib.memory.Memory, got {describe(memory)}")
        self.vocab_size, self.d_model, self.n_layers = vocab_size, d_model, n_layers
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, d_model // n_heads
        d_ff = 4 * d_model if d_ff is None else d_ff
        self.embed = nn.Embedding(vocab_size, d_model)
        self.rotary = Rotary(self.head_dim, rope_base)
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, n_kv_heads, d_ff, copy.deepcopy(memory), dropout) for _ in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        if tie_weights:
            self.head.weight = self.embed.weight
        self.apply(self._init)

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    @property
    def memories(self) -> list[Memory]:
        return [block.attn.memory for block in self.blocks]

    def init_state(self, batch: int = 1) -> LMState:
        """An empty state: position 0 and an empty memory in every layer."""
        check_positive_int("batch", batch)
        p = self.embed.weight
        layers = [
            block.attn.memory.init_state(batch, block.attn.mem_heads, self.head_dim, device=p.device, dtype=p.dtype)
            for block in self.blocks
        ]
        return LMState(0, batch, layers)

    def state_nbytes(self, state: LMState) -> int:
        """Bytes held by all layers' memories."""
        return sum(m.nbytes(s) for m, s in zip(self.memories, state.layers))

    def _check_input(self, idx, state):
        check_tensor("idx", idx, ndim=2)
        if idx.dtype not in (torch.long, torch.int32, torch.int64):
            raise TypeError(f"idx must hold token ids (torch.long), got {describe(idx)}")
        if idx.shape[1] < 1:
            raise ValueError(f"idx must hold at least one token per row, got shape {tuple(idx.shape)}")
        if idx.device != self.embed.weight.device:
            raise ValueError(f"idx is on {idx.device} but the model is on {self.embed.weight.device}; use idx.to(...)")
        if state is not None:
            if not isinstance(state, LMState):
                raise TypeError(f"state must be an LMState from init_state() or forward(), got {describe(state)}")
            if state.batch != idx.shape[0]:
                raise ValueError(
                    f"state was made for batch {state.batch} but idx has batch {idx.shape[0]}; "
                    f"use model.init_state({idx.shape[0]})"
                )
            if len(state.layers) != self.n_layers:
                raise ValueError(f"state has {len(state.layers)} layer states, expected {self.n_layers}")

    def forward(self, idx: torch.Tensor, state: LMState | None = None):
        """``idx [B, T]`` token ids -> ``(logits [B, T, vocab], new_state)``."""
        self._check_input(idx, state)
        if state is None:
            state = self.init_state(idx.shape[0])
        if idx.shape[1] == 1 and self._can_step():
            return self._step(idx, state)
        x = self.embed(idx)
        new_layers = []
        for block, mem_state in zip(self.blocks, state.layers):
            x, mem_state = block(x, self.rotary, state.pos, mem_state)
            new_layers.append(mem_state)
        logits = self.head(self.ln_f(x))
        return logits, LMState(state.pos + idx.shape[1], state.batch, new_layers)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=0.0, state=None, *, top_k=None, generator=None,
                 return_state=False):
        """Continue ``idx [B, T]`` by ``max_new_tokens`` tokens; returns ``[B, T + max_new_tokens]``.

        ``temperature=0`` is greedy decoding; otherwise sample from ``softmax(logits / T)``,
        optionally restricted to the ``top_k`` most likely tokens. ``state`` continues from an
        earlier call (then ``idx`` holds only the new tokens); ``return_state=True`` returns
        ``(tokens, state)`` with the state after the last generated token, ready to continue.
        """
        check_positive_int("max_new_tokens", max_new_tokens, minimum=0)
        if not isinstance(temperature, (int, float)) or temperature < 0:
            raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
        if top_k is not None:
            check_positive_int("top_k", top_k)
        self._check_input(idx, state)
        if state is None:
            state = self.init_state(idx.shape[0])
        total = idx.shape[1] + max_new_tokens
        state = LMState(state.pos, state.batch,
                        [m.reserve(s, total) for m, s in zip(self.memories, state.layers)])
        out = torch.empty(idx.shape[0], total, dtype=idx.dtype, device=idx.device)
        out[:, : idx.shape[1]] = idx
        # everything that outlives this call is made here, outside inference mode: the rotary
        # tables for every position to come and the decoding weights
        self.rotary.tables(state.pos + total, idx.device, self.embed.weight.dtype)
        step_fn = self
        if self._can_step():  # the one-token fast path, set up once for the whole run
            step_fn = partial(self._step, plan=self._step_plan(state.pos + total))
        # the states in between are thrown away unless returned: skip autograd's bookkeeping
        with contextlib.nullcontext() if return_state else torch.inference_mode():
            logits, state = self(idx, state)
            for step in range(max_new_tokens):
                nxt = self._sample(logits[:, -1], temperature, top_k, generator)  # [B, 1]
                out[:, idx.shape[1] + step] = nxt[:, 0]
                if step + 1 < max_new_tokens or return_state:
                    logits, state = step_fn(nxt, state)
        return (out, state) if return_state else out

    # ---- the one-token decoding step: same numbers, fewer dispatched ops -------------------

    def _can_step(self) -> bool:
        """The fast path needs no autograd graph and no active dropout."""
        return not torch.is_grad_enabled() and not (self.training and self.blocks[0].drop.p > 0)

    def _step_weights(self):
        """Weights laid out for one-token steps, rebuilt whenever a parameter changes.

        A matrix-vector product ``x W^T`` with ``W [out, in]`` reads ``W`` column-wise; with
        a transposed copy ``W^T [in, out]`` it reads rows, several times faster on a CPU once
        the weights no longer fit the cache (that is also how GPT-2 stores its weights).
        """
        params = list(self.parameters())
        cache = getattr(self, "_step_cache", None)
        if cache is not None and len(cache[0]) == len(params) and all(
                p is old and p.data_ptr() == ref.data_ptr() and p._version == version
                for p, (old, ref, version) in zip(params, cache[0])):
            return cache[1]
        with torch.no_grad(), torch.inference_mode(False):
            t = lambda w: w.detach().t().contiguous()  # noqa: E731
            layers = []
            for block in self.blocks:
                attn, mlp_in, mlp_out = block.attn, block.mlp[0], block.mlp[2]
                layers.append((attn.n_heads, attn.n_kv_heads, attn.head_dim, attn.mem_heads != attn.n_kv_heads,
                               (self.d_model,), block.ln1.weight, block.ln1.bias, block.ln1.eps,
                               t(attn.qkv.weight), t(attn.out.weight), block.ln2.weight, block.ln2.bias,
                               block.ln2.eps, t(mlp_in.weight), mlp_in.bias, _functional(block.mlp[1]),
                               t(mlp_out.weight), mlp_out.bias))
            weights = (layers, t(self.head.weight), self.head.bias)
        # the parameters and their storages stay referenced, so neither can come back at the same
        # address: same object + same address + same version counter = same numbers
        self._step_cache = ([(p, p.detach(), p._version) for p in params], weights)
        return weights

    def _step_plan(self, end: int):
        """What one-token steps up to position ``end`` need, looked up once: the decoding
        weights, each layer's attention function, the rotary tables."""
        layers, head_t, head_b = self._step_weights()
        attends = [(getattr(b.attn.memory, "forward_unchecked", b.attn.memory), b.attn.memory.uses_rotary)
                   for b in self.blocks]
        cos, sin = self.rotary.rolled_tables(end, head_t.device, head_t.dtype)
        ln_f = (self.ln_f.weight, self.ln_f.bias, self.ln_f.eps)
        return list(zip(layers, attends)), head_t, head_b, self.embed.weight, ln_f, cos, sin

    def _step(self, idx: torch.Tensor, state: LMState, plan=None):
        """:meth:`forward` for one token ``idx [B, 1]`` (no grad), without per-call checks.

        The blocks' computation written as direct functional calls on transposed weights;
        memories that offer ``forward_unchecked`` (``forward`` minus the argument checks)
        are called through it. ``plan`` (from :meth:`_step_plan`) saves the look-ups in a loop.
        """
        plan = self._step_plan(state.pos + 1) if plan is None else plan
        # on a CPU, oneDNN's GELU costs ~10 us per call whatever the size (more than the whole
        # activation of one token); the native kernel computes the same function far cheaper
        cpu = idx.device.type == "cpu"
        if cpu:
            onednn = torch._C._get_mkldnn_enabled()
            torch._C._set_mkldnn_enabled(False)
        try:
            return self._step_layers(idx, state, plan)
        finally:
            if cpu:
                torch._C._set_mkldnn_enabled(onednn)

    @staticmethod
    def _step_layers(idx, state, plan):
        """The body of :meth:`_step`."""
        layers, head_t, head_b, embed_w, ln_f, cos, sin = plan
        b, pos = idx.shape[0], state.pos
        cos, sin = cos[pos], sin[pos]  # [D]: the rotary rows of this position
        x = torch.embedding(embed_w, idx.view(b))  # [B, C]: one token per row, kept 2-D throughout
        new_layers = []
        for ((h, g, d, repeat, shape, ln1_w, ln1_b, ln1_eps, qkv_t, out_t, ln2_w, ln2_b, ln2_eps,
              w1_t, b1, act, w2_t, b2), (attend, rotate)), mem_state in zip(layers, state.layers):
            qkv = torch.mm(torch.layer_norm(x, shape, ln1_w, ln1_b, ln1_eps), qkv_t)  # [B, (h+2g) d_h]
            qk, v = qkv.view(b, h + 2 * g, 1, d).split((h + g, g), dim=1)  # [B, heads, 1, d_h]: T = 1
            if rotate:
                qk = _apply_rotary_rolled(qk, cos, sin)
            q, k = qk.split((h, g), dim=1)
            if repeat:
                k, v = repeat_kv(k, h // g), repeat_kv(v, h // g)
            o, mem_state = attend(q, k, v, mem_state)  # [B, H, 1, d_h]
            new_layers.append(mem_state)
            x = torch.addmm(x, o.reshape(b, h * d), out_t)  # x + W_o o, the residual added by the GEMM
            a = torch.layer_norm(x, shape, ln2_w, ln2_b, ln2_eps)  # [B, C]
            x = x + torch.addmm(b2, act(torch.addmm(b1, a, w1_t)), w2_t)
        x = torch.layer_norm(x, shape, *ln_f)
        logits = torch.mm(x, head_t) if head_b is None else torch.addmm(head_b, x, head_t)
        logits = logits.view(b, 1, -1)  # [B, 1, vocab]
        return logits, LMState(pos + 1, state.batch, new_layers)

    @staticmethod
    def _sample(logits, temperature, top_k, generator):
        if temperature == 0:
            return logits.argmax(dim=-1, keepdim=True)
        logits = logits / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
