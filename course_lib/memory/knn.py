r"""k-nearest-neighbour memory, after Memorizing Transformers (Wu et al., 2022): exact recall by retrieval.

A large FIFO store keeps the last ``N`` pairs from before the chunk. Each query retrieves
the ``k`` stored pairs with the highest ``q . k`` (``Mem_knn``) and attends, in one softmax,
to them and to the chunk's own keys causally::

    Mem_knn(q_i) = top-k_{j in store} (q_i . k_j)        out_i = Att(q_i, [Mem_knn(q_i), S_kv])

Two differences from Memorizing Transformers' layer (lesson 07, section 5):

* one softmax over the retrieved pairs and the chunk (concatenation, ``Att(q_i, [Mem, Mem_knn])``);
  Memorizing Transformers attend to the memory and to the local context in two separate
  softmaxes and mix the two outputs with a learned gate per head, ``g Att_local + (1 - g) Att_knn``;
* the store holds the keys as it gets them, and ``uses_rotary`` is ``True``: in a ``MemoryLM`` they
  are rotated by their absolute positions (rotary embeddings), so the retrieval score
  ``(R_i q_i) . (R_j k_j)`` depends on the distance ``i - j`` as well as on content.
  Memorizing Transformers normalise keys and queries instead, against the staleness of keys
  stored by older weights.

Top-``k`` of ``N`` is close to attention over all ``N`` stored pairs only where the attention is
peaked (the top ``k`` scores hold almost all of the softmax's weight); for flat scores the
pairs left out carry most of it.

The search is brute force on the device (one matrix product and ``topk``); retrieved pairs
are stored detached, so gradients reach only the chunk. Storage: a ring of ``N`` slots,
position ``p`` in slot ``p % N``.
"""

from __future__ import annotations

import torch

from .._checks import check_positive_int
from ._slots import RingMemory, SlotState, causal_chunk_mask

__all__ = ["KNNMemory", "KNNState"]


class KNNState(SlotState):
    """State of a :class:`KNNMemory`: the store of ``N`` slots after ``length`` tokens."""


class KNNMemory(RingMemory):
    """Top-``k`` retrieval by ``q . k`` over the last ``capacity`` pairs, plus the chunk causally,
    in one softmax (not Memorizing Transformers' two softmaxes and gate: see the module docstring).

    Args:
        capacity: ``N``, pairs stored.
        top_k: ``k <= N``, pairs retrieved per query.
    """

    name = "knn"
    reads_segment = True  # queries see their whole segment beside the carried state: peak_nbytes
    fused_attention = False  # the top-k scores it retrieved are reused in the softmax (see forward)
    title = "k-NN"
    label_name = "kNN"
    symbols = {"capacity": "N", "top_k": "k"}
    state_type = KNNState
    supports_gqa = False

    def __init__(self, capacity: int, top_k: int):
        super().__init__()
        self.capacity = check_positive_int("capacity", capacity)
        self.top_k = check_positive_int("top_k", top_k)
        if top_k > capacity:
            raise ValueError(
                f"top_k={top_k} must be <= capacity={capacity}: a query retrieves top_k of the capacity pairs stored"
            )

    @classmethod
    def example_sizes(cls, slots=8, *, n_heads=2):
        return {"capacity": 2 * slots, "top_k": max(1, min(32, slots // 4))}

    @property
    def n_slots(self) -> int:
        return self.capacity

    def _search(self, q, buf):
        """``(scores, slots) [B, H, T, k]``: the ``k`` best stored slots per query (empty ones score ``-inf``)."""
        scores = (q @ buf.k.transpose(-2, -1)).masked_fill(buf.pos < 0, float("-inf"))  # [B, H, T, N]
        return scores.topk(self.top_k, dim=-1)

    def retrieve(self, q, state) -> torch.Tensor:
        """Positions of the pairs each query retrieves, ``[B, H, T, k]`` (``-1`` where fewer are stored)."""
        buf = self._read(state)
        scores, slots = self._search(q, buf)
        return buf.pos[slots].masked_fill(scores == float("-inf"), -1)

    def slots(self, q, state):
        buf = self._read(state)
        b, h, t, _ = q.shape
        _, slots = self._search(q, buf)
        picked = torch.zeros(b, h, t, self.capacity, dtype=torch.bool, device=q.device).scatter_(-1, slots, True)
        picked &= buf.pos >= 0
        return buf.k, buf.v, torch.cat([picked, causal_chunk_mask(t, q.device).expand(b, h, t, t)], dim=-1)

    def forward(self, q, k, v, state):
        """:func:`course_lib.memory.reference.knn_reference` is the rule (the chunks fed are its segments)."""
        self.check(q, k, v, state)
        buf = self._read(state)
        b, h, t, d = q.shape
        scale = d ** -0.5
        scores, slots = self._search(q, buf)  # [B, H, T, k]
        chunk = (q @ k.transpose(-2, -1)).masked_fill(~causal_chunk_mask(t, q.device), float("-inf"))
        weights = torch.softmax(torch.cat([scores, chunk], dim=-1) * scale, dim=-1)  # one softmax
        w_mem, w_chunk = weights.split([scores.shape[-1], t], dim=-1)
        dv = buf.v.shape[-1]
        picked_v = buf.v[:, :, None].expand(b, h, t, -1, dv).gather(3, slots[..., None].expand(-1, -1, -1, -1, dv))
        out = (w_mem[..., None] * picked_v).sum(3) + w_chunk @ v  # [B, H, T, D_v]
        return out, self.update(state, k, v)

    def slots_read(self, held: int) -> int:
        return min(held, self.top_k)

    def cost_per_token(self, config, context: int) -> dict:
        """As any slot memory, reading only ``k`` slots, plus ``2 L tau d_h N`` FLOPs to score
        every stored key against the query (the brute-force search)."""
        cost = super().cost_per_token(config, context)
        search = 2 * config.n_layers * config.n_heads * config.head_dim * self.slots_after(context)
        return {**cost, "flops": cost["flops"] + search}
