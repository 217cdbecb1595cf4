r"""``LatentMemory``: multi-head latent attention's cache (DeepSeek-V2, 2024), one low-rank latent per token.

A KV cache keeps ``2 n_g d_h`` numbers per token and layer. Multi-head latent attention (MLA) keeps
``r`` of them, a latent ``c_t`` shared by every head, and decodes each head's key and value from it
with learned up-projections::

    c_t = W_down [k_t; v_t]             (r numbers, all heads together: the cache)
    k_{t,h} = W_uk,h c_t                v_{t,h} = W_uv,h c_t

and attends with a plain causal softmax over the decoded pairs. The cache still grows by one latent
per token (``fixed_size = False``), ``r / (2 n_g d_h)`` as fast as the full cache.

Where the projections sit. ``MemoryLM`` hands every memory the block's projected ``k_t = W_k x_t`` and
``v_t = W_v x_t`` (one key/value head per query head: ``supports_gqa = False``); this memory owns
``W_down [r, H (d_h + d_v)]`` applied to them, so ``c_t = W_down [W_k; W_v] x_t``: a composition of
linear maps, the same function class as MLA's ``c_t = W_dkv x_t`` (of rank at most
``min(r, H (d_h + d_v))``). That keeps the memory protocol as it is (no memory is handed ``x``), keeps
every fact about the latent in this file, and lets the same memory run outside a model (tests, the
capstone's byte count). The extra ``H (d_h + d_v) x d_model`` map costs parameters, not cache.

Positions (``rope_dim``; ``MemoryLM`` hands this memory unrotated ``q, k``: ``uses_rotary = False``; it
rotates by the absolute position it counts itself, ``state.length`` onward, with ``rope_base`` as
``MemoryLM``'s rotary, pairs ``(x_j, x_{j + D/2})``):

* ``rope_dim = d_R > 0``: DeepSeek-V2's decoupled rotary key. Rotary keys cannot be folded into
  ``W_uk`` (the rotation depends on the position), so the decoded keys carry no position and a small
  rotary part is added: ``k^R_t = RoPE_t(W_kr k_t)`` (``d_R`` numbers shared by all heads, cached
  beside ``c_t``) and per head ``q^R_{i,h} = RoPE_i(W_qr,h q_{i,h})``; the score is
  ``(q_{i,h} . k_{j,h} + q^R_{i,h} . k^R_j) / sqrt(d_h + d_R)``. Because the content keys are not
  rotated, ``W_uk`` is absorbed into the query: ``q_{i,h} . W_uk,h c_j = (W_uk,h^T q_{i,h}) . c_j``, and
  ``W_uv`` applied after the weighted sum of latents, so attention reads the cache of ``c`` and
  ``k^R`` directly, one key/value head of ``r + d_R`` / ``r`` numbers shared by every query head (one
  fused softmax, as multi-query attention), never decoding a key. The cache holds ``r + d_R`` per token.
* ``rope_dim = 0``: a documented simplification: the keys are decoded, then rotated by their
  positions, ``k_{j,h} = RoPE_j(W_uk,h c_j)``, queries ``RoPE_i(q_{i,h})``, score ``/ sqrt(d_h)``.
  Exact and as positional as the full cache's keys, but nothing is absorbed: each read decodes every
  cached latent (``2 H d_h r`` FLOPs per token and head pair), the cost MLA's decoupling avoids.

Both read a cache of latents at attention time, so token-by-token decoding equals one chunk forward.
The plain rule is :func:`course_lib.memory.reference.latent_reference`.

Parameters: ``W_down``, ``W_uk``, ``W_uv`` (and ``W_kr``, ``W_qr``) depend on ``H``, ``d_h``, ``d_v``: pass
``n_heads`` and ``head_dim`` to make them at once, or leave them ``None`` and they are made for the first
``init_state`` (``MemoryLM`` makes every lazy parameter when it builds a layer, for the heads and head
dim that layer hands its memory). They start as PyTorch's default ``nn.Linear`` draw, uniform in
``+-1/sqrt(fan_in)``, from torch's global generator. Stored latents are detached, as every memory's state.

Storage as :class:`~course_lib.memory.FullMemory`: a preallocated buffer written in place (capacity
doubles), a state is a view ``buffer[:length]``, continuing from an older state copies first, so every
kept state stays valid; ``reserve`` makes room so decoding allocates nothing.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_positive_int, describe
from ..attention import causal_mask
from ..kv_cache import latent_cache_bytes
from ._state import StateMeta, check_input, new_meta
from .base import Memory

__all__ = ["LatentMemory", "LatentState", "LatentBuffer", "rope_tables", "rotate"]


def rope_tables(positions: torch.Tensor, dim: int, base: float, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` ``[P, dim]`` at ``positions`` (computed in float64, then cast), for :func:`rotate`."""
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim))
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x [..., P, D]``: pairs ``(x_j, x_{j+D/2})`` turned, ``x cos + rotate_half(x) sin``."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class LatentBuffer:
    """Preallocated ``c [B, P, r]`` and ``k_rope [B, P, d_R]`` (``None`` when ``d_R = 0``); ``written``:
    the length of the newest state that wrote into it."""

    __slots__ = ("c", "k_rope", "written")

    def __init__(self, c, k_rope, written=0):
        self.c, self.k_rope, self.written = c, k_rope, written

    def __repr__(self) -> str:
        return f"LatentBuffer(slots={self.c.shape[1]}, written={self.written})"

    def grown(self, length: int, capacity: int) -> LatentBuffer:
        """A new buffer of ``capacity`` slots holding the first ``length`` latents of this one."""
        c = self.c.new_empty(self.c.shape[0], capacity, self.c.shape[2])
        c[:, :length].copy_(self.c[:, :length])
        k_rope = None
        if self.k_rope is not None:
            k_rope = self.k_rope.new_empty(self.k_rope.shape[0], capacity, self.k_rope.shape[2])
            k_rope[:, :length].copy_(self.k_rope[:, :length])
        return LatentBuffer(c, k_rope, length)


@dataclass
class LatentState(StateMeta):
    """The first ``length`` slots of ``buffer`` hold the latents (and rotary keys) of positions ``0..length-1``."""

    buffer: LatentBuffer
    length: int

    @property
    def latents(self) -> torch.Tensor:
        """``c_{<=i}``: ``[B, m, r]`` view of the cached latents."""
        return self.buffer.c[:, : self.length]

    @property
    def rope_keys(self) -> torch.Tensor | None:
        """``k^R_{<=i}``: ``[B, m, d_R]`` view of the cached rotary keys (``None`` when ``d_R = 0``)."""
        return None if self.buffer.k_rope is None else self.buffer.k_rope[:, : self.length]


class LatentMemory(Memory):
    """Multi-head latent attention's cache: one shared latent ``c_t`` of ``rank`` numbers per token.

    Args:
        rank: ``r``, the latent's width (the cache holds ``r + d_R`` numbers per token and layer).
        rope_dim: ``d_R``, the decoupled rotary key shared by the heads (DeepSeek-V2; even); ``0``:
            decoded keys rotated by position instead (see the module docstring).
        rope_base: the rotary base (``MemoryLM``'s default).
        n_heads, head_dim: ``H`` and ``d_h`` of the keys it will be handed, to make the projections now;
            ``None``: made for the first ``init_state``.
        initial_capacity: latents preallocated by ``init_state`` (grows by doubling).
    """

    name = "latent"
    title = "latent cache (MLA)"
    symbols = {"rank": "r", "rope_dim": "d_R"}
    fixed_size = False
    uses_rotary = False  # it rotates by the positions it counts (decoupled rotary key, or decoded keys)

    @classmethod
    def example_sizes(cls, slots=8, *, n_heads=2):
        """``r = 8``, ``d_R = 4`` whatever ``slots``: it keeps every token; ``r`` sizes each one."""
        return {"rank": 8, "rope_dim": 4}

    def __init__(self, rank: int, rope_dim: int = 0, rope_base: float = 10000.0, n_heads: int | None = None,
                 head_dim: int | None = None, initial_capacity: int = 256):
        super().__init__()
        self.rank = check_positive_int("rank", rank)
        self.rope_dim = check_positive_int("rope_dim", rope_dim, minimum=0)
        if rope_dim % 2:
            raise ValueError(f"rope_dim must be even (rotary pairs), got {rope_dim}")
        if isinstance(rope_base, bool) or not isinstance(rope_base, (int, float)) or not rope_base > 1:
            raise ValueError(f"rope_base must be a number > 1, got {describe(rope_base)}")
        self.rope_base = float(rope_base)
        self.initial_capacity = check_positive_int("initial_capacity", initial_capacity)
        if (n_heads is None) != (head_dim is None):
            raise ValueError(f"n_heads and head_dim come together (to make the projections now) or not at all; "
                             f"got n_heads={n_heads!r}, head_dim={head_dim!r}")
        self.n_heads = self.head_dim = self.v_dim = None  # H, d_h, d_v of the projections, once made
        names = ["down", "up_k", "up_v"] + (["w_kr", "w_qr"] if rope_dim else [])
        for p in names:
            setattr(self, p, nn.parameter.UninitializedParameter())
        if n_heads is not None:
            self._materialise(check_positive_int("n_heads", n_heads), check_positive_int("head_dim", head_dim))

    def extra_repr(self) -> str:
        return ", ".join(f"{p}={getattr(self, p)!r}" for p in ("rank", "rope_dim", "n_heads", "head_dim")
                         if getattr(self, p) is not None)

    # -- parameters ----------------------------------------------------------------------------
    def _shapes(self, h: int, d: int, dv: int) -> dict:
        r, dr = self.rank, self.rope_dim
        shapes = {"down": (r, h * (d + dv)), "up_k": (h, d, r), "up_v": (h, dv, r)}
        if dr:
            shapes.update(w_kr=(dr, h * d), w_qr=(h, dr, d))
        return shapes

    def _materialise(self, n_heads: int, head_dim: int, v_dim: int | None = None, *, device=None, dtype=None):
        """Make ``W_down [r, H (d_h + d_v)]``, ``W_uk [H, d_h, r]``, ``W_uv [H, d_v, r]`` (``W_kr [d_R, H d_h]``,
        ``W_qr [H, d_R, d_h]``), each uniform in ``+-1/sqrt(fan_in)`` as ``nn.Linear``'s default."""
        v_dim = head_dim if v_dim is None else v_dim
        if self.n_heads is not None:
            return
        for name, shape in self._shapes(n_heads, head_dim, v_dim).items():
            p = getattr(self, name)
            if isinstance(p, nn.parameter.UninitializedParameter):
                p.materialize(shape, device=device, dtype=dtype)
            with torch.no_grad():
                p.uniform_(-1 / math.sqrt(shape[-1]), 1 / math.sqrt(shape[-1]))
        self.n_heads, self.head_dim, self.v_dim = n_heads, head_dim, v_dim

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # as LazyModuleMixin: skip unmade maps
        for name, p in self._parameters.items():
            if p is not None and not isinstance(p, nn.parameter.UninitializedParameter):
                destination[prefix + name] = p if keep_vars else p.detach()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        up_k, up_v = state_dict.get(prefix + "up_k"), state_dict.get(prefix + "up_v")
        if self.n_heads is None and up_k is not None and up_v is not None:
            self._materialise(up_k.shape[0], up_k.shape[1], up_v.shape[1], dtype=up_k.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def projections(self) -> dict:
        """The learned maps by the names :func:`~course_lib.memory.reference.latent_reference` takes."""
        if self.n_heads is None:
            raise ValueError("this LatentMemory has no projections yet: call init_state (or pass n_heads, head_dim)")
        out = {"down": self.down, "up_k": self.up_k, "up_v": self.up_v}
        if self.rope_dim:
            out.update(w_kr=self.w_kr, w_qr=self.w_qr)
        return out

    # -- protocol --------------------------------------------------------------------------------
    def init_state(self, batch, n_heads, head_dim, *, device=None, dtype=None, v_dim=None) -> LatentState:
        meta = new_meta(batch, n_heads, head_dim, device=device, dtype=dtype, v_dim=v_dim)
        if self.n_heads is None:  # made for the first state; a state of other sizes is refused when used
            self._materialise(n_heads, head_dim, meta["v_dim"], device=meta["device"], dtype=meta["dtype"])
        kw = dict(device=meta["device"], dtype=meta["dtype"])
        c = torch.zeros(batch, self.initial_capacity, self.rank, **kw)
        k_rope = torch.zeros(batch, self.initial_capacity, self.rope_dim, **kw) if self.rope_dim else None
        return LatentState(**meta, buffer=LatentBuffer(c, k_rope), length=0)

    def check(self, q, k, v, state) -> None:
        check_input(self, q, k, v, state, LatentState)
        sizes = (k.shape[1], k.shape[-1], v.shape[-1])
        if sizes != (self.n_heads, self.head_dim, self.v_dim):
            raise ValueError(
                f"k has {sizes[0]} heads of {sizes[1]} (values {sizes[2]}) but this LatentMemory's projections "
                f"were made for n_heads={self.n_heads}, head_dim={self.head_dim}, v_dim={self.v_dim}"
            )
        if self.up_k.dtype != k.dtype or self.up_k.device != k.device:
            raise TypeError(f"k is {k.dtype} on {k.device} but the projections are {self.up_k.dtype} on "
                            f"{self.up_k.device}; move the memory with .to(...)")

    def forward(self, q, k, v, state: LatentState):
        """:func:`course_lib.memory.reference.latent_reference` is the rule."""
        self.check(q, k, v, state)
        return self.forward_unchecked(q, k, v, state)

    def compress(self, k, v) -> torch.Tensor:
        """``c_t = W_down [k_t; v_t]``: ``k [B, H, T, d_h]``, ``v [B, H, T, d_v]`` -> ``[B, T, r]``."""
        b, h, t, _ = k.shape
        kv = torch.cat([k.transpose(1, 2).reshape(b, t, -1), v.transpose(1, 2).reshape(b, t, -1)], dim=-1)
        return kv @ self.down.t()

    def _rope(self, x, start: int):
        """``x [..., T, D]`` rotated at positions ``start .. start + T - 1``."""
        t = x.shape[-2]
        cos, sin = rope_tables(torch.arange(start, start + t, device=x.device), x.shape[-1], self.rope_base, x.dtype)
        return rotate(x, cos, sin)

    def forward_unchecked(self, q, k, v, state: LatentState):
        """:meth:`forward` without the argument checks (``MemoryLM``'s decoding step checks once)."""
        n, t = state.length, q.shape[2]
        c = self.compress(k, v)  # [B, T, r]
        k_rope = None
        if self.rope_dim:  # [B, T, d_R]: k^R_t = RoPE_t(W_kr k_t), shared by the heads
            k_rope = self._rope(k.transpose(1, 2).reshape(k.shape[0], t, -1) @ self.w_kr.t(), n)
        new_state = self._append(state, c, k_rope)
        if c.requires_grad:  # training: gradients reach the chunk's own latents (the stored ones are detached)
            lat = torch.cat([state.latents, c], dim=1)
            kr = None if k_rope is None else torch.cat([state.rope_keys, k_rope], dim=1)
        else:
            lat, kr = new_state.latents, new_state.rope_keys
        mask = None if t == 1 else causal_mask(t, n + t, device=q.device)
        if self.rope_dim:  # absorbed: one key/value head of latents shared by every query head
            q_lat = torch.einsum("bhtd,hdr->bhtr", q, self.up_k)  # W_uk,h^T q_h
            q_rope = self._rope(torch.einsum("bhtd,hed->bhte", q, self.w_qr), n)  # RoPE_i(W_qr,h q_h)
            keys = torch.cat([lat, kr], dim=-1)[:, None]  # [B, 1, m, r + d_R]
            o = F.scaled_dot_product_attention(torch.cat([q_lat, q_rope], dim=-1), keys, lat[:, None],
                                               attn_mask=mask, scale=(self.head_dim + self.rope_dim) ** -0.5,
                                               enable_gqa=True)  # [B, H, T, r]: sum_j w_ij c_j
            out = torch.einsum("bhtr,hvr->bhtv", o, self.up_v)  # W_uv,h (sum_j w_ij c_j)
        else:  # decoded keys, rotated by their positions
            keys = self._rope(torch.einsum("bmr,hdr->bhmd", lat, self.up_k), 0)
            values = torch.einsum("bmr,hvr->bhmv", lat, self.up_v)
            out = F.scaled_dot_product_attention(self._rope(q, n), keys, values, attn_mask=mask)
        return out, new_state

    def _append(self, state: LatentState, c, k_rope) -> LatentState:
        """``Mem = Update(S_kv, Mem_pre)``: write the chunk's latents after the cached ones (in place
        when this state is the buffer's newest, else into a copy)."""
        n, t = state.length, c.shape[1]
        buf = state.buffer
        if buf.written != n or buf.c.shape[1] < n + t:  # branching, or full: copy into a new buffer
            capacity = buf.c.shape[1]
            while capacity < n + t:
                capacity *= 2
            buf = buf.grown(n, capacity)
        buf.c[:, n:n + t].copy_(c.detach())
        if k_rope is not None:
            buf.k_rope[:, n:n + t].copy_(k_rope.detach())
        buf.written = n + t
        return LatentState(state.batch, state.n_heads, state.head_dim, state.v_dim, state.dtype, state.device,
                           buf, n + t)

    def reserve(self, state: LatentState, n_tokens: int = 0) -> LatentState:
        """Make room for ``n_tokens`` more tokens now, so decoding them allocates nothing."""
        need, buf = state.length + check_positive_int("n_tokens", n_tokens, minimum=0), state.buffer
        if buf.written != state.length or buf.c.shape[1] < need:
            return dataclasses.replace(state, buffer=buf.grown(state.length, max(need, buf.c.shape[1])))
        return state

    def snapshot(self, state: LatentState) -> LatentState:
        """The state itself: later forwards never write into its first ``length`` slots."""
        return state

    def nbytes(self, state: LatentState) -> int:
        """Bytes of the ``m`` cached latents and rotary keys,
        :func:`~course_lib.kv_cache.latent_cache_bytes` of one layer (not the slots reserved beyond them)."""
        return latent_cache_bytes(1, self.rank, state.length, state.batch, state.buffer.c.element_size(),
                                  self.rope_dim)

    def held(self, state: LatentState):
        """The pairs every head decodes from the cache, ``(W_uk c [B, H, m, d_h], W_uv c [B, H, m, d_v])``
        (keys before any rotation), oldest first."""
        lat = state.latents
        with torch.no_grad():
            return (torch.einsum("bmr,hdr->bhmd", lat, self.up_k), torch.einsum("bmr,hvr->bhmv", lat, self.up_v))

    def cost_per_token(self, config, context: int) -> dict:
        """``bytes = L (r + d_R) m b`` (:func:`~course_lib.kv_cache.latent_cache_bytes`); ``flops`` of reading
        the ``m + 1`` latents: absorbed (``d_R > 0``), ``2 tau (2 r + d_R)`` per latent plus ``2 tau d_h (2 r + d_R)``
        to absorb the query and decode the output; decoded (``d_R = 0``), ``4 tau d_h (r + 1)`` per latent."""
        L, tau, d, b = config.n_layers, config.n_heads, config.head_dim, config.bytes_per_value
        r, dr, m = self.rank, self.rope_dim, context + 1
        if dr:
            flops = L * (2 * tau * (2 * r + dr) * m + 2 * tau * d * (2 * r + dr))
        else:
            flops = L * 4 * tau * d * (r + 1) * m
        return {"bytes": latent_cache_bytes(L, r, context, 1, b, dr), "flops": flops}
