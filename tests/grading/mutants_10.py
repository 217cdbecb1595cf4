"""Lesson 10's mutants (known-wrong answers, as learners write them) and reference answers."""

from __future__ import annotations

import math

import torch

from course_lib.memory import decay_chunked, decay_reference, gated_delta_reference
from course_lib.memory.linear import lower_decay

from . import choice_mutants, mutant, right, right_value, value_mutant


def _ref_decay_update(S, k, v, alpha):
    """decay_reference returns the RMS-normalised output; its memory is the raw state."""
    return decay_reference(k[:, :, None], k[:, :, None], v[:, :, None], alpha[..., None], S, return_memory=True)[1]


def _ref_gated_update(S, k, v, alpha, beta):
    return gated_delta_reference(k[:, :, None], k[:, :, None], v[:, :, None], alpha[..., None], beta[..., None], S,
                                 return_memory=True)[1]


REFERENCES = {
    "10.decay_update": _ref_decay_update,
    "10.gated_delta_update": _ref_gated_update,
    "10.decay_mask": lambda alpha: lower_decay(alpha.log().cumsum(0)),
    "10.chunked_decay": lambda q, k, v, alpha, chunk: decay_chunked(q, k, v, alpha, chunk_size=chunk)[0],
    "10.gated_delta_limits": "a",
    "10.scenario_memory": "B",
    "10.fading_fact": lambda: 0.99 ** 100,
}


def _outer(k, v):
    return torch.einsum("bhd,bhe->bhde", k, v)


# ---------------------------------------------------------------- 10.decay_update

@mutant("10.decay_update", hint="modified_input")
def decay_in_place(S, k, v, alpha):
    S.mul_(alpha[:, :, None, None])
    S.add_(_outer(k, v))
    return S


@mutant("10.decay_update", hint="decay_after")
def decay_after_the_write(S, k, v, alpha):
    return alpha[:, :, None, None] * (S + _outer(k, v))


@mutant("10.decay_update", hint="no_decay")
def decay_forgotten(S, k, v, alpha):
    return S + k.unsqueeze(-1) * v.unsqueeze(-2)


@mutant("10.decay_update", hint="alpha_broadcast")
def decay_alpha_one_axis_short(S, k, v, alpha):
    return alpha[:, :, None] * S + _outer(k, v)


@mutant("10.decay_update", hint="blend")
def decay_as_a_blend(S, k, v, alpha):
    a = alpha[..., None, None]
    return a * S + (1 - a) * _outer(k, v)


@mutant("10.decay_update", hint="outer_order")
def decay_outer_wrong_way(S, k, v, alpha):
    return alpha[..., None, None] * S + torch.einsum("bhd,bhe->bhed", k, v)


@right("10.decay_update")
def decay_loop_over_heads(S, k, v, alpha):
    out = torch.empty_like(S)
    for b in range(S.shape[0]):
        for h in range(S.shape[1]):
            out[b, h] = alpha[b, h] * S[b, h] + torch.outer(k[b, h], v[b, h])
    return out


# ---------------------------------------------------------------- 10.gated_delta_update

@mutant("10.gated_delta_update", hint="modified_input")
def gated_in_place(S, k, v, alpha, beta):
    S *= alpha[..., None, None]
    u = beta[..., None] * (v - torch.einsum("bhd,bhde->bhe", k, S))
    S += _outer(k, u)
    return S


@mutant("10.gated_delta_update", hint="decay_after")
def gated_decay_after_the_write(S, k, v, alpha, beta):
    v_old = torch.einsum("bhd,bhde->bhe", k, S)
    S = S + _outer(k, beta[..., None] * (v - v_old))
    return alpha[..., None, None] * S


@mutant("10.gated_delta_update", hint="read_before_decay")
def gated_reads_the_undecayed_memory(S, k, v, alpha, beta):
    v_old = torch.einsum("bhd,bhde->bhe", k, S)  # read first ...
    return alpha[..., None, None] * S + _outer(k, beta[..., None] * (v - v_old))  # ... then decay


@mutant("10.gated_delta_update", hint="beta_one_term")
def gated_beta_on_the_write_only(S, k, v, alpha, beta):
    eye = torch.eye(S.shape[-2], dtype=S.dtype)
    erase = eye - k.unsqueeze(-1) * k.unsqueeze(-2)  # I - k^T k, beta forgotten here
    return alpha[..., None, None] * (erase @ S) + beta[..., None, None] * _outer(k, v)


@mutant("10.gated_delta_update", hint="no_decay")
def gated_is_the_delta_rule(S, k, v, alpha, beta):
    v_old = torch.einsum("bhd,bhde->bhe", k, S)
    return S + _outer(k, beta[..., None] * (v - v_old))


@mutant("10.gated_delta_update", hint="no_erase")
def gated_without_erase(S, k, v, alpha, beta):
    return alpha[..., None, None] * S + beta[..., None, None] * _outer(k, v)


@mutant("10.gated_delta_update", hint="alpha_broadcast")
def gated_alpha_one_axis_short(S, k, v, alpha, beta):
    S = alpha[:, :, None] * S
    u = beta[..., None] * (v - torch.einsum("bhd,bhde->bhe", k, S))
    return S + _outer(k, u)


@right("10.gated_delta_update")
def gated_matrix_form(S, k, v, alpha, beta):
    """alpha (I - beta k^T k) S + beta k^T v, as written."""
    eye = torch.eye(S.shape[-2], dtype=S.dtype)
    b = beta[..., None, None]
    erase = eye - b * (k.unsqueeze(-1) * k.unsqueeze(-2))
    return alpha[..., None, None] * (erase @ S) + b * (k.unsqueeze(-1) * v.unsqueeze(-2))


# ---------------------------------------------------------------- 10.decay_mask

@mutant("10.decay_mask", hint="includes_j")
def mask_includes_alpha_j(alpha):
    t = alpha.shape[0]
    L = alpha.new_zeros(t, t)
    for i in range(t):
        for j in range(i + 1):
            L[i, j] = alpha[j:i + 1].prod()
    return L


@mutant("10.decay_mask", hint="cumprod_division")
def mask_by_cumprod_division(alpha):
    c = torch.cumprod(alpha, dim=0)
    return (c[:, None] / c[None, :]).tril()


@mutant("10.decay_mask", hint="upper_not_zero")
def mask_upper_left_in(alpha):
    g = torch.cumsum(torch.log(alpha), 0)
    return torch.exp(g[:, None] - g[None, :])


@mutant("10.decay_mask", hint="exp_then_mask")
def mask_exp_before_masking(alpha):
    g = torch.cumsum(torch.log(alpha), 0)
    t = alpha.shape[0]
    return torch.exp(g[:, None] - g[None, :]) * torch.ones(t, t, dtype=alpha.dtype).tril()


@mutant("10.decay_mask", hint="dtype")
def mask_in_a_float32_matrix(alpha):
    t = alpha.shape[0]
    L = torch.zeros(t, t)  # float32, whatever alpha is
    for i in range(t):
        for j in range(i + 1):
            L[i, j] = alpha[j + 1:i + 1].prod()
    return L


@mutant("10.decay_mask", hint="transposed")
def mask_transposed(alpha):
    g = torch.cumsum(torch.log(alpha), 0)
    return torch.exp(g[None, :] - g[:, None]).triu()


@right("10.decay_mask")
def mask_loop_of_products(alpha):
    t = alpha.shape[0]
    L = alpha.new_zeros(t, t)
    for i in range(t):
        for j in range(i + 1):
            L[i, j] = alpha[j + 1:i + 1].prod()  # the empty product (j = i) is 1
    return L


@right("10.decay_mask")
def mask_cumprod_of_a_masked_matrix(alpha):
    """Column j holds alpha_t below row j and 1 elsewhere; its running product down the rows is L[:, j]."""
    t = alpha.shape[0]
    strictly_below = torch.ones(t, t, dtype=torch.bool).tril(-1)
    M = torch.where(strictly_below, alpha[:, None].expand(t, t), torch.ones_like(alpha)[:, None])
    return torch.cumprod(M, dim=0).tril()


# ---------------------------------------------------------------- 10.chunked_decay

def _decay_weights(g, strict=False):
    """exp(g_t - g_s) for s <= t (s < t if strict), 0 above: masked before the exp."""
    n = g.shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool).tril(-1 if strict else 0)
    return torch.where(causal, g[..., :, None] - g[..., None, :], float("-inf")).exp()


def _chunks(q, k, v, alpha, chunk, stop=None):
    """(q, k, v, alpha) of each chunk along the time axis, the chunks starting before ``stop`` (T by default)."""
    for s in range(0, q.shape[2] if stop is None else stop, chunk):
        yield q[:, :, s:s + chunk], k[:, :, s:s + chunk], v[:, :, s:s + chunk], alpha[:, :, s:s + chunk]


def _chunked(q, k, v, alpha, chunk, *, carry=True, read_decay=True, strict=False, write_decay=True,
             state_decay=True, whole_chunks_only=False):
    """The chunked decay memory as a learner writes it, each keyword switching one mistake on (the default
    is right): the state not carried, its read or its decay, the writes' decay, the diagonal, the last chunk."""
    B, H, T, D = q.shape
    S = q.new_zeros(B, H, D, v.shape[-1])
    out = []
    for qc, kc, vc, ac in _chunks(q, k, v, alpha, chunk, stop=T - T % chunk if whole_chunks_only else T):
        g = ac.log().cumsum(-1)
        intra = ((qc @ kc.transpose(-1, -2)) * _decay_weights(g, strict)) @ vc
        if not carry:
            out.append(intra)  # only the chunk's own tokens
            continue
        read = (qc * g.exp()[..., None]) if read_decay else qc
        out.append(read @ S + intra)
        kept = g[..., -1, None, None].exp() * S if state_decay else S
        written = (kc * (g[..., -1:] - g).exp()[..., None]) if write_decay else kc
        S = kept + written.transpose(-1, -2) @ vc
    return torch.cat(out, dim=2)


def _chunked_mutant(name, hint, **mistake):
    """Register ``_chunked`` with ``mistake`` switched on as the mutant ``name`` of 10.chunked_decay."""
    def answer(q, k, v, alpha, chunk):
        return _chunked(q, k, v, alpha, chunk, **mistake)
    answer.__name__ = answer.__qualname__ = name
    return mutant("10.chunked_decay", hint=hint)(answer)


chunked_state_reset_every_chunk = _chunked_mutant("chunked_state_reset_every_chunk", "state_not_carried",
                                                  carry=False)
chunked_reads_the_old_state_undecayed = _chunked_mutant("chunked_reads_the_old_state_undecayed",
                                                        "read_not_decayed", read_decay=False)
chunked_without_the_diagonal = _chunked_mutant("chunked_without_the_diagonal", "intra_off_by_one", strict=True)
chunked_whole_chunks_only = _chunked_mutant("chunked_whole_chunks_only", "last_chunk_dropped",
                                            whole_chunks_only=True)  # the last, shorter chunk is never reached
chunked_writes_passed_on_undecayed = _chunked_mutant("chunked_writes_passed_on_undecayed", "writes_not_decayed",
                                                     write_decay=False)
chunked_old_state_kept_whole = _chunked_mutant("chunked_old_state_kept_whole", "state_not_decayed",
                                               state_decay=False)


@mutant("10.chunked_decay", hint="nonfinite")
def chunked_by_cumprod_division(q, k, v, alpha, chunk):
    S = q.new_zeros(*q.shape[:2], q.shape[-1], v.shape[-1])
    out = []
    for qc, kc, vc, ac in _chunks(q, k, v, alpha, chunk):
        c = ac.cumprod(-1)  # prod of alpha from the chunk's start
        gamma = (c[..., :, None] / c[..., None, :]).tril()  # 0 / 0 once c underflows
        out.append((qc * c[..., None]) @ S + ((qc @ kc.transpose(-1, -2)) * gamma) @ vc)
        S = c[..., -1, None, None] * S + (kc * (c[..., -1:] / c)[..., None]).transpose(-1, -2) @ vc
    return torch.cat(out, dim=2)


@mutant("10.chunked_decay", hint="normalised")
def chunked_rms_normalised(q, k, v, alpha, chunk):
    o = decay_chunked(q, k, v, alpha, chunk_size=chunk)[0]
    return o / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + 1e-6)


@right("10.chunked_decay")
def chunked_token_loop(q, k, v, alpha, chunk):
    """The recurrence itself, token by token: right (the checks compare values, not speed)."""
    B, H, T, D = q.shape
    S = q.new_zeros(B, H, D, v.shape[-1])
    out = []
    for t in range(T):
        S = alpha[:, :, t, None, None] * S + k[:, :, t, :, None] * v[:, :, t, None, :]
        out.append(q[:, :, t, None, :] @ S)
    return torch.cat(out, dim=2)


# ---------------------------------------------------------------- questions

choice_mutants("10.gated_delta_limits", linear_attention="B", erases="C", beta_freezes="D")
choice_mutants("10.scenario_memory", decay_only="A", window="C", delta_beta_one="D")
value_mutant("10.fading_fact", "no_decay", "no_decay", 1.0)
value_mutant("10.fading_fact", "ninety_nine_decays", "off_by_one", 0.99 ** 99)
value_mutant("10.fading_fact", "one_over_e", "e_approx", math.exp(-1))
value_mutant("10.fading_fact", "overwritten", "overwritten", 0.0)
value_mutant("10.fading_fact", "rounded", "rounded", 0.37)
right_value("10.fading_fact", "the_number", 0.3660323412732292)
