r"""The KV cache: standard attention as ``Att(q_i, Mem)`` with ``Mem = (K_{<=i}, V_{<=i})``.

Decoding one token at a time, the keys and values of earlier tokens never change, so
they are kept instead of recomputed. The cache grows by one ``(k_i, v_i)`` pair per token
and per layer, which is why its size is

    bytes = 2 * L * n_g * d_h * m * batch * bytes_per_value

(``2`` for keys and values, ``L`` layers, ``n_g`` key/value heads, ``m`` cached tokens).

* :class:`KVCache` grows by concatenation: simple, but it allocates a new tensor per step.
* :class:`StaticKVCache` preallocates ``max_len`` slots and writes each step in place.
"""

from __future__ import annotations

import torch

from ._checks import check_positive_int, check_tensor, describe

__all__ = ["KVCache", "StaticKVCache", "kv_cache_bytes", "latent_cache_bytes"]


def kv_cache_bytes(n_layers, n_kv_heads, head_dim, seq_len, batch=1, bytes_per_value=2, *, v_dim=None) -> int:
    """``2 * n_layers * n_kv_heads * head_dim * seq_len * batch * bytes_per_value``.

    Llama-2-7B (32 layers, 32 KV heads, d_h = 128) at 4,096 tokens in fp16 needs exactly
    2 GiB per sequence:

    >>> kv_cache_bytes(32, 32, 128, 4096) == 2 * 1024**3
    True

    The one owner of this formula: every cache and slot memory of the course counts its pairs
    with it (``StaticKVCache.nbytes``, ``FullMemory.nbytes``, the slot memories' analytic
    ``cost_per_token``, the segment a memory reads in ``peak_nbytes``). ``v_dim``: the values'
    head dim ``d_v`` when it differs from the keys' (``head_dim + v_dim`` per pair, not ``2 d_h``).
    """
    for name, value in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim),
                        ("batch", batch), ("bytes_per_value", bytes_per_value)):
        check_positive_int(name, value)
    check_positive_int("seq_len", seq_len, minimum=0)
    per_pair = 2 * head_dim if v_dim is None else head_dim + check_positive_int("v_dim", v_dim)
    return n_layers * n_kv_heads * per_pair * seq_len * batch * bytes_per_value


def latent_cache_bytes(n_layers, rank, context, batch=1, bytes_per_value=2, rope_dim=0) -> int:
    """``n_layers * (rank + rope_dim) * context * batch * bytes_per_value``: a latent cache's bytes.

    Multi-head latent attention (DeepSeek-V2) caches per token and layer one latent ``c_t`` of
    ``rank = r`` numbers shared by every head (and ``rope_dim = d_R`` numbers of a decoupled rotary key,
    also shared), instead of ``2 n_g d_h`` numbers of keys and values: ``(r + d_R) / (2 n_g d_h)`` of
    the KV cache of :func:`kv_cache_bytes`. DeepSeek-V2 itself (60 layers, 128 heads of ``d_h = 128``,
    ``r = 512``, ``d_R = 64``), per token in fp16, against MHA (``n_g = 128``), GQA with 8 groups and MQA
    (``n_g = 1``):

    >>> mla = latent_cache_bytes(60, 512, 1, rope_dim=64)
    >>> mla, kv_cache_bytes(60, 128, 128, 1), kv_cache_bytes(60, 8, 128, 1), kv_cache_bytes(60, 1, 128, 1)
    (69120, 3932160, 245760, 30720)
    >>> mla / kv_cache_bytes(60, 128, 128, 1) == (512 + 64) / (2 * 128 * 128)  # 1.8% of MHA
    True
    >>> mla / kv_cache_bytes(60, 1, 128, 1)  # as much as GQA with 2.25 groups: between MQA and GQA-8
    2.25

    The one owner of this formula: :class:`~course_lib.memory.LatentMemory`'s ``nbytes`` and
    ``cost_per_token`` count their latents with it. It still grows linearly with ``context``, only slower.
    """
    for name, value in (("n_layers", n_layers), ("rank", rank), ("batch", batch),
                        ("bytes_per_value", bytes_per_value)):
        check_positive_int(name, value)
    check_positive_int("context", context, minimum=0)
    check_positive_int("rope_dim", rope_dim, minimum=0)
    return n_layers * (rank + rope_dim) * context * batch * bytes_per_value


def _check_kv(k, v, expected=None) -> None:
    check_tensor("k", k, ndim=4, floating=True)
    check_tensor("v", v, ndim=4, floating=True)
    if k.shape != v.shape:
        raise ValueError(f"k and v must have one shape [B, H, T, D]; got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if expected is not None:
        b, h, d, dtype, device = expected
        if (k.shape[0], k.shape[1], k.shape[3]) != (b, h, d):
            raise ValueError(
                f"k has shape {tuple(k.shape)} but this cache holds [B={b}, H={h}, T, D={d}]"
            )
        if k.dtype != dtype:
            raise TypeError(f"k has dtype {k.dtype} but this cache holds {dtype}")
        if k.device != device:
            raise ValueError(f"k is on {k.device} but this cache lives on {device}")


class KVCache:
    """A cache that grows by concatenation (the simplest correct version).

    >>> cache = KVCache()
    >>> K, V = cache.update(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4))
    >>> cache.seq_len, tuple(K.shape)
    (3, (1, 2, 3, 4))
    """

    def __init__(self):
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    @property
    def seq_len(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    @property
    def nbytes(self) -> int:
        if self.k is None:
            return 0
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()

    def update(self, k: torch.Tensor, v: torch.Tensor):
        """Append ``T`` new pairs ``[B, H, T, D]``; return all cached ``(K, V)``."""
        if self.k is None:
            _check_kv(k, v)
            self.k, self.v = k.clone(), v.clone()  # the cache's own copy: the caller may reuse its tensors
        else:
            _check_kv(k, v, (self.k.shape[0], self.k.shape[1], self.k.shape[3], self.k.dtype, self.k.device))
            self.k = torch.cat([self.k, k], dim=2)
            self.v = torch.cat([self.v, v], dim=2)
        return self.k, self.v

    def reset(self) -> None:
        self.k = self.v = None

    def __repr__(self) -> str:
        return f"KVCache(seq_len={self.seq_len}, nbytes={self.nbytes})"


class StaticKVCache:
    """A cache of ``max_len`` preallocated slots written in place: no allocation per step.

    ``update`` copies the new pairs into ``[seq_len, seq_len + T)`` and returns views of the
    filled part. Writing past ``max_len`` raises ``ValueError``.
    """

    def __init__(self, batch, heads, max_len, head_dim, *, device=None, dtype=torch.float32):
        check_positive_int("batch", batch)
        check_positive_int("heads", heads)
        check_positive_int("max_len", max_len)
        check_positive_int("head_dim", head_dim)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {describe(dtype)}")
        device = torch.device(device) if device is not None else torch.device("cpu")
        self.k_buf = torch.zeros(batch, heads, max_len, head_dim, device=device, dtype=dtype)
        self.v_buf = torch.zeros_like(self.k_buf)
        self.max_len = max_len
        self._len = 0

    @property
    def seq_len(self) -> int:
        return self._len

    @property
    def nbytes(self) -> int:
        """Bytes of the cached pairs (``kv_cache_bytes`` of one layer at ``seq_len``)."""
        b, h, _, d = self.k_buf.shape
        return kv_cache_bytes(1, h, d, self._len, b, self.k_buf.element_size())

    @property
    def capacity_nbytes(self) -> int:
        """Bytes reserved for all ``max_len`` slots."""
        return 2 * self.k_buf.numel() * self.k_buf.element_size()

    def update(self, k: torch.Tensor, v: torch.Tensor):
        b, h, _, d = self.k_buf.shape
        _check_kv(k, v, (b, h, d, self.k_buf.dtype, self.k_buf.device))
        t = k.shape[2]
        if self._len + t > self.max_len:
            raise ValueError(
                f"k adds {t} tokens to a StaticKVCache holding {self._len} of max_len={self.max_len}; "
                f"expected at most {self.max_len - self._len} more (make the cache larger)"
            )
        self.k_buf[:, :, self._len:self._len + t].copy_(k)
        self.v_buf[:, :, self._len:self._len + t].copy_(v)
        self._len += t
        return self.k_buf[:, :, :self._len], self.v_buf[:, :, :self._len]

    def reset(self) -> None:
        self._len = 0

    def __repr__(self) -> str:
        return f"StaticKVCache(seq_len={self._len}, max_len={self.max_len}, nbytes={self.nbytes})"
