"""course_lib.experiments.lesson05 and lesson06: the helpers behind lessons 05 and 06 agree with
plain references, and the text experiment's command runs end to end (a tiny setting)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from course_lib import MemoryLM
from course_lib.experiments import lesson05, lesson06


def _loop_read(kind, K, V):
    """The memories written out token by token (the equations of lesson 05), then read with every key."""
    b, n, d = K.shape
    S = K.new_zeros(b, d, V.shape[-1])
    z = K.new_zeros(b, d)
    for j in range(n):
        k, v = K[:, j], V[:, j]
        if kind == "sum":
            kn = F.normalize(k, dim=-1)
            S = S + kn[:, :, None] * v[:, None, :]
        elif kind == "linear":
            f = F.elu(k) + 1
            S, z = S + f[:, :, None] * v[:, None, :], z + f
        else:
            kn = F.normalize(k, dim=-1)
            S = S + kn[:, :, None] * (v - (kn[:, None, :] @ S)[:, 0])[:, None, :]
    if kind == "linear":
        f = F.elu(K) + 1
        return (f @ S) / (f @ z[:, :, None])
    return F.normalize(K, dim=-1) @ S


@pytest.mark.parametrize("kind", lesson05.KINDS)
@pytest.mark.parametrize("n", [1, 5, 23, 70])  # 70 > chunk size 64 of the chunked delta rule
def test_read_back_equals_the_token_loop(kind, n):
    gen = torch.Generator().manual_seed(n)
    K = torch.randn(3, n, 7, generator=gen, dtype=torch.float64)
    V = torch.randn(3, n, 5, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(lesson05.read_back(kind, K, V), _loop_read(kind, K, V))


def test_orthogonal_keys_are_read_back_exactly_up_to_d():
    keys = lesson05.orthogonal_keys(2, 6, 6)
    torch.testing.assert_close(keys @ keys.transpose(1, 2), torch.eye(6, dtype=torch.float64).expand(2, 6, 6))
    curve = lesson05.capacity(8, [4, 8, 16], keys="orthogonal", reps=4)
    assert curve["sum"]["all"][:2] == pytest.approx([1.0, 1.0]) and curve["sum"]["all"][2] < 0.9
    assert curve["delta"]["newest"][2] > curve["delta"]["oldest"][2]  # recency past n = d
    with pytest.raises(ValueError, match="keys must be"):
        lesson05.capacity(8, [4], keys="smooth")
    with pytest.raises(ValueError, match="kind must be"):
        lesson05.read_back("gated", keys, keys)


def test_accuracy_by_gap_bins_half_open():
    gaps = torch.tensor([1, 2, 8, 9, 20])
    right = torch.tensor([True, False, True, True, False])
    acc = lesson05.accuracy_by_gap(gaps, right, [1, 8, 12, 24, 32])
    assert acc[:3] == [0.5, 1.0, 0.0] and acc[3] != acc[3]  # the empty bin is NaN


def test_recall_with_a_read_out_scales_with_the_state_not_with_d():
    # one pair is always decoded; orthogonal keys up to d are decoded exactly, by every rule but linear
    assert lesson05.recall_at("sum", 8, 8, 1, 64, reps=4) == 1.0
    assert lesson05.recall_at("delta", 8, 8, 8, 64, reps=4, keys="orthogonal") == 1.0
    # the sum memory's threshold follows d d_v / (4 ln V) and grows with d_v beyond d
    n_small = lesson05.recall_threshold("sum", 16, 16, 1024)
    n_wide = lesson05.recall_threshold("sum", 16, 64, 1024)
    assert n_wide > 2 * 16 and n_wide > 2.5 * n_small
    assert 0.5 < n_wide / lesson05.capacity_law(16, 64, 1024) < 2
    assert lesson05.capacity_law(32, 32, 64) == pytest.approx(32 * 32 / (4 * torch.log(torch.tensor(64.0)).item()))
    rows = lesson05.capacity_sweep([(16, 16, 256)], kinds=("sum", "linear"))
    assert [r["kind"] for r in rows] == ["sum", "linear"] and rows[1]["n_star"] < rows[0]["n_star"]
    with pytest.raises(ValueError, match="threshold"):
        lesson05.recall_threshold("sum", 8, 8, 16, threshold=1.5)
    with pytest.raises(ValueError, match="n_values"):
        lesson05.recall_at("sum", 8, 8, 4, 0)


def test_mqar_designs_compare_at_equal_peak_and_split_by_source():
    s = lesson05.MqarSetup(steps=1, slots=8)
    specs = lesson05.mqar_designs(s, 16)
    assert specs["window_peak"] == {"name": "window", "window": 24} and specs["xl"]["mem_len"] == 8
    out = lesson05.mqar_reach(s, designs=("window_peak", "xl"), seeds=(0, 1))
    n = out["gaps"].numel()
    assert out["same_segment"].shape == (n,) and 0 < out["same_segment"].float().mean() < 1
    for res in out["designs"].values():
        assert res["right_seeds"].shape == (2, n) and torch.equal(res["right"], res["right_seeds"][0])
    win, xl = out["designs"]["window_peak"], out["designs"]["xl"]
    assert win["peak_nbytes"] == xl["peak_nbytes"] and xl["nbytes"] < xl["peak_nbytes"] == win["nbytes"]
    with pytest.raises(ValueError, match="designs must be"):
        lesson05.mqar_reach(s, designs=("gated",))


def test_mqar_seeds_trained_in_worker_processes_give_the_same_answers_as_here():
    """Each (design, seed) seeds itself, so the lesson's two workers train the very models one process would."""
    s = lesson05.MqarSetup(steps=3, slots=8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a worker, so that not even the order of a sum differs
    try:
        here = lesson05.mqar_reach(s, designs=("window", "xl"), seeds=(0, 1), jobs=1)
    finally:
        torch.set_num_threads(threads)
    there = lesson05.mqar_reach(s, designs=("window", "xl"), seeds=(0, 1), jobs=2)
    for name in ("window", "xl"):
        assert torch.equal(here["designs"][name]["right_seeds"], there["designs"][name]["right_seeds"])
        assert here["designs"][name]["peak_nbytes"] == there["designs"][name]["peak_nbytes"]
    assert not torch.equal(here["designs"]["window"]["right_seeds"][0], here["designs"]["window"]["right_seeds"][1])


def test_rotary_command_writes_a_result_file(tmp_path):
    from course_lib.experiments.results import read_result

    out = tmp_path / "rotary.json"
    assert lesson05.main(["rotary", "--out", str(out), "--seeds", "0", "--steps", "1"]) == 0
    result = read_result(out)
    assert [r["rotary"] for r in result["rows"]] == [True, False] and result["seeds"] == [0]
    assert result["command"].startswith("python -m course_lib.experiments.lesson05 rotary")


def test_designs_hold_the_same_bytes_and_the_compressive_one_follows_the_paper():
    s = replace(lesson06.TEXT_QUICK, slots=8, ratio=4, segment_len=4, d_model=8, n_heads=1)
    sizes = set()
    peaks = {}
    for name in ("window", "xl", "mean", "conv", "conv_shared", "dilated_conv"):
        model = MemoryLM(16, 8, 1, 1, lesson06.make_memory_for(name, s))
        _, state = model(torch.zeros(1, 12, dtype=torch.long))
        sizes.add(model.state_nbytes(state))
        peaks[name] = model.peak_nbytes(state, s.segment_len)
    assert len(sizes) == 1  # equal carried bytes; the segment memories also read their segment of n_s pairs:
    per_pair = 2 * (8 // 1) * 4  # a key and a value of d_h = 8 floats, one head, one layer
    assert {n: p - peaks["window"] for n, p in peaks.items()} == {
        n: 0 if n == "window" else s.segment_len * per_pair for n in peaks}
    most_used = MemoryLM(16, 8, 1, 1, lesson06.make_memory_for("most_used", s))
    _, state = most_used(torch.zeros(1, 12, dtype=torch.long))
    assert most_used.state_nbytes(state) - sizes.pop() == s.slots * 4  # its attention per slot, one float each
    memory = lesson06.make_memory_for("mean", s)
    assert (memory.mem_len, memory.cmem_len, memory.ratio) == (4, 4, 4)
    with pytest.raises(ValueError, match="design must be"):
        lesson06.make_memory_for("lstm", s)


def test_extra_loss_sums_the_reconstruction_losses_of_the_layers():
    torch.manual_seed(0)
    s = replace(lesson06.TEXT_QUICK, slots=8, ratio=2, d_model=8, n_heads=1)
    model = MemoryLM(16, 8, 2, 1, lesson06.make_memory_for("conv", s))
    assert model.memories[0].k_weight.shape == (8, 8, 2)  # Conv1d(d_h, d_h, c): made with the model
    state = None
    for seg in torch.randint(0, 16, (2, 12)).split(4, dim=1):
        _, state = model(seg, state)
    loss = lesson06.extra_loss(model, state)
    assert loss is not None and loss.requires_grad
    torch.testing.assert_close(loss, sum(state.extra_losses.values()))
    plain = MemoryLM(16, 8, 1, 1, lesson06.make_memory_for("window", s))
    assert lesson06.extra_loss(plain, plain(torch.zeros(1, 4, dtype=torch.long))[1]) is None


def test_summaries_and_paired_differences_by_seed():
    rows = [{"design": d, "label": d, "seed": s, "bpc": b, "nbytes": 1}
            for d, s, b in [("window", 0, 2.0), ("window", 1, 3.0), ("xl", 0, 2.5), ("xl", 1, 3.1)]]
    summary = {r["design"]: r for r in lesson06.summarise(rows)}
    assert summary["window"]["bpc"] == 2.5 and summary["window"]["std"] == pytest.approx(2 ** -0.5)
    paired = {r["design"]: r for r in lesson06.paired(rows, "window")}
    assert paired["xl"]["diff"] == pytest.approx(0.3) and paired["xl"]["worse"] == 2
    assert paired["window"]["diff"] == 0
    lesson06.plot_text(lesson06.summarise(rows))  # a pure function: draws without pyplot


def test_compressor_taps_read_the_linear_map_of_each_position():
    s = replace(lesson06.TEXT_QUICK, slots=8, ratio=4, d_model=8, n_heads=1)
    assert lesson06.compressor_taps(lesson06.make_memory_for("mean", s)) is None
    conv = lesson06.make_memory_for("conv", s)
    assert lesson06.compressor_taps(conv) == {"taps": [0.25] * 4, "off_diagonal": 0.0}  # mean pooling to start
    with torch.no_grad():
        conv.v_weight[:, :, 3] += torch.eye(conv.head_dim)  # the newest pair of a group: weight 1.25
        conv.v_weight[0, 1, 0] = 1.0
        conv.v_bias += 5.0  # a bias is not a weight
    taps = lesson06.compressor_taps(conv, "v")
    assert taps["taps"] == pytest.approx([0.25, 0.25, 0.25, 1.25]) and 0 < taps["off_diagonal"] < 1
    assert lesson06.compressor_taps(conv, "k")["taps"] == [0.25] * 4


def test_the_text_command_writes_its_result_and_resumes(tmp_path):
    from course_lib.experiments.results import read_result

    out = tmp_path / "text.json"
    args = ["text", "--quick", "--designs", "window,conv", "--jobs", "1", "--out", str(out)]
    assert lesson06.main(args) == 0
    result = read_result(out)  # the one result schema
    assert [r["design"] for r in result["summary"]] == ["window", "conv"]
    assert result["command"].startswith("python -m course_lib.experiments.lesson06 text --quick")
    conv = next(r for r in result["rows"] if r["design"] == "conv")
    assert conv["taps_before"] and conv["recon_loss_last"] is not None and conv["commit"] == result["commit"]
    assert conv["peak_nbytes"] > conv["nbytes"] == next(r["nbytes"] for r in result["rows"] if r["design"] == "window")
    before = result["rows"]
    assert lesson06.main(args + ["--resume"]) == 0  # nothing left to run: the same runs come back
    assert read_result(out)["rows"] == before
    more = ["text", "--quick", "--designs", "most_used", "--jobs", "1", "--out", str(out), "--resume"]
    assert lesson06.main(more) == 0
    again = read_result(out)  # the kept rows and the new design, in the order of DESIGNS
    assert [r["design"] for r in again["rows"]] == ["window", "conv", "most_used"] and again["rows"][:2] == before


# ------------------------------------------------------------------ lesson 11's caches on the text task

FIXED_CACHES = {"kivi4": "window", "h2o": "budget", "kivi2": "window"}  # the size each fit chose


def _text_record(spec, s=lesson06.TEXT_FULL):
    from course_lib.experiments.recall import design

    return design(spec, n_heads=s.n_heads, d_model=s.d_model)


def test_lesson11s_caches_are_its_own_fit_at_the_windows_bytes_with_labels_that_say_them():
    from course_lib.experiments import lesson11

    s = lesson06.TEXT_FULL
    fitted = lesson11.recall_designs(lesson11.setup(budget=s.slots, d_model=s.d_model), n_heads=s.n_heads)
    assert [lesson06.design_spec(name, s) for name in lesson06.CACHES] == [r["spec"] for r in fitted]
    window = lesson11.layer_bytes(_text_record(lesson06.design_spec("window", s)))
    assert window == 2 * s.slots * s.d_model * 4  # 32 fp32 pairs per head, 2 heads of d_h = 32: a layer
    for name, key in FIXED_CACHES.items():
        spec = lesson06.design_spec(name, s)
        held = lesson11.layer_bytes(_text_record(spec))
        bigger = {**spec, key: spec[key] + 1, **({"recent": (spec[key] + 1) // 2} if key == "budget" else {})}
        assert 0.95 * window < held <= window < lesson11.layer_bytes(_text_record(bigger)), name  # the largest
        label = lesson06.DESIGNS[name]
        assert f"({held:,} B/layer)" in label and str(spec[key]) in label, label
    assert lesson06.design_spec("kivi2", s)["window"] > lesson06.design_spec("kivi4", s)["window"] > s.slots
    latent, every = lesson06.design_spec("latent", s), lesson06.design_spec("kivi4_all", s)
    assert "window" not in latent and "window" not in every  # the growing ones
    per_token = (latent["rank"] + latent["rope_dim"]) * 4
    grow = lesson11.layer_bytes(_text_record(latent), length=257) - lesson11.layer_bytes(_text_record(latent))
    assert grow == per_token and f"grows {per_token} B/token/layer" in lesson06.DESIGNS["latent"]
    group = every["group"]  # the 4-bit cache grows a group at a time
    grow = (lesson11.layer_bytes(_text_record(every), length=256 + group)
            - lesson11.layer_bytes(_text_record(every))) // group
    assert f"grows {grow} B/token/layer" in lesson06.DESIGNS["kivi4_all"]
    with pytest.raises(ValueError, match="lesson 11's caches"):
        lesson06.cache_spec("window", s)


def test_lesson11s_caches_train_in_memorylm_on_segments_with_every_chunk_key_reaching_the_loss():
    s = lesson06.TEXT_FULL
    torch.manual_seed(0)
    for name in ("kivi4", "kivi2"):  # as in lesson 11's runs: segments of 16, G = R = 8
        memory = lesson06.make_memory_for(name, s).double()
        state = memory.init_state(1, s.n_heads, s.d_model // s.n_heads, dtype=torch.float64)
        for _ in range(4):  # past the first groups: quantised, in the ring, and evicted
            q, k, v = (torch.randn(1, s.n_heads, s.segment_len, s.d_model // s.n_heads, dtype=torch.float64,
                                   requires_grad=True) for _ in range(3))
            out, state = memory(q, k, v, state)
            out.square().sum().backward()
            assert (k.grad.abs().sum((0, 1, 3)) > 0).all() and (v.grad.abs().sum((0, 1, 3)) > 0).all(), name
            assert not state.exact.k.requires_grad and not any(x.requires_grad for x in state.groups.tensors())
    for name in lesson06.CACHES:
        model = MemoryLM(40, s.d_model, s.n_layers, s.n_heads, lesson06.make_memory_for(name, s))
        state = None
        for seg in torch.randint(0, 40, (2, 3 * s.segment_len)).split(s.segment_len, 1):
            logits, state = model(seg, state)
            F.cross_entropy(logits.flatten(0, 1), seg.flatten()).backward()  # per segment, as train_text
        for p_name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, (name, p_name)


def test_the_text_command_runs_lesson11s_caches_beside_the_window(tmp_path):
    from course_lib.experiments.results import read_result

    out = tmp_path / "caches.json"
    names = ["window", *lesson06.CACHES]
    assert lesson06.main(["text", "--quick", "--designs", ",".join(names), "--jobs", "1", "--out", str(out)]) == 0
    result = read_result(out)
    rows = {r["design"]: r for r in result["rows"]}
    assert list(rows) == names and result["command"].endswith(f"--designs {','.join(names)}")
    assert lesson06.main(["text", "--quick", "--designs", "kivi2", "--jobs", "1", "--out", str(out), "--resume"]) == 0
    assert read_result(out)["command"].endswith(f"--designs {','.join(names)}")  # still what made the file
    assert read_result(out)["rows"] == result["rows"]
    for name in lesson06.CACHES:
        assert rows[name]["label"] == lesson06.DESIGNS[name] and rows[name]["spec"] == lesson06.design_spec(
            name, lesson06.TEXT_QUICK) and rows[name]["bpc"] > 0
        assert rows[name]["peak_nbytes"] == rows[name]["nbytes"]  # none reads its segment
    for name in FIXED_CACHES:  # every layer holds the cache: the model's bytes are the window's, within the fit
        assert 0.95 * rows["window"]["nbytes"] < rows[name]["nbytes"] <= rows["window"]["nbytes"], name


def test_resuming_the_shipped_text_file_keeps_its_rows_and_adds_only_the_new_designs(tmp_path, monkeypatch):
    import json
    import shutil
    from dataclasses import asdict

    from course_lib.experiments.results import read_result

    shipped = read_result(lesson06.RESULT)
    assert shipped["setup"] == json.loads(json.dumps(asdict(lesson06.TEXT_FULL)))  # what --resume compares
    out = tmp_path / "text.json"
    shutil.copy(lesson06.RESULT, out)
    made = []

    def fake(name, seed, s):  # no training: the rows --resume would add
        made.append((name, seed))
        return {"design": name, "label": lesson06.DESIGNS[name], "seed": seed, "bpc": 2.0, "nbytes": 1,
                "peak_nbytes": 1, "seconds": 1.0, "commit": None}

    monkeypatch.setattr(lesson06, "train_text", fake)
    assert lesson06.main(["text", "--resume", "--designs", "kivi2,h2o", "--jobs", "1", "--out", str(out)]) == 0
    assert sorted(made) == sorted((n, seed) for n in ("kivi2", "h2o") for seed in lesson06.TEXT_FULL.seeds)
    rows = read_result(out)["rows"]
    old = [r for r in rows if r["design"] not in ("kivi2", "h2o")]
    key = lambda r: (r["design"], r["seed"])  # noqa: E731
    assert sorted(old, key=key) == sorted(shipped["rows"], key=key) and len(rows) == len(shipped["rows"]) + 6
    in_file = {r["design"] for r in shipped["rows"]} | {"kivi2", "h2o"}
    held = ",".join(d for d in lesson06.DESIGNS if d in in_file)  # what the file holds, in DESIGNS' order
    assert read_result(out)["command"] == f"python -m course_lib.experiments.lesson06 text --designs {held}"


def test_resuming_a_file_made_with_another_python_refuses_its_corpus_differs(tmp_path, monkeypatch):
    import json

    out = tmp_path / "text.json"
    result = json.loads(lesson06.RESULT.read_text())
    result["machine"]["python"] = "2.7.18"  # the standard library's source, the corpus, of another Python
    out.write_text(json.dumps(result))
    monkeypatch.setattr(lesson06, "train_text", lambda *a: pytest.fail("nothing may run"))
    with pytest.raises(SystemExit):
        lesson06.main(["text", "--resume", "--designs", "kivi2", "--jobs", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == result  # the file as it was


def test_the_reference_designs_on_text_carry_the_windows_bytes_and_the_full_cache_grows():
    s = lesson06.TEXT_FULL  # d_h = 32: a 32 x 32 delta matrix per head holds the bytes of 16 pairs
    x = torch.zeros(1, 40, dtype=torch.long)
    carried = {}
    for name in ("window", "window_delta", "window_gated_delta", "full"):
        model = MemoryLM(16, s.d_model, 1, s.n_heads, lesson06.make_memory_for(name, s))
        _, state = model(x)
        carried[name] = model.state_nbytes(state)
    assert carried["window_delta"] == carried["window_gated_delta"] == carried["window"]
    assert carried["full"] == 40 * 2 * s.d_model * 4  # every pair of the 40 tokens, float32
    assert lesson06.design_spec("window_delta", s)["memories"][0] == {"name": "window", "window": 16}


def test_the_text_table_shows_each_design_against_the_window_on_the_same_seed():
    rows = [{"design": d, "label": f"the {d}", "seed": s, "bpc": b, "nbytes": n, "peak_nbytes": p}
            for d, s, b, n, p in [("window", 0, 2.0, 10, 10), ("window", 1, 3.0, 10, 10),
                                  ("h2o", 0, 2.5, 12, 12), ("h2o", 1, 2.9, 12, 12)]]
    table = lesson06.text_table({"rows": rows}).splitlines()
    assert table[0].startswith("| design | carried bytes | peak bytes | bits/char")
    assert table[2] == "| the window | 10 | 10 | 2.500 ± 0.707 | (the reference) |  |"
    assert table[3] == "| the h2o | 12 | 12 | 2.700 ± 0.283 | +0.200 ± 0.424 | 1 of 2 seeds |"
