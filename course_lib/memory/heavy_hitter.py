r"""``HeavyHitterMemory``: H2O's eviction (Zhang et al. 2023, "H2O: Heavy-Hitter Oracle for Efficient
Generative Inference of Large Language Models", arXiv:2306.14048): softmax attention over a fixed
budget of ``B_h`` key/value pairs, chosen by the attention they have received.

Every pair carries its *accumulated attention* ``A_j = sum_{i' <= i} w_{i' j}``: the sum, over every
query so far that saw it, of the softmax weight it got (as ``CompressiveMemory``'s ``most_used``
tracks ``mass``). The memory keeps the ``recent`` newest pairs and, of the older ones, the
``budget - recent`` with the largest ``A_j`` (:func:`heavy_hitters`; ties: the earlier position).
A generalisation of lesson 04's window plus sinks: where attention piles on the first tokens, the
heavy hitters *are* the first tokens and the memory keeps what ``SinkMemory(sinks=budget - recent,
window=recent)`` keeps.

The rule, token by token (the paper evicts once per generated token), for the token at ``i``:

1. candidates: the pairs the query at ``i - 1`` saw, plus the new pair ``i`` (its ``A_i = 0``);
2. evict: if there are more than ``budget``, drop one: of the candidates older than the newest
   ``recent``, the one with the smallest ``A_j`` (ties: the later position goes), i.e. keep
   :func:`heavy_hitters` of the candidates;
3. attend: the query at ``i`` sees the kept candidates (``budget`` of them, itself included unless
   ``recent = 0`` evicted it at once) in one softmax, and each kept pair's ``A_j`` grows by its weight.

Inside a chunk longer than one token the memory follows the same rule token by token, so its
output does not depend on the chunking (``chunk_invariant``; the rule in
:func:`course_lib.memory.reference.heavy_hitter_reference`). Until the memory is full nothing is
evicted and the chunk's queries are one causal softmax; after that each token's eviction depends on
the weights the previous queries gave, so the chunk's bookkeeping is a loop over its tokens (no
tensor op does a sequential argmin), on the detached scores. On CPU float32/float64 tensors the loop
runs in NumPy over all sequences and heads at once and mostly in blocks: most tokens drop the pair
that has just left the ``recent`` newest, so a block of up to ``recent`` tokens guesses that drop for
each, computes their softmaxes and accumulated attention at once (the same sums in the same order as
token by token), checks every token's drop against the rule with those values, and keeps the tokens
up to the first it gets wrong, which then takes one step of the rule. Streaming 16k tokens in chunks
of 1,024 through a small 2-layer model took about a fifth of the time of the per-token loop of
``[B, H, budget + 1]`` torch ops that other devices and dtypes still run (the memory alone, a third
to a quarter). Each full query sees ``budget`` columns: a long chunk's output is a softmax over
those columns' live scores and their values, a short chunk's one masked softmax over ``[held pairs,
chunk]`` (gradients reach the chunk's keys either way).

Storage: ``k [B, H, budget, D]``, ``v``, the accumulated attention ``acc [B, H, budget]`` (counted
by ``nbytes``) and the position each slot holds, ``pos [B, H, budget]`` (``-1`` = empty; bookkeeping,
like the slot memories' positions, not counted). Heads and sequences evict differently, so positions
are per head: the memory holds no shared slot layout (``holds_slots = False``, no ``spans``); its
pairs are :meth:`HeavyHitterMemory.held` and :meth:`HeavyHitterMemory.kept_positions`. States are
copy-on-write (a forward gathers the kept slots into a new buffer); after
:meth:`~HeavyHitterMemory.reserve` they are written in place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from .._checks import check_positive_int, describe
from ..kv_cache import kv_cache_bytes
from ._state import BufferedStates, StateMeta, check_input, new_meta
from .base import Memory

__all__ = ["HeavyHitterMemory", "HeavyHitterState", "heavy_hitters"]


def _int_arg(name, value, low, high=None):
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        upper = f" and <= {high}" if high is not None else ""
        raise ValueError(f"{name} must be an int >= {low}{upper}, got {describe(value)}")
    return value


def heavy_hitters(scores: torch.Tensor, budget: int, recent: int) -> torch.Tensor:
    """The positions H2O keeps of ``T`` candidates with accumulated attention ``scores [T]``.

    If ``T <= budget``: all of them, ``arange(T)``. Otherwise the ``recent`` newest positions
    ``T - recent .. T - 1`` and, among ``0 .. T - recent - 1``, the ``budget - recent`` with the largest
    score (ties: the earlier position). Returns a sorted ``torch.long`` tensor of ``min(T, budget)``
    positions. Errors (``ValueError``) name ``budget`` (an int >= 1), ``recent`` (an int,
    ``0 <= recent <= budget``) and ``scores`` (a 1-D tensor).

    >>> heavy_hitters(torch.tensor([5.0, 0.1, 0.2, 3.0, 0.0, 0.0]), budget=4, recent=2)
    tensor([0, 3, 4, 5])
    >>> heavy_hitters(torch.tensor([1.0, 1.0, 1.0]), budget=2, recent=0)
    tensor([0, 1])
    """
    _int_arg("budget", budget, 1)
    _int_arg("recent", recent, 0, budget)
    if not isinstance(scores, torch.Tensor) or scores.dim() != 1 or scores.is_complex() or scores.dtype == torch.bool:
        raise ValueError(f"scores must be a 1-D real tensor [T] (accumulated attention), got {describe(scores)}")
    t = scores.shape[0]
    if t <= budget:
        return torch.arange(t, device=scores.device)
    older = scores[:t - recent]
    order = torch.sort(older, descending=True, stable=True).indices  # stable: the earlier of equal scores first
    kept = torch.cat([order[:budget - recent], torch.arange(t - recent, t, device=scores.device)])
    return kept.sort().values


class _Buffer:
    """``k [B, H, P, D]``, ``v``, ``pos [B, H, P]`` (``-1`` empty), ``acc [B, H, P]``; ``written``: the
    length of the newest state that wrote into it."""

    __slots__ = ("k", "v", "pos", "acc", "written")

    def __init__(self, k, v, pos, acc, written=0):
        self.k, self.v, self.pos, self.acc, self.written = k, v, pos, acc, written

    def clone(self, written):
        return _Buffer(self.k.clone(), self.v.clone(), self.pos.clone(), self.acc.clone(), written)

    def overwritten(self, length) -> bool:
        """Never: a forward from an unreserved state writes a new buffer (``BufferedStates``)."""
        return False

    def __repr__(self):
        return f"HeavyHitterBuffer(slots={self.k.shape[2]}, written={self.written})"


@dataclass
class HeavyHitterState(StateMeta):
    """``length`` tokens seen; the kept pairs, their positions and accumulated attention in ``buffer``."""

    buffer: _Buffer
    length: int
    inplace: bool = False


class HeavyHitterMemory(BufferedStates, Memory):
    """H2O: the ``recent`` newest pairs plus the ``budget - recent`` older ones with the largest
    accumulated attention, ``budget`` pairs in all (see the module docstring for the rule).

    Args:
        budget: ``B_h >= 1``, the pairs kept (the current token's included).
        recent: ``0 <= r <= B_h``, the newest pairs always kept.

    >>> mem = HeavyHitterMemory(budget=3, recent=1)
    >>> state = mem.init_state(1, 1, 2)
    >>> x = torch.zeros(1, 1, 6, 2)
    >>> out, state = mem(x, x, x, state)
    >>> mem.kept_positions(state)[0, 0].tolist()  # equal attention: the earliest older ones stay
    [0, 1, 5]
    """

    name = "heavy_hitter"
    title = "heavy hitters + recent (H2O)"
    label_name = "H2O"
    symbols = {"budget": "B_h", "recent": "n_r"}
    fixed_size = True
    state_type = HeavyHitterState

    def __init__(self, budget: int, recent: int):
        super().__init__()
        self.budget = check_positive_int("budget", budget)
        self.recent = check_positive_int("recent", recent, minimum=0)
        if recent > budget:
            raise ValueError(f"recent must be <= budget={budget} (the recent pairs are part of the budget), "
                             f"got {recent}")

    @classmethod
    def example_sizes(cls, slots=8, *, n_heads=2):
        return {"budget": slots, "recent": max(1, slots // 2)}

    def cost_per_token(self, config, context: int) -> dict:
        """``bytes = 2 L tau d_h B_h b + L tau B_h b`` (the pairs and their accumulated attention, all
        ``B_h`` slots preallocated); ``flops = 4 L tau d_h (min(context, B_h) + 1)``."""
        L, tau, d, b = config.n_layers, config.n_heads, config.head_dim, config.bytes_per_value
        held = min(context, self.budget)
        return {"bytes": kv_cache_bytes(L, tau, d, self.budget, bytes_per_value=b) + L * tau * self.budget * b,
                "flops": 4 * L * tau * d * (held + 1)}

    def init_state(self, batch, n_heads, head_dim, *, device=None, dtype=None, v_dim=None):
        meta = new_meta(batch, n_heads, head_dim, device=device, dtype=dtype, v_dim=v_dim)
        kw = dict(device=meta["device"], dtype=meta["dtype"])
        p = self.budget
        buf = _Buffer(torch.zeros(batch, n_heads, p, head_dim, **kw),
                      torch.zeros(batch, n_heads, p, meta["v_dim"], **kw),
                      torch.full((batch, n_heads, p), -1, dtype=torch.long, device=meta["device"]),
                      torch.zeros(batch, n_heads, p, **kw))
        return HeavyHitterState(**meta, buffer=buf, length=0)

    def nbytes(self, state) -> int:
        """Bytes of the ``B_h`` key/value slots and their accumulated attention (positions not counted)."""
        buf = state.buffer
        return sum(x.numel() * x.element_size() for x in (buf.k, buf.v, buf.acc))

    # -- inspection ----------------------------------------------------------------------------
    def kept_positions(self, state) -> torch.Tensor:
        """``[B, H, n]``: the positions held, sorted, per sequence and head (``n = min(length, B_h)``)."""
        pos = self._read(state).pos.sort(-1).values
        return pos[..., self.budget - min(state.length, self.budget):]

    def held(self, state):
        """The pairs held, ``(K [B, H, n, D], V [B, H, n, D_v])``, oldest first per sequence and head."""
        buf = self._read(state)
        order = buf.pos.argsort(-1)[..., self.budget - min(state.length, self.budget):]
        return (buf.k.gather(2, order[..., None].expand(-1, -1, -1, buf.k.shape[-1])),
                buf.v.gather(2, order[..., None].expand(-1, -1, -1, buf.v.shape[-1])))

    # -- protocol ------------------------------------------------------------------------------
    def forward(self, q, k, v, state):
        """:func:`course_lib.memory.reference.heavy_hitter_reference` is the rule (token by token)."""
        check_input(self, q, k, v, state, HeavyHitterState)
        if state.buffer.k.shape[2] != self.budget:
            raise ValueError(f"the state holds {state.buffer.k.shape[2]} slots but {self!r} keeps {self.budget}: "
                             "it was made by another memory; use this memory's init_state()")
        return self.forward_unchecked(q, k, v, state)

    def forward_unchecked(self, q, k, v, state):
        buf = self._read(state)
        n, t = state.length, q.shape[2]
        keys, values = torch.cat([buf.k, k], 2), torch.cat([buf.v, v], 2)  # held pairs (detached), then the chunk
        scores = q @ keys.transpose(-2, -1) * q.shape[-1] ** -0.5  # [B, H, T, P + T]
        fill, seen, kept_col, kept_pos, kept_acc = self._evict(scores.detach(), buf, n, t)
        f, outs = (0 if fill is None else fill.shape[2]), []
        if f:  # filling: a causal softmax over [held, chunk]
            outs.append(torch.softmax(scores[:, :, :f].masked_fill(~fill, float("-inf")), dim=-1) @ values)
        if 0 < t - f <= _DENSE_UP_TO:  # full, a short chunk: the masked softmax over [held, chunk] (fewer ops)
            unseen = torch.ones_like(scores[:, :, f:], dtype=torch.bool).scatter_(-1, seen, False)
            outs.append(torch.softmax(scores[:, :, f:].masked_fill(unseen, float("-inf")), dim=-1) @ values)
        elif f < t:  # full, a long chunk: each query's softmax over the P columns it sees, and their values
            w = torch.softmax(scores[:, :, f:].gather(-1, seen), dim=-1)  # [B, H, T - f, P]
            seen_v = values.gather(2, seen.flatten(2)[..., None].expand(-1, -1, -1, values.shape[-1]))
            outs.append((w[..., None, :] @ seen_v.view(*seen.shape, values.shape[-1])).squeeze(-2))
        out = outs[0] if len(outs) == 1 else torch.cat(outs, 2)
        kept_k = keys.detach().gather(2, kept_col[..., None].expand(-1, -1, -1, keys.shape[-1]))
        kept_v = values.detach().gather(2, kept_col[..., None].expand(-1, -1, -1, values.shape[-1]))
        if state.inplace:  # reserved: the same storage
            for old, kept in ((buf.k, kept_k), (buf.v, kept_v), (buf.pos, kept_pos), (buf.acc, kept_acc)):
                old.copy_(kept)
            new, buf.written = buf, n + t
        else:  # copy-on-write: the gathered slots are the new buffer (no copy of the old one first)
            new = _Buffer(kept_k, kept_v, kept_pos, kept_acc, n + t)
        return out, dataclasses.replace(state, buffer=new, length=n + t)

    def _evict(self, scores, buf, n, t):
        """What each query of the chunk sees, and what the slots hold after it. The first ``f`` queries
        fill empty slots: ``fill [B, H, f, P + T]``, the columns of ``[held slots, chunk]`` each sees;
        each later one sees ``P`` columns, ``seen [B, H, T - f, P]``. Then the slots: the column of
        ``[held, chunk]`` each came from, its position and its accumulated attention (``[B, H, P]``)."""
        b, h, p = scores.shape[0], scores.shape[1], self.budget
        dev = scores.device
        f = max(0, min(t, p - n))  # tokens that fill empty slots: nothing is evicted, one causal softmax
        numpy = dev.type == "cpu" and scores.dtype in _NUMPY_DTYPES
        if not f and numpy:  # the NumPy path copies the slots itself
            return None, *_evict_numpy(scores, None, buf.pos, buf.acc, n, 0, self.recent)
        fill = torch.zeros(b, h, f, p + t, dtype=torch.bool, device=dev) if f else None
        kept_col = torch.arange(p, device=dev).expand(b, h, p).clone()
        kept_pos, kept_acc = buf.pos.clone(), buf.acc.clone()
        if f:
            fill[..., :p] = kept_pos[:, :, None, :] >= 0
            fill[..., p:p + f] = torch.ones(f, f, dtype=torch.bool, device=dev).tril()
            w = torch.softmax(scores[:, :, :f].masked_fill(~fill, float("-inf")), -1).sum(2)
            kept_acc = kept_acc + w[..., :p]
            kept_col[..., n:n + f] = torch.arange(p, p + f, device=dev)
            kept_pos[..., n:n + f] = torch.arange(n, n + f, device=dev)
            kept_acc[..., n:n + f] = w[..., p:p + f]
        seen = None
        if f < t:  # the memory is full: one eviction per token (the rule's steps 1-3)
            full = _evict_numpy if numpy else _evict_torch
            seen, kept_col, kept_pos, kept_acc = full(scores, kept_col, kept_pos, kept_acc, n, f, self.recent)
        return fill, seen, kept_col, kept_pos, kept_acc


_NUMPY_DTYPES = (torch.float32, torch.float64)
_DENSE_UP_TO = 64  # full queries in a chunk up to which the output is one masked softmax over [held, chunk]


def _evict_torch(scores, kept_col, kept_pos, kept_acc, n, f, recent):
    """Tokens ``f .. T - 1`` of a chunk, the memory full: one eviction per token on ``[B, H, P + 1]``
    tensors (any device and dtype). Returns ``(seen [B, H, T - f, P], col, pos, acc)``: the columns
    each query sees are the slots' columns after its eviction."""
    b, h, t = scores.shape[:3]
    p, dev = kept_col.shape[-1], scores.device
    slot = torch.arange(p + 1, device=dev)
    inf = torch.tensor(float("inf"), dtype=scores.dtype, device=dev)
    zero = scores.new_zeros(b, h, 1)
    seen_cols = torch.empty(b, h, t - f, p, dtype=torch.long, device=dev)
    for r in range(f, t):
        i = n + r
        cand_col = torch.cat([kept_col, torch.full_like(kept_col[..., :1], p + r)], -1)  # [B, H, P + 1]
        cand_pos = torch.cat([kept_pos, torch.full_like(kept_pos[..., :1], i)], -1)
        cand_acc = torch.cat([kept_acc, zero], -1)
        older = cand_pos <= i - recent  # all valid: the memory is full
        a = torch.where(older, cand_acc, inf)
        tie = older & (a == a.amin(-1, keepdim=True))
        drop = torch.where(tie, cand_pos, -1).argmax(-1, keepdim=True)  # the smallest A; ties: the later goes
        seen = slot != drop  # [B, H, P + 1]
        w = torch.softmax(scores[:, :, r].gather(-1, cand_col).masked_fill(~seen, float("-inf")), -1)
        acc = cand_acc + w
        replace = slot[:p] == drop  # the new pair takes the dropped slot (none if it was dropped itself)
        kept_col = torch.where(replace, p + r, kept_col)
        kept_pos = torch.where(replace, i, kept_pos)
        kept_acc = torch.where(replace, acc[..., p:], acc[..., :p])
        seen_cols[:, :, r - f] = kept_col
    return seen_cols, kept_col, kept_pos, kept_acc


def _evict_numpy(scores, kept_col, kept_pos, kept_acc, n, f, recent):
    """:func:`_evict_torch` on CPU float tensors, in NumPy on the ``B H`` rows at once (a NumPy call
    on these small arrays costs about a microsecond, a torch op several), the same decisions.

    Most tokens drop the pair that has just left the ``recent`` newest (the heavy hitters have
    gathered more attention), so the tokens go in blocks of up to ``recent``: each block guesses
    that drop for every token, computes the block's softmaxes and accumulated attention at once
    (``cumsum``: the same sums, in the same order, as token by token), applies the rule to every
    token of it with those values, and keeps the tokens up to the first whose rule drops another
    pair; that token takes one step of the rule (:func:`_numpy_step`), and the blocks go on."""
    b, h, t, c = scores.shape
    p = kept_pos.shape[-1]
    rows = b * h
    s_all = np.ascontiguousarray(scores.reshape(rows, t, c).numpy()).reshape(-1)  # flat: read with take()
    if kept_col is None:  # slot j holds column j of [held, chunk]
        col = np.empty((rows, p), dtype=np.int64)
        col[:] = np.arange(p)
    else:
        col = kept_col.reshape(rows, p).numpy().copy()
    pos = kept_pos.reshape(rows, p).numpy().copy()
    acc = kept_acc.reshape(rows, p).numpy().copy()
    seen_cols = np.empty((rows, t - f, p), dtype=np.int64)  # the slots' columns after each token: what it sees
    row = np.arange(rows)
    row_at = row * (t * c)  # where each row's scores start in s_all
    inf = np.array(np.inf, dtype=acc.dtype)
    r, size = f, min(recent, _BLOCK)
    while r < t:
        if size >= 2 and t - r >= 2:
            k = min(size, t - r)
            done = _numpy_block(s_all, row_at, c, col, pos, acc, seen_cols, n, r, f, k, p, recent, inf)
            r += done
            size = min(recent, _BLOCK, 2 * size) if done == k else max(1, done)
            if done == k:
                continue
        _numpy_step(s_all, row_at + r * c, col, pos, acc, seen_cols, n, r, f, p, recent, row, inf)
        r += 1
        size = max(size, 2)
    return tuple(torch.from_numpy(x.reshape(b, h, *x.shape[1:])) for x in (seen_cols, col, pos, acc))


_BLOCK = 64  # the most tokens a block guesses


def _numpy_step(s_all, at, col, pos, acc, seen_cols, n, r, f, p, recent, row, inf):
    """One token of the rule (steps 1-3) on the NumPy rows, in place (``s_all[at[j]:]``: row ``j``'s
    scores of query ``r``)."""
    i = n + r
    older = pos <= i - recent
    a = np.where(older, acc, inf)
    low = a.min(1)
    if recent == 0:  # the new pair (A = 0, the latest position) is older too: it goes if it ties the smallest
        low = np.minimum(low, 0)
        stays = low != 0  # rows where an old pair goes (NaN: slot 0, as argmax of no tie in the torch path)
    drop = np.where(older & (a == low[:, None]), pos, -1).argmax(1)
    rr, dd = (row, drop) if recent else (row[stays], drop[stays])
    col[rr, dd], pos[rr, dd], acc[rr, dd] = p + r, i, 0  # the new pair takes the dropped slot
    sr = s_all.take(at[:, None] + col)  # [BH, P]: the query's scores of the kept slots, the candidates it sees
    e = np.exp(sr - sr.max(1, keepdims=True))
    acc += e / e.sum(1, keepdims=True)
    seen_cols[:, r - f] = col


def _numpy_block(s_all, row_at, c, col, pos, acc, seen_cols, n, r0, f, k, p, recent, inf):
    """Tokens ``r0 .. r0 + k - 1`` (``2 <= k <= recent``) guessing that each drops the pair at
    ``i - recent``; applies the ones up to the first the rule disagrees with, in place, and returns
    how many (0 .. k)."""
    i0 = n + r0
    kk = np.arange(k)[None, :, None]
    tau = pos - (i0 - recent)  # the block token whose guess drops each slot (k: none)
    tau = np.where((tau >= 0) & (tau < k), tau, k)
    tau3 = tau[:, None, :]
    cols = np.where(tau3 <= kk, p + r0 + tau3, col[:, None, :])  # [BH, k, P]: the slots' columns at each token
    sr = s_all.take((row_at[:, None, None] + (r0 + kk) * c) + cols)
    e = np.exp(sr - sr.max(2, keepdims=True))
    w = e / e.sum(2, keepdims=True)
    # A of the slots' first pairs before each token: acc + w_0 + ... + w_{j-1}, summed in order
    before = np.cumsum(np.concatenate([acc[:, None, :], w[:, :k - 1]], 1), 1)
    older = (tau3 >= kk) & (pos[:, None, :] <= i0 + kk - recent)  # the first pairs still held, older than recent
    a = np.where(older, before, inf)
    low = a.min(2, keepdims=True)
    drop = np.where(older & (a == low), pos[:, None, :], -1).argmax(2)  # [BH, k]: the rule's drop at each token
    agree = (tau[np.arange(len(tau))[:, None], drop] == np.arange(k)).all(0)
    done = k if agree.all() else int(agree.argmin())
    if done:
        tau_d = np.where(tau < done, tau, k)
        new = tau_d < k
        start = np.where(new, 0, acc)  # a replaced slot starts from its new pair's A = 0
        keep = (kk[:, :done] >= tau_d[:, None, :]) | ~new[:, None, :]
        acc[:] = np.cumsum(np.concatenate([start[:, None, :], np.where(keep, w[:, :done], 0)], 1), 1)[:, done]
        col[:] = cols[:, done - 1]
        pos[:] = np.where(new, i0 + tau_d, pos)
        seen_cols[:, r0 - f:r0 - f + done] = cols[:, :done]
    return done
