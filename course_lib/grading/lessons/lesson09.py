r"""Exercises of lesson 09, the capstone: a memory design measured against a device's budget.

* ``09.window_for_budget``: the largest window ``n_c`` whose cache fits a byte budget
* ``09.chatbot_design``: a chatbot's memory design, MEASURED: state bytes at 64k tokens within
  the budget, bytes that stop growing, flat ms/token, and recall of a fact stated at the start
  of a ``long_dialogue`` after a short training run that the check performs itself
* ``09.summarisation_design``: the long-document variant: within the budget, and every part of
  a 16k-token document still changes what the memory reads out at its end
* ``09.residual_risk``: the risk left in the chatbot design and its mitigation (multiple choice)
* ``09.scenario_chatbot``, ``09.scenario_mobile``, ``09.scenario_document``: the three scenarios
  of the course (multiple choice, every option explained)

The designs are plain data (``{"memory": {"name": ..., sizes...}, "justification": "..."}``),
built by :func:`course_lib.experiments.capstone.build_memory`; every measurement is in
:mod:`course_lib.experiments.capstone`, which the lesson calls too.
"""

from __future__ import annotations

import math
import numbers
import re

from ...experiments import capstone
from ...experiments.capstone import SETUP, format_bytes
from ..compare import expect_number
from ..core import Check, Mistake, code_exercise, type_name
from ..questions import answer_value, choice_exercise
from ._common import check_factory

# ------------------------------------------------------------ 09.window_for_budget

WINDOW_HINTS = {
    "no_factor_2": "A window cache holds a key AND a value per token, layer and KV head: "
                   "2 L n_g d_h values per token. The factor 2 is missing.",
    "no_layers": "Every layer keeps its own window: multiply the bytes per token by the L layers.",
    "no_kv_heads": "Every KV head keeps its own keys and values: multiply the bytes per token by n_g, the number "
                   "of KV heads (2 L n_g d_h bytes_per_value per token).",
    "minus_one": "Do not subtract 1: floor(budget / bytes per token) windows of tokens fit exactly (the newest "
                 "token is one of the n_c).",
    "bits": "bytes_per_value is already in bytes: multiplying by 8 counts bits, which the byte budget does not.",
    "rounded_up": "The window must FIT: round down (floor division //), never up or to the nearest.",
    "not_int": "Return an int: a number of tokens.",
    "not_number": "Return an int: a number of tokens.",
    "wrong_number": "n_c = floor(budget / (2 L n_g d_h bytes_per_value)): check each factor.",
}


@check_factory
def _window_case(fn, budget, n_layers, n_kv_heads, head_dim, bytes_per_value):
    got = fn(budget, n_layers, n_kv_heads, head_dim, bytes_per_value)
    if isinstance(got, bool) or not isinstance(got, numbers.Integral):
        raise Mistake("not_int", f"got {type_name(got)}")
    per = n_layers * n_kv_heads * head_dim * bytes_per_value
    expect_number(int(got), budget // (2 * per), {
        "no_factor_2": budget // per,
        "no_layers": budget // (2 * n_kv_heads * head_dim * bytes_per_value),
        "rounded_up": -(-budget // (2 * per)),
        "rounded_up#nearest": round(budget / (2 * per)),
        "no_kv_heads": budget // (2 * n_layers * head_dim * bytes_per_value),
        "minus_one": budget // (2 * per) - 1,
        "bits": budget // (2 * per * 8),
    }, integer=True)


WINDOW_FOR_BUDGET = code_exercise(
    id="09.window_for_budget", title="The largest window a budget holds", points=1,
    hints=WINDOW_HINTS,
    checks=[
        Check("the capstone's device: 32 KiB, L = 2, n_g = 4, d_h = 16, fp32", _window_case(32768, 2, 4, 16, 4)),
        Check("a budget that is not a multiple: 100,000 B, L = 3, n_g = 2, d_h = 8, fp16",
              _window_case(100_000, 3, 2, 8, 2)),
        Check("8 GiB, L = 32, n_g = 8 (GQA), d_h = 128, bf16", _window_case(8 * 2**30, 32, 8, 128, 2)),
        Check("a budget smaller than one token: 1,000 B, L = 4, n_g = 4, d_h = 64", _window_case(1000, 4, 4, 64, 2)),
    ],
)

# ------------------------------------------------------------ designs as data

DESIGN_HINTS = {
    "not_design": "Return a dict {'memory': {...}, 'justification': '...'}; 'memory' is a design such as "
                  "{'name': 'sink', 'sinks': 48, 'window': 16} (see the lesson).",
    "invalid_memory": "course_lib.memory could not build this design: check the names and sizes.",
    "grows": "The state keeps growing with the conversation (a full KV cache, or a cache with no cap "
             "reached yet): no fixed budget holds it at 64k tokens. Use memories of fixed size.",
    "over_budget": "The state is over the device's budget: shrink the slots (window, sinks, n_m, n_cm, "
                   "capacity) or hand the long range to a small fixed-size matrix memory (delta, linear).",
    "slows": "The time per token grows with the context: some part of the memory attends to (or searches) "
             "more with every token. A fixed-size memory keeps each step O(1).",
    "not_measured": "Recall is measured only for a design that fits the budget (fix the budget first).",
    "no_recall": "The trained model does not recall the fact stated at the start of the conversation: it lies "
                 "further back than your memory reaches (your design's reach and the fact's distance below). "
                 "Reach that far within the budget, or add a long-term memory trained end to end (a delta or "
                 "linear memory beside the window).",
    "no_recall_sinks": "The trained model does not recall the fact: your sinks keep the first tokens, but they are "
                       "few, and a sink mainly parks attention; the fact is said after them and has left the "
                       "window before its question. Add a long-term memory trained end to end (a delta or "
                       "linear memory beside the window) that can store it.",
    "no_wrapper": "Wrap the design: return {'memory': <the design>, 'justification': '...'}. The dict you "
                  "returned looks like the design itself (it has a 'name'), without the 'memory' key around it.",
    "no_justification": "A justification is judged on what it says, not on its length: in your own words, which "
                        "constraint each part of the design serves (the budget, a flat time per token, recall of "
                        "early facts), with the design's own numbers (its window, sinks, slots or bytes, such as "
                        "'a window of 16 tokens, 16 KiB'), and what it still forgets or risks (such as 'old facts "
                        "fade as the delta memory is overwritten').",
}
MIN_DISTINCT_WORDS = 12  # a justification is a few sentences: repeating one word is not one
_RISK = re.compile(r"\b(forget\w*|forgot\w*|fad\w*|lost|los[es]\w*|overwrit\w*|interfer\w*|blur\w*|dilut\w*|"
                   r"risk\w*|drop\w*|evict\w*|miss\w*|limit\w*|cannot|fail\w*|nois\w*|approximat\w*|decay\w*|"
                   r"gist|weak\w*|shrink\w*|trade\w*|cost\w*|only)\b", re.IGNORECASE)
_CONSTRAINT = re.compile(r"\b(budget\w*|bytes?|KiB|KB|fixed|flat|constant|grow\w*|time|speed|fast\w*|slow\w*|"
                         r"ms|latency|recall\w*|reach\w*|fact\w*|remember\w*|early|start|summar\w*|trace\w*|"
                         r"every|exact\w*)\b", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w.])\d[\d,_]*(?:\.\d+)?")


def _design_numbers(spec) -> set[float]:
    """The numbers a justification may quote: the design's own sizes (window, sinks, slots, ...) and its
    state bytes at the capstone's context, in bytes and in KiB (rounded either way)."""
    found: set[float] = set()

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        elif isinstance(x, numbers.Real) and not isinstance(x, bool):
            found.add(float(x))

    walk(spec)
    try:
        nbytes = capstone.state_bytes(spec, (SETUP.context,), stop_above=float("inf"))[-1]["nbytes"]
    except Exception:  # a design that does not build: its sizes are enough
        return found
    kib = nbytes / 1024
    found |= {float(nbytes), round(kib, 1), float(math.floor(kib)), float(math.ceil(kib)), float(round(kib))}
    return found


def _quoted_numbers(text: str) -> set[float]:
    return {float(m.replace(",", "").replace("_", "")) for m in _NUMBER.findall(text)}


def _design(answer):
    got = answer_value(answer)
    if isinstance(got, dict) and "memory" not in got and "name" in got:
        raise Mistake("no_wrapper", f"its keys are {_clip(', '.join(repr(k) for k in list(got)[:8]), 80)}")
    if not isinstance(got, dict) or not isinstance(got.get("memory"), dict):
        raise Mistake("not_design", f"got {type_name(got)}" + ("" if not isinstance(got, dict) else
                                                                " without a dict under 'memory'"))
    return got


def _reach(spec) -> tuple[float, str]:
    """How many tokens back a design's memory holds something (inf: a matrix memory, blurred), with the
    formula it comes from, as the lessons give them."""
    name = spec.get("name")
    if name == "multi":
        parts = [_reach(p) for p in spec.get("memories") or () if isinstance(p, dict)]
        return max(parts, default=(0, "")) if parts else (0, "")
    if name == "window":
        return spec.get("window", 0), f"the window n_c = {spec.get('window')}"
    if name == "sink":
        return spec.get("window", 0), (f"the window n_c = {spec.get('window')}, besides the first "
                                       f"{spec.get('sinks')} tokens")
    if name == "segment":
        return spec.get("mem_len", 0), f"n_m = {spec.get('mem_len')}"
    if name == "compressive":
        n_m, n_cm, c = spec.get("mem_len", 0), spec.get("cmem_len", 0), spec.get("ratio", 1)
        return n_m + c * n_cm, f"n_m + c * n_cm = {n_m} + {c} * {n_cm}"
    if name == "knn":
        return spec.get("capacity", 0), f"a store of {spec.get('capacity')} pairs"
    return math.inf, ""


def _has_sinks(spec) -> bool:
    if spec.get("name") == "multi":
        return any(isinstance(p, dict) and _has_sinks(p) for p in spec.get("memories") or ())
    return spec.get("name") == "sink" and bool(spec.get("sinks"))


def _recall_mistake(spec, r) -> Mistake:
    """The recall hint for this design: sinks are not told to keep the first tokens, and a design whose
    memory stops short is told its own reach against the fact's distance."""
    measured = (f"{r['recall']:.0%} of {SETUP.n_test} held-out conversations answered, {SETUP.min_recall:.0%} "
                f"needed; in the median conversation the fact lies {r['distance']} tokens before its question")
    try:
        reach, formula = _reach(spec)
    except TypeError:
        reach, formula = math.inf, ""
    where = f"; your memory reaches about {reach:g} tokens back ({formula})" if formula else ""
    if _has_sinks(spec):
        return Mistake("no_recall_sinks", measured + where)
    return Mistake("no_recall", measured + where)


def _clip(text: str, limit: int = 240) -> str:
    """``text`` on one line, cut at a word boundary (never inside a name) when longer than ``limit``."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    return text[: text.rfind(" ", 0, limit - 4) if " " in text[: limit - 4] else limit - 4] + " ..."


def _spec(answer):
    spec = _design(answer)["memory"]
    try:
        capstone.build_memory(spec)
    except (TypeError, ValueError) as err:
        raise Mistake("invalid_memory", _clip(str(err))) from None
    return spec


def _check_builds(answer):
    _spec(answer)


def _check_budget(answer):
    spec = _spec(answer)
    rows = capstone.state_bytes(spec, (1024, 4096, 16_384, SETUP.context))
    last = rows[-1]
    if last["nbytes"] > SETUP.budget:
        where = f"at {SETUP.context:,} tokens" if last["context"] == SETUP.context else \
            f"already at {last['context']:,} tokens (and growing)"
        raise Mistake("over_budget", f"{format_bytes(last['nbytes'])} {where} against {format_bytes(SETUP.budget)}: "
                                     f"{last['nbytes'] / SETUP.budget:.1f}x the budget")


def _check_flat_bytes(answer):
    spec = _spec(answer)
    a, b = capstone.state_bytes(spec, (4096, 8192), stop_above=float("inf"))
    if b["nbytes"] > a["nbytes"]:
        raise Mistake("grows", f"{format_bytes(a['nbytes'])} at 4,096 tokens, {format_bytes(b['nbytes'])} at 8,192: "
                               f"{(b['nbytes'] - a['nbytes']) / 4096:.0f} B more per token")


def _check_flat_time(answer):
    """Noise on a busy machine only adds time: a ratio over the limit is measured again (up to three
    times in all, each context's best kept), so a design passes when its steps really stay flat."""
    spec = _spec(answer)
    best = None
    for attempt in range(3):
        rows = capstone.decode_ms(spec, seed=attempt)
        best = rows if best is None else [min(a, b, key=lambda row: row["ms_per_token"]) for a, b in zip(best, rows)]
        short, long = best
        ratio = long["ms_per_token"] / short["ms_per_token"]
        if ratio <= SETUP.max_ms_ratio:
            return
    if ratio > SETUP.max_ms_ratio:
        raise Mistake("slows", f"{short['ms_per_token']:.2f} ms/token at m = {short['context']:,}, "
                               f"{long['ms_per_token']:.2f} at m = {long['context']:,}: {ratio:.1f}x "
                               f"(at most {SETUP.max_ms_ratio}x)")


def _check_recall(answer):
    spec = _spec(answer)
    rows = capstone.state_bytes(spec, (1024, 4096, 16_384, SETUP.context))
    if rows[-1]["context"] < SETUP.context or rows[-1]["nbytes"] > SETUP.budget:
        raise Mistake("not_measured", "over the budget")
    r = capstone.train_recall(spec)
    if r["recall"] < SETUP.min_recall:
        raise _recall_mistake(spec, r)


def _check_justification(answer):
    """On content, not length: enough different words, the design's own numbers, a constraint, a risk."""
    design = _design(answer)
    text = design.get("justification")
    if not isinstance(text, str) or not text.strip():
        raise Mistake("no_justification", "no text")
    text = text[:20_000]
    missing = []
    distinct = {w.lower() for w in re.findall(r"[A-Za-z]+", text)}
    if len(distinct) < MIN_DISTINCT_WORDS:
        missing.append(f"only {len(distinct)} different words")
    if not _quoted_numbers(text) & _design_numbers(design["memory"]):
        missing.append("none of the design's own numbers (its sizes or its bytes)")
    if not _CONSTRAINT.search(text):
        missing.append("no constraint it serves (budget, time per token, recall or reach)")
    if not _RISK.search(text):
        missing.append("nothing it still forgets or risks")
    if missing:
        raise Mistake("no_justification", "; ".join(missing))


JUSTIFICATION_CHECK = "a justification: the constraint each part serves, with the design's numbers, and what it risks"

CHATBOT_DESIGN = code_exercise(
    id="09.chatbot_design", title=f"A long-conversation chatbot under a {format_bytes(SETUP.budget)} memory budget",
    points=3,
    hints=DESIGN_HINTS,
    checks=[
        Check("the design is one that course_lib.memory builds", _check_builds),
        Check(f"state bytes at {SETUP.context:,} tokens within {format_bytes(SETUP.budget)} (L = {SETUP.n_layers}, "
              "batch 1, fp32)", _check_budget, timeout=120, required=True),
        Check("state bytes the same at 4,096 and 8,192 tokens", _check_flat_bytes, timeout=120),
        Check(f"ms/token at m = {SETUP.decode_contexts[1]:,} at most {SETUP.max_ms_ratio}x that at "
              f"m = {SETUP.decode_contexts[0]:,}", _check_flat_time, timeout=180),
        Check(f"recall of the fact from the start of {SETUP.n_test} held-out long_dialogue conversations after "
              f"{SETUP.steps} training steps: at least {SETUP.min_recall:.0%}", _check_recall, timeout=1800,
              required=True),
        Check(JUSTIFICATION_CHECK, _check_justification),
    ],
)

# ------------------------------------------------------------ 09.summarisation_design

SUMMARY_HINTS = {
    **{k: DESIGN_HINTS[k] for k in ("not_design", "no_wrapper", "invalid_memory", "grows", "over_budget",
                                      "no_justification")},
    "forgets": "The end of the document no longer depends on its early parts: a window or FIFO drops old "
               "tokens, and the delta rule overwrites them (each write shrinks the old state along the new "
               "key). A summary needs an update that never fully lets go: a sum or an average (a linear "
               "memory) beside the window.",
    "only_start": "Only the very start (the sinks) and the end reach the read-out: the middle of the document "
                  "is lost. Add a memory that every token writes into (a linear memory).",
}


def _check_reach(answer):
    spec = _spec(answer)
    rows = capstone.state_bytes(spec, (4096,), stop_above=float("inf"))
    if rows[-1]["nbytes"] > SETUP.budget:
        raise Mistake("over_budget", "reach measured only within the budget")
    reach = capstone.document_reach(spec)
    lost = [q for q, change in reach.items() if change < capstone.REACH_THRESHOLD]
    if not lost:
        return
    detail = "no effect from the tokens of quarter(s) " + ", ".join(str(q + 1) for q in lost)
    raise Mistake("only_start" if 0 not in lost else "forgets", detail)


SUMMARISATION_DESIGN = code_exercise(
    id="09.summarisation_design", title="Summarising a long document under the same budget",
    hints=SUMMARY_HINTS,
    checks=[
        Check("the design is one that course_lib.memory builds", _check_builds),
        Check(f"state bytes at {SETUP.context:,} tokens within {format_bytes(SETUP.budget)}", _check_budget,
              timeout=120, required=True),
        Check("every quarter of a 16,384-token document changes the memory's read-out at its end",
              _check_reach, timeout=120, required=True),
        Check(JUSTIFICATION_CHECK, _check_justification),
    ],
)

# ------------------------------------------------------------ questions

RESIDUAL_RISK = choice_exercise(
    id="09.residual_risk",
    title="The risk left in the chatbot design, and its mitigation",
    options={
        "A": "A fact told thousands of tokens ago fades: each delta write shrinks old associations, so after "
             "long small talk it is gone; train on long conversations so that a learned write strength beta_t "
             "keeps small talk weak, or pin the facts in a few slots.",
        "B": "The delta matrix grows by one outer product per token, so on a long chat its bytes creep past "
             "the budget: reset it every thousand tokens to keep the state inside 32 KiB.",
        "C": "Rotary positions beyond the training length break the window's attention after 64k tokens: "
             "switch to a full KV cache for chats that run longer than that one limit.",
        "D": "The window stores keys in float32, which overflows once positions pass 65,536: store them in "
             "float16 to halve their bytes and keep the budget as the chat grows.",
    },
    correct="A",
    wrong_hints={
        "B": "An outer product is ADDED into the same d_h x d_h matrix: the bytes never change (measured flat "
             "from 1k to 64k tokens). Resetting it would throw away the facts it keeps.",
        "C": "The window's queries only ever meet keys at most n_c positions back, distances seen in training "
             "(and the delta memory uses no rotary positions); a full KV cache is what the budget rules out.",
        "D": "Positions are not stored in the keys' float32 values and nothing overflows with length; float16 "
             "would halve the bytes but forget exactly as much.",
    },
)

SCENARIO_CHATBOT = choice_exercise(
    id="09.scenario_chatbot",
    title="A chatbot whose speed must not fall, with no external knowledge base",
    options={
        "A": "A full KV cache with grouped-query attention: fewer key/value heads keep each step cheap, "
             "and the whole conversation stays available exactly.",
        "B": "A window cache for the recent turns plus a fixed-size memory read by content, such as a "
             "delta memory: each step costs the same and early facts can survive.",
        "C": "Retrieval from an external vector store of past turns (RAG): only the relevant turns come "
             "back, so the model's own memory stays small.",
        "D": "A window cache alone, as large as the budget allows: it is exact, fixed in size and the "
             "fastest design, which matters most for speed.",
    },
    correct="B",
    wrong_hints={
        "A": "GQA divides the cache by tau / n_g but it still grows with every token, so each step reads "
             "more and the speed still falls as the chat goes on.",
        "C": "The scenario rules out an external knowledge base; and a store that keeps every turn grows "
             "with the chat too.",
        "D": "A window forgets everything older than n_c tokens: the user's early facts are lost, as the "
             "window design measured (recall near chance).",
    },
)

SCENARIO_MOBILE = choice_exercise(
    id="09.scenario_mobile",
    title="A mobile app with a strict memory limit",
    options={
        "A": "A compressive memory whose slots are float32 so that compressed pairs keep full precision; "
             "its size grows slowly enough for a phone.",
        "B": "A k-NN memory holding every past pair on flash storage, with top-k retrieval: the RAM holds "
             "only the k pairs retrieved at each step.",
        "C": "A design whose bytes at the longest expected context are measured under the limit, such "
             "as a small window plus a delta memory, checked at that context.",
        "D": "A full KV cache in int8: quantising to one byte per value makes a 64k-token cache small "
             "enough for any phone.",
    },
    correct="C",
    wrong_hints={
        "A": "A compressive memory is fixed in size (n_m + n_cm slots), not slowly growing; what matters "
             "is that its bytes are measured under the limit at the longest context.",
        "B": "The store still grows with the text (on flash), and searching it costs more each step: "
             "neither the footprint nor the latency is fixed.",
        "D": "int8 divides the bytes by 4 (from fp32) but the cache still grows linearly: at 64k tokens "
             "it is still hundreds of times this device's budget.",
    },
)

SCENARIO_DOCUMENT = choice_exercise(
    id="09.scenario_document",
    title="Summarising a document far longer than the memory",
    options={
        "A": "Sinks plus a window: the sinks hold the title and introduction, which summarise the "
             "document, and the window holds the conclusion.",
        "B": "A delta-rule memory with beta = 1 alone: it overwrites stale associations, so the memory "
             "always holds the most useful content of the whole text.",
        "C": "A window as large as the budget allows: summaries depend mostly on the last pages, so "
             "the most recent tokens carry the summary.",
        "D": "A window for local fluency plus a memory that every token adds into (a linear memory, or a "
             "cumulative average): each part of the text leaves a trace at the end.",
    },
    correct="D",
    wrong_hints={
        "A": "The middle of the document never reaches the memory: the reach measurement shows no effect "
             "from the middle quarters.",
        "B": "Overwriting is the problem here: along random keys each write shrinks the old state, and "
             "after thousands of tokens the early parts have no measurable effect.",
        "C": "A window reads only its last n_c tokens: everything earlier has no effect on the summary.",
    },
)

EXERCISES = [WINDOW_FOR_BUDGET, CHATBOT_DESIGN, RESIDUAL_RISK, SUMMARISATION_DESIGN, SCENARIO_CHATBOT,
             SCENARIO_MOBILE, SCENARIO_DOCUMENT]
