r"""Gated matrix memories: a decay that forgets on purpose, and the gated delta rule.

The matrix memories of :mod:`course_lib.memory.linear` never forget: every association stays in
``S`` until another one is written over it. The fixed-size memories of today's language models
multiply the state by a decay ``alpha_t`` in ``(0, 1]`` before each write::

    decay (RetNet, Mamba-2, GLA):   S_t = alpha_t S_{t-1} + k_t^T v_t                      out_t = q_t S_t
    gated delta (Gated DeltaNet):   S_t = alpha_t (I - beta_t k^_t^T k^_t) S_{t-1} + beta_t k^_t^T v_t
                                                                                           out_t = q^_t S_t

``alpha`` is one family with three members, by what it depends on: a fixed number (RetNet's
decay, ``DecayMemory(0.97)``), one number per head and token (Mamba-2's ``alpha_t``, a ``[B, H, T]``
tensor), or one per key channel as well (gated linear attention's ``diag(alpha_t)``, ``[B, H, T, D]``,
decay only: ``S_t = diag(alpha_t) S_{t-1} + k_t^T v_t``). ``alpha = 1`` is no forgetting; the
gated delta rule with ``alpha = 1`` is :class:`~course_lib.memory.DeltaMemory` exactly, and
``beta`` controls how strongly a token writes, ``alpha`` how fast the past fades. Learned, both come
from small projections of the layer's input ``x_t``: ``alpha_t = exp(-softplus(W_alpha x_t + b))``
(Mamba-2, Gated DeltaNet) and ``beta_t = sigma(W_beta x_t)`` (DeltaNet); the attention layer of
:class:`~course_lib.models.MemoryLM` owns ``W_alpha, b`` and ``W_beta`` (``alpha="learned"``).

**The output of the decay memory is normalised, not divided by a normaliser.** Linear attention
divides by ``phi(q_t) . z_t`` with ``z_t = sum phi(k_s)``; that needs positive features, and under a
decay the sum can shrink towards zero and the division blow up (TransNormer, Qin et al. 2022, traces
linear attention's unstable gradients to this denominator). RetNet, gated linear attention and
Mamba-2 drop it and normalise the output instead, which bounds the output whatever the decay, and
so does :class:`DecayMemory`: ``out_t = o_t / sqrt(mean(o_t^2) + eps)``, ``o_t = q_t S_t``, per head
(an RMS norm without a gain: the layer's ``W_o`` follows). Keys and queries are used as they are,
no feature map. The gated delta memory needs no normalisation: with unit keys, ``beta`` in ``[0, 2]``
and ``alpha <= 1`` its state stays bounded, as the delta rule's does (it is read as ``q^_t S_t``, as
DeltaMemory is, so that ``alpha = 1`` gives DeltaMemory's numbers).

Each comes in the forms of :mod:`course_lib.memory.linear`:

* ``*_recurrent``: the loop over tokens, the equation as written (also the decoding step);
* ``*_chunked``: chunks of ``C`` tokens. Inside a chunk, with ``g_t = sum_{s <= t} log alpha_s``
  (from the chunk's start), the decay from ``s`` to ``t`` is ``Gamma_ts = exp(g_t - g_s)`` (``s <= t``):
  the outputs are attention-like matmuls ``(Q K^T o Gamma) V`` plus the state before the chunk read
  through ``exp(g_t) q_t``, and the chunk's writes, decayed to its end, pass to the next chunk;
  for the gated delta rule the writes come from the WY/UT triangular solve with ``Gamma`` in it;
* ``decay_parallel``: one chunk of the whole text, ``O = (Q K^T o L) V`` with the decay mask
  ``L_ij = prod_{j < s <= i} alpha_s`` (Mamba-2's state-space duality: a decayed linear attention is a
  masked attention).

Positions: read by content, with unrotated keys (``uses_rotary = False``), as linear and delta.
:mod:`course_lib.memory.reference` holds the plain rules, ``decay_reference`` and
``gated_delta_reference``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._gates import ALPHA, BETA, LEARNED, check_gate_option, per_call
from ._state import check_input, meta_of, new_meta
from .base import Memory
from .linear import (
    DeltaState,
    _check_chunk_size,
    _initial,
    delta_chunk_scan,
    delta_recurrence,
    lower_decay,
    matrix_cost,
    step_or_chunks,
    to_chunks,
)

__all__ = [
    "DecayMemory", "GatedDeltaMemory", "DecayState", "GatedDeltaState", "rms_normalize",
    "decay_recurrent", "decay_chunked", "decay_parallel", "gated_delta_recurrent", "gated_delta_chunked",
]

EPS = 1e-6  # the output normalisation's eps (reference.decay_reference states the same)
SCALAR = (("B", "H", "T"),)  # Mamba-2's alpha_t: one per head and token
CHANNELS = (("B", "H", "T"), ("B", "H", "T", "D"))  # ... or per key channel too (gated linear attention)


def rms_normalize(o: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``o / sqrt(mean(o^2) + eps)`` over the last dimension: the decay memory's output normalisation."""
    return o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + eps)


def _alpha(alpha, b, h, t, like):
    """``alpha`` as a ``[B, H, T, G]`` tensor: ``G = 1`` (a float, or one per head and token) or ``D``."""
    if not isinstance(alpha, torch.Tensor):
        return like.new_full((b, h, t, 1), float(alpha))
    alpha = alpha.to(like.dtype)
    return alpha[..., None] if alpha.dim() == 3 else alpha


def _log_alpha(alpha, b, h, t, like):
    """``log alpha`` as ``[B, H, T, G]`` (a float's logarithm taken once, exactly)."""
    if not isinstance(alpha, torch.Tensor):
        return like.new_full((b, h, t, 1), math.log(alpha))
    return _alpha(alpha, b, h, t, like).log()


# -- decay ---------------------------------------------------------------------------------------
def decay_recurrent(q, k, v, alpha, S=None):
    """The token loop ``S_t = alpha_t S_{t-1} + k_t^T v_t``, ``o_t = q_t S_t`` (``diag(alpha_t) S_{t-1}``
    for a per-channel ``alpha [B, H, T, D]``): returns ``(o [B, H, T, D_v], S [B, H, D, D_v])``,
    unnormalised; also the decoding step of :class:`DecayMemory`.
    :func:`course_lib.memory.reference.decay_reference` is the rule."""
    S, _ = _initial(q, v, S, None)
    b, h, t, _ = q.shape
    a = _alpha(alpha, b, h, t, q)  # [B, H, T, G]
    outs = []
    # one view per token, made once (unbind): per-token indexing would make the backward O(T^2)
    for q_t, k_t, v_t, a_t in zip(*(x.unbind(2) for x in (q, k, v, a))):
        S = a_t[..., None] * S + k_t[..., None] * v_t[..., None, :]  # alpha_t S_{t-1} + k_t^T v_t
        outs.append(q_t[..., None, :] @ S)  # q_t S_t  [B, H, 1, D_v]
    return torch.cat(outs, dim=2), S


def decay_chunked(q, k, v, alpha, S=None, chunk_size=64):
    """Chunks of ``C`` tokens, all at once: returns ``(o, S)`` as :func:`decay_recurrent`.

    In a chunk, with ``g_t = sum_{s <= t} log alpha_s`` from its start and ``S_0`` the state before it::

        o_t = exp(g_t) q_t S_0 + sum_{s <= t} exp(g_t - g_s) (q_t . k_s) v_s
        S_C = exp(g_C) S_0 + sum_s exp(g_C - g_s) k_s^T v_s

    (per channel: ``exp(g_t - g_s)`` weights each channel of ``q_t . k_s``). The states before
    the chunks come at once too, by the same decay mask over the chunks: with ``E_n`` the log-decay
    of the chunks before chunk ``n``, ``S^(n) = exp(E_n) S_0 + sum_{m < n} exp(E_n - E_{m+1}) W_m``,
    ``W_m`` chunk ``m``'s writes decayed to its end.
    """
    S, _ = _initial(q, v, S, None)
    b, h, t, d = q.shape
    per_channel = isinstance(alpha, torch.Tensor) and alpha.dim() == 4
    # padding: k = v = 0 writes nothing, log alpha = 0 keeps the state; padded queries are dropped
    qc, kc, vc, lc = to_chunks(chunk_size, q, k, v, _log_alpha(alpha, b, h, t, q))  # [B, H, N, C, *]
    g = lc.cumsum(3)  # [B, H, N, C, G]: g_t within each chunk
    g_end = g[:, :, :, -1]  # [B, H, N, G]: each chunk's whole log-decay
    if per_channel:
        mask = lower_decay(g.transpose(-2, -1))  # [B, H, N, D, C, C]
        scores = torch.einsum("bhntd,bhnsd,bhndts->bhnts", qc, kc, mask)
    else:
        scores = (qc @ kc.transpose(-2, -1)) * lower_decay(g[..., 0])  # (Q K^T o Gamma) [B, H, N, C, C]
    writes = (kc * (g_end[:, :, :, None] - g).exp()).transpose(-2, -1) @ vc  # W_n [B, H, N, D, D_v]
    E = torch.cat([torch.zeros_like(g_end[:, :, :1]), g_end.cumsum(2)], dim=2)  # [B, H, N + 1, G]
    if per_channel:
        between = lower_decay(E.transpose(-2, -1))[..., 1:]  # [B, H, D, N + 1, N]: exp(E_n - E_{m+1}), m < n
        states = torch.einsum("bhdnm,bhmde->bhnde", between, writes)
    else:
        between = lower_decay(E[..., 0])[..., 1:]  # [B, H, N + 1, N]
        states = (between @ writes.flatten(-2)).unflatten(-1, writes.shape[-2:])
    states = states + E.exp()[..., None] * S[:, :, None]  # [B, H, N + 1, D, D_v]: before each chunk, and at the end
    o = (qc * g.exp()) @ states[:, :, :-1] + scores @ vc  # [B, H, N, C, D_v]
    return o.flatten(2, 3)[:, :, :t], states[:, :, -1]


def decay_parallel(q, k, v, alpha, S=None):
    """The fully parallel (quadratic) form: one chunk of the whole text,
    ``O = diag(exp(g)) Q S_0 + (Q K^T o L) V`` with the decay mask ``L_ij = prod_{j < s <= i} alpha_s``
    (``1`` on the diagonal, ``0`` above): a masked attention without a softmax (state-space duality)."""
    return decay_chunked(q, k, v, alpha, S, chunk_size=q.shape[2])


# -- gated delta -----------------------------------------------------------------------------------
def gated_delta_recurrent(q, k, v, alpha, beta, S=None):
    """The token loop ``S_t = alpha_t (I - beta_t k^_t^T k^_t) S_{t-1} + beta_t k^_t^T v_t``, ``out_t = q^_t S_t``,
    computed as ``S_t = alpha_t S_{t-1} + beta_t k^_t^T (v_t - k^_t alpha_t S_{t-1})``; ``alpha`` a float
    or ``[B, H, T]``, ``beta`` a float or ``[B, H, T]``. Returns ``(out, S)``; also the decoding step
    of :class:`GatedDeltaMemory`. :func:`course_lib.memory.reference.gated_delta_reference` is the rule."""
    b, h, t, _ = q.shape
    return delta_recurrence(q, k, v, beta, S, alpha=_alpha(alpha, b, h, t, q)[..., 0])


def gated_delta_chunked(q, k, v, alpha, beta, S=None, chunk_size=64):
    """Chunks of ``C`` tokens; the writes of a chunk from one triangular solve (the WY/UT form with decay).

    In a chunk, with ``gamma_t = prod_{s <= t} alpha_s`` from its start, ``Gamma_ts = gamma_t / gamma_s``
    (``s <= t``) and ``S_0`` the state before it, unrolling gives
    ``S_t = gamma_t S_0 + sum_{s <= t} Gamma_ts k^_s^T u_s`` with the writes
    ``u_t = beta_t (v_t - k^_t alpha_t S_{t-1})``, which satisfy
    ``u_t + beta_t sum_{s < t} Gamma_ts (k^_t . k^_s) u_s = beta_t (v_t - gamma_t k^_t S_0)``. So
    ``U = W_v - W_k S_0`` with ``A = I + tril(diag(beta) (K K^T o Gamma), -1)``,
    ``W_v = A^{-1} diag(beta) V``, ``W_k = A^{-1} diag(beta gamma) K``; then
    ``O = diag(gamma) Q S_0 + (tril(Q K^T) o Gamma) U`` and ``S_C = gamma_C S_0 + (diag(gamma_C / gamma) K)^T U``.
    With ``alpha = 1`` (``Gamma = 1``) it is :func:`~course_lib.memory.delta_rule_chunked`.
    """
    b, h, t, _ = q.shape
    return delta_chunk_scan(q, k, v, beta, S, chunk_size, log_alpha=_log_alpha(alpha, b, h, t, q)[..., 0])


# -- memories ----------------------------------------------------------------------------------------
@dataclass
class DecayState(DeltaState):
    """``S [B, H, D, D_v]`` after ``length`` tokens."""


@dataclass
class GatedDeltaState(DeltaState):
    """``S [B, H, D, D_v]`` after ``length`` tokens."""


class _GatedMatrixMemory(Memory):
    """What the two gated memories share: a ``d_h x d_v`` state, ``alpha`` fixed or learned, and the
    one-token step (the recurrence) or the chunked form by the length of the call."""

    symbols = {"alpha": "alpha"}
    uses_rotary = False  # read by content: see the module docstring
    sized_by_head_dim = True
    state_type = DecayState
    flops_per_entry = 5  # the write and the read (4 d_h^2, as linear), and the decay alpha_t S (d_h^2)

    def __init__(self, alpha, chunk_size: int = 64):
        super().__init__()
        self.alpha = check_gate_option(ALPHA, alpha)
        self.learns_alpha = self.alpha == LEARNED  # read by MemoryLM's attention layer: it then owns W_alpha
        self.chunk_size = _check_chunk_size(chunk_size)

    @classmethod
    def example_sizes(cls, slots: int = 8, *, n_heads: int = 2) -> dict:
        return {"alpha": 0.97}  # RetNet's first head decays by 1 - 2^-5: half-life ~ 22 tokens

    def cost_per_token(self, config, context: int) -> dict:
        """``S`` per head, ``L tau d_h^2 b`` bytes; ``~{5, 7} L tau d_h^2`` FLOPs (write, read, decay;
        gated delta also reads ``k^ S``), whatever the context (learned gates' projections left out)."""
        return matrix_cost(config, extra=0, flops_per_entry=self.flops_per_entry)

    def init_state(self, batch, n_heads, head_dim, *, device=None, dtype=None, v_dim=None):
        meta = new_meta(batch, n_heads, head_dim, device=device, dtype=dtype, v_dim=v_dim)
        S = torch.zeros(batch, n_heads, head_dim, meta["v_dim"], device=meta["device"], dtype=meta["dtype"])
        return self.state_type(**meta, S=S, length=0)

    def _state(self, state, S, t):
        return self.state_type(**meta_of(state), S=S.detach(), length=state.length + t)


class DecayMemory(_GatedMatrixMemory):
    """Linear attention with a decay: ``S_t = alpha_t S_{t-1} + k_t^T v_t``, ``out_t = RMSnorm(q_t S_t)``.

    Args:
        alpha: the decay ``alpha_t`` in ``(0, 1]``, either

            * a float, the same for every head and token (RetNet; ``1`` never forgets);
            * ``"learned"``: ``alpha_t = exp(-softplus(W_alpha x_t + b))``, one per head and token
              (Mamba-2); the attention layer of :class:`~course_lib.models.MemoryLM` owns ``W_alpha, b``
              and passes ``alpha`` ``[B, H, T]`` to :meth:`forward`.

            ``forward(..., alpha=...)`` may give it per call: a float, a ``[B, H, T]`` tensor (Mamba-2)
            or a ``[B, H, T, D]`` one, a decay per key channel (gated linear attention).
        chunk_size: ``C``, chunk length of the chunked form used for ``T > 1``.

    The output is normalised per head (``o / sqrt(mean(o^2) + eps)``), without linear attention's
    normaliser ``z``: see the module docstring for why.
    """

    name = "decay"
    title = "decay"
    state_type = DecayState
    eps = EPS

    def forward(self, q, k, v, state, alpha=None):
        """``alpha``: this call's decay, a float or a ``[B, H, T]`` / ``[B, H, T, D]`` tensor in ``(0, 1]``
        (``None``: the memory's own; an ``alpha="learned"`` memory needs it).
        :func:`course_lib.memory.reference.decay_reference` is the rule."""
        check_input(self, q, k, v, state, DecayState)
        return self._write_and_read(q, k, v, state, per_call(self, ALPHA, alpha, k, CHANNELS))

    def forward_unchecked(self, q, k, v, state, alpha=None):
        """:meth:`forward` for a caller that checked once (the decoding step): with an ``alpha``
        tensor the checks are skipped."""
        if alpha is None:
            return self(q, k, v, state)
        return self._write_and_read(q, k, v, state, alpha)

    def _write_and_read(self, q, k, v, state, alpha):
        o, S = step_or_chunks(decay_recurrent, decay_chunked, self.chunk_size, q, k, v, state.S, alpha)
        return rms_normalize(o, self.eps), self._state(state, S, q.shape[2])


class GatedDeltaMemory(_GatedMatrixMemory):
    """The gated delta rule (Gated DeltaNet): ``S_t = alpha_t (I - beta_t k^_t^T k^_t) S_{t-1} + beta_t k^_t^T v_t``,
    ``out_t = q^_t S_t``, with unit keys and queries as :class:`~course_lib.memory.DeltaMemory`.

    Args:
        alpha: the decay in ``(0, 1]``: a float (``1``: DeltaMemory exactly) or ``"learned"``
            (``alpha_t = exp(-softplus(W_alpha x_t + b))`` per head and token, from ``MemoryLM``'s layer).
        beta: the write strength in ``[0, 2]``: a float (default ``1``) or ``"learned"``
            (``beta_t = sigma(W_beta x_t)``, as ``DeltaMemory(beta="learned")``).
        chunk_size: ``C``, chunk length of the chunked (WY/UT) form used for ``T > 1``.

    ``forward(..., alpha=..., beta=...)`` may give either per call: a float or a ``[B, H, T]`` tensor.
    """

    name = "gated_delta"
    title = "gated delta"
    symbols = {"alpha": "alpha", "beta": "beta"}
    state_type = GatedDeltaState
    flops_per_entry = 7

    def __init__(self, alpha, beta: float | str = 1.0, chunk_size: int = 64):
        super().__init__(alpha, chunk_size)
        self.beta = check_gate_option(BETA, beta)
        self.learns_beta = self.beta == LEARNED  # MemoryLM's layer then owns W_beta

    def forward(self, q, k, v, state, alpha=None, beta=None):
        """``alpha``, ``beta``: this call's decay and write strength, each a float or a ``[B, H, T]``
        tensor (``None``: the memory's own; a learned one must be given).
        :func:`course_lib.memory.reference.gated_delta_reference` is the rule."""
        check_input(self, q, k, v, state, GatedDeltaState)
        alpha, beta = per_call(self, ALPHA, alpha, k, SCALAR), per_call(self, BETA, beta, k, SCALAR)
        return self._write_and_read(q, k, v, state, alpha, beta)

    def forward_unchecked(self, q, k, v, state, alpha=None, beta=None):
        """:meth:`forward` for a caller that checked once (the decoding step): the gates given are
        not checked again, the memory's own fill the others."""
        if (alpha is None and self.learns_alpha) or (beta is None and self.learns_beta):
            return self(q, k, v, state, alpha=alpha, beta=beta)  # the error that says what is missing
        alpha = self.alpha if alpha is None else alpha
        beta = self.beta if beta is None else beta
        return self._write_and_read(q, k, v, state, alpha, beta)

    def _write_and_read(self, q, k, v, state, alpha, beta):
        out, S = step_or_chunks(gated_delta_recurrent, gated_delta_chunked, self.chunk_size, q, k, v, state.S,
                                alpha, beta)
        return out, self._state(state, S, q.shape[2])
