r"""Recurrent matrix memories: linear attention (fast weights) and the delta rule.

Both keep a fixed ``d_h x d_v`` matrix ``S`` whatever the length of the text.

Linear attention (Katharopoulos et al., 2020), ``phi(x) = elu(x) + 1``::

    S_i = S_{i-1} + phi(k_i)^T v_i        z_i = z_{i-1} + phi(k_i)
    out_i = phi(q_i) S_i / (phi(q_i) . z_i)

Every association is added on top of the others, so they interfere once there are more
than about ``d_h`` of them. The delta rule (DeltaNet) first reads what the memory holds for
``k_i`` and writes only the correction, with normalised keys and queries::

    S_i = S_{i-1} + beta_i k^_i^T (v_i - k^_i S_{i-1})        out_i = q^_i S_i

The write strength ``beta_i`` is a fixed number (``DeltaMemory(beta=0.5)``) or, as in DeltaNet
(Yang et al., 2024), learned per head and token from the layer's input ``x_i``:
``beta_i = sigma(W_beta x_i)`` in ``(0, 1)`` (``DeltaMemory(beta="learned")``; the attention
layer of ``MemoryLM`` owns ``W_beta`` and passes ``beta`` to ``forward``).

Each comes three ways (the same numbers):

* ``*_recurrent``: the loop over tokens, the equation as written (the reference; decoding);
* ``linear_attention_parallel``: the quadratic causal form ``(phi(Q) phi(K)^T masked) V``;
* ``*_chunked``: chunks of ``C`` tokens, quadratic inside a chunk and the recurrence across
  chunks. For the delta rule the chunk's writes are found at once with the WY/UT transform:
  ``U = (I + tril(diag(beta) K K^T, -1))^{-1} diag(beta) (V - K S_0)`` (a triangular solve).

Positions: both are read by content alone, so ``MemoryLM`` gives them keys and queries that
are *not* rotated by their positions (``uses_rotary = False``), as linear-attention and
DeltaNet models do; order comes from the other layers. With rotated keys the same content at
two positions gives two different keys, which defeats the delta rule's overwrite and adds
cross-talk (for the delta rule's normalised keys the score stays relative, ``q R_{j-i} k``; for
linear attention ``phi`` after the rotation breaks even that). Lesson 05 measures it on 3 seeds
(``python -m course_lib.experiments.lesson05 rotary``): unrotated keys did better on average, by
less than the seed spread.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._checks import check_positive_int
from ._gates import BETA, LEARNED, check_gate_option, per_call
from ._state import StateMeta, check_input, meta_of, new_meta
from .base import Memory

__all__ = [
    "LinearMemory", "DeltaMemory", "LinearState", "DeltaState", "phi",
    "linear_attention_recurrent", "linear_attention_parallel", "linear_attention_chunked",
    "delta_rule_recurrent", "delta_rule_chunked",
]


def phi(x: torch.Tensor) -> torch.Tensor:
    """The feature map of linear attention, ``elu(x) + 1 > 0``."""
    return F.elu(x) + 1


def _initial(q, v, S, z):
    b, h, _, d = q.shape
    if S is None:
        S = q.new_zeros(b, h, d, v.shape[-1])
    if z is None:
        z = q.new_zeros(b, h, d)
    return S, z


# -- linear attention ------------------------------------------------------------------------
def linear_attention_recurrent(q, k, v, S=None, z=None):
    """The token loop: returns ``(out [B, H, T, D_v], S [B, H, D, D_v], z [B, H, D])``; also the decoding
    step of :class:`LinearMemory`. :func:`course_lib.memory.reference.linear_attention_reference` is the rule."""
    S, z = _initial(q, v, S, z)
    outs = []
    # one view per token, made once (unbind): indexing x[:, :, i] in the loop would make each token's
    # backward write a whole [B, H, T, D] gradient, O(T^2) for the loop
    for fq_i, fk_i, v_i in zip(*(x.unbind(2) for x in (phi(q), phi(k), v))):
        S = S + fk_i[..., None] * v_i[..., None, :]  # + phi(k_i)^T v_i
        z = z + fk_i
        num = (fq_i[..., None] * S).sum(-2)  # phi(q_i) S_i   [B, H, D_v]
        den = (fq_i * z).sum(-1, keepdim=True)  # phi(q_i) . z_i
        outs.append(num / den)
    return torch.stack(outs, dim=2), S, z


def linear_attention_parallel(q, k, v, S=None, z=None):
    """The quadratic causal form: ``out = (phi(Q) S_0 + A V) / (phi(Q) z_0 + A 1)``, ``A = tril(phi(Q) phi(K)^T)``."""
    S, z = _initial(q, v, S, z)
    fq, fk = phi(q), phi(k)
    a = (fq @ fk.transpose(-2, -1)).tril()  # [B, H, T, T]
    num = fq @ S + a @ v
    den = fq @ z[..., None] + a.sum(-1, keepdim=True)
    return num / den, S + fk.transpose(-2, -1) @ v, z + fk.sum(2)


def linear_attention_chunked(q, k, v, S=None, z=None, chunk_size=64):
    """Chunks of ``C`` tokens: quadratic inside, the state carried across (all chunks at once)."""
    S, z = _initial(q, v, S, z)
    b, h, t, d = q.shape
    c = chunk_size
    n = -(-t // c)
    pad = n * c - t
    fq, fk = phi(q), phi(k)
    if pad:  # zero features after phi: padded keys add nothing, padded queries are dropped
        fq, fk, v = (F.pad(x, (0, 0, 0, pad)) for x in (fq, fk, v))
    fq, fk, vc = (x.unflatten(2, (n, c)) for x in (fq, fk, v))  # [B, H, N, C, D]
    kv = fk.transpose(-2, -1) @ vc  # [B, H, N, D, D_v]: each chunk's sum of phi(k)^T v
    ks = fk.sum(3)  # [B, H, N, D]
    # state before each chunk: S_0 plus the sums of the earlier chunks
    s_before = S[:, :, None] + torch.cat([torch.zeros_like(kv[:, :, :1]), kv[:, :, :-1].cumsum(2)], 2)
    z_before = z[:, :, None] + torch.cat([torch.zeros_like(ks[:, :, :1]), ks[:, :, :-1].cumsum(2)], 2)
    a = (fq @ fk.transpose(-2, -1)).tril()  # [B, H, N, C, C]
    num = fq @ s_before + a @ vc  # [B, H, N, C, D_v]
    den = fq @ z_before[..., None] + a.sum(-1, keepdim=True)
    out = num.flatten(2, 3)[:, :, :t] / den.flatten(2, 3)[:, :, :t]  # padded rows (0 / 0) dropped first
    return out, S + kv.sum(2), z + ks.sum(2)


# -- delta rule --------------------------------------------------------------------------------
def _beta(beta, b, h, t, like):
    """``beta`` as a ``[B, H, T]`` tensor."""
    if isinstance(beta, torch.Tensor):
        return beta.to(like.dtype).expand(b, h, t)
    return like.new_full((b, h, t), float(beta))


def delta_rule_recurrent(q, k, v, beta, S=None):
    """The token loop: ``S_i = S_{i-1} + beta_i k^_i^T (v_i - k^_i S_{i-1})``, ``out_i = q^_i S_i``; also
    the decoding step of :class:`DeltaMemory`. :func:`course_lib.memory.reference.delta_rule_reference` is the rule."""
    return delta_recurrence(q, k, v, beta, S)


def delta_recurrence(q, k, v, beta, S=None, alpha=None):
    """The delta rule's token loop, with a decay ``alpha [B, H, T]`` of the state before each write
    when given (the gated delta rule, :func:`course_lib.memory.gated.gated_delta_recurrent`)."""
    S, _ = _initial(q, v, S, None)
    b, h, t, _ = q.shape
    qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    beta = _beta(beta, b, h, t, q)
    outs = []
    # one view per token, made once (split): per-token indexing would make the backward O(T^2)
    steps = zip(qn.split(1, 2), kn.split(1, 2), v.split(1, 2), beta[..., None, None].split(1, 2),
                (alpha[..., None, None] if alpha is not None else beta[..., None, None]).split(1, 2))
    for qi, ki, vi, bi, ai in steps:  # qi, ki [B, H, 1, D], vi [B, H, 1, D_v], bi, ai [B, H, 1, 1, 1]
        if alpha is not None:
            S = ai[:, :, 0] * S  # alpha_i S_{i-1}: forget first
        u = bi[:, :, 0] * (vi - ki @ S)  # [B, H, 1, D_v]
        S = S + ki.transpose(-2, -1) @ u
        outs.append(qi @ S)
    return torch.cat(outs, dim=2), S


def to_chunks(c, *xs):
    """``x [B, H, T, ...]`` -> ``[B, H, N, C, ...]``, ``N = ceil(T / C)``, zero rows padded at the end."""
    t = xs[0].shape[2]
    n = -(-t // c)
    pad = n * c - t
    out = []
    for x in xs:
        if pad:
            x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, pad))
        out.append(x.unflatten(2, (n, c)))
    return out


def lower_decay(g, *, strict=False):
    """``L_ij = exp(g_i - g_j)`` for ``j <= i`` (``j < i`` if ``strict``), ``0`` above, from the
    cumulative log-decays ``g [..., C]`` (``g_i = sum_{s <= i} log alpha_s``): the decay
    ``prod_{j < s <= i} alpha_s`` from position ``j`` to ``i``, ``[..., C, C]``. Masked before the
    ``exp``, so no ``exp`` of a positive number is ever taken."""
    c = g.shape[-1]
    mask = torch.ones(c, c, dtype=torch.bool, device=g.device).tril(-1 if strict else 0)
    return torch.where(mask, g[..., :, None] - g[..., None, :], float("-inf")).exp()


def delta_rule_chunked(q, k, v, beta, S=None, chunk_size=64):
    """Chunks of ``C`` tokens; inside a chunk the writes come from one triangular solve (WY/UT).

    With ``K, V, beta`` of one chunk and ``S_0`` the state before it, the writes ``u_t``
    satisfy ``u_t + beta_t sum_{s<t} (k^_t . k^_s) u_s = beta_t (v_t - k^_t S_0)``, so
    ``U = W_v - W_k S_0`` with ``[W_k, W_v] = (I + tril(diag(beta) K K^T, -1))^{-1} diag(beta) [K, V]``;
    then ``O = Q S_0 + tril(Q K^T) U`` and ``S = S_0 + K^T U``.
    """
    return delta_chunk_scan(q, k, v, beta, S, chunk_size)


def delta_chunk_scan(q, k, v, beta, S=None, chunk_size=64, log_alpha=None):
    """:func:`delta_rule_chunked`, with a decay of the state before each write when ``log_alpha``
    ``[B, H, T]`` is given (the gated delta rule: :func:`course_lib.memory.gated.gated_delta_chunked`
    derives the decayed form)."""
    S, _ = _initial(q, v, S, None)
    b, h, t, d = q.shape
    qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    # beta = 0 on padding: padded tokens write nothing (and alpha = 1 there: log 0)
    qn, kn, vc = to_chunks(chunk_size, qn, kn, v)  # [B, H, N, C, D]
    bc = to_chunks(chunk_size, _beta(beta, b, h, t, q))[0][..., None]  # [B, H, N, C, 1]
    n, c = kn.shape[2], kn.shape[3]
    eye = torch.eye(c, dtype=q.dtype, device=q.device)
    bkk = (bc * kn) @ kn.transpose(-2, -1)  # diag(beta) K K^T
    qk = (qn @ kn.transpose(-2, -1)).tril()  # [B, H, N, C, C]
    write_k, read_q, write_back, keep = bc * kn, qn, kn, None
    if log_alpha is not None:
        g = to_chunks(chunk_size, log_alpha)[0].cumsum(-1)  # [B, H, N, C]: log gamma_t, within the chunk
        decay = lower_decay(g)  # Gamma_ts = gamma_t / gamma_s, s <= t
        bkk, qk = bkk * decay, qk * decay
        gamma = g.exp()[..., None]
        write_k, read_q = write_k * gamma, qn * gamma  # diag(beta gamma) K, diag(gamma) Q
        write_back = kn * (g[..., -1:] - g).exp()[..., None]  # k_s gamma_C / gamma_s
        keep = g[..., -1].exp()[..., None, None]  # gamma_C [B, H, N, 1, 1]
    a = eye + bkk.tril(-1)  # [B, H, N, C, C] unit lower triangular
    w = torch.linalg.solve_triangular(a, torch.cat([write_k, bc * vc], -1), upper=False, unitriangular=True)
    w_k, w_v = w.split([d, vc.shape[-1]], dim=-1)
    outs = []
    for j in range(n):
        u = w_v[:, :, j] - w_k[:, :, j] @ S  # [B, H, C, D_v]
        outs.append(read_q[:, :, j] @ S + qk[:, :, j] @ u)
        S = (S if keep is None else keep[:, :, j] * S) + write_back[:, :, j].transpose(-2, -1) @ u
    return torch.cat(outs, dim=2)[:, :, :t], S


# -- memories ------------------------------------------------------------------------------------
@dataclass
class LinearState(StateMeta):
    """``S [B, H, D, D_v]`` and ``z [B, H, D]`` after ``length`` tokens."""

    S: torch.Tensor
    z: torch.Tensor
    length: int


@dataclass
class DeltaState(StateMeta):
    """``S [B, H, D, D_v]`` after ``length`` tokens."""

    S: torch.Tensor
    length: int


def _check_chunk_size(chunk_size):
    return check_positive_int("chunk_size", chunk_size)


class LinearMemory(Memory):
    """Linear-attention memory (fast weights): ``S_i = S_{i-1} + phi(k_i)^T v_i``.

    Args:
        chunk_size: ``C``, chunk length of the chunked form used for chunks of ``T > 1`` tokens.
    """

    name = "linear"
    title = "linear"
    uses_rotary = False  # read by content: see the module docstring
    sized_by_head_dim = True

    def __init__(self, chunk_size: int = 64):
        super().__init__()
        self.chunk_size = _check_chunk_size(chunk_size)

    def cost_per_token(self, config, context: int) -> dict:
        """``S`` and ``z`` per head, ``L tau (d_h^2 + d_h) b`` bytes; ``~4 L tau d_h^2`` FLOPs
        (write ``phi(k)^T v``, read ``phi(q) S``), whatever the context."""
        return matrix_cost(config, extra=config.head_dim)

    def init_state(self, batch, n_heads, head_dim, *, device=None, dtype=None, v_dim=None):
        meta = new_meta(batch, n_heads, head_dim, device=device, dtype=dtype, v_dim=v_dim)
        kw = dict(device=meta["device"], dtype=meta["dtype"])
        return LinearState(**meta, S=torch.zeros(batch, n_heads, head_dim, meta["v_dim"], **kw),
                           z=torch.zeros(batch, n_heads, head_dim, **kw), length=0)

    def forward(self, q, k, v, state):
        """:func:`course_lib.memory.reference.linear_attention_reference` is the rule."""
        check_input(self, q, k, v, state, LinearState)
        t = q.shape[2]
        if t == 1:
            out, S, z = linear_attention_recurrent(q, k, v, state.S, state.z)
        else:
            out, S, z = linear_attention_chunked(q, k, v, state.S, state.z, min(self.chunk_size, t))
        return out, LinearState(**meta_of(state), S=S.detach(), z=z.detach(), length=state.length + t)


class DeltaMemory(Memory):
    """Delta-rule memory: ``S_t = S_{t-1} + beta_t k^_t^T (v_t - k^_t S_{t-1})``, ``out_t = q^_t S_t``.

    Args:
        beta: the write strength ``beta_t``, either

            * a float in ``[0, 2]``, the same for every head and token (``1`` replaces what the
              memory held for ``k^_t``, ``< 1`` blends, ``> 1`` overshoots); the default ``1.0``;
            * ``"learned"``: DeltaNet's write strength ``beta_t = sigma(W_beta x_t)`` in ``(0, 1)``,
              one per head and token, from the layer's input ``x_t``. The memory only declares it
              (``learns_beta = True``); the attention layer of :class:`~course_lib.models.MemoryLM`
              owns ``W_beta`` (``Linear(d_model, n_heads)``, weight ``N(0, 0.02^2)``, bias ``0``, so
              ``beta_t`` starts near ``sigma(0) = 0.5``, as DeltaNet's bias-free ``b_proj`` at its
              initialisation) and passes ``beta`` ``[B, H, T]`` to :meth:`forward`.

            ``forward(..., beta=...)`` may give it per call: a float or a ``[B, H, T]`` tensor with
            values in ``[0, 2]`` (a ``"learned"`` memory needs it there).
        chunk_size: ``C``, chunk length of the chunked (WY/UT) form used for ``T > 1``.
    """

    name = "delta"
    title = "delta"
    symbols = {"beta": "beta"}  # in the label unless it is the default 1
    uses_rotary = False  # read by content: see the module docstring
    sized_by_head_dim = True

    def __init__(self, beta: float | str = 1.0, chunk_size: int = 64):
        super().__init__()
        self.beta = check_gate_option(BETA, beta)
        self.learns_beta = self.beta == LEARNED  # read by MemoryLM's attention layer: it then owns W_beta
        self.chunk_size = _check_chunk_size(chunk_size)

    def cost_per_token(self, config, context: int) -> dict:
        """``S`` per head, ``L tau d_h^2 b`` bytes; ``~4 L tau d_h^2`` FLOPs, whatever the context
        (a learned ``beta_t`` adds ``W_beta``'s ``2 d tau`` FLOPs per layer, left out like the projections)."""
        return matrix_cost(config, extra=0)

    def init_state(self, batch, n_heads, head_dim, *, device=None, dtype=None, v_dim=None):
        meta = new_meta(batch, n_heads, head_dim, device=device, dtype=dtype, v_dim=v_dim)
        S = torch.zeros(batch, n_heads, head_dim, meta["v_dim"], device=meta["device"], dtype=meta["dtype"])
        return DeltaState(**meta, S=S, length=0)

    def forward(self, q, k, v, state, beta=None):
        """``beta``: this call's write strength, a float or a ``[B, H, T]`` tensor in ``[0, 2]``
        (``None``: the memory's own; a ``beta="learned"`` memory has none and needs it).
        :func:`course_lib.memory.reference.delta_rule_reference` is the rule."""
        check_input(self, q, k, v, state, DeltaState)
        beta = per_call(self, BETA, beta, k)
        return self._write_and_read(q, k, v, state, beta)

    def forward_unchecked(self, q, k, v, state, beta=None):
        """:meth:`forward` for a caller that checked once (the decoding step): with a ``beta``
        tensor the checks are skipped; without one this is ``forward`` itself, as before."""
        if beta is None:
            return self(q, k, v, state)
        return self._write_and_read(q, k, v, state, beta)

    def _write_and_read(self, q, k, v, state, beta):
        out, S = step_or_chunks(delta_rule_recurrent, delta_rule_chunked, self.chunk_size, q, k, v, state.S, beta)
        return out, DeltaState(**meta_of(state), S=S.detach(), length=state.length + q.shape[2])


def step_or_chunks(recurrent, chunked, chunk_size, q, k, v, S, *gates):
    """``recurrent(q, k, v, *gates, S)`` for one token (the decoding step), else
    ``chunked(q, k, v, *gates, S, C)`` with ``C = min(chunk_size, T)``: ``(out, S)``."""
    t = q.shape[2]
    if t == 1:
        return recurrent(q, k, v, *gates, S)
    return chunked(q, k, v, *gates, S, min(chunk_size, t))


def matrix_cost(config, extra: int, flops_per_entry: int = 4) -> dict:
    """``L tau (d_h^2 + extra)`` values of ``S`` (and ``z``) and ``flops_per_entry`` FLOPs per entry of ``S``."""
    L, tau, d = config.n_layers, config.n_heads, config.head_dim
    return {"bytes": L * tau * (d * d + extra) * config.bytes_per_value, "flops": flops_per_entry * L * tau * d * d}
