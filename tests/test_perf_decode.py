"""What makes decoding fast, held by tests: the step is taken once per new token, its plan is
built once per run (not per token, so a hand-written loop costs what ``generate`` costs), and the
rotary rotation as a roll gives bitwise the same numbers. (Correctness: ``test_decode.py``.)"""

from __future__ import annotations

import torch
from test_decode import make, tokens

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
