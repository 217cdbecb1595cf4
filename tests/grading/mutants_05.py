"""Lesson 05's mutants (known-wrong answers, as learners write them) and reference answers."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from course_lib.memory import delta_rule_recurrent, linear_attention_recurrent

from . import choice_mutants, mutant, value_mutant


def _ref_delta(S, k, v, beta):
    if isinstance(beta, torch.Tensor):
        beta = beta[..., None]  # [B, H, T = 1]
    return delta_rule_recurrent(k[:, :, None], k[:, :, None], v[:, :, None], beta, S)[1]


def _ref_linear(S, z, k, v):
    _, S_new, z_new = linear_attention_recurrent(k[:, :, None], k[:, :, None], v[:, :, None], S, z)
    return S_new, z_new


def _ref_segment(K_mem, V_mem, k, v, mem_len):
    K, V = torch.cat([K_mem, k], 2).detach(), torch.cat([V_mem, v], 2).detach()
    start = max(0, K.shape[2] - mem_len)
    return K[:, :, start:], V[:, :, start:]


REFERENCES = {
    "05.delta_update": _ref_delta,
    "05.linear_memory_update": _ref_linear,
    "05.segment_update": _ref_segment,
    "05.capacity": 64,
    "05.overwrite": "b",
}


def _beta(beta):
    return beta[..., None, None] if isinstance(beta, torch.Tensor) else beta


# ---------------------------------------------------------------- 05.delta_update

@mutant("05.delta_update", hint="modified_input")
def delta_in_place(S, k, v, beta):
    v_old = torch.einsum("bhd,bhde->bhe", k, S)
    S += _beta(beta) * torch.einsum("bhd,bhe->bhde", k, v - v_old)
    return S


@mutant("05.delta_update", hint="no_read")
def delta_without_read(S, k, v, beta):
    return S + _beta(beta) * torch.einsum("bhd,bhe->bhde", k, v)


@mutant("05.delta_update", hint="outer_order")
def delta_outer_wrong_way(S, k, v, beta):
    u = v - (k.unsqueeze(-2) @ S).squeeze(-2)
    return S + _beta(beta) * u.unsqueeze(-1) * k.unsqueeze(-2)


@mutant("05.delta_update", hint="beta_broadcast")
def delta_beta_not_broadcast(S, k, v, beta):
    u = v - (k.unsqueeze(-2) @ S).squeeze(-2)
    return S + beta * (k.unsqueeze(-1) * u.unsqueeze(-2))


@mutant("05.delta_update", hint="read_side")
def delta_reads_s_k(S, k, v, beta):
    v_old = (S @ k.unsqueeze(-1)).squeeze(-1)
    return S + _beta(beta) * k.unsqueeze(-1) * (v - v_old).unsqueeze(-2)


@mutant("05.delta_update", hint="no_beta")
def delta_ignores_beta(S, k, v, beta):
    v_old = (k.unsqueeze(-2) @ S).squeeze(-2)
    return S + k.unsqueeze(-1) * (v - v_old).unsqueeze(-2)


# ---------------------------------------------------------------- 05.linear_memory_update

@mutant("05.linear_memory_update", hint="no_phi")
def linear_no_phi(S, z, k, v):
    return S + k.unsqueeze(-1) * v.unsqueeze(-2), z + k


@mutant("05.linear_memory_update", hint="z_not_updated")
def linear_forgets_z(S, z, k, v):
    fk = F.elu(k) + 1
    return S + fk.unsqueeze(-1) * v.unsqueeze(-2), z


@mutant("05.linear_memory_update", hint="modified_input")
def linear_in_place(S, z, k, v):
    fk = F.elu(k) + 1
    S.add_(fk.unsqueeze(-1) * v.unsqueeze(-2))
    z.add_(fk)
    return S, z


@mutant("05.linear_memory_update", hint="wrong_phi")
def linear_relu(S, z, k, v):
    fk = F.relu(k)
    return S + torch.einsum("bhd,bhe->bhde", fk, v), z + fk


@mutant("05.linear_memory_update", hint="phi_on_v")
def linear_phi_everywhere(S, z, k, v):
    fk, fv = F.elu(k) + 1, F.elu(v) + 1
    return S + torch.einsum("bhd,bhe->bhde", fk, fv), z + fk


# ---------------------------------------------------------------- 05.segment_update

@mutant("05.segment_update", hint="not_detached")
def segment_not_detached(K_mem, V_mem, k, v, mem_len):
    K, V = torch.cat([K_mem, k], dim=2), torch.cat([V_mem, v], dim=2)
    return K[:, :, -mem_len:], V[:, :, -mem_len:]


@mutant("05.segment_update", hint="keeps_oldest")
def segment_keeps_oldest(K_mem, V_mem, k, v, mem_len):
    K, V = torch.cat([K_mem, k], dim=2).detach(), torch.cat([V_mem, v], dim=2).detach()
    return K[:, :, :mem_len], V[:, :, :mem_len]


@mutant("05.segment_update", hint="new_first")
def segment_new_first(K_mem, V_mem, k, v, mem_len):
    K, V = torch.cat([k, K_mem], dim=2).detach(), torch.cat([v, V_mem], dim=2).detach()
    return K[:, :, -mem_len:], V[:, :, -mem_len:]


@mutant("05.segment_update", hint="only_new")
def segment_only_new(K_mem, V_mem, k, v, mem_len):
    return k[:, :, -mem_len:].detach(), v[:, :, -mem_len:].detach()


@mutant("05.segment_update", hint="off_by_one")
def segment_off_by_one(K_mem, V_mem, k, v, mem_len):
    K, V = torch.cat([K_mem, k], dim=2).detach(), torch.cat([V_mem, v], dim=2).detach()
    return K[:, :, -(mem_len - 1):], V[:, :, -(mem_len - 1):]


# ---------------------------------------------------------------- questions

value_mutant("05.capacity", "counts_entries", "entries", 4096)
value_mutant("05.capacity", "square_root", "sqrt", 8)
value_mutant("05.capacity", "double", "two_d", 128)
choice_mutants("05.overwrite", newest_wins="A", swapped="C", no_removal="D")


_MEMORY: dict = {}


@mutant("05.delta_update", hint="stateful")
def delta_memory_kept_between_calls(S, k, v, beta):
    """Keeps its own S from the last call while the shapes stay the same (a streaming memory never reset)."""
    key = (tuple(S.shape), S.dtype)
    if _MEMORY.get("key") != key:
        _MEMORY.clear()
        _MEMORY.update(key=key, S=S)
    S = _MEMORY["S"]
    b = beta if not isinstance(beta, torch.Tensor) else beta[..., None, None]
    read = torch.einsum("bhd,bhde->bhe", k, S)
    _MEMORY["S"] = S + b * torch.einsum("bhd,bhe->bhde", k, v - read)
    return _MEMORY["S"]


# ---------------------------------------------------------------- A.3: mistakes the feedback now names


@mutant("05.delta_update", hint="blend")
def delta_as_a_blend(S, k, v, beta):
    """beta read as a mixing weight between the old memory and the new pair."""
    return (1 - _beta(beta)) * S + _beta(beta) * torch.einsum("bhd,bhe->bhde", k, v)


@mutant("05.delta_update", hint="beta_tensor")
def delta_float_beta(S, k, v, beta):
    """float(beta): right for a number, a ValueError for the [B, H] tensor of one strength per head."""
    b = float(beta)
    v_old = torch.einsum("bhd,bhde->bhe", k, S)
    return S + b * torch.einsum("bhd,bhe->bhde", k, v - v_old)


@mutant("05.delta_update", hint="beta_on_v")
def delta_beta_on_v_only(S, k, v, beta):
    v_old = torch.einsum("bhd,bhde->bhe", k, S)
    bv = v * (beta[..., None] if isinstance(beta, torch.Tensor) else beta)
    return S + torch.einsum("bhd,bhe->bhde", k, bv - v_old)


@mutant("05.linear_memory_update", hint="relu_plus_one")
def linear_relu_plus_one(S, z, k, v):
    fk = F.relu(k) + 1
    return S + torch.einsum("bhd,bhe->bhde", fk, v), z + fk


@mutant("05.segment_update", hint="not_called")
def segment_detach_not_called(K_mem, V_mem, k, v, mem_len):
    """`.detach` without brackets: a pair of bound methods comes back."""
    K, V = torch.cat([K_mem, k], dim=2)[:, :, -mem_len:], torch.cat([V_mem, v], dim=2)[:, :, -mem_len:]
    return K.detach, V.detach


value_mutant("05.capacity", "one_less", "minus_one", 63)
