"""Lesson 06's mutants (known-wrong answers, as learners write them) and reference answers."""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from course_lib import attention_reference

from . import choice_mutants, mutant, right, value_mutant


def _ref_compress(x, c, how):
    n = x.shape[2]
    if n % c:
        raise ValueError(f"n = {n} is not a multiple of c = {c}")
    return F.avg_pool1d(x.flatten(0, 1).transpose(1, 2), c).transpose(1, 2).unflatten(0, x.shape[:2]) \
        if how == "mean" else F.max_pool1d(x.flatten(0, 1).transpose(1, 2), c).transpose(1, 2).unflatten(0, x.shape[:2])


def _ref_update(mem, cmem, s_kv, n_m, n_cm, c, pool=torch.mean):
    """The same rule through course_lib's CompressiveMemory: feed Mem's pairs, then the new ones
    (``pool`` is f_c over each group of c popped pairs: the mean, the max for a mutant)."""
    k, v = torch.cat([mem[0], s_kv[0]], 2), torch.cat([mem[1], s_kv[1]], 2)
    n_pop = math.ceil((k.shape[2] - n_m) / c) * c if k.shape[2] > n_m else 0
    popped = [pool(x[:, :, :n_pop].unflatten(2, (-1, c)), 3) for x in (k, v)]
    ck, cv = (torch.cat([old, new], 2) for old, new in zip(cmem, popped))
    keep = max(0, ck.shape[2] - n_cm)
    return (k[:, :, n_pop:], v[:, :, n_pop:]), (ck[:, :, keep:], cv[:, :, keep:])


def _ref_recon(q, old_k, old_v, comp_k, comp_v):
    from course_lib.memory import attention_reconstruction_loss
    return attention_reconstruction_loss(q, old_k, old_v, lambda k, v: (comp_k, comp_v))


REFERENCES = {
    "06.compress": _ref_compress,
    "06.compressive_update": _ref_update,
    "06.reconstruction_loss": _ref_recon,
    "06.reach": 72,
    "06.equal_bytes": "a",
}

# ---------------------------------------------------------------- 06.compress


def _groups(x, c):
    """``[B, H, n, D] -> [B, H, n / c, c, D]``, refusing an ``n`` that ``c`` does not divide."""
    b, h, n, d = x.shape
    if n % c:
        raise ValueError("n must be a multiple of c")
    return x.reshape(b, h, n // c, c, d)


@mutant("06.compress", hint="strided")
def compress_strided(x, c, how):
    b, h, n, d = x.shape
    if n % c:
        raise ValueError("n must be a multiple of c")
    groups = x.reshape(b, h, c, n // c, d)
    return groups.mean(2) if how == "mean" else groups.amax(2)


@mutant("06.compress", hint="drop_remainder")
def compress_drops_remainder(x, c, how):
    b, h, n, d = x.shape
    groups = x[:, :, : n // c * c].reshape(b, h, n // c, c, d)
    return groups.mean(3) if how == "mean" else groups.amax(3)


@mutant("06.compress", hint="max_tuple")
def compress_max_tuple(x, c, how):
    groups = _groups(x, c)
    return groups.mean(3) if how == "mean" else groups.max(3)


@mutant("06.compress", hint="ignores_how")
def compress_always_mean(x, c, how):
    return _groups(x, c).mean(3)




# ---------------------------------------------------------------- 06.compressive_update


_IS_MEAN = """
def compress_is_mean(x, c, how):
    b, h, n, d = x.shape
    if n % c:
        raise ValueError("n must be a multiple of c")
    g = x.reshape(b, h, n // c, c, d)
    if how is "mean":
        return g.mean(3)
    return g.amax(3)
"""
with warnings.catch_warnings():  # `is` with a literal: the learner's mistake, which Python warns about
    warnings.simplefilter("ignore", SyntaxWarning)
    _namespace: dict = {}
    exec(compile(_IS_MEAN, "<learner>", "exec"), _namespace)
# A.2.4: full marks in the notebook while "mean" was the interned literal; a new string under grade
mutant("06.compress", hint="ignores_how", name="compress_is_mean")(_namespace["compress_is_mean"])


@mutant("06.compress", hint="wrong_error")
def compress_asserts(x, c, how):
    """An assert for the precondition: AssertionError (named as such, not as the grader's proxy class)."""
    assert x.shape[2] % c == 0, "n must be a multiple of c"
    g = x.unflatten(2, (-1, c))
    return g.mean(3) if how == "mean" else g.amax(3)


@mutant("06.compress", hint="subsampled")
def compress_subsamples(x, c, how):
    if x.shape[2] % c:
        raise ValueError("n must be a multiple of c")
    return x[:, :, ::c]


@right("06.compress")
def compress_with_unfold(x, c, how):
    if x.shape[2] % c:
        raise ValueError(f"n = {x.shape[2]} is not a multiple of c = {c}")
    g = x.unfold(2, c, c)  # [B, H, n / c, D, c]
    return g.mean(-1) if how == "mean" else g.amax(-1)


def _groups_mean(x, c):
    return _groups(x, c).mean(3)


@mutant("06.compressive_update", hint="evict_first")
def update_evicts_before_compressing(mem, cmem, s_kv, n_m, n_cm, c):
    k, v = torch.cat([mem[0], s_kv[0]], 2), torch.cat([mem[1], s_kv[1]], 2)
    n_pop = math.ceil((k.shape[2] - n_m) / c) * c if k.shape[2] > n_m else 0
    k, v = k[:, :, n_pop:], v[:, :, n_pop:]  # evicted ...
    popped_k, popped_v = k[:, :, :0], v[:, :, :0]  # ... so there is nothing left to compress
    ck = torch.cat([cmem[0], _groups_mean(popped_k, c)], 2)[:, :, -n_cm:]
    cv = torch.cat([cmem[1], _groups_mean(popped_v, c)], 2)[:, :, -n_cm:]
    return (k, v), (ck, cv)


@mutant("06.compressive_update", hint="newest")
def update_compresses_newest(mem, cmem, s_kv, n_m, n_cm, c):
    k, v = torch.cat([mem[0], s_kv[0]], 2), torch.cat([mem[1], s_kv[1]], 2)
    n = k.shape[2]
    if n <= n_m:
        return (k, v), cmem
    n_pop = math.ceil((n - n_m) / c) * c
    ck = torch.cat([cmem[0], _groups_mean(k[:, :, n - n_pop:], c)], 2)
    cv = torch.cat([cmem[1], _groups_mean(v[:, :, n - n_pop:], c)], 2)
    return (k[:, :, : n - n_pop], v[:, :, : n - n_pop]), (ck[:, :, -n_cm:], cv[:, :, -n_cm:])


@mutant("06.compressive_update", hint="drop_remainder")
def update_drops_remainder(mem, cmem, s_kv, n_m, n_cm, c):
    k, v = torch.cat([mem[0], s_kv[0]], 2), torch.cat([mem[1], s_kv[1]], 2)
    n_pop = max(0, k.shape[2] - n_m)
    g = n_pop // c
    ck = torch.cat([cmem[0], _groups_mean(k[:, :, : g * c], c)], 2)[:, :, -n_cm:]
    cv = torch.cat([cmem[1], _groups_mean(v[:, :, : g * c], c)], 2)[:, :, -n_cm:]
    return (k[:, :, n_pop:], v[:, :, n_pop:]), (ck, cv)


@mutant("06.compressive_update", hint="no_cap")
def update_forgets_cap(mem, cmem, s_kv, n_m, n_cm, c):
    k, v = torch.cat([mem[0], s_kv[0]], 2), torch.cat([mem[1], s_kv[1]], 2)
    n_pop = math.ceil((k.shape[2] - n_m) / c) * c if k.shape[2] > n_m else 0
    ck = torch.cat([cmem[0], _groups_mean(k[:, :, :n_pop], c)], 2)
    cv = torch.cat([cmem[1], _groups_mean(v[:, :, :n_pop], c)], 2)
    return (k[:, :, n_pop:], v[:, :, n_pop:]), (ck, cv)


@mutant("06.compressive_update", hint="cap_oldest")
def update_keeps_oldest_cmem(mem, cmem, s_kv, n_m, n_cm, c):
    k, v = torch.cat([mem[0], s_kv[0]], 2), torch.cat([mem[1], s_kv[1]], 2)
    n_pop = math.ceil((k.shape[2] - n_m) / c) * c if k.shape[2] > n_m else 0
    ck = torch.cat([cmem[0], _groups_mean(k[:, :, :n_pop], c)], 2)[:, :, :n_cm]
    cv = torch.cat([cmem[1], _groups_mean(v[:, :, :n_pop], c)], 2)[:, :, :n_cm]
    return (k[:, :, n_pop:], v[:, :, n_pop:]), (ck, cv)


@mutant("06.compressive_update", hint="max_pool")
def update_max_pools(mem, cmem, s_kv, n_m, n_cm, c):
    """A.3: max pooling where f_c is the mean: the counts are right, so the detail says the values differ."""
    return _ref_update(mem, cmem, s_kv, n_m, n_cm, c, pool=torch.amax)


# ---------------------------------------------------------------- 06.reconstruction_loss


@mutant("06.reconstruction_loss", hint="q_leak")
def recon_q_not_detached(q, old_k, old_v, comp_k, comp_v):
    target = attention_reference(q, old_k.detach(), old_v.detach())
    return F.mse_loss(attention_reference(q, comp_k, comp_v), target)


@mutant("06.reconstruction_loss", hint="old_leak")
def recon_target_not_detached(q, old_k, old_v, comp_k, comp_v):
    q = q.detach()
    return F.mse_loss(attention_reference(q, comp_k, comp_v), attention_reference(q, old_k, old_v))


@mutant("06.reconstruction_loss", hint="comp_detached")
def recon_all_under_no_grad(q, old_k, old_v, comp_k, comp_v):
    with torch.no_grad():
        return F.mse_loss(attention_reference(q, comp_k, comp_v), attention_reference(q, old_k, old_v))


@mutant("06.reconstruction_loss", hint="sum")
def recon_sum(q, old_k, old_v, comp_k, comp_v):
    q, old_k, old_v = q.detach(), old_k.detach(), old_v.detach()
    diff = attention_reference(q, comp_k, comp_v) - attention_reference(q, old_k, old_v)
    return (diff ** 2).sum()


@mutant("06.reconstruction_loss", hint="sum", name="recon_sum_over_d")
def recon_sum_over_d(q, old_k, old_v, comp_k, comp_v):
    target = attention_reference(q.detach(), old_k.detach(), old_v.detach())
    return ((attention_reference(q.detach(), comp_k, comp_v) - target) ** 2).sum(-1).mean()


@mutant("06.reconstruction_loss", hint="no_scale")
def recon_no_scale(q, old_k, old_v, comp_k, comp_v):
    q, old_k, old_v = q.detach(), old_k.detach(), old_v.detach()

    def att(k, v):
        return torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v

    return ((att(comp_k, comp_v) - att(old_k, old_v)) ** 2).mean()


# ---------------------------------------------------------------- questions

value_mutant("06.reach", "forgot_ratio", "no_ratio", 32)
value_mutant("06.reach", "forgot_mem", "no_mem", 60)
value_mutant("06.reach", "c_slots_per_segment", "slots_per_segment", 57)
choice_mutants("06.equal_bytes", same_bytes_same_reach="B", xl_too="C", none="D")


# ---------------------------------------------------------------- A.3: mistakes the feedback now names


@mutant("06.reconstruction_loss", hint="causal")
def recon_causal_mask(q, old_k, old_v, comp_k, comp_v):
    """A causal mask carried over from self-attention: most compressed slots hidden from the early queries."""
    q, old_k, old_v = q.detach(), old_k.detach(), old_v.detach()
    target = F.scaled_dot_product_attention(q, old_k, old_v, is_causal=True)
    return F.mse_loss(F.scaled_dot_product_attention(q, comp_k, comp_v, is_causal=True), target)


value_mutant("06.reach", "cmem_in_place_of_mem", "cmem_for_mem", 80)
