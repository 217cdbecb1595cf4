"""What makes decoding fast, held by tests: the step is taken once per new token, its plan is
built once per run (not per token, so a hand-written loop costs what ``generate`` costs: the same
ops, plus the check of its token ids), and the rotary rotation as a roll gives bitwise the same
numbers. (Correctness: ``test_decode.py``; the timing: ``python -m course_lib bench decode``,
its hand loop / generate table.)"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from test_decode import MEMORIES, make, tokens
from torch.utils._python_dispatch import TorchDispatchMode

from course_lib import decode
from course_lib.models import Rotary, apply_rotary, apply_rotary_rolled


def test_rotating_by_a_roll_gives_bitwise_the_same_numbers():
    rotary = Rotary(head_dim=6)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    cos, sin = rotary.tables(9, x.device, x.dtype)
    _, signed_sin = rotary.rolled_tables(9, x.device, x.dtype)
    # (x0, x1, x2 | x3, x4, x5) -> rotate_half = (-x3, -x4, -x5 | x0, x1, x2)
    assert torch.equal(apply_rotary_rolled(x, cos[4:9], signed_sin[4:9]), apply_rotary(x, cos[4:9], sin[4:9]))
    assert signed_sin[1].tolist() == [-s for s in sin[1, :3].tolist()] + sin[1, 3:].tolist()


def test_generate_takes_the_step_once_per_new_token(monkeypatch):
    lm = make()
    calls = []
    step = decode.step
    monkeypatch.setattr(decode, "step", lambda plan, idx, st: calls.append(idx) or step(plan, idx, st))
    out = lm.generate(tokens(2, 5), 4)
    assert out.shape == (2, 9) and len(calls) == 3  # the prompt through the blocks, then 3 single tokens


def test_a_decoding_loop_builds_its_plan_once(monkeypatch):
    """A hand-written loop pays no per-token rebuild: the plan is kept while nothing changes."""
    lm = make("full")
    builds = []
    build = decode._build
    monkeypatch.setattr(decode, "_build", lambda model, end: builds.append(end) or build(model, end))
    with torch.no_grad():
        logits, state = lm(tokens(1, 3))
        for _ in range(300):  # past the first rotary tables (256 positions): they grow, the weights stay
            logits, state = lm(logits[:, -1].argmax(-1, keepdim=True), state)
    assert len(builds) == 1 and state.pos == 303


class Ops(TorchDispatchMode):
    """How many times each aten op runs."""

    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.__name__] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("memory", list(MEMORIES))
def test_a_hand_written_step_runs_the_ops_of_generates_step_and_the_token_check(memory):
    """``model(tok, state)`` adds to ``decode.step`` (what ``generate`` calls) only the check that
    the token ids are in the vocabulary: one ``aminmax`` and its two numbers read back."""
    lm = make(memory)
    with torch.inference_mode():
        (_, state), (_, same_state) = lm(tokens(1, 3)), lm(tokens(1, 3))  # two states: no branching copy
        plan = decode.prepare(lm, 4)
        with Ops() as step:
            decode.step(plan, tokens(1, 1, seed=2), state)
        with Ops() as forward:
            lm(tokens(1, 1, seed=2), same_state)
    assert forward.ops - step.ops == Counter({"aminmax.default": 1, "item.default": 2})
    assert not step.ops - forward.ops
