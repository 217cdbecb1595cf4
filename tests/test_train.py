"""course_lib.train: loops, metrics at answer positions, checkpoints that resume exactly."""

from __future__ import annotations

import math
import os
import pickle

import pytest
import torch
from torch import nn

from course_lib.data import IGNORE
from course_lib.memory import CompressiveMemory, FullMemory, MultiMemory, WindowMemory
from course_lib.models import MemoryLM
from course_lib.train import (
    Batches,
    TextBatches,
    evaluate,
    forward_segments,
    load_checkpoint,
    lr_at,
    predict,
    save_checkpoint,
    train,
)


def successor_task(n=256, t=12, vocab=8, seed=0):
    """Predict ``(x + 1) mod vocab`` at every position: learnable in a few dozen steps."""
    x = torch.randint(vocab, (n, t), generator=torch.Generator().manual_seed(seed))
    return x, (x + 1) % vocab


def tiny_lm(seed=0, vocab=8):
    torch.manual_seed(seed)
    return MemoryLM(vocab_size=vocab, d_model=16, n_layers=1, n_heads=2)


def test_loss_drops_on_a_tiny_task():
    model = tiny_lm()
    log = train(model, successor_task(), steps=60, batch_size=16, lr=1e-2, device="cpu", progress=False)
    assert len(log.losses) == 60 and log.step == 60
    assert log.losses[0] > math.log(8) - 0.5
    assert sum(log.losses[-5:]) / 5 < 0.3 * log.losses[0]
    assert evaluate(model, successor_task(seed=1), device="cpu")["accuracy"] > 0.95


class EchoModel(nn.Module):
    """Predicts the input token itself with logit 2 (all other logits 0); stateless."""

    def __init__(self, vocab=4):
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, idx, state=None):
        return 2.0 * nn.functional.one_hot(idx, self.vocab).float() + 0 * self.dummy, state


def test_evaluate_scores_only_labelled_positions():
    x = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    y = torch.tensor([[0, IGNORE, 1, IGNORE], [IGNORE, 2, IGNORE, IGNORE]])
    # scored: (0 -> 0) right, (2 -> 1) wrong, (2 -> 2) right: 2 of 3
    out = evaluate(EchoModel(), (x, y), device="cpu", batch_size=1)
    assert out["accuracy"] == pytest.approx(2 / 3) and out["n_scored"] == 3
    right = -math.log(math.exp(2) / (math.exp(2) + 3))  # cross-entropy when the label is the echoed token
    wrong = -math.log(1 / (math.exp(2) + 3))
    assert out["loss"] == pytest.approx((2 * right + wrong) / 3)
    assert out["bpc"] == pytest.approx(out["loss"] / math.log(2))


def test_segment_by_segment_equals_one_pass_for_full_memory():
    torch.manual_seed(0)
    model = MemoryLM(11, 16, 2, 2, FullMemory()).double()
    x = torch.randint(11, (3, 23))
    whole, _ = model(x)
    pieces, state = forward_segments(model, x, segment_len=5)
    assert state.pos == 23
    torch.testing.assert_close(pieces, whole)
    assert torch.equal(predict(model, x, segment_len=7, device="cpu"), whole.argmax(-1))


def test_training_state_is_detached_between_segments():
    model = MemoryLM(8, 16, 1, 2, FullMemory())
    _, state = forward_segments(model, torch.zeros(2, 9, dtype=torch.long), segment_len=4)
    assert not state.layers[0].keys.requires_grad


class LeakyMemory(FullMemory):
    """A broken memory that keeps the autograd graph in its state."""

    def forward(self, q, k, v, state):
        out, new_state = super().forward(q, k, v, state)
        new_state.buffer.k = new_state.buffer.k + 0 * k.sum()
        return out, new_state


def test_train_rejects_a_memory_that_stores_its_state_with_a_graph():
    model = MemoryLM(8, 16, 1, 2, LeakyMemory())
    with pytest.raises(ValueError, match="detach"):
        train(model, successor_task(), steps=1, segment_len=4, device="cpu", progress=False)


def test_checkpoint_resume_continues_exactly(tmp_path):
    data = successor_task()
    kwargs = dict(batch_size=8, lr=5e-3, warmup=3, device="cpu", progress=False, seed=7)

    straight = tiny_lm(seed=1)
    full = train(straight, data, steps=10, **kwargs)

    ckpt = tmp_path / "run" / "model.pt"
    first = tiny_lm(seed=1)
    train(first, data, steps=4, checkpoint=ckpt, **kwargs)
    assert ckpt.is_file()
    torch.manual_seed(123)  # disturb the global generator: resuming must restore it
    resumed = tiny_lm(seed=99)  # different weights: all must come from the checkpoint
    log = train(resumed, data, steps=10, checkpoint=ckpt, **kwargs)

    assert log.losses == full.losses
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert load_checkpoint(ckpt, tiny_lm())["step"] == 10
    assert sorted(os.listdir(ckpt.parent)) == ["model.pt"], "no temporary files left behind"


def test_checkpoint_save_is_atomic(tmp_path):
    model = tiny_lm()
    path = save_checkpoint(tmp_path / "c.pt", model, step=3)
    # pickling a lambda fails (AttributeError up to Python 3.13, PicklingError after): the old file survives
    with pytest.raises((AttributeError, pickle.PicklingError), match="pickle"):
        save_checkpoint(path, tiny_lm(seed=5), step=4, extra={"bad": lambda: 0})
    fresh = tiny_lm(seed=5)
    assert load_checkpoint(path, fresh)["step"] == 3
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))
    assert os.listdir(tmp_path) == ["c.pt"]


def test_load_checkpoint_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt", tiny_lm())


def test_progress_bar_is_quiet_under_course_quiet(monkeypatch, capsys):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("COURSE_QUIET", raising=False)
    train(tiny_lm(), successor_task(), steps=2, device="cpu", desc="loud-run")
    assert "loud-run" in capsys.readouterr().err
    monkeypatch.setenv("COURSE_QUIET", "1")
    train(tiny_lm(), successor_task(), steps=2, device="cpu", desc="quiet-run")
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_learning_rate_warms_up_then_decays():
    assert lr_at(0, 100, 1.0, warmup=10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, warmup=10) == pytest.approx(1.0)
    assert lr_at(10, 100, 1.0, warmup=10) == pytest.approx(1.0)
    assert lr_at(100, 100, 1.0, warmup=10) == pytest.approx(0.1)
    assert lr_at(50, 100, 1.0, schedule="constant") == 1.0


def test_text_batches_predict_the_next_character():
    ids = torch.arange(50)
    x, y = next(TextBatches(ids, batch_size=4, seq_len=6, seed=0))
    assert x.shape == y.shape == (4, 6)
    assert torch.equal(y, x + 1)
    rx, ry = TextBatches.rows(ids, 7)
    assert rx.shape == (7, 7) and torch.equal(rx.flatten(), ids[:49]) and torch.equal(ry, rx + 1)


def test_batches_are_seeded():
    data = successor_task()
    a, b = Batches(*data, 4, seed=1), Batches(*data, 4, seed=1)
    assert all(torch.equal(next(a)[0], next(b)[0]) for _ in range(3))


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="data"):
        train(tiny_lm(), [1, 2, 3], steps=1, device="cpu")
    with pytest.raises(ValueError, match="schedule"):
        train(tiny_lm(), successor_task(), steps=1, schedule="linear", device="cpu")
    with pytest.raises(ValueError, match="same shape|one shape"):
        Batches(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long), 1)
    x = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="no labelled positions"):
        train(tiny_lm(), (x, torch.full_like(x, IGNORE)), steps=1, device="cpu", progress=False)


# ---- extra losses: the Compressive Transformer's compressor trains through train() ----------


def conv_compressive_lm(seed=0):
    torch.manual_seed(seed)
    return MemoryLM(vocab_size=16, d_model=16, n_layers=2, n_heads=2, memory=CompressiveMemory(4, 2, 2, "conv_shared"))


def compressors(model):
    return {n: p for n, p in model.named_parameters() if ".memory." in n}


def reconstruction_loss(model, x):
    """The compressors' attention-reconstruction loss on ``x`` read in two segments (the second pops)."""
    _, state = model(x[:, :8])
    _, state = model(x[:, 8:], state)
    assert sorted(state.extra_losses) == ["blocks.0.attn.memory.reconstruction", "blocks.1.attn.memory.reconstruction"]
    return sum(state.extra_losses.values()).item()


def test_train_trains_the_compressor_through_its_reconstruction_loss():
    model = conv_compressive_lm()
    with torch.no_grad():  # a poor f_c to start from: keys and values of the first pair of each group only
        for name, p in compressors(model).items():
            p.copy_(torch.tensor([1.0, 0.0]) if name.endswith("weight") else torch.zeros(()))
    for name, p in model.named_parameters():
        p.requires_grad_(name in compressors(model))  # the rest frozen: only f_c can change the loss
    before = {n: p.detach().clone() for n, p in compressors(model).items()}
    x = torch.randint(0, 16, (4, 16), generator=torch.Generator().manual_seed(1))
    first = reconstruction_loss(model, x)
    ids = torch.randint(0, 16, (2000,), generator=torch.Generator().manual_seed(2))
    log = train(model, TextBatches(ids, batch_size=4, seq_len=16), steps=12, lr=2e-2, segment_len=4,
                device="cpu", progress=False)
    assert all(not torch.equal(p, before[n]) for n, p in compressors(model).items() if n.endswith("weight"))
    assert len(log.extra_losses) == 12 and all(e > 0 for e in log.extra_losses)
    assert reconstruction_loss(model, x) < 0.75 * first  # measured: about 0.52


def test_the_reconstruction_loss_sends_no_gradient_to_the_rest_of_the_model():
    """One train() step with the compressors trainable and one with them frozen (no reconstruction
    loss at all) move every other weight identically."""
    ids = torch.randint(0, 16, (2000,), generator=torch.Generator().manual_seed(2))
    runs = []
    for trainable in (True, False):
        model = conv_compressive_lm().double()
        for p in compressors(model).values():
            p.requires_grad_(trainable)
        log = train(model, TextBatches(ids, batch_size=4, seq_len=16), steps=1, lr=1e-2, segment_len=4,
                    grad_clip=None, device="cpu", progress=False)
        runs.append((model, log))
    (trained, log_trained), (frozen, log_frozen) = runs
    assert log_trained.extra_losses[0] > 0 and log_frozen.extra_losses[0] == 0
    rest = [n for n, _ in trained.named_parameters() if n not in compressors(trained)]
    params_trained, params_frozen = dict(trained.named_parameters()), dict(frozen.named_parameters())
    for n in rest:
        torch.testing.assert_close(params_trained[n], params_frozen[n], rtol=0, atol=0, msg=n)
    assert any(not torch.equal(params_trained[n], params_frozen[n]) for n in compressors(trained))


def test_a_compressor_inside_a_gated_multi_memory_gets_its_loss_too():
    torch.manual_seed(0)
    memory = MultiMemory([WindowMemory(4), CompressiveMemory(4, 2, 2, "conv")], combine="gate", n_heads=2)
    model = MemoryLM(vocab_size=16, d_model=16, n_layers=1, n_heads=2, memory=memory)
    x = torch.randint(0, 16, (2, 16), generator=torch.Generator().manual_seed(1))
    _, state = model(x[:, :8])
    _, state = model(x[:, 8:], state)
    assert list(state.extra_losses) == ["blocks.0.attn.memory.memories.1.reconstruction"]
    before = {n: p.detach().clone() for n, p in compressors(model).items()}
    ids = torch.randint(0, 16, (2000,), generator=torch.Generator().manual_seed(2))
    log = train(model, TextBatches(ids, batch_size=2, seq_len=16), steps=2, segment_len=8, device="cpu",
                progress=False)
    assert log.extra_losses[-1] > 0
    assert not torch.equal(compressors(model)["blocks.0.attn.memory.memories.1.k_weight"],
                           before["blocks.0.attn.memory.memories.1.k_weight"])


def test_the_loss_hook_and_step_callback_let_an_experiment_train_through_the_one_loop():
    """An objective of its own (here: only the first label column, from a third tensor of the batch)
    and a per-step callback, through train() itself: same batches, same optimizer, its loss logged."""
    import torch.nn.functional as F

    from course_lib.models import MemoryLM
    from course_lib.train import Batches, train

    torch.manual_seed(0)
    x = torch.randint(0, 11, (40, 12))
    y = torch.roll(x, -1, 1)
    first = torch.full_like(y, -100)
    first[:, 0] = y[:, 0]
    model = MemoryLM(11, 16, 1, 2)
    seen, calls = [], []

    def loss_fn(m, batch):
        xb, yb, fb = batch
        seen.append(fb.shape)
        logits, _ = m(xb)
        loss = F.cross_entropy(logits.flatten(0, 1), fb.flatten(), ignore_index=-100)
        loss.backward()
        return loss.item()

    log = train(model, Batches(x, y, 8, seed=1, extra=(first,)), 5, loss_fn=loss_fn, device="cpu", progress=False,
                on_step=lambda step, loss, m: calls.append((step, loss)))
    assert seen == [torch.Size([8, 12])] * 5 and [s for s, _ in calls] == [1, 2, 3, 4, 5]
    assert [loss for _, loss in calls] == log.losses and log.losses[-1] < log.losses[0]
    with pytest.raises(ValueError, match=r"extra\[0\] has 3 rows but inputs have 40"):
        Batches(x, y, 8, extra=(first[:3],))
