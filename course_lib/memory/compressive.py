r"""The Compressive Transformer (Rae et al., 2020): evict, compress, append.

Two FIFO memories: ``Mem`` holds up to ``n_m`` recent pairs as they are; ``CMem`` holds up
to ``n_cm`` compressed pairs, each standing for ``c`` consecutive positions (``c`` = ratio).
A chunk's queries attend, in one softmax, to ``[CMem, Mem]`` and to the chunk causally::

    Att_com(q_i) = Att(q_i, [CMem, Mem, S_kv])

then the memories move on, in this order:

1. append: ``Mem`` gets the chunk's pairs ``S_kv^k`` appended;
2. evict: if ``|Mem| > n_m``, its oldest ``ceil((|Mem| - n_m) / c) * c`` pairs are popped;
3. compress: each group of ``c`` popped pairs becomes one pair ``C_kv^k = f_c(group)``
   (keys and values alike), appended to ``CMem``: ``CMem = FIFO(C_kv^k, CMem_pre)``,
   which keeps its newest ``n_cm`` slots.

So the memory reaches back about ``n_m + c n_cm`` tokens for the bytes of ``n_m + n_cm`` pairs.
Compression functions ``f_c`` (keys and values each get their own):

* ``mean`` and ``max`` pooling over each group of ``c``;
* ``conv``: the paper's learned 1-D convolution over time, kernel = stride = ``c``, a full
  channel map ``Conv1d(d_h, d_h, c, stride=c)`` (as in lucidrains' ``ConvCompress`` and labml's
  ``Conv1dCompression``): ``C_g = b + sum_a W_a x_{gc+a}`` with ``W_a`` a ``d_h x d_h`` matrix,
  one for keys and one for values, shared by the heads of a layer (the paper compresses a
  layer's hidden states with one map; here each head's keys, so the heads share it);
* ``conv_shared``: the course's earlier filter, ``c`` scalar taps shared by every channel,
  ``C_g = b + sum_a w_a x_{gc+a}`` (a re-weighted mean pooling; kept for lesson 06's comparison);
* ``dilated_conv``: a stack of kernel-2 convolutions with dilations 1, 2, 4, ... inside each
  group, each a full channel map ``Conv1d(d_h, d_h, 2, dilation=2^j)``;
* ``most_used``: the paper's rule: of the ``n`` popped pairs keep the ``n / c`` with the
  highest *average* attention (the attention each received, summed over every query that
  saw it, divided by the number of those queries), in their time order. Its state also keeps
  that attention per slot (``mass``), which the other designs do not need (``nbytes`` counts it).

Learned compressors start as mean pooling (``W_a = I / c``, ``b = 0``) and are trained with
:func:`attention_reconstruction_loss`, the only place they receive gradients: memories are
stored detached. ``conv`` and ``dilated_conv`` need ``d_h``: pass ``head_dim`` to build their
parameters at once, or leave it ``None`` and they are made on first use (``init_state`` or
``compress_pairs``, the way PyTorch's lazy modules do: the parameter objects exist from the
start, so an optimiser built before the first forward still holds them, and the values are the
mean-pooling start, so no random draw depends on when that happens). Counting parameters
(``numel``) before the first forward needs ``head_dim``.

Storage: one buffer of ``n_cm + n_m`` slots: ``CMem`` ring (group ``g`` in slot ``g % n_cm``, stored
position = its first token ``g c``) then ``Mem`` ring (position ``p`` in slot ``n_cm + p % n_m``).
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

__all__ = ["CompressiveMemory", "CompressiveState", "attention_reconstruction_loss", "COMPRESSIONS", "LEARNED"]

COMPRESSIONS = ("mean", "max", "conv", "conv_shared", "dilated_conv", "most_used")
LEARNED = ("conv", "conv_shared", "dilated_conv")  # f_c with parameters (trained by the reconstruction loss)
_CHANNEL_MAPS = ("conv", "dilated_conv")  # parameters sized by d_h


@dataclass
class CompressiveState(SlotState):
    """``buffer`` (``n_cm + n_m`` slots) after ``length`` tokens, ``n_groups`` groups compressed so far.

    ``Mem`` holds positions ``n_groups * c .. length - 1``; ``CMem`` the newest ``n_cm`` groups.
    ``extra_losses``: ``{"reconstruction": loss}`` when the forward that made this state popped
    pairs and trains a learned ``f_c`` (see :meth:`CompressiveMemory.extra_losses`), else empty.
    """

    n_groups: int = 0
    extra_losses: dict = field(default_factory=dict, repr=False, compare=False, metadata={"extra_loss": True})


class CompressiveMemory(SlotMemory):
    """``Att(q_i, [CMem, Mem, chunk])`` with the FIFO rules of the Compressive Transformer.

    Args:
        mem_len: ``n_m``, pairs kept as they are (``n_m >= ratio``).
        cmem_len: ``n_cm``, compressed pairs kept.
        ratio: ``c >= 1``, pairs per compressed pair.
        compress: ``f_c``, one of ``"mean"``, ``"max"``, ``"conv"``, ``"conv_shared"``,
            ``"dilated_conv"``, ``"most_used"`` (see the module's docstring).
        head_dim: ``d_h``, for ``conv`` and ``dilated_conv`` (their ``d_h x d_h`` maps); ``None``
            makes them on first use, from the keys' last dimension.

    A forward that pops pairs with gradients on and a learned ``f_c`` (``conv``,
    ``dilated_conv``) returns :func:`attention_reconstruction_loss` for them with its state:
    ``extra_losses(new_state) == {"reconstruction": loss}``, which ``MemoryLM`` passes on and
    ``train()`` adds to the training loss (the only gradient the compressor receives).
    """

    name = "compressive"
    reads_segment = True  # queries see their whole segment beside the carried state: peak_nbytes
    title = "compressive"
    symbols = {"mem_len": "n_m", "cmem_len": "n_cm", "ratio": "c"}
    state_type = CompressiveState
    supports_gqa = False

    @classmethod
    def example_sizes(cls, slots=8, *, n_heads=2):
        half = max(slots // 2, 2)  # n_m = n_cm, c = 2: reaches n_m + 2 n_cm positions for n_m + n_cm pairs' bytes
        return {"mem_len": half, "cmem_len": max(1, slots - half), "ratio": 2}

    def label_details(self) -> str:
        """The compression ``f_c`` when it is not mean pooling."""
        return "" if self.compress == "mean" else f", f_c = {self.compress}"

    def __init__(self, mem_len: int, cmem_len: int, ratio: int, compress: str = "mean", head_dim: int | None = None):
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
        self.head_dim = self.v_dim = None  # d_h, d_v of the channel maps, once made
        if compress == "conv_shared":  # c scalar taps per tensor (keys, values), starting as mean pooling
            self.k_weight, self.v_weight = (nn.Parameter(torch.full((ratio,), 1.0 / ratio)) for _ in range(2))
            self.k_bias, self.v_bias = (nn.Parameter(torch.zeros(())) for _ in range(2))
        elif compress in _CHANNEL_MAPS:  # full d_h x d_h maps: made now, or on first use
            for name in ("k_weight", "v_weight", "k_bias", "v_bias"):
                setattr(self, name, nn.parameter.UninitializedParameter())
            if head_dim is not None:
                self._materialise(check_positive_int("head_dim", head_dim))
        elif head_dim is not None:
            check_positive_int("head_dim", head_dim)

    @property
    def depth(self) -> int:
        """Layers of the dilated convolution: ``ceil(log2 c)`` (dilations 1, 2, ..., until a group is covered)."""
        return math.ceil(math.log2(self.ratio)) if self.ratio > 1 else 0

    def _materialise(self, head_dim: int, v_dim: int | None = None, *, device=None, dtype=None) -> None:
        """Give ``conv`` / ``dilated_conv`` their maps (``d_h x d_h`` for keys, ``d_v x d_v`` for
        values), as mean pooling: deterministic, whenever it happens."""
        if self.compress not in _CHANNEL_MAPS:
            return
        v_dim = head_dim if v_dim is None else v_dim
        if self.head_dim is not None:
            if (head_dim, v_dim) != (self.head_dim, self.v_dim):
                raise ValueError(f"this {self.compress} compressor was made for head_dim={self.head_dim}, "
                                 f"v_dim={self.v_dim}; got keys of {head_dim} and values of {v_dim}")
            return
        for tensor, (w, b) in (("k", (self.k_weight, self.k_bias)), ("v", (self.v_weight, self.v_bias))):
            eye = torch.eye(head_dim if tensor == "k" else v_dim, device=device, dtype=dtype)
            if self.compress == "conv":  # Conv1d(d, d, c, stride=c): weight [out, in, c] = I / c
                weight, bias = eye[:, :, None].expand(-1, -1, self.ratio) / self.ratio, eye.new_zeros(len(eye))
            else:  # depth x Conv1d(d, d, 2, dilation=2^j): weight [depth, out, in, 2] = I / 2
                weight = eye[None, :, :, None].expand(self.depth, -1, -1, 2) / 2
                bias = eye.new_zeros(self.depth, len(eye))
            for p, value in ((w, weight), (b, bias)):
                if isinstance(p, nn.parameter.UninitializedParameter):
                    p.materialize(value.shape, device=value.device, dtype=value.dtype)
                with torch.no_grad():
                    p.copy_(value)
        self.head_dim, self.v_dim = head_dim, v_dim

    def init_state(self, batch, n_heads, head_dim, *, device=None, dtype=None, v_dim=None):
        state = super().init_state(batch, n_heads, head_dim, device=device, dtype=dtype, v_dim=v_dim)
        if self.head_dim is None:  # made for the first state; a state of other sizes is refused when used
            self._materialise(head_dim, state.v_dim, device=state.device, dtype=state.dtype)
        return state

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # as LazyModuleMixin: skip unmade maps
        for name, p in self._parameters.items():
            if p is not None and not isinstance(p, nn.parameter.UninitializedParameter):
                destination[prefix + name] = p if keep_vars else p.detach()
        for name, b in self._buffers.items():
            if b is not None and name not in self._non_persistent_buffers_set:
                destination[prefix + name] = b if keep_vars else b.detach()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        weight = state_dict.get(prefix + "k_weight")
        if self.compress in _CHANNEL_MAPS and self.head_dim is None and weight is not None:
            v_weight = state_dict.get(prefix + "v_weight", weight)
            axis = 1 if self.compress == "conv" else 2
            self._materialise(weight.shape[axis], v_weight.shape[axis], dtype=weight.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def n_slots(self) -> int:
        return self.cmem_len + self.mem_len

    # -- f_c ---------------------------------------------------------------------------------
    def compress_pairs(self, k, v, usage=None):
        """``f_c``: ``k [B, H, n, D], v [B, H, n, D_v]`` -> ``n / c`` compressed pairs each.

        ``usage [B, H, n]``: the average attention each pair received (``most_used`` keeps the
        ``n / c`` largest; zeros, the default, keep the oldest).
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
        if self.compress == "conv_shared":
            return _conv_shared(k, self.k_weight, self.k_bias, c), _conv_shared(v, self.v_weight, self.v_bias, c)
        if self.compress in _CHANNEL_MAPS:
            self._materialise(k.shape[-1], v.shape[-1], device=k.device, dtype=k.dtype)
            fn = _conv if self.compress == "conv" else _dilated
            return fn(k, self.k_weight, self.k_bias, c), fn(v, self.v_weight, self.v_bias, c)
        usage = k.new_zeros(k.shape[:3]) if usage is None else usage
        if tuple(usage.shape) != tuple(k.shape[:3]):
            raise ValueError(f"usage must be [B, H, n] = {list(k.shape[:3])} like k's first three dimensions, "
                             f"got {describe(usage)}")
        return _most_used(k, v, usage, n // c)

    # -- hooks -------------------------------------------------------------------------------
    def slots(self, q, state):
        buf = self._read(state)
        return buf.k, buf.v, all_held_and_causal(buf.pos >= 0, q.shape[2])  # every held slot is visible

    def update(self, state, k, v, mass=None):
        return self._advance(state, k, v, mass)[0]

    def forward(self, q, k, v, state):
        """:func:`course_lib.memory.reference.compressive_reference` is the rule (the chunks fed are its segments)."""
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
            buf.keep(cm, cm + m, kv=False)
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
            usage = None
            if chunk_mass is not None:  # attention received / queries that saw it: those at positions >= p
                pm = popped_of(buf.mass[..., None], chunk_mass[..., None])[..., 0]
                seen = n + t - torch.arange(start, start + n_pop, device=pm.device, dtype=pm.dtype)
                usage = pm / seen
            with torch.no_grad():
                ck, cv = self.compress_pairs(pk, pv, usage)  # [B, H, n_pop / c, D]
            groups = n_pop // c
            keep = min(groups, cm)  # CMem keeps its newest n_cm slots
            g = g0 + groups - keep
            write_ring(buf, 0, cm, g, ck[:, :, groups - keep:], cv[:, :, groups - keep:], g * c, c)
            for d0, d1 in ranges:
                buf.keep(d0, d1, kv=False)
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
        """``min(m, n_m) + min(n_cm, (m - n_m) // c)``: ``Mem`` fills first, then each ``c`` evicted
        pairs make a slot."""
        m = self.mem_len
        return min(context, m) + min(self.cmem_len, max(0, context - m) // self.ratio)


def _groups(x, c):
    """``[B, H, n, D] -> [B, H, n / c, c, D]``: consecutive groups of ``c``."""
    return x.unflatten(2, (-1, c))


def _conv(x, weight, bias, c):
    """``Conv1d(d_h, d_h, c, stride=c)`` over time: group ``g`` becomes ``b + sum_a W_a x_{gc+a}``,
    ``weight [D_out, D_in, c]`` (PyTorch's layout), as one contraction over the group and channels."""
    return torch.einsum("bhgai,oia->bhgo", _groups(x, c), weight.to(x)) + bias.to(x)


def _conv_reference(x, weight, bias, c):
    """:func:`_conv` by ``torch.nn.functional.conv1d`` on ``[B H, D, n]`` (kernel = stride = ``c``)."""
    b, h, n, d = x.shape
    y = F.conv1d(x.reshape(b * h, n, d).transpose(1, 2), weight.to(x), bias.to(x), stride=c)
    return y.transpose(1, 2).reshape(b, h, n // c, -1)


def _conv_shared(x, weight, bias, c):
    """``c`` scalar taps shared by every channel: each group of ``c`` becomes ``sum_a w_a x_a + b``."""
    return (_groups(x, c) * weight.to(x)[:, None]).sum(3) + bias.to(x)


def _conv_shared_reference(x, weight, bias, c):
    """:func:`_conv_shared` group by group, tap by tap."""
    out = []
    for g in range(x.shape[2] // c):
        out.append(sum(float(weight[a]) * x[:, :, g * c + a] for a in range(c)) + float(bias))
    return torch.stack(out, 2)


def _dilated(x, weight, bias, c):
    """Kernel-2 convolutions with dilations 1, 2, 4, ... inside each group (zeros before its start),
    each a full channel map: ``y_t <- W_0 y_{t-dil} + W_1 y_t + b`` per layer (``weight [depth,
    D_out, D_in, 2]``); the output at the group's last position."""
    y = _groups(x, c)  # [B, H, G, c, D]
    for j, (w, b) in enumerate(zip(weight.to(x), bias.to(x))):
        dil = 2**j
        shifted = F.pad(y, (0, 0, dil, 0))[:, :, :, :c]  # y_{t - dil}, zero before the group starts
        y = shifted @ w[:, :, 0].T + y @ w[:, :, 1].T + b
    return y[:, :, :, -1]


def _dilated_reference(x, weight, bias, c):
    """:func:`_dilated` by ``torch.nn.functional.conv1d`` (``dilation=2^j``), each group its own
    sequence, padded on the left with ``2^j`` zeros per layer."""
    b, h, n, d = x.shape
    y = x.reshape(b * h * (n // c), c, d).transpose(1, 2)  # [groups, D, c]
    for j, (w, bj) in enumerate(zip(weight.to(x), bias.to(x))):
        dil = 2**j
        y = F.conv1d(F.pad(y, (dil, 0)), w, bj, dilation=dil)
    return y[:, :, -1].reshape(b, h, n // c, -1)


def _most_used(k, v, usage, keep):
    """The ``keep`` pairs of highest ``usage`` per batch and head, in time order (ties: the older)."""
    best = torch.sort(usage, dim=2, descending=True, stable=True).indices[:, :, :keep].sort(2).values
    return tuple(x.gather(2, best[..., None].expand(-1, -1, -1, x.shape[-1])) for x in (k, v))


def _most_used_reference(k, v, usage, keep):
    """:func:`_most_used` with Python's ``sorted``, one batch row and head at a time."""
    ks = torch.empty(*k.shape[:2], keep, k.shape[-1], dtype=k.dtype)
    vs = torch.empty(*v.shape[:2], keep, v.shape[-1], dtype=v.dtype)
    for b in range(k.shape[0]):
        for h in range(k.shape[1]):
            u = usage[b, h].tolist()
            idx = sorted(sorted(range(len(u)), key=lambda j: (-u[j], j))[:keep])
            ks[b, h], vs[b, h] = k[b, h, idx], v[b, h, idx]
    return ks, vs


#: fast f_c -> its plain reference (tests check they agree)
REFERENCES = {_conv: _conv_reference, _conv_shared: _conv_shared_reference, _dilated: _dilated_reference,
              _most_used: _most_used_reference}


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
