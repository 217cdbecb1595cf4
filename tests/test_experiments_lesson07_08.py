"""The helpers behind lessons 07 and 08 (course_lib.experiments.lesson07 / lesson08), each
against a plain reference or course_lib's own memory, on small awkward sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from course_lib import CompressiveMemory, WindowMemory, attention_reference
from course_lib.data import IGNORE
from course_lib.experiments import lesson07, lesson08

ROOT = Path(__file__).resolve().parents[1]


def test_copy_and_recall_targets_are_the_previous_token_or_the_key():
    x, y = lesson07.copy_and_recall(5, length=12, vocab_size=16, n_keys=4, seed=3)
    assert x.shape == y.shape == (5, 12)
    assert (y[:, :2] == IGNORE).all()
    asked = x == 15
    assert not asked[:, :2].any()
    for b in range(5):
        for i in range(2, 12):
            assert y[b, i] == (x[b, 0] if asked[b, i] else x[b, i - 1])
    assert ((x[:, 0] >= 0) & (x[:, 0] < 4)).all()


def test_accuracies_with_the_gate_forced_leave_the_learned_gate_as_it_was():
    torch.manual_seed(0)
    model = lesson07.infini_lm(vocab_size=16, d_model=16, n_heads=2)
    with torch.no_grad():
        model.memories[0].gate_logit.copy_(torch.tensor([0.3, -0.7]))
    data = lesson07.copy_and_recall(8, length=16, vocab_size=16, n_keys=4, seed=1)
    for logit in (None, float("inf"), float("-inf")):
        acc = lesson07.accuracies(model, data, segment_len=8, gate_logit=logit)
        assert set(acc) == {"copy", "recall"} and all(0 <= v <= 1 for v in acc.values())
    assert model.memories[0].gate_logit.tolist() == pytest.approx([0.3, -0.7])


def test_probe_seeds_rows_table_and_values_agree():
    rows = lesson07.probe_seeds(seeds=(0, 1), steps=2, segment_len=8)
    assert [r["seed"] for r in rows] == [0, 1] and all(len(r["gate"]) == 4 for r in rows)
    for probe in lesson07.PROBES:
        for kind in ("copy", "recall"):
            vals = lesson07.probe_values(rows, probe, kind)
            assert vals == [r["probe"][probe][kind] for r in rows] and all(0 <= v <= 1 for v in vals)
    table = lesson07.probe_table(rows).splitlines()
    assert len(table) == 2 + 2 * len(lesson07.PROBES) + 1  # header, rule, 3 probes x 2 kinds, the gates
    assert table[0].count("seed ") == 2
    first = lesson07.probe_values(rows, "learned", "copy")
    assert table[2].startswith("| learned | copy | " + " | ".join(f"{v:.1%}" for v in first))
    with pytest.raises(ValueError, match="probe must be one of"):
        lesson07.probe_values(rows, "window", "copy")


@pytest.mark.parametrize("t, n_m, n_cm, c", [(7, 3, 2, 2), (20, 4, 3, 4), (18, 0, 6, 3), (12, 5, 0, 1), (13, 2, 9, 3)])
def test_compressed_slots_against_a_plain_loop(t, n_m, n_cm, c):
    values = torch.randn(t, 3, dtype=torch.float64)
    spans, slots = lesson08.compressed_slots(values, n_m, n_cm, c)
    exact = list(range(max(0, t - n_m), t))
    groups = [(g * c, g * c + c - 1) for g in range(max(0, t - n_m) // c)][-n_cm:] if n_cm else []
    rest = list(range((max(0, t - n_m) // c) * c, max(0, t - n_m)))  # a partial group stays exact
    want = groups + [(j, j) for j in rest + exact]
    assert spans == want
    for (first, last), u in zip(spans, slots):
        torch.testing.assert_close(u, values[first:last + 1].mean(0))


@pytest.mark.parametrize("t, chunk", [(40, 8), (56, 8)])
def test_compressed_slots_are_what_compressive_memory_attends_to(t, chunk):
    n_m, n_cm, c, d = 8, 5, 4, 6  # c divides the chunk: the paper's rule
    g = torch.Generator().manual_seed(t)
    k, v = (torch.randn(1, 2, t + 1, d, generator=g, dtype=torch.float64) for _ in range(2))
    q = torch.randn(1, 2, 1, d, generator=g, dtype=torch.float64)
    memory = CompressiveMemory(mem_len=n_m, cmem_len=n_cm, ratio=c, compress="mean")
    state = memory.init_state(1, 2, d, dtype=torch.float64)
    for p in range(0, t, chunk):
        _, state = memory(k[:, :, p:p + chunk], k[:, :, p:p + chunk], v[:, :, p:p + chunk], state)
    out, _ = memory(q, k[:, :, t:], v[:, :, t:], state)
    spans, K = lesson08.compressed_slots(k[:, :, :t], n_m, n_cm, c)
    _, V = lesson08.compressed_slots(v[:, :, :t], n_m, n_cm, c)
    assert spans == memory.spans(state)
    torch.testing.assert_close(out, attention_reference(q, torch.cat([K, k[:, :, t:]], 2),
                                                        torch.cat([V, v[:, :, t:]], 2)))


def test_error_by_age_window_and_mean_pooling():
    values = torch.randn(10, 4, dtype=torch.float64)
    spans, slots = lesson08.compressed_slots(values, 3, 0, 1)  # a window of 3
    err = lesson08.error_by_age(values, spans, slots)
    assert err.tolist() == [0.0] * 3 + [1.0] * 7
    # independent tokens, mean of c: E|v - u|^2 / E|v|^2 = 1 - 1/c; wide vectors make each ratio close to it
    values = torch.randn(500, 4, 2000, dtype=torch.float64)
    err = lesson08.age_errors(values, 0, 1, 4)
    assert err.mean().item() == pytest.approx(0.75, abs=0.01)


def test_a_three_way_front_counts_times_within_their_noise_as_a_tie():
    # (bytes, ms, -recall): B is 0.005 ms faster than A at the same bytes and recall, C smaller but slower
    costs = [[100, 0.354, -0.5], [100, 0.349, -0.5], [50, 0.9, -0.5]]
    assert lesson08.pareto_front_nd(costs) == [2, 1]  # exact: B's 5 microseconds push A off
    assert lesson08.pareto_front_nd(costs, ties=[0, 0.1, 0]) == [2, 0, 1]  # within the noise: both stay
    assert lesson08.pareto_front_nd([[100, 0.1, -0.5], [100, 0.5, -0.5]], ties=[0, 0.1, 0]) == [0]  # beyond it
    with pytest.raises(ValueError, match="ties must give one tolerance >= 0 per column"):
        lesson08.pareto_front_nd(costs, ties=[0, 0.1])


def test_pareto_front_against_brute_force_on_ties():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        n = int(torch.randint(1, 9, (1,), generator=g))
        b = torch.randint(1, 4, (n,), generator=g).tolist()
        a = torch.randint(0, 3, (n,), generator=g).tolist()
        keep = [i for i in range(n) if not any(
            b[j] <= b[i] and a[j] >= a[i] and (b[j], a[j]) != (b[i], a[i]) for j in range(n))]
        assert lesson08.pareto_front(b, a) == sorted(keep, key=lambda i: (b[i], i))
    with pytest.raises(ValueError, match="same length"):
        lesson08.pareto_front([1, 2], [0.5])


def test_answer_accuracy_counts_labelled_positions_only():
    logits = torch.zeros(1, 4, 3)
    logits[0, torch.arange(4), torch.tensor([0, 1, 2, 0])] = 1.0
    targets = torch.tensor([[0, IGNORE, 1, IGNORE]])  # right, -, wrong, -
    assert lesson08.answer_accuracy(logits, targets) == 0.5
    with pytest.raises(ValueError, match="ignore_index"):
        lesson08.answer_accuracy(logits, torch.full((1, 4), IGNORE))


def test_the_shipped_results_hold_every_design_and_the_command():
    from course_lib.experiments.results import read_result

    for name, keys in (("lesson08_recall", {"label", "family", "gap", "seed", "lr", "accuracy", "from_memory",
                                            "nbytes", "peak_nbytes"}),
                       ("lesson08_cost", {"label", "family", "context", "ms_per_token", "nbytes"})):
        result = read_result(ROOT / "docs" / "results" / f"{name}.json")
        assert result["command"].startswith("python -m course_lib.experiments.lesson08 ")
        assert result["rows"] and all(keys <= set(r) for r in result["rows"])
    recall = read_result(ROOT / "docs" / "results" / "lesson08_recall.json")
    cost = read_result(ROOT / "docs" / "results" / "lesson08_cost.json")
    assert {r["label"] for r in recall["rows"]} <= {r["label"] for r in cost["rows"]}  # the lesson joins them
    assert len(recall["seeds"]) >= 3  # every comparison a sentence draws rests on 3 seeds


def test_window_memory_used_by_the_lesson_still_evicts():  # the copy task's premise
    memory = WindowMemory(4)
    state = memory.init_state(1, 1, 2)
    for _ in range(3):
        _, state = memory(*(torch.randn(3, 1, 1, 8, 2)), state)
    assert memory.spans(state) == [(p, p) for p in range(20, 24)]


def test_the_readme_recall_table_is_the_one_rendered_from_lesson_08s_result_file():
    """README.md and lesson 08 read the same file, so their numbers cannot disagree (issue 18 point 4)."""
    from pathlib import Path

    from course_lib.experiments.lesson08 import load_result, recall_table

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    start = readme.index("<!-- recall table: rendered from docs/results/lesson08_recall.json -->\n")
    end = readme.index("<!-- end of recall table -->")
    shown = readme[start:end].split("\n", 1)[1].strip()
    assert shown == recall_table(load_result(root / "docs" / "results" / "lesson08_recall.json"))


def test_the_infini_layer_rotates_keys_for_its_window_only():
    from course_lib.experiments import lesson07

    memory = lesson07.infini_lm().memories[0]
    assert memory.rotates_itself  # MemoryLM hands over unrotated q, k with a Rotation
    assert [m.uses_rotary for m in memory.memories] == [True, False]  # window rotated, linear memory not
