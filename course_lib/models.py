r"""``MemoryLM``: a small decoder-only transformer whose every layer attends through a memory.

Each layer ``l`` computes ``q_i, k_i, v_i`` from its input, rotates ``q_i`` and ``k_i`` by
their *absolute* position ``i`` (rotary embeddings, so cached keys never need recomputing;
not for memories read by content alone, ``Memory.uses_rotary = False``: linear, delta, decay and
gated delta; a
memory that ``rotates_itself`` gets them unrotated, with the means to rotate them),
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
import math
import numbers
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import decode
from ._checks import check_positive_int, check_tensor, describe
from .attention import repeat_kv
from .memory import FullMemory, Memory
from .memory.base import Rotation

__all__ = ["MemoryLM", "LMState", "Rotary", "apply_rotary", "apply_rotary_rolled"]


@dataclass
class LMState:
    """Where a :class:`MemoryLM` stands: ``pos`` tokens seen, one memory state per layer.

    ``extra_losses``: the training losses the forward that returned this state computed
    besides the logits, by module name (``"blocks.0.attn.memory.reconstruction"``: a learned
    compressor's attention-reconstruction loss); :func:`course_lib.train.train` adds them to
    the cross-entropy. They hold an autograd graph and are not part of the memory.
    """

    pos: int
    batch: int
    layers: list = field(default_factory=list)
    extra_losses: dict = field(default_factory=dict, repr=False, metadata={"extra_loss": True})

    def nbytes(self, model: MemoryLM) -> int:
        return model.state_nbytes(self)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs ``(x_j, x_{j+D/2})`` by angle ``pos * theta_j``: ``x*cos + rotate_half(x)*sin``."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def apply_rotary_rolled(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
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
        """``(cos, signed_sin)`` ``[T_max, D]`` for :func:`apply_rotary_rolled`."""
        self.tables(end, device, dtype)
        return self._cos, self._signed_sin

    def rotate(self, x, start: int):
        """``x [..., T, D]`` at positions ``start .. start + T - 1``, rotated."""
        t = x.shape[-2]
        cos, sin = self.rolled_tables(start + t, x.device, x.dtype)
        return apply_rotary_rolled(x, cos[start:start + t], sin[start:start + t])


class MemoryAttention(nn.Module):
    """Multi-head attention through a memory: ``Att(q_i, Mem)`` with ``Mem`` in the state.

    For a memory with ``learns_beta`` (``DeltaMemory(beta="learned")``) the layer also owns
    ``w_beta`` = ``W_beta``, a ``Linear(d_model, H)``, and hands the memory DeltaNet's write
    strength ``beta_t = sigma(W_beta x_t)`` ``[B, H, T]`` in ``(0, 1)``, from the same normalised
    input ``x_t`` as ``q_t, k_t, v_t``: the write is then
    ``S_t = S_{t-1} + beta_t k^_t^T (v_t - k^_t S_{t-1})``.

    For a memory with ``learns_alpha`` (``DecayMemory(alpha="learned")``, ``GatedDeltaMemory(alpha=
    "learned")``) the layer owns ``w_alpha`` = ``W_alpha, b``, a ``Linear(d_model, H)``, and hands the
    memory the decay ``alpha_t = exp(-softplus(W_alpha x_t + b))`` ``[B, H, T]`` in ``(0, 1)``, as
    Mamba-2 and Gated DeltaNet parameterise it (``-log alpha_t = softplus(.)``: a positive step, the
    decay never above 1). ``b`` starts so that each head forgets at its own rate, ``-log alpha`` from
    ``1e-3`` to ``1e-1`` geometrically over the heads (half-lives of about 700 to 7 tokens; Mamba-2
    draws its step sizes from the same range), ``W_alpha`` as every weight, ``N(0, 0.02^2)``.

    Positions: ``q, k`` are rotated by their absolute positions for a memory with
    ``uses_rotary``, left as they are for one read by content (linear, delta), and for a memory
    that ``rotates_itself`` (StreamingLLM's positions within the cache, a ``MultiMemory`` whose
    parts differ) left unrotated and handed over with a :class:`~course_lib.memory.base.Rotation`
    (``rotary=``) that rotates by any position.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, memory: Memory):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, (n_heads + 2 * n_kv_heads) * self.head_dim, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.memory = memory
        # memories that cannot take fewer key/value heads see them repeated per query head
        self.mem_heads = n_kv_heads if memory.supports_gqa else n_heads
        # a memory that learns its write strength (memory.learns_beta: DeltaMemory(beta="learned"))
        # gets beta_t = sigma(W_beta x_t) from here, one per memory head and token (DeltaNet);
        # MemoryLM's init gives W_beta N(0, 0.02^2) and a zero bias, so beta starts near 0.5
        self.w_beta = nn.Linear(d_model, self.mem_heads) if memory.learns_beta else None
        # and one that learns its decay (memory.learns_alpha) gets alpha_t = exp(-softplus(W_alpha x_t + b))
        self.w_alpha = nn.Linear(d_model, self.mem_heads) if memory.learns_alpha else None
        # a memory whose parameters depend on the heads and head dim it is handed (lazy ones: a learned
        # compressor's maps, LatentMemory's projections) gets them made now, for this layer's sizes, so
        # that they exist (and are drawn) when the model is built, before any optimizer or first forward
        if any(nn.parameter.is_lazy(p) for p in memory.parameters()):
            memory.init_state(1, self.mem_heads, self.head_dim)

    def reset_decay(self) -> None:
        """``b`` of ``W_alpha``: ``-log alpha`` from ``1e-3`` to ``1e-1`` over the heads, ``b = softplus^-1(.)``
        (called by ``MemoryLM``'s initialisation, after the bias was zeroed with every other one)."""
        if self.w_alpha is not None:
            rate = torch.logspace(-3, -1, self.mem_heads, dtype=torch.float64)  # -log alpha at x = 0
            with torch.no_grad():
                self.w_alpha.bias.copy_(torch.log(torch.expm1(rate)))

    def forward(self, x, rotary: Rotary, pos: int, mem_state):
        b, t, _ = x.shape
        h, g, d = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.qkv(x).view(b, t, h + 2 * g, d).transpose(1, 2)  # [B, h+2g, T, d_h]
        qk, v = qkv.split([h + g, g], dim=1)
        kwargs = {}
        if self.memory.rotates_itself:  # unrotated q, k and the means to rotate them (Memory.rotates_itself)
            kwargs["rotary"] = Rotation(*rotary.rolled_tables(pos + t, x.device, qk.dtype), pos)
        elif self.memory.uses_rotary:
            qk = rotary.rotate(qk, pos)  # q and k rotated together: half the ops
        q, k = qk.split([h, g], dim=1)
        if self.mem_heads != g:
            k, v = repeat_kv(k, h // g), repeat_kv(v, h // g)
        if self.w_beta is not None:
            kwargs["beta"] = torch.sigmoid(self.w_beta(x)).transpose(1, 2)  # [B, H, T]: beta_t = sigma(W_beta x_t)
        if self.w_alpha is not None:  # [B, H, T]: alpha_t = exp(-softplus(W_alpha x_t + b))
            kwargs["alpha"] = torch.exp(-F.softplus(self.w_alpha(x))).transpose(1, 2)
        out, mem_state = self.memory(q, k, v, mem_state, **kwargs)  # [B, H, T, d_h]
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

    One token without autograd (``generate``, or a hand-written loop under ``torch.no_grad()``)
    runs the same function through :mod:`course_lib.decode`, in fewer ops.

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
        d_ff = 4 * d_model if d_ff is None else check_positive_int("d_ff", d_ff)
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

    def reset_linear_default(self) -> None:
        """PyTorch's default (width-aware) initialisation for every ``nn.Linear`` (the recall experiments'
        and the capstone's start, see :mod:`course_lib.bench.recall`), then each learned decay's bias where
        :meth:`MemoryAttention.reset_decay` puts it: ``reset_parameters`` draws that bias at random too,
        which starts ``alpha`` near 0.5, a half-life of one token. Draws from torch's global generator."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()
        for module in self.modules():
            if isinstance(module, MemoryAttention):
                module.reset_decay()

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, MemoryAttention):  # after its W_alpha (apply visits children first)
            module.reset_decay()

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

    def peak_nbytes(self, state: LMState, segment_len: int) -> int:
        """Peak working memory of all layers reading in segments of ``segment_len`` tokens
        (:meth:`Memory.peak_nbytes`: the carried state plus the segment a memory attends to)."""
        return sum(m.peak_nbytes(s, segment_len) for m, s in zip(self.memories, state.layers))

    def _check_input(self, idx, state):
        check_tensor("idx", idx, ndim=2)
        if idx.dtype not in (torch.long, torch.int32, torch.int64):
            raise TypeError(f"idx must hold token ids (torch.long), got {describe(idx)}")
        if idx.shape[1] < 1:
            raise ValueError(f"idx must hold at least one token per row, got shape {tuple(idx.shape)}")
        if idx.device != self.embed.weight.device:
            raise ValueError(f"idx is on {idx.device} but the model is on {self.embed.weight.device}; use idx.to(...)")
        lowest, highest = (int(x) for x in torch.aminmax(idx))
        if lowest < 0 or highest >= self.vocab_size:
            raise ValueError(
                f"idx holds the token id {lowest if lowest < 0 else highest}, but this model's vocabulary has "
                f"vocab_size={self.vocab_size} ids: expected 0 <= id <= {self.vocab_size - 1}"
            )
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
        if idx.shape[1] == 1 and decode.applies(self):  # the same numbers in fewer ops
            return decode.step(decode.prepare(self, state.pos + 1), idx, state)
        x = self.embed(idx)  # [B, T, C]
        new_layers = []
        for block, mem_state in zip(self.blocks, state.layers):
            x, mem_state = block(x, self.rotary, state.pos, mem_state)
            new_layers.append(mem_state)
        logits = self.head(self.ln_f(x))  # [B, T, vocab]
        extra_losses = {f"blocks.{i}.attn.memory.{name}": loss
                        for i, (memory, mem_state) in enumerate(zip(self.memories, new_layers))
                        for name, loss in memory.extra_losses(mem_state).items()}
        return logits, LMState(state.pos + idx.shape[1], state.batch, new_layers, extra_losses)

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
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
            raise TypeError(f"temperature must be a number >= 0, got {describe(temperature)}")
        if not math.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
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
        # what outlives this call is made here, outside inference mode: the rotary tables for
        # every position to come, and the decoding plan (checked once for the whole run)
        self.rotary.tables(state.pos + total, idx.device, self.embed.weight.dtype)
        plan = decode.prepare(self, state.pos + total) if decode.applies(self) else None
        # the states in between are thrown away unless returned: skip autograd's bookkeeping
        with contextlib.nullcontext() if return_state else torch.inference_mode():
            logits, state = self(idx, state)
            for step in range(max_new_tokens):
                nxt = self._sample(logits[:, -1], temperature, top_k, generator)  # [B, 1]
                out[:, idx.shape[1] + step] = nxt[:, 0]
                if step + 1 < max_new_tokens or return_state:
                    logits, state = self(nxt, state) if plan is None else decode.step(plan, nxt, state)
        return (out, state) if return_state else out

    @staticmethod
    def _sample(logits, temperature, top_k, generator):
        if temperature == 0:
            return logits.argmax(dim=-1, keepdim=True)
        logits = logits / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
