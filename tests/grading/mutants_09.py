"""Lesson 09's mutants (poor designs and wrong answers, as learners write them) and reference answers.

The chatbot mutants are the three poor designs the capstone must reject, each for its own
reason: a full KV cache (grows, over budget at 64k tokens), a window that fits the budget but
is too small to recall (fails the measured recall after training), and a combined memory
over the budget.
"""

from __future__ import annotations

import math

from . import mutant, value_mutant


def _window_and_delta(window):
    """Infini-attention's pair, gated: a window of ``window`` tokens beside a delta memory with DeltaNet's
    learned write strength (the reference design's, so a mutant of window 16 shares its training run)."""
    return {"name": "multi", "combine": "gate",
            "memories": [{"name": "window", "window": window}, {"name": "delta", "beta": "learned"}]}


WHY = ("A window of 16 tokens keeps the recent turn exact and a delta memory keeps the user's facts past the window "
       "in a fixed matrix read by content, so the bytes (24 KiB) and the time per token stay flat; old facts still "
       "fade as later writes overwrite them.")

REFERENCES = {
    "09.window_for_budget": lambda budget, n_layers, n_kv_heads, head_dim, bytes_per_value: int(
        math.floor(budget / (2 * n_layers * n_kv_heads * head_dim * bytes_per_value))),
    # the solution's design (the check is deterministic, so its training run is shared), in other words
    "09.chatbot_design": lambda: {
        "justification": WHY,
        "memory": {"name": "multi", "memories": [{"name": "window", "window": 16},
                                                 {"name": "delta", "beta": "learned"}], "combine": "gate"},
    },
    "09.summarisation_design": lambda: {
        "memory": {"name": "multi", "combine": "gate",
                   "memories": [{"name": "window", "window": 8}, {"name": "cumulative_average"}]},
        "justification": "The window of 8 tokens keeps the latest sentences exact; the cumulative average folds "
                         "every token of the document into one pair per head, so every part leaves a trace at the "
                         "end, diluted as the document grows: a gist, not exact recall.",
    },
    "09.residual_risk": "a",
    "09.scenario_chatbot": "B",
    "09.scenario_mobile": lambda: "c",
    "09.scenario_document": "D",
}

# ---------------------------------------------------------------- 09.window_for_budget


@mutant("09.window_for_budget", hint="no_factor_2")
def keys_only(budget, n_layers, n_kv_heads, head_dim, bytes_per_value):
    return budget // (n_layers * n_kv_heads * head_dim * bytes_per_value)


@mutant("09.window_for_budget", hint="no_layers")
def one_layer(budget, n_layers, n_kv_heads, head_dim, bytes_per_value):
    return budget // (2 * n_kv_heads * head_dim * bytes_per_value)


@mutant("09.window_for_budget", hint="rounded_up")
def rounded(budget, n_layers, n_kv_heads, head_dim, bytes_per_value):
    return round(budget / (2 * n_layers * n_kv_heads * head_dim * bytes_per_value))


@mutant("09.window_for_budget", hint="no_kv_heads")
def no_kv_heads(budget, n_layers, n_kv_heads, head_dim, bytes_per_value):
    return budget // (2 * n_layers * head_dim * bytes_per_value)


@mutant("09.window_for_budget", hint="minus_one")
def one_less(budget, n_layers, n_kv_heads, head_dim, bytes_per_value):
    return budget // (2 * n_layers * n_kv_heads * head_dim * bytes_per_value) - 1


@mutant("09.window_for_budget", hint="bits")
def counts_bits(budget, n_layers, n_kv_heads, head_dim, bytes_per_value):
    return budget // (2 * n_layers * n_kv_heads * head_dim * bytes_per_value * 8)


@mutant("09.window_for_budget", hint="not_int")
def a_float(budget, n_layers, n_kv_heads, head_dim, bytes_per_value):
    return budget / (2 * n_layers * n_kv_heads * head_dim * bytes_per_value)


# ---------------------------------------------------------------- 09.chatbot_design


@mutant("09.chatbot_design", hint="slows", name="full_kv_cache_slows")
@mutant("09.chatbot_design", hint="grows", name="full_kv_cache_grows")
@mutant("09.chatbot_design", hint="over_budget")
def full_kv_cache():
    return {"memory": {"name": "full"},
            "justification": "The full KV cache keeps every token of the conversation exactly, so no fact is "
                             "ever lost, and it is the standard design that every transformer uses."}


@mutant("09.chatbot_design", hint="no_recall")
def window_too_small():
    return {"memory": {"name": "window", "window": 32},
            "justification": "The largest window that fits: 32 tokens per layer is exactly 32 KiB, exact "
                             "attention over the recent turn, fixed in size, so the time per token stays flat."}


@mutant("09.chatbot_design", hint="not_measured", name="over_budget_not_trained")
@mutant("09.chatbot_design", hint="over_budget")
def over_budget():
    return {"memory": _window_and_delta(64),
            "justification": "A window of 64 tokens for the recent turns and a delta memory for the facts "
                             "from the start: both are fixed in size, so the time per token stays flat."}


@mutant("09.chatbot_design", hint="invalid_memory")
def misspelt_size():
    return {"memory": {"name": "window", "size": 16}, "justification": WHY}


@mutant("09.chatbot_design", hint="no_justification")
def no_reasons():
    return {"memory": _window_and_delta(16), "justification": "window + delta"}


@mutant("09.chatbot_design", hint="no_justification")
def twenty_copies_of_one_word():
    """A.2.3: 20 copies of one word (full marks when only words were counted)."""
    return {"memory": _window_and_delta(16), "justification": " ".join(["memory"] * 20)}


@mutant("09.chatbot_design", hint="no_justification")
def reasons_without_numbers_or_risks():
    return {"memory": _window_and_delta(16),
            "justification": "The window keeps the recent turns and the delta memory keeps the facts, so the design "
                             "fits the budget of the device and the time per token stays the same as it grows."}


# ---------------------------------------------------------------- 09.summarisation_design


# a design is data (name, hint, design): what learners give for the document, each with its flaw
SUMMARY_MUTANTS = [
    ("summary_window", "forgets", {
        "memory": {"name": "window", "window": 32},
        "justification": "The largest window that fits the budget reads the last 32 tokens exactly in each "
                         "layer, and the end of a document is where its conclusions are written down."}),
    ("summary_sinks", "only_start", {
        "memory": {"name": "sink", "sinks": 16, "window": 16},
        "justification": "The sinks keep the title and the introduction, which say what the document is "
                         "about, and the window keeps the conclusion: together they hold the summary."}),
    ("summary_delta", "forgets", {
        "memory": _window_and_delta(16),
        "justification": "The chatbot's design again: the window for fluency, the delta memory for what was "
                         "said long ago, which worked for the facts of a conversation."}),
    ("summary_full", "over_budget", {
        "memory": {"name": "full"},
        "justification": "Summaries need every detail of the document, so keep every key and value: the "
                         "full KV cache forgets nothing at all, whatever the document's length."}),
    ("summary_twenty_copies", "no_justification", {
        "memory": {"name": "multi", "combine": "gate",
                   "memories": [{"name": "window", "window": 16}, {"name": "linear"}]},
        "justification": " ".join(["summary"] * 20)}),
]
for name, hint, design in SUMMARY_MUTANTS:
    value_mutant("09.summarisation_design", name, hint, design)


# ---------------------------------------------------------------- questions

for letter in "BCD":
    value_mutant("09.residual_risk", f"chose_{letter}", f"chose_{letter}", letter)
for letter in "ACD":
    value_mutant("09.scenario_chatbot", f"chose_{letter}", f"chose_{letter}", letter)
for letter in "ABD":
    value_mutant("09.scenario_mobile", f"chose_{letter}", f"chose_{letter}", letter)
for letter in "ABC":
    value_mutant("09.scenario_document", f"chose_{letter}", f"chose_{letter}", letter)


# ---------------------------------------------------------------- A.6: a design without its wrapper


@mutant("09.chatbot_design", hint="no_wrapper", name="chatbot_design_unwrapped")
def chatbot_design_unwrapped():
    return {"name": "sink", "sinks": 4, "window": 24}


@mutant("09.summarisation_design", hint="no_wrapper", name="summary_design_unwrapped")
def summary_design_unwrapped():
    return {"name": "window", "window": 16, "justification": WHY}
