"""course_lib.data: synthetic recall tasks and the standard-library character corpus."""

from __future__ import annotations

import pytest
import torch

from course_lib.data import (
    IGNORE,
    CharVocab,
    encode_examples,
    long_dialogue,
    mqar,
    mqar_distance,
    mqar_gap_probs,
    passkey,
    stdlib_corpus,
    stdlib_files,
)

# ------------------------------------------------------------------------------ MQAR


def test_mqar_is_deterministic_by_seed():
    a = mqar(8, seq_len=32, n_pairs=4, vocab_size=20, seed=3)
    b = mqar(8, seq_len=32, n_pairs=4, vocab_size=20, seed=3)
    c = mqar(8, seq_len=32, n_pairs=4, vocab_size=20, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_mqar_layout_keys_values_and_answers():
    # vocab 20: keys come from 1..9, values from 10..19; 4 pairs fill positions 0..7
    x, y = mqar(50, seq_len=32, n_pairs=4, vocab_size=20, seed=0)
    assert x.shape == y.shape == (50, 32) and x.dtype == y.dtype == torch.long
    keys, values = x[:, 0:8:2], x[:, 1:8:2]
    assert ((keys >= 1) & (keys <= 9)).all()
    assert ((values >= 10) & (values <= 19)).all()
    for row in range(50):
        assert len(set(keys[row].tolist())) == 4, "keys of one example are distinct"
        answer = dict(zip(keys[row].tolist(), values[row].tolist()))
        where = (y[row] != IGNORE).nonzero().flatten()
        assert len(where) == 4, "every key is asked exactly once"
        assert (where >= 8).all() and (where % 2 == 0).all(), "queries sit at even offsets after the pairs"
        asked = x[row, where].tolist()
        assert sorted(asked) == sorted(answer), "the query tokens are the keys"
        assert y[row, where].tolist() == [answer[k] for k in asked], "the label is the key's value"
    assert (x.max() < 20) and (x.min() >= 0)


def test_mqar_without_random_fill_leaves_zeros_between_queries():
    x, y = mqar(3, seq_len=16, n_pairs=2, vocab_size=8, seed=1, random_fill=False)
    outside = torch.ones_like(x, dtype=torch.bool)
    outside[:, :4] = False
    outside[y != IGNORE] = False
    assert (x[outside] == 0).all()


def test_mqar_query_gaps_follow_the_power_law():
    # slot g (0-based) of each query: its offset after the pairs / 2; p(g) ∝ (g+1)^(a-1)
    n_pairs, seq_len = 2, 4 + 2 * 10  # 10 slots
    x, y = mqar(20000, seq_len=seq_len, n_pairs=n_pairs, vocab_size=16, seed=0, power_a=0.3)
    slots = ((y != IGNORE).nonzero()[:, 1] - 2 * n_pairs) // 2
    counts = torch.bincount(slots, minlength=10).double()
    assert counts[0] > counts[1] > counts[4] > counts[9], counts
    p = mqar_gap_probs(10, 0.3)
    assert p[0] / p[9] == pytest.approx(10 ** 0.7)
    assert float(p.sum()) == pytest.approx(1.0)


def test_mqar_gap_probs_match_the_sampled_frequencies_with_one_pair():
    # with one pair there is no "without replacement" effect: frequencies estimate p directly
    x, y = mqar(40000, seq_len=2 + 2 * 6, n_pairs=1, vocab_size=8, seed=2, power_a=0.2)
    slots = ((y != IGNORE).nonzero()[:, 1] - 2) // 2
    freq = torch.bincount(slots, minlength=6).double() / 40000
    assert torch.allclose(freq, mqar_gap_probs(6, 0.2), atol=0.01), freq


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_pairs=8, vocab_size=16), "vocab_size"),
        (dict(n_pairs=4, seq_len=15), "seq_len"),
        (dict(power_a=0.0), "power_a"),
        (dict(n_pairs=0), "n_pairs"),
    ],
)
def test_mqar_bad_arguments_are_named(kwargs, match):
    args = dict(n_examples=2, seq_len=32, n_pairs=4, vocab_size=20, seed=0) | kwargs
    with pytest.raises(ValueError, match=match):
        mqar(**args)


def test_mqar_seed_must_be_an_int():
    with pytest.raises(TypeError, match="seed"):
        mqar(2, 32, 4, 20, seed=1.5)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(n_pairs=8, vocab_size=16), ValueError, "vocab_size"),
        (dict(n_pairs=0), ValueError, "n_pairs"),
        (dict(gap=-1), ValueError, "gap"),
        (dict(gap=(5, 2)), ValueError, "lo <= hi"),
        (dict(gap=2.5), TypeError, "gap"),
        (dict(prefix=-1), ValueError, "prefix"),
    ],
)
def test_mqar_distance_bad_arguments_are_named(kwargs, error, match):
    args = dict(n_examples=2, n_pairs=4, gap=8, vocab_size=20, seed=0) | kwargs
    with pytest.raises(error, match=match):
        mqar_distance(**args)


def test_mqar_distance_defaults_to_random_filler_that_never_repeats_a_key():
    x, y = mqar_distance(50, 4, 32, 20, seed=0)
    keys = x[:, 0:8:2]
    filler = x[:, 8:40]
    assert not (filler[:, :, None] == keys[:, None, :]).any() and (filler != 0).float().mean() > 0.8


# ----------------------------------------------------------------- passkey, dialogue


def test_passkey_answer_is_stated_early_and_recoverable():
    examples = passkey(5, length=600, seed=0, depth=0.25)
    for e in examples:
        assert e.text[e.answer_start:e.answer_end] == e.answer
        assert e.answer.isdigit() and len(e.answer) == 5
        assert e.text.endswith("The pass key is " + e.answer)
        assert e.text[e.fact_start:].startswith(f"The pass key is {e.answer}.")
        assert e.fact_start < 0.5 * len(e.text) and len(e.text) >= 600
    assert passkey(5, length=600, seed=0, depth=0.25) == examples
    assert passkey(5, length=600, seed=1, depth=0.25) != examples


def test_passkey_depth_moves_the_fact():
    early = passkey(1, length=2000, seed=0, depth=0.0)[0]
    late = passkey(1, length=2000, seed=0, depth=1.0)[0]
    assert early.fact_start < 200 < 1500 < late.fact_start


def test_long_dialogue_asks_late_for_a_fact_stated_early():
    for e in long_dialogue(20, length=1500, seed=0, n_facts=3):
        assert e.text[e.answer_start:e.answer_end] == e.answer
        fact = e.text[e.fact_start:e.text.index("\n")]
        assert e.answer in fact, "the answer is stated in the first turn"
        assert e.fact_start < 100 and e.answer_start > 1500
        assert e.text.count("\nUser: ") >= 10, "a long conversation lies between"
        CharVocab.ascii().encode(e.text)  # plain ASCII: raises on any other character


def test_long_dialogue_is_deterministic_and_the_answer_varies():
    a = long_dialogue(30, length=300, seed=5)
    assert a == long_dialogue(30, length=300, seed=5)
    assert len({e.answer for e in a}) > 5


def test_encode_examples_scores_only_the_answer():
    vocab = CharVocab.ascii()
    examples = long_dialogue(3, length=200, seed=1)
    x, y = encode_examples(examples, vocab)
    for n, e in enumerate(examples):
        target = y[n][y[n] != IGNORE]
        assert vocab.decode(target) == e.answer
        first = (y[n] != IGNORE).nonzero()[0, 0]
        # the label at position t is the character at t + 1
        assert vocab.decode(x[n, :first + 1]) == e.text[:e.answer_start]


def test_text_task_arguments_are_checked():
    with pytest.raises(ValueError, match="depth"):
        passkey(1, seed=0, depth=1.5)
    with pytest.raises(ValueError, match="n_facts"):
        long_dialogue(1, seed=0, n_facts=99)


# --------------------------------------------------------------------- char corpus


def test_char_vocab_round_trip_and_unknown_characters():
    v = CharVocab("abc ")
    assert v.encode("cab a").tolist() == [2, 0, 1, 3, 0]
    assert v.decode(v.encode("a bc")) == "a bc"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        v.encode("abz")
    assert CharVocab("ab?", unk="?").encode("az").tolist() == [0, 2]
    with pytest.raises(ValueError, match="ids"):
        v.decode([7])


def test_char_vocab_from_text_is_sorted():
    assert CharVocab.from_text("hello").chars == "ehlo"
    assert len(CharVocab.ascii()) == 97


def test_stdlib_files_are_a_sorted_list_of_python_sources():
    files = stdlib_files()
    assert files == sorted(files) and len(files) > 20
    assert all(f.suffix == ".py" for f in files)


def test_stdlib_corpus_split_is_disjoint_and_deterministic():
    corpus = stdlib_corpus(seed=0, max_chars=200_000, val_fraction=0.1)
    assert set(corpus.train_files).isdisjoint(corpus.val_files)
    assert len(corpus.train) + len(corpus.val) == 200_000
    assert len(corpus.val) == 20_000
    again = stdlib_corpus(seed=0, max_chars=200_000, val_fraction=0.1)
    assert (again.train, again.val) == (corpus.train, corpus.val)
    other = stdlib_corpus(seed=1, max_chars=200_000, val_fraction=0.1)
    assert other.val_files != corpus.val_files


def test_stdlib_corpus_text_comes_from_the_files_and_round_trips():
    corpus = stdlib_corpus(seed=0, max_chars=50_000)
    first = next(f for f in stdlib_files() if f.name == corpus.train_files[0])
    source = first.read_text(encoding="utf-8")
    allowed = set(corpus.vocab.chars)  # printable ASCII, tab and newline
    assert corpus.train[:200] == "".join(c if c in allowed else "?" for c in source[:200]), "the file, non-ASCII as ?"
    ids = corpus.train_ids
    assert ids.dtype == torch.long and ids.shape == (len(corpus.train),)
    assert corpus.vocab.decode(ids) == corpus.train
    assert int(ids.max()) < len(corpus.vocab)
