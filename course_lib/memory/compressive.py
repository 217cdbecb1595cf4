r"""The Compressive Transformer (Rae et al., 2020): evict, compress, append.

Two FIFO memories: ``Mem`` holds up to ``M`` recent pairs as they are; ``CMem`` holds up
to ``C`` compressed pairs, each standing for ``c`` consecutive positions (``c`` = ratio).
A chunk's queries attend, in one softmax, to ``[CMem, Mem]`` and to the chunk causally::

    Att_com(q_i) = Att(q_i, [CMem, Mem, S_kv])

then the memories move on, in this order:

1. append: ``Mem`` gets the chunk's pairs ``S_kv^k`` appended;
2. evict: if ``|Mem| > M``, its oldest ``ceil((|Mem| - M) / c) * c`` pairs are popped;
3. compress: each group of ``c`` popped pairs becomes one pair ``C_kv^k = f_c(group)``
   (keys and values alike), appended to ``CMem``: ``CMem = FIFO(C_kv^k, CMem_pre)``,
   which keeps its newest ``C`` slots.

So the memory reaches back about ``M + c C`` tokens for the bytes of ``M + C`` pairs.
Compression functions ``f_c``: ``mean`` and ``max`` pooling; ``conv`` (a 1-D convolution
over time with kernel = stride = ``c``, one small filter shared by every head dimension);
``dilated_conv`` (a stack of kernel-2 convolutions with dilations 1, 2, 4, ... over each
group); ``most_used`` (keep the pair of each group that received the most attention).
Learned compressors are trained with :func:`attention_reconstruction_loss`, the only place
they receive gradients: memories are stored detached.

Storage: one buffer of ``C + M`` slots: ``CMem`` ring (group ``g`` in slot ``g % C``, stored
position = its first token ``g c``) then ``Mem`` ring (position ``p`` in slot ``C + p % M``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_positive_int, check_tensor, describe
from ._slots import SlotMemory, SlotState, all_held_and_causal, attend, ring_ranges, write_ring

__all__ = ["CompressiveMemory", "CompressiveState", "attention_reconstruction_loss", "COMPRESSIONS"]

COMPRESSIONS = ("mean", "max", "conv", "dilated_conv", "most_used")


@dataclass
class CompressiveState(SlotState):
    """``buffer`` (``C + M`` slots) after ``length`` tokens, ``n_groups`` groups compressed so far.

    ``Mem`` holds positions ``n_groups * c .. length - 1``; ``CMem`` the newest ``C`` groups.
    ``extra_losses``: ``{"reconstruction": loss}`` when the forward that made this state popped
    pairs and trains a learned ``f_c`` (see :meth:`CompressiveMemory.extra_losses`), else empty.
    """

    n_groups: int = 0
    extra_losses: dict = field(default_factory=dict, repr=False, compare=False, metadata={"extra_loss": True})


class CompressiveMemory(SlotMemory):
    """``Att(q_i, [CMem, Mem, chunk])`` with the FIFO rules of the Compressive Transformer.

    Args:
        mem_len: ``M``, pairs kept as they are (``M >= ratio``).
        cmem_len: ``C``, compressed pairs kept.
        ratio: ``c >= 1``, pairs per compressed pair.
        compress: ``f_c``, one of ``"mean"``, ``"max"``, ``"conv"``, ``"dilated_conv"``, ``"most_used"``.

    A forward that pops pairs with gradients on and a learned ``f_c`` (``conv``,
    ``dilated_conv``) returns :func:`attention_reconstruction_loss` for them with its state:
    ``extra_losses(new_state) == {"reconstruction": loss}``, which ``MemoryLM`` passes on and
    ``train()`` adds to the training loss (the only gradient the compressor receives).
    """

    name = "compressive"
    reads_segment = True  # queries see their whole segment beside the carried state: peak_nbytes
    title = "compressive"
    state_type = CompressiveState
    supports_gqa = False

    @classmethod
    def example_sizes(cls, slots=8, *, n_heads=2):
        half = max(slots // 2, 2)  # M = C, c = 2: reaches M + 2 C positions for the bytes of M + C pairs
        return {"mem_len": half, "cmem_len": max(1, slots - half), "ratio": 2}

    def label(self) -> str:
        f_c = "" if self.compress == "mean" else f", f_c = {self.compress}"
        return f"compressive M = {self.mem_len}, C = {self.cmem_len}, c = {self.ratio}{f_c}"

    def __init__(self, mem_len: int, cmem_len: int, ratio: int, compress: str = "mean"):
        super().__init__()
        self.mem_len = check_positive_int("mem_len", mem_len)
        self.cmem_len = check_positive_int("cmem_len", cmem_len)
        self.ratio = check_positive_int("ratio", ratio)
        if mem_len < ratio:
            raise ValueError(f"mem_len={mem_len} must be >= ratio={ratio}: evictions pop whole groups of ratio pairs")
        if compress not in COMPRESSIONS:
            raise ValueError(f"compress must be one of {', '.join(COMPRESSIONS)}; got {compress!r}")
        self.compress = compress
        self.track_mass = compress == "most_used"
        if compress == "conv":  # a kernel of c taps per tensor (keys, values), starting as mean pooling
            self.k_weight, self.v_weight = (nn.Parameter(torch.full((ratio,), 1.0 / ratio)) for _ in range(2))
            self.k_bias, self.v_bias = (nn.Parameter(torch.zeros(())) for _ in range(2))
        elif compress == "dilated_conv":  # kernel 2, dilations 1, 2, 4, ... until the group is covered
            depth = math.ceil(math.log2(ratio)) if ratio > 1 else 0
            self.k_weight, self.v_weight = (nn.Parameter(torch.full((depth, 2), 0.5)) for _ in range(2))
            self.k_bias, self.v_bias = (nn.Parameter(torch.zeros(depth)) for _ in range(2))

    @property
    def n_slots(self) -> int:
        return self.cmem_len + self.mem_len

    # -- f_c ---------------------------------------------------------------------------------
    def compress_pairs(self, k, v, mass=None):
        """``f_c``: ``k [B, H, n, D], v [B, H, n, D_v]`` -> ``n / c`` compressed pairs each.

        ``mass [B, H, n]``: attention received by each pair (``most_used`` keeps the largest).
        """
        check_tensor("k", k, ndim=4, floating=True)
        check_tensor("v", v, ndim=4, floating=True)
        c, n = self.ratio, k.shape[2]
        if n % c or v.shape[2] != n:
            raise ValueError(
                f"k and v must hold the same multiple of ratio={c} pairs, got {describe(k)} and {describe(v)}"
            )
        if self.compress == "mean":
            return _groups(k, c).mean(3), _groups(v, c).mean(3)
        if self.compress == "max":
            return _groups(k, c).amax(3), _groups(v, c).amax(3)
        if self.compress == "conv":
            return _conv(k, self.k_weight, self.k_bias, c), _conv(v, self.v_weight, self.v_bias, c)
        if self.compress == "dilated_conv":
            return _dilated(k, self.k_weight, self.k_bias, c), _dilated(v, self.v_weight, self.v_bias, c)
        mass = k.new_zeros(k.shape[:3]) if mass is None else mass
        best = _groups(mass[..., None], c).argmax(3, keepdim=True)  # [B, H, G, 1, 1]: most attended of each group
        return (_groups(x, c).gather(3, best.expand(-1, -1, -1, 1, x.shape[-1])).squeeze(3) for x in (k, v))

    # -- hooks -------------------------------------------------------------------------------
    def slots(self, q, state):
        buf = self._read(state)
        return buf.k, buf.v, all_held_and_causal(buf.pos >= 0, q.shape[2])  # every held slot is visible

    def update(self, state, k, v, mass=None):
        return self._advance(state, k, v, mass)[0]

    def forward(self, q, k, v, state):
        self.check(q, k, v, state)  # its state type and its number of slots
        out, mass = self._attend(q, k, v, state)
        new_state, popped = self._advance(state, k, v, mass)
        if popped is not None and torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            loss = attention_reconstruction_loss(q, *popped, self.compress_pairs)
            new_state = dataclasses.replace(new_state, extra_losses={"reconstruction": loss})
        return out, new_state

    def extra_losses(self, state) -> dict:
        """``{"reconstruction": loss}`` if the forward that returned ``state`` computed one, else ``{}``."""
        return state.extra_losses

    def _advance(self, state, k, v, mass=None):
        """Append, evict, compress; returns ``(new_state, (popped_k, popped_v) or None)``."""
        n, t, g0 = state.length, k.shape[2], state.n_groups
        m, cm, c = self.mem_len, self.cmem_len, self.ratio
        buf = self._writable(state)
        k, v = k.detach(), v.detach()
        start = g0 * c  # oldest position in Mem
        mlen = n - start
        chunk_mass = None
        if self.track_mass:
            if mass is None:
                mass = k.new_zeros(*k.shape[:2], cm + m + t)
            buf.mass[:, :, cm:] += mass[:, :, cm:cm + m]
            chunk_mass = mass[:, :, cm + m:]
        n_pop = math.ceil((mlen + t - m) / c) * c if mlen + t > m else 0
        popped = None
        if n_pop:
            from_mem = min(n_pop, mlen)
            ranges = [(d0, d1) for d0, d1, _, _ in ring_ranges(cm, m, start, from_mem)]  # Mem's popped slots
            rest = n_pop - from_mem  # popped straight from the chunk

            def popped_of(stored, chunk):  # Mem's popped slots, oldest first, then the chunk's
                return torch.cat([stored[:, :, d0:d1] for d0, d1 in ranges] + [chunk[:, :, :rest]], 2)

            pk, pv = popped_of(buf.k, k), popped_of(buf.v, v)  # [B, H, n_pop, D]
            pm = None if chunk_mass is None else popped_of(buf.mass[..., None], chunk_mass[..., None])[..., 0]
            with torch.no_grad():
                ck, cv = self.compress_pairs(pk, pv, pm)  # [B, H, n_pop / c, D]
            groups = n_pop // c
            keep = min(groups, cm)  # CMem keeps its newest C slots
            g = g0 + groups - keep
            write_ring(buf, 0, cm, g, ck[:, :, groups - keep:], cv[:, :, groups - keep:], g * c, c)
            for d0, d1 in ranges:
                buf.pos[d0:d1] = -1
            popped = (pk, pv)
        first = max(n, start + n_pop)  # the chunk's positions that stay in Mem
        if first < n + t:
            a = first - n
            write_ring(buf, cm, m, first, k[:, :, a:], v[:, :, a:], first)
            if chunk_mass is not None:
                for d0, d1, s0, s1 in ring_ranges(cm, m, first, n + t - first):
                    buf.mass[:, :, d0:d1] = chunk_mass[:, :, a + s0:a + s1]
        return self._successor(state, buf, n + t, n_groups=g0 + n_pop // c, extra_losses={}), popped

    def spans(self, state) -> list[tuple[int, int]]:
        """``CMem`` slots (``c`` positions each), then ``Mem`` slots, oldest first."""
        g, c = state.n_groups, self.ratio
        cmem = [(j * c, j * c + c - 1) for j in range(max(0, g - self.cmem_len), g)]
        return cmem + [(p, p) for p in range(g * c, state.length)]

    def parts(self, state) -> list[tuple[str, int]]:
        """``[("CMem", compressed slots), ("Mem", pairs as they are)]`` (empty groups left out)."""
        groups = [("CMem", min(state.n_groups, self.cmem_len)), ("Mem", state.length - state.n_groups * self.ratio)]
        return [(label, size) for label, size in groups if size]

    def slots_after(self, context: int) -> int:
        """``min(m, M) + min(C, (m - M) // c)``: ``Mem`` fills first, then each ``c`` evicted pairs make a slot."""
        m = self.mem_len
        return min(context, m) + min(self.cmem_len, max(0, context - m) // self.ratio)


def _groups(x, c):
    """``[B, H, n, D] -> [B, H, n / c, c, D]``: consecutive groups of ``c``."""
    return x.unflatten(2, (-1, c))


def _conv(x, weight, bias, c):
    """1-D convolution over time, kernel = stride = ``c``, the same filter for every head dimension:
    each group of ``c`` becomes ``sum_a w_a x_a + b``."""
    return (_groups(x, c) * weight.to(x)[:, None]).sum(3) + bias.to(x)


def _dilated(x, weight, bias, c):
    """Kernel-2 convolutions with dilations 1, 2, 4, ... inside each group (zeros before its start);
    the output at the group's last position: ``y_t <- w_0 y_{t-dil} + w_1 y_t + b`` per layer."""
    y = _groups(x, c)  # [B, H, G, c, D]
    for j, (w, b) in enumerate(zip(weight.to(x), bias.to(x))):
        dil = 2**j
        shifted = F.pad(y, (0, 0, dil, 0))[:, :, :, :c]  # y_{t - dil}, zero before the group starts
        y = w[0] * shifted + w[1] * y + b
    return y[:, :, :, -1]


def attention_reconstruction_loss(q, old_k, old_v, compress):
    r"""How well compressed memories stand in for the pairs they replace (Rae et al., 2020).

    ``|| Att(q, old_k, old_v) - Att(q, f_c(old_k), f_c(old_v)) ||^2`` (mean squared error), with
    ``q [B, H, T, D]`` the current queries and ``old_k, old_v [B, H, n, D]`` the popped pairs.
    Everything but ``f_c`` is detached: gradients reach only the compressor's parameters.

    Args:
        compress: ``f_c``, a :class:`CompressiveMemory` or a callable ``(k, v) -> (ck, cv)``.
    """
    check_tensor("q", q, ndim=4, floating=True)
    fn = compress.compress_pairs if isinstance(compress, CompressiveMemory) else compress
    if not callable(fn):
        raise TypeError(
            f"compress must be a CompressiveMemory or a callable (k, v) -> (ck, cv), got {describe(compress)}"
        )
    q, old_k, old_v = q.detach(), old_k.detach(), old_v.detach()
    with torch.no_grad():
        target = attend(q, old_k, old_v)  # every query sees every popped pair
    ck, cv = fn(old_k, old_v)
    # the few compressed pairs, written out: with q detached, autograd then computes only the
    # gradients of ck and cv (the fused kernel's backward would also compute q's)
    weights = torch.softmax(q @ ck.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1)
    return F.mse_loss(weights @ cv, target)
