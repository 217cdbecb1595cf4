"""Write the lesson notebooks 00-02 from the cells below (sources only, no outputs).

    .venv/bin/python notebooks/_build/build_lessons.py [00 01 02]
    .venv/bin/python -m course_lib.tools.execute_notebooks notebooks/01_attention.ipynb

The first command writes the cells; the second runs the notebook in the project's kernel
so that the stored outputs (which strict nbval compares) come from a real run. This file
is the single source of the three lessons: edit a cell here, rebuild, re-execute. A
widget cell goes right after the "Explore it yourself" cell of lessons 01 and 02 (the
``WIDGET_CELLS`` hook below), so that rebuilding keeps it.
"""

# ruff: noqa: E501 -- the cells are lesson text (markdown tables, LaTeX) whose lines follow the notebook, not this file
from __future__ import annotations

import sys
from pathlib import Path
from textwrap import dedent

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
NOTEBOOKS = HERE.parent

# Cells that other parts of the course add after "Explore it yourself" (lesson -> list of code sources).
WIDGET_CELLS: dict[str, list[str]] = {
    "01": ["""from course_lib.widgets import AttentionExplorer

# move the query position i, switch the mask (causal, window n_c, sinks) and watch the weights
AttentionExplorer("the cat sat on the mat and the dog sat on the cat", mask="window", window=4)"""],
    "02": ["""from course_lib.widgets import CostExplorer

# bytes and FLOPs per token against the context length m; "measure" times the real model here.
# Try Llama-2-7B: L = 32, tau = 32, d_h = 128, n_g = 32 (too big to measure here, not to compute)
CostExplorer()"""],
}


def md(text: str):
    return new_markdown_cell(dedent(text).strip("\n"))


def code(text: str, tags: tuple[str, ...] = ()):
    """A code cell; a cell with an nbval tag must say why in a comment (tests check it)."""
    cell = new_code_cell(dedent(text).strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def explore(lesson: str, widget: str, what: str):
    """The "Explore it yourself" cell; the widget cell (if any) follows it."""
    cells = [md(f"""
        ## Explore it yourself

        <!-- widget: {widget} from course_lib.widgets goes in the cell right after this one -->
        {what}
        """)]
    cells += [code(src) for src in WIDGET_CELLS.get(lesson, [])]
    return cells


# --------------------------------------------------------------------------------------
# 00 welcome
# --------------------------------------------------------------------------------------

def lesson_00():
    return [
        md(r"""
        # 00 · Welcome: from the KV cache to memory-based attention

        ## Learning goals

        After this notebook you can

        - check that your environment is ready with the course **doctor**, and read its report;
        - find your way through the course map (lessons 00-09) and the book's notation;
        - say which device the course uses (`pick_device`, the `COURSE_DEVICE` variable) and make a run repeatable (`seed_everything`);
        - work through an exercise notebook, get instant feedback from its `check(...)` cells, and grade it;
        - run the course's tests yourself.
        """),
        md(r"""
        ## What this course is about

        A language model writes one token at a time. Standard attention lets the token at
        position $i$ look back at the keys and values of **every** earlier token,
        $\mathbf{K}_{\le i}$ and $\mathbf{V}_{\le i}$, so a model keeps them in a **KV cache**
        that grows with every token: the cost of the next token, in memory and in time,
        keeps growing with the length of the text. Memory-based attention replaces the cache
        by a **memory** $\mathrm{Mem}$, updated as $\mathrm{Mem} = \mathrm{Update}(S_{kv}, \mathrm{Mem}_{pre})$
        and read as $\mathrm{Att}(\mathbf{q}_i, \mathrm{Mem})$, which can have a fixed size:
        a window, a running average, a fast-weight matrix, a compressed memory. The course
        builds each one, measures what it costs and what it forgets, and ends with you
        choosing a design for a device with a strict memory budget.

        Everything runs on a laptop CPU in minutes, and on a GPU when you have one.
        """),
        md(r"""
        ## 1. Check your environment

        The doctor prints the versions of the packages the course needs, the device it will
        use and whether interactive widgets work. Any line marked as a problem comes with the
        fix in words. From a terminal, the same report is `python -m course_lib doctor`
        (add `--json` for a machine-readable version); its exit status is non-zero when
        something is broken.
        """),
        code(r"""
        # nbval-ignore-output: the report shows this machine's versions and device, which differ between machines
        from course_lib.doctor import collect, format_report

        report = collect()
        print(format_report(report))
        """, tags=("nbval-ignore-output",)),
        md(r"""
        The report is also a dictionary, so a program can check it. `ok` is `True` when
        nothing the course needs is missing:
        """),
        code(r"""
        print("ready for the course:", report["ok"])
        print("problems:", report["problems"])
        """),
        md(r"""
        ## 2. The course map

        Each lesson is a notebook in `notebooks/`, with a graded exercise notebook in
        `exercises/` and its worked solution in `solutions/`.

        | # | lesson | what you will be able to do | status |
        |---|---|---|---|
        | 00 | [Welcome](00_welcome.ipynb) | check the environment, devices, exercises and grading | written |
        | 01 | [Attention from scratch](01_attention.ipynb) | write $\mathbf{K}_{\le i}$, $\mathbf{V}_{\le i}$; build scaled dot-product attention, causal masks and multi-head attention; measure the $O(m^2)$ cost | written |
        | 02 | [The KV cache](02_kv_cache.ipynb) | decode with and without a cache; see standard attention as $\mathrm{Att}(\mathbf{q}_i, \mathrm{Mem})$; compute cache bytes with MQA/GQA; measure cost growth; static vs dynamic caches | written |
        | 03 | Two routes to long context | contrast efficient attention (sparse, linear) with an explicit memory; see why sparse attention still stores the whole cache | not written yet |
        | 04 | Memory-based attention | $\mathrm{Update}(S_{kv}, \mathrm{Mem}_{pre})$; window cache, moving and cumulative averages, attention sinks; constant cost per token | not written yet |
        | 05 | Recurrent memory | linear-attention memory, the delta rule, Transformer-XL segment recurrence, stop-gradient | not written yet |
        | 06 | The Compressive Transformer | evict, compress, append; both FIFO equations; compression functions; attention-reconstruction loss | not written yet |
        | 07 | Multiple memories | local + long-term memory, concatenation vs gating, k-NN retrieval memory, Infini-attention | not written yet |
        | 08 | Capacity and trade-offs | recall (MQAR) against memory bytes for every model; the recall / bytes / speed front | not written yet |
        | 09 | Capstone | choose, justify and measure a memory design for a long-conversation chatbot on a small device | not written yet |

        **Notation** (from *Foundations of Large Language Models*, Xiao & Zhu, chapter 2).
        Positions count from 0. The token at position $i$ has query, key and value
        $\mathbf{q}_i, \mathbf{k}_i, \mathbf{v}_i$ (row vectors of size $d$, or $d_h$ per head).
        $\mathbf{K}_{\le i}$, $\mathbf{V}_{\le i}$ stack the keys and values $0..i$;
        $\mathrm{Att}_{qkv}(\mathbf{q}, \mathbf{K}, \mathbf{V}) = \mathrm{Softmax}(\mathbf{q}\mathbf{K}^\top/\sqrt{d} + \mathrm{Mask})\,\mathbf{V}$.
        Costs use $L$ layers, $\tau$ heads, $d_h$ head dimension, $m$ cached tokens and $n_g$
        key/value groups.
        """),
        md(r"""
        ## 3. Devices

        Every lesson starts with `device = pick_device()`. It returns CUDA if there is an
        NVIDIA GPU, else Apple's MPS, else the CPU, so the same notebook uses a GPU
        automatically where there is one. To choose yourself, set the environment variable
        `COURSE_DEVICE` before starting Jupyter, e.g. `COURSE_DEVICE=cpu make lab`, or
        pass the name: `pick_device("cpu")`. The tests always run with `COURSE_DEVICE=cpu`,
        so the outputs stored in the notebooks are CPU outputs.
        """),
        code(r"""
        # nbval-ignore-output: which device is picked depends on the machine (and on COURSE_DEVICE)
        import torch

        from course_lib import pick_device, seed_everything

        device = pick_device()
        print("this notebook runs on:", device)
        """, tags=("nbval-ignore-output",)),
        md(r"""
        Tensors you create go to that device with `device=device` or `.to(device)`. A
        device that is not there is refused with an explanation instead of a torch stack
        trace:
        """),
        code(r"""
        x = torch.ones(2, 3, device=device)
        print((x @ x.T).tolist())
        print(pick_device("cpu"))
        try:
            pick_device("tpu")
        except ValueError as err:
            print("ValueError:", err)
        """),
        md(r"""
        Random numbers: `seed_everything(0)` seeds Python, NumPy and torch (every device),
        so a run repeats exactly. The two draws below are equal because each one follows
        the same seed.
        """),
        code(r"""
        seed_everything(0)
        first = torch.randn(4)
        seed_everything(0)
        second = torch.randn(4)
        print(first)
        print("equal:", torch.equal(first, second))
        """),
        md(r"""
        ## 4. Exercises and grading

        Each lesson `NN_topic` comes with two more notebooks:

        - `solutions/NN_topic_solutions.ipynb`: the worked solutions, the single source of
          the exercises;
        - `exercises/NN_topic_exercises.ipynb`: generated from the solutions with the
          answers taken out. This is the one you work in.

        An exercise is a function to complete where it says `# YOUR CODE HERE` (delete the
        `raise NotImplementedError()` line), followed by a **check cell** such as
        `check("01.scaled_attention", scaled_attention)`. Running it gives instant feedback:
        it calls your function on inputs of its own (random tensors, edge cases such as a
        single token, float32 and float64, non-contiguous tensors), compares the results with
        `course_lib`'s tested implementation and prints one line per check, with a hint that
        names the likely mistake when one fails, then your score.

        Here is a check cell at work on an answer to exercise `01.scaled_attention` that
        forgets the $1/\sqrt{d}$ scale (you will write the correct version in the exercise):
        """),
        code(r"""
        from course_lib.grading import check


        def scaled_attention(q, k, v, mask=None):
            scores = q @ k.transpose(-2, -1)  # the mistake: no division by sqrt(d)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            return torch.softmax(scores, dim=-1) @ v


        check("01.scaled_attention", scaled_attention);
        """),
        md(r"""
        When you are done, grade the whole notebook from a terminal:

        ```
        python -m course_lib grade exercises/01_attention_exercises.ipynb
        python -m course_lib grade exercises/01_attention_exercises.ipynb --json
        ```

        The grader runs your notebook in a fresh kernel (so it sees what a restart-and-run-all
        would see), scores each exercise and never writes to your notebook.
        """),
        md(r"""
        ## 5. Running the tests

        `course_lib` comes with its tests, and the lessons themselves are tested: each
        notebook is stored with its outputs, and the test suite runs it again and compares
        (that is what `nbval` does). From the repository root:

        ```
        make test                                          # everything (creates .venv first if needed)
        .venv/bin/pytest tests/ -x -q                      # only the unit and property tests
        .venv/bin/pytest --nbval --nbval-current-env \
            --nbval-sanitize-with tests/sanitize.cfg notebooks/01_attention.ipynb   # one lesson
        ```

        If you change a lesson and want to keep the change, re-execute it with
        `make notebooks NB=notebooks/01_attention.ipynb` so its stored outputs stay real.
        """),
        md(r"""
        ## Check your understanding

        1. The doctor reports a problem. What does it give you besides the problem?

           <details><summary>Answer</summary>

           The fix in words (for example which command to run), and, from the terminal, a
           non-zero exit status so that scripts notice the broken environment.
           </details>

        2. You are on a laptop with an NVIDIA GPU but want to reproduce the stored CPU outputs.
           What do you do?

           <details><summary>Answer</summary>

           Start Jupyter with `COURSE_DEVICE=cpu` (e.g. `COURSE_DEVICE=cpu make lab`), or call
           `pick_device("cpu")`; `pick_device()` would otherwise choose CUDA.
           </details>

        3. Which notebook do you edit when you do the exercises of lesson 01, and which command
           scores it?

           <details><summary>Answer</summary>

           `exercises/01_attention_exercises.ipynb`, scored by
           `python -m course_lib grade exercises/01_attention_exercises.ipynb`. The grader runs it
           in a fresh kernel and never modifies it.
           </details>

        4. With 0-based positions, which keys make up $\mathbf{K}_{\le 2}$?

           <details><summary>Answer</summary>

           $\mathbf{k}_0, \mathbf{k}_1, \mathbf{k}_2$: three keys, the current token's included.
           </details>
        """),
    ]


# --------------------------------------------------------------------------------------
# 01 attention
# --------------------------------------------------------------------------------------

def lesson_01():
    return [
        md(r"""
        # 01 · Attention from scratch

        ## Learning goals

        After this notebook you can

        - write the keys and values a token may see, $\mathbf{K}_{\le i}$, $\mathbf{V}_{\le i}$ and a window
          slice $\mathbf{K}_{[i-n_c+1,\, i]}$, with 0-based positions;
        - compute $\mathrm{Att}_{qkv}(\mathbf{q}, \mathbf{K}, \mathbf{V}) = \mathrm{Softmax}(\mathbf{q}\mathbf{K}^\top/\sqrt{d} + \mathrm{Mask})\,\mathbf{V}$
          by hand, and check it against `course_lib`;
        - build causal, window and attention-sink masks and read them as 0/1 tables;
        - split attention into $\tau$ heads of size $d_h$;
        - show that the fused kernel `scaled_dot_product_attention` computes the same thing;
        - measure the $O(m^2)$ cost of attention over $m$ tokens.
        """),
        code(r"""
        import math
        import time

        import matplotlib.pyplot as plt
        import torch
        import torch.nn.functional as F

        from course_lib import MultiHeadAttention, attention, attention_reference, causal_mask, pick_device, seed_everything

        device = pick_device()  # cuda > mps > cpu; COURSE_DEVICE=cpu forces the CPU
        torch.set_grad_enabled(False)  # no training in this lesson
        torch.set_printoptions(precision=3, sci_mode=False)
        seed_everything(0)
        """),
        md(r"""
        ## 1. Notation: positions, $\mathbf{K}_{\le i}$ and windows

        Positions count from 0. The token at position $i$ has a query $\mathbf{q}_i$, a key
        $\mathbf{k}_i$ and a value $\mathbf{v}_i$, row vectors of size $d$. Stacking the keys of
        positions $0..i$ as rows gives $\mathbf{K}_{\le i}$ ($i+1$ rows), and likewise
        $\mathbf{V}_{\le i}$. A window of $n_c$ tokens ending at $i$ is
        $\mathbf{K}_{[i-n_c+1,\, i]}$. In Python, $\mathbf{K}_{\le i}$ is `K[: i + 1]` and the
        window is `K[i - n_c + 1 : i + 1]`.

        Below, five keys with $d = 2$ chosen so that you can read the position off each row:
        $\mathbf{k}_j = (j, 10j)$.
        """),
        code(r"""
        K_toy = torch.tensor([[j, 10 * j] for j in range(5)])  # row j is k_j
        i, n_c = 3, 2
        print("K_{<=3} =\n", K_toy[: i + 1])
        print("K_[i-n_c+1, i] = K_[2, 3] =\n", K_toy[i - n_c + 1 : i + 1])
        """),
        md(r"""
        ## 2. One query, written out

        For the token at position $i$, causal attention reads only the past and the present:

        $$\mathrm{Att}_{qkv}(\mathbf{q}_i, \mathbf{K}_{\le i}, \mathbf{V}_{\le i}) = \mathrm{Softmax}\!\left(\frac{\mathbf{q}_i \mathbf{K}_{\le i}^\top}{\sqrt{d}}\right) \mathbf{V}_{\le i}$$

        Three steps: one score per visible key ($\mathbf{q}_i \cdot \mathbf{k}_j / \sqrt{d}$ for
        $j = 0..i$), a softmax that turns the scores into weights summing to 1, and the
        weighted average of the values.
        """),
        code(r"""
        m, d = 5, 4
        Q, K, V = torch.randn(3, m, d).to(device)  # rows are q_j, k_j, v_j for j = 0..4
        i = 3
        scores = Q[i] @ K[: i + 1].T / math.sqrt(d)  # [i+1]: one score per key 0..i
        weights = torch.softmax(scores, dim=-1)
        out_i = weights @ V[: i + 1]  # [d]: weighted average of v_0..v_i
        print("weights over k_0..k_3:", weights.cpu(), " sum =", round(weights.sum().item(), 6))
        print("output for position 3:", out_i.cpu())
        """),
        md(r"""
        ## 3. All positions at once: the mask

        Doing this for every $i$ at once is one matrix product $\mathbf{Q}\mathbf{K}^\top$ of
        size $m \times m$, where row $i$ holds the scores of $\mathbf{q}_i$ against **all**
        keys. The future keys ($j > i$) are removed by adding a mask before the softmax:
        $\mathrm{Mask}_{ij} = 0$ where $j \le i$ and $-\infty$ where $j > i$, because
        $e^{-\infty} = 0$ gives those keys zero weight:

        $$\mathrm{Att}_{qkv}(\mathbf{Q}, \mathbf{K}, \mathbf{V}) = \mathrm{Softmax}\!\left(\frac{\mathbf{Q}\mathbf{K}^\top}{\sqrt{d}} + \mathrm{Mask}\right)\mathbf{V}$$
        """),
        code(r"""
        def attention_from_scratch(Q, K, V):
            # Softmax(Q K^T / sqrt(d) + Mask) V, Mask = 0 where j <= i and -inf where j > i
            m, d = Q.shape[-2], Q.shape[-1]
            i = torch.arange(m, device=Q.device)[:, None]  # [m, 1] query positions
            j = torch.arange(m, device=Q.device)[None, :]  # [1, m] key positions
            Mask = torch.zeros(m, m, dtype=Q.dtype, device=Q.device).masked_fill(j > i, float("-inf"))
            scores = Q @ K.transpose(-2, -1) / math.sqrt(d) + Mask  # [m, m]
            return torch.softmax(scores, dim=-1) @ V  # [m, d]


        out = attention_from_scratch(Q, K, V)
        torch.testing.assert_close(out[3], out_i)  # row 3 is the single query of section 2
        print("row 3 of the masked matrix form == the single-query computation; out:", tuple(out.shape))
        """),
        md(r"""
        `course_lib` has the same computation twice, on tensors laid out as
        `[batch, heads, time, head_dim]` (`[B, H, T, D]`):

        - `attention_reference(q, k, v, mask)` spells the formula out, like the cell above;
          its `mask` is **boolean**, `True` = may attend;
        - `attention(q, k, v, causal=True)` calls PyTorch's fused kernel.

        Both must agree with our version. The cell checks it with `torch.testing.assert_close`,
        so if they ever disagreed the notebook itself would fail.
        """),
        code(r"""
        q4, k4, v4 = (x[None, None] for x in (Q, K, V))  # [B=1, H=1, T=5, D=4]
        reference = attention_reference(q4, k4, v4, causal_mask(m, m, device=device))
        fused = attention(q4, k4, v4, causal=True)
        torch.testing.assert_close(reference[0, 0], out)
        torch.testing.assert_close(fused[0, 0], out)
        print("from scratch == attention_reference == attention")
        """),
        md(r"""
        ## 4. Causal, window and sink masks

        `causal_mask(t_q, t_k)` returns the boolean mask as a `[t_q, t_k]` table: row = query
        position $i$, column = key position $j$, `1` = may attend. A **window** of $n_c$ keeps
        only $\mathbf{K}_{[i-n_c+1,\, i]}$; **attention sinks** also keep the first $S$ tokens,
        whatever $i$ is. With fewer queries than keys, the queries are the *last* $t_q$
        positions: exactly the situation of decoding, where new tokens attend to everything
        before them.
        """),
        code(r"""
        print("causal, 6 tokens:\n", causal_mask(6, 6).int())
        print("window n_c = 3:\n", causal_mask(6, 6, window=3).int())
        print("window n_c = 3 and 1 sink:\n", causal_mask(6, 6, window=3, sinks=1).int())
        print("the last 2 of 6 positions as queries:\n", causal_mask(2, 6).int())
        """),
        md(r"""
        The same three masks applied to 8 random tokens: each row of a picture is one
        query's attention weights (white = 0). Masked keys get exactly zero weight, and each
        row still sums to 1, so a window concentrates the weight on fewer keys.
        """),
        code(r"""
        seed_everything(0)
        q8, k8, v8 = torch.randn(3, 1, 1, 8, 16).to(device)
        masks = {"causal": causal_mask(8, 8), "window n_c = 3": causal_mask(8, 8, window=3),
                 "window 3 + 1 sink": causal_mask(8, 8, window=3, sinks=1)}
        fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
        for ax, (title, mask) in zip(axes, masks.items()):
            _, w = attention_reference(q8, k8, v8, mask.to(device), return_weights=True)
            ax.imshow(w[0, 0].cpu(), cmap="Blues", vmin=0, vmax=1)
            ax.set(title=title, xlabel="key position j", ylabel="query position i")
        plt.tight_layout()
        plt.show()
        """),
        md(r"""
        ## 5. Multi-head attention

        A model of width $d$ runs $\tau$ attentions side by side, each on its own $d_h = d/\tau$
        dimensions: it projects the input $\mathbf{x}$ (shape `[B, T, d]`) to queries, keys and
        values, splits each into $\tau$ heads (shape `[B, tau, T, d_h]`), attends in every head
        separately, concatenates the heads back to width $d$ and applies an output projection.
        Each head has its own scores, so different heads can look at different positions.

        `course_lib.MultiHeadAttention` does exactly that. Below we do it by hand with a loop
        over heads and compare.
        """),
        code(r"""
        seed_everything(0)
        d_model, tau, T = 32, 4, 6
        mha = MultiHeadAttention(d_model, n_heads=tau).to(device)
        x = torch.randn(1, T, d_model).to(device)  # [B, T, d]
        q, k, v = mha.split(x)  # each [B, tau, T, d_h]
        print("q, k, v:", tuple(q.shape), " d_h =", mha.head_dim)
        mask = causal_mask(T, T, device=device)
        heads = [attention_reference(q[:, h : h + 1], k[:, h : h + 1], v[:, h : h + 1], mask) for h in range(tau)]
        by_hand = mha.merge(torch.cat(heads, dim=1))  # concatenate the heads, then the output projection
        torch.testing.assert_close(by_hand, mha(x))
        print("loop over heads == MultiHeadAttention:", tuple(by_hand.shape))
        """),
        md(r"""
        ## 6. The fused kernel computes the same thing

        `torch.nn.functional.scaled_dot_product_attention` (SDPA) is PyTorch's fused
        attention. On a GPU it picks a flash or memory-efficient kernel that works through
        the keys in tiles with a running softmax, so it never stores the $m \times m$ weight
        matrix. It still computes the same $\mathrm{Softmax}(\mathbf{Q}\mathbf{K}^\top/\sqrt{d} + \mathrm{Mask})\mathbf{V}$,
        as we check on awkward shapes: 2 sequences, 3 heads, 37 tokens, and the last 5
        positions as queries.
        """),
        code(r"""
        seed_everything(0)
        q, k, v = torch.randn(3, 2, 3, 37, 16).to(device)  # [B, H, T, D] each
        reference = attention_reference(q, k, v, causal_mask(37, 37, device=device))
        torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v, is_causal=True), reference)

        last5 = q[:, :, -5:]  # queries at positions 32..36 over keys 0..36
        reference = attention_reference(last5, k, v, causal_mask(5, 37, device=device))
        torch.testing.assert_close(attention(last5, k, v, causal=True), reference)
        print("SDPA == attention_reference, for all 37 queries and for the last 5")
        """),
        md(r"""
        ## 7. The cost grows as $m^2$

        Causal attention over $m$ tokens scores every query against every earlier key:
        $m(m+1)/2$ dot products of size $d$, so **doubling $m$ makes the work four times
        larger**. `attention_reference` also stores the whole $m \times m$ weight matrix; the
        fused kernel avoids that storage but not the work.

        We time both for a few lengths. The measurement runs on the CPU on purpose: on a GPU
        these sizes take microseconds and the time is dominated by launching the kernel, not
        by the work. It also runs on **one CPU thread**, so that it times the work rather than
        the coordination between threads (which, when other programs keep the cores busy, can
        cost more than the work itself). Your numbers will differ from the stored ones (and
        from run to run), but the slope should not.
        """),
        code(r"""
        def fastest_seconds(fn, repeat=3):
            # the fastest of a few runs: noise (other programs, the OS) only ever adds time
            fn()  # warm-up
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            return min(times)


        torch.set_num_threads(1)  # time the work, not the threads' coordination
        sizes, d = [256, 512, 1024, 2048, 4096], 64
        t_reference, t_fused = [], []
        for m in sizes:
            q, k, v = torch.randn(3, 1, 1, m, d)  # on the CPU, [B=1, H=1, m, d]
            mask = causal_mask(m, m)
            t_reference.append(fastest_seconds(lambda: attention_reference(q, k, v, mask)))
            t_fused.append(fastest_seconds(lambda: attention(q, k, v, causal=True)))
            print(f"m = {m:4d}: attention_reference {t_reference[-1] * 1e3:.2f} ms, attention {t_fused[-1] * 1e3:.2f} ms")
        print(f"m {sizes[-2]} -> {sizes[-1]}: attention_reference grew {t_reference[-1] / t_reference[-2]:.1f}× (measured), "
              f"attention {t_fused[-1] / t_fused[-2]:.1f}× (measured); m^2 predicts 4×")
        """),
        md(r"""
        On log-log axes a cost $\propto m^2$ is a straight line of slope 2 (the dashed
        reference). At small $m$ the fixed overhead of a call flattens the curves; as $m$
        grows they bend towards the slope of the reference. The explicit version can even grow
        faster than $4\times$ per doubling: it writes and reads the whole $m \times m$ matrix
        (64 MiB in float32 at $m = 4096$), which no longer fits in the CPU's caches.
        """),
        code(r"""
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.loglog(sizes, t_reference, "o-", label="attention_reference (stores m x m weights)")
        ax.loglog(sizes, t_fused, "s-", label="attention (fused SDPA)")
        ax.loglog(sizes, [t_reference[-1] * (m / sizes[-1]) ** 2 for m in sizes], "k--", label="$\\propto m^2$")
        ax.set(xlabel="tokens m", ylabel="seconds per call", title="Causal attention over m tokens (CPU)")
        ax.set_xticks(sizes, [str(m) for m in sizes], minor=False)
        ax.minorticks_off()
        ax.legend(loc="upper left")
        plt.show()
        """),
        *explore("01", "AttentionExplorer", r"""
        Change the queries, keys, window $n_c$ and number of sinks in sections 2-4 and re-run
        the cells: which keys get weight, and how does a window redistribute it? How does the
        picture change if you multiply the scores by 10 (a lower softmax temperature)?
        """),
        md(r"""
        ## Summary

        - With 0-based positions, the token at $i$ attends to $\mathbf{K}_{\le i}, \mathbf{V}_{\le i}$
          ($i + 1$ pairs); a window keeps $\mathbf{K}_{[i-n_c+1,\, i]}$.
        - $\mathrm{Att}_{qkv}(\mathbf{q}, \mathbf{K}, \mathbf{V}) = \mathrm{Softmax}(\mathbf{q}\mathbf{K}^\top/\sqrt{d} + \mathrm{Mask})\,\mathbf{V}$:
          scores, softmax, weighted average; the mask adds $-\infty$ where a key may not be seen.
        - Multi-head attention runs this in $\tau$ heads of $d_h = d/\tau$ dimensions.
        - `attention_reference`, `attention`, SDPA and our inline version agree.
        - Attention over $m$ tokens costs $O(m^2)$. The next lesson shows how decoding one
          token at a time turns this into $O(i)$ per token, with a cache that grows.
        """),
        md(r"""
        ## Check your understanding

        1. With 0-based positions, which keys does $\mathbf{q}_4$ see with a causal mask, and
           with a window of $n_c = 3$?

           <details><summary>Answer</summary>

           Causal: $\mathbf{K}_{\le 4} = \mathbf{k}_0, \dots, \mathbf{k}_4$ (five keys). Window:
           $\mathbf{K}_{[4-3+1,\, 4]} = \mathbf{K}_{[2, 4]} = \mathbf{k}_2, \mathbf{k}_3, \mathbf{k}_4$.
           </details>

        2. Why divide the scores by $\sqrt{d}$?

           <details><summary>Answer</summary>

           For vectors with independent unit-variance entries, $\mathbf{q}\cdot\mathbf{k}$ has variance
           $d$. Without the scale the scores grow with $d$, the softmax saturates to nearly one-hot
           weights and its gradients vanish; dividing by $\sqrt{d}$ keeps the scores' variance near 1.
           </details>

        3. The additive mask uses $-\infty$ for forbidden keys. What would go wrong with $0$? And
           with a large negative number such as $-10^4$ in float16?

           <details><summary>Answer</summary>

           Adding $0$ changes nothing: the future keys would keep their weight. $e^{-\infty} = 0$
           removes them exactly. $-10^4$ works only while the real scores stay far from it, and a
           "safer" $-10^9$ does not even fit in float16 (largest value 65504). A boolean mask
           (`True` = may attend) avoids choosing a number: the kernel drops those keys exactly.
           </details>

        4. In `causal_mask(2, 6)`, which absolute positions are the two queries, and which keys
           does each see?

           <details><summary>Answer</summary>

           The queries are the last two positions, 4 and 5. Position 4 sees keys 0-4, position 5
           sees keys 0-5: rows `[1, 1, 1, 1, 1, 0]` and `[1, 1, 1, 1, 1, 1]`.
           </details>

        5. A model has $d = 4096$ and $\tau = 32$ heads. What is $d_h$, and does splitting into
           heads change the number of multiply-adds for $\mathbf{Q}\mathbf{K}^\top$?

           <details><summary>Answer</summary>

           $d_h = 4096 / 32 = 128$. No: each head computes an $m \times m$ score matrix over $d_h$
           dimensions, and $\tau \cdot d_h = d$, so the total is the same $m^2 d$.
           </details>

        6. The fused kernel never stores the $m \times m$ weights. Is attention then $O(m)$?

           <details><summary>Answer</summary>

           Only in **memory**. It still computes every score, so the **work** stays $O(m^2 d)$ for $m$
           tokens: doubling $m$ still makes it about four times slower, as the measurement shows.
           </details>
        """),
    ]


# --------------------------------------------------------------------------------------
# 02 kv cache
# --------------------------------------------------------------------------------------

def lesson_02():
    return [
        md(r"""
        # 02 · The KV cache

        ## Learning goals

        After this notebook you can

        - explain why the keys and values of earlier tokens can be kept instead of recomputed,
          and measure how much faster decoding becomes (with identical tokens);
        - see standard attention as $\mathrm{Att}(\mathbf{q}_i, \mathrm{Mem})$ with
          $\mathrm{Mem} = (\mathbf{K}_{\le i}, \mathbf{V}_{\le i})$, a memory that grows with $i$;
        - compute the size of a KV cache, $2 \cdot L \cdot n_g \cdot d_h \cdot m$ values, with
          multi-query (MQA) and grouped-query (GQA) attention, for real published models;
        - measure how the time per token and the cache bytes grow with the context length $m$;
        - tell a dynamic cache (grows by reallocation) from a static one (preallocated, written in place).
        """),
        code(r"""
        import time

        import matplotlib.pyplot as plt
        import torch

        from course_lib import (FullMemory, KVCache, MemoryLM, StaticKVCache, attention_reference, kv_cache_bytes,
                                pick_device, seed_everything)

        device = pick_device()  # cuda > mps > cpu; COURSE_DEVICE=cpu forces the CPU
        torch.set_grad_enabled(False)  # no training in this lesson
        seed_everything(0)
        """),
        md(r"""
        We will time things, so two precautions. On a GPU, work runs asynchronously: the timer
        waits for it before reading the clock. On the CPU, decoding one token is a chain of
        many tiny operations, and splitting each over several threads costs more in
        coordination than it saves (and much more when other programs keep the cores busy), so
        this lesson runs torch on one CPU thread; the measurements then show the work itself.
        """),
        code(r"""
        torch.set_num_threads(1)  # tiny operations: one thread times them steadily


        def sync():
            # GPU work is asynchronous: wait for it before reading the clock
            if device.type == "cuda":
                torch.cuda.synchronize()


        def seconds(fn):
            sync()
            start = time.perf_counter()
            result = fn()
            sync()
            return time.perf_counter() - start, result
        """),
        md(r"""
        ## 1. Decoding with and without a cache

        A language model generates text one token at a time: it reads the tokens so far,
        predicts the next one, appends it and repeats. The naive loop runs the model over the
        **whole** sequence at every step. But with causal attention, the key $\mathbf{k}_j$ and
        value $\mathbf{v}_j$ of position $j$ depend only on the tokens $0..j$ (and, with rotary
        positions, on the absolute position $j$), so they are the same at every later step.
        A **KV cache** keeps them: each step then computes $\mathbf{q}_i, \mathbf{k}_i, \mathbf{v}_i$
        for the new token only and attends over the cached $\mathbf{K}_{\le i}, \mathbf{V}_{\le i}$.

        `course_lib.MemoryLM` is a small decoder-only transformer; its `generate` keeps the
        cache in a state. Here it has random weights: the tokens are meaningless, but both
        loops must produce the **same** tokens.
        """),
        code(r"""
        seed_everything(0)
        model = MemoryLM(vocab_size=256, d_model=128, n_layers=4, n_heads=4).to(device).eval()
        prompt = torch.randint(0, 256, (1, 256)).to(device)  # [B, T]: a prompt of 256 token ids


        def generate_without_cache(model, idx, max_new_tokens):
            # greedy decoding that recomputes every position at every step
            for _ in range(max_new_tokens):
                logits, _ = model(idx)  # no state: all keys and values are computed again
                idx = torch.cat([idx, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
            return idx
        """),
        md(r"""
        Continue the prompt by 64 tokens both ways, check that they are the same tokens, and compare the time.
        A model with random weights soon repeats itself: the tokens are meaningless, only their
        equality matters here.
        """),
        code(r"""
        n_new = 64
        t_recompute, tokens_recompute = seconds(lambda: generate_without_cache(model, prompt, n_new))
        t_cached, tokens_cached = seconds(lambda: model.generate(prompt, n_new))
        assert torch.equal(tokens_recompute, tokens_cached)
        print("identical tokens:", torch.equal(tokens_recompute, tokens_cached))
        print("first new tokens:", tokens_cached[0, prompt.shape[1] :][:12].tolist())
        print(f"without cache {t_recompute / n_new * 1e3:.2f} ms/token, with cache {t_cached / n_new * 1e3:.2f} ms/token")
        print(f"speed-up: {t_recompute / t_cached:.1f}× (measured)")
        """),
        md(r"""
        Without a cache, step $i$ runs every layer over all $i + 1$ positions, so generating
        $n$ tokens processes $O(n^2)$ positions (and attention alone does $O(n^3)$ work). With
        the cache, step $i$ processes one position and reads $i + 1$ cached pairs: $O(i)$ per
        step. The longer the text, the larger the speed-up.

        ## 2. Standard attention is $\mathrm{Att}(\mathbf{q}_i, \mathrm{Mem})$ with a growing $\mathrm{Mem}$

        The book writes attention through a memory: $\mathrm{Mem} = \mathrm{Update}(S_{kv}, \mathrm{Mem}_{pre})$,
        then $\mathrm{Att}(\mathbf{q}_i, \mathrm{Mem})$. The KV cache is the simplest memory:
        $\mathrm{Update}$ appends the new pair $(\mathbf{k}_i, \mathbf{v}_i)$, so
        $\mathrm{Mem} = (\mathbf{K}_{\le i}, \mathbf{V}_{\le i})$ and attention through it is
        exactly causal attention. In `course_lib` this memory is `FullMemory`; every memory of the
        later lessons has the same interface (`init_state`, `forward(q, k, v, state)`, `nbytes`).

        We feed it one position at a time and check each output against attention over
        $\mathbf{K}_{\le i}, \mathbf{V}_{\le i}$. Watch $|\mathrm{Mem}|$ grow.
        """),
        code(r"""
        seed_everything(0)
        tau, d_h = 4, 8
        memory = FullMemory()
        state = memory.init_state(1, tau, d_h, device=device)
        for i in range(6):
            q_i, k_i, v_i = torch.randn(3, 1, tau, 1, d_h).to(device)  # position i: [B, tau, 1, d_h] each
            out, state = memory(q_i, k_i, v_i, state)  # Mem = Update((k_i, v_i), Mem_pre); Att(q_i, Mem)
            torch.testing.assert_close(out, attention_reference(q_i, state.keys, state.values))
            print(f"i = {i}: |Mem| = {state.length} pairs, keys {tuple(state.keys.shape)}, {memory.nbytes(state)} bytes")
        """),
        md(r"""
        Each token adds $2 \cdot \tau \cdot d_h = 64$ float32 values (256 bytes) to this one-layer
        memory. In a model every layer has its own memory, so the state of `MemoryLM` after
        $m$ tokens should hold $2 \cdot L \cdot n_g \cdot d_h \cdot m$ values, which is what
        `kv_cache_bytes` computes (`bytes_per_value=4` for float32):
        """),
        code(r"""
        L, n_g, d_h = model.n_layers, model.n_kv_heads, model.head_dim
        for m in (16, 32, 64):
            _, lm_state = model(prompt[:, :m])
            assert model.state_nbytes(lm_state) == kv_cache_bytes(L, n_g, d_h, m, bytes_per_value=4)
            print(f"m = {m:2d} tokens: {model.state_nbytes(lm_state):7,d} bytes = 2 * L={L} * n_g={n_g} * d_h={d_h} * m={m} * 4")
        """),
        md(r"""
        ## 3. How big does the cache get? MHA, MQA and GQA

        For a batch of $b$ sequences of $m$ tokens, stored with $p$ bytes per value,

        $$\text{bytes} = 2 \cdot L \cdot n_g \cdot d_h \cdot m \cdot b \cdot p$$

        ($2$ for keys and values). With ordinary multi-head attention (MHA) every one of the
        $\tau$ query heads has its own keys and values, $n_g = \tau$. **Multi-query
        attention** (MQA) shares one key/value head among all query heads, $n_g = 1$;
        **grouped-query attention** (GQA) shares each key/value head among a group of
        $\tau / n_g$ query heads. Both shrink the cache by $\tau / n_g$ with little loss in
        quality, which is why recent models use them.

        Below, the published configurations of real models (number of layers $L$, query heads
        $\tau$, key/value heads $n_g$, head dimension $d_h$), in fp16 ($p = 2$), batch 1. The
        32k column is what the formula gives even where a model was trained on shorter texts
        (GPT-2: 1,024 tokens; Llama-2: 4,096).
        """),
        code(r"""
        models = {  # published configurations
            "GPT-2 small": dict(L=12, tau=12, n_g=12, d_h=64),
            "Llama-2-7B": dict(L=32, tau=32, n_g=32, d_h=128),
            "Llama-2-70B": dict(L=80, tau=64, n_g=8, d_h=128),
            "Mistral-7B": dict(L=32, tau=32, n_g=8, d_h=128),
            "Llama-3-8B": dict(L=32, tau=32, n_g=8, d_h=128),
            "Falcon-7B": dict(L=32, tau=71, n_g=1, d_h=64),
        }
        """),
        md(r"""
        For each model: the bytes per token, the cache at 4k and 32k tokens, and what the 32k
        cache would be with one key/value head per query head (MHA, $n_g = \tau$):
        """),
        code(r"""
        MiB, GiB = 2**20, 2**30


        def size(n_bytes):
            return f"{n_bytes / GiB:.2f} GiB" if n_bytes >= GiB else f"{n_bytes / MiB:.0f} MiB"


        print(f"{'model':12s} {'L':>3s} {'tau':>4s} {'n_g':>4s} {'d_h':>4s} kind {'per token':>10s} "
              f"{'4k tokens':>10s} {'32k tokens':>10s} {'32k as MHA':>11s}")
        for name, c in models.items():
            kind = "MHA" if c["n_g"] == c["tau"] else "MQA" if c["n_g"] == 1 else "GQA"
            per_token = kv_cache_bytes(c["L"], c["n_g"], c["d_h"], 1)  # fp16: bytes_per_value=2
            at_4k = kv_cache_bytes(c["L"], c["n_g"], c["d_h"], 4096)
            at_32k = kv_cache_bytes(c["L"], c["n_g"], c["d_h"], 32768)
            as_mha = kv_cache_bytes(c["L"], c["tau"], c["d_h"], 32768)
            print(f"{name:12s} {c['L']:3d} {c['tau']:4d} {c['n_g']:4d} {c['d_h']:4d} {kind:4s} "
                  f"{per_token // 1024:6d} KiB {size(at_4k):>10s} {size(at_32k):>10s} {size(as_mha):>11s}")

        assert kv_cache_bytes(32, 32, 128, 4096) == 2 * GiB  # Llama-2-7B at 4k tokens: exactly 2 GiB
        """),
        md(r"""
        Read the table: Llama-2-7B needs 2 GiB per sequence at 4k tokens and 16 GiB at 32k,
        more than its own weights (6.7 billion parameters, about 13.5 GB in fp16); a batch of 8 such sequences needs 128 GiB.
        Llama-2-70B has 2.5 times more layers yet a smaller cache, because GQA with $n_g = 8$
        divides it by $\tau / n_g = 8$. Falcon-7B's MQA divides it by 71. The cache is linear
        in $m$: whatever the model, doubling the context doubles the bytes.

        ## 4. Measured: time per token and bytes against context length

        The cache also costs **time**: at step $i$ every layer reads all $i + 1$ cached pairs,
        so the time per token grows linearly with the context $m$. We fill a small
        `MemoryLM` with a context of $m$ tokens (the *prefill*), then time single-token decoding
        steps. Each longer context continues the previous one, so the prefill is paid once.
        """),
        code(r"""
        seed_everything(0)
        lm = MemoryLM(vocab_size=256, d_model=64, n_layers=2, n_heads=4).to(device).eval()  # small: prefill is O(m^2)
        contexts, n_steps = [256, 1024, 2048, 3072, 4096, 6144, 8192], 16
        ms_per_token, cache_mib = [], []
        state = lm.init_state(1)
        for m in contexts:
            chunk = torch.randint(0, 256, (1, m - state.pos)).to(device)
            _, state = lm(chunk, state)  # prefill up to m tokens
            step_state, token, times = state, chunk[:, -1:], []
            for _ in range(n_steps):
                t, (logits, step_state) = seconds(lambda: lm(token, step_state))
                times.append(t)
            ms_per_token.append(min(times) * 1e3)  # the fastest step: noise only ever adds time
            cache_mib.append(lm.state_nbytes(state) / MiB)
            print(f"m = {m:5d}: {ms_per_token[-1]:.2f} ms/token, cache {cache_mib[-1]:5.2f} MiB")
        """),
        md(r"""
        Both against $m$, with the bytes that the formula predicts beside the measured ones:
        """),
        code(r"""
        fig, (ax_time, ax_bytes) = plt.subplots(1, 2, figsize=(10, 3.8))
        ax_time.plot(contexts, ms_per_token, "o-")
        ax_time.set(xlabel="context length m (tokens)", ylabel="ms per decoded token", title="Time per token", ylim=(0, None))
        ax_bytes.plot(contexts, cache_mib, "o-", label="measured (state_nbytes)")
        formula = [kv_cache_bytes(lm.n_layers, lm.n_kv_heads, lm.head_dim, m, bytes_per_value=4) / MiB for m in contexts]
        ax_bytes.plot(contexts, formula, "k--", label="2 L n_g d_h m * 4 bytes")
        ax_bytes.set(xlabel="context length m (tokens)", ylabel="MiB", title="KV cache size")
        ax_bytes.legend()
        plt.tight_layout()
        plt.show()
        """),
        md(r"""
        The bytes follow the formula exactly: a straight line through 0. The time is a fixed
        cost per step (projections, MLP, Python) plus a part that grows with $m$ (reading the
        cache); at long contexts the growing part dominates. On a GPU the fixed cost of
        launching kernels hides the growth at these small sizes, but not at the lengths of
        real models. Nothing in the full cache stops either line from rising: that is the
        problem the fixed-size memories of lessons 04-06 solve.

        The same measurement for longer contexts, larger models and any memory of the course is
        a command: `python -m course_lib bench decode --contexts 1024,4096,16384` prints the
        table and saves the plot (it uses `course_lib.cost.measure_decode`).

        ## 5. Static vs dynamic cache

        There are two ways to store a growing cache:

        - `KVCache` (dynamic) concatenates: every update allocates a new tensor and copies
          everything cached so far, $O(m)$ per step.
        - `StaticKVCache` preallocates `max_len` slots and writes each new pair **in place**:
          no allocation per step, and the buffer never moves (which is also what compiled or
          CUDA-graph decoding needs). The price: the memory for `max_len` tokens is reserved up
          front, and writing past it is an error.

        Both must return the same keys and values after every update, including updates of
        uneven sizes.
        """),
        code(r"""
        seed_everything(0)
        B, H, D = 1, 2, 4
        dynamic, static = KVCache(), StaticKVCache(B, H, 16, D, device=device)
        chunks = [3, 1, 1, 5, 1, 2]  # tokens per update
        pointers_dynamic, pointers_static, kept = [], [], []
        for t in chunks:
            k, v = torch.randn(2, B, H, t, D).to(device)  # [B, H, t, D] each
            K_dyn, V_dyn = dynamic.update(k, v)
            K_sta, V_sta = static.update(k, v)
            assert torch.equal(K_dyn, K_sta) and torch.equal(V_dyn, V_sta)
            kept.append(K_dyn)  # keep the old tensors alive so that their addresses are not reused
            pointers_dynamic.append(K_dyn.data_ptr())
            pointers_static.append(K_sta.data_ptr())
        print(dynamic)
        print(static, "reserved:", static.capacity_nbytes, "bytes")
        print(f"KVCache:       {len(set(pointers_dynamic))} different buffers in {len(chunks)} updates")
        print(f"StaticKVCache: {len(set(pointers_static))} buffer in {len(chunks)} updates, data_ptr unchanged:",
              len(set(pointers_static)) == 1)
        """),
        md(r"""
        The static cache holds 13 of its 16 slots; five more tokens do not fit, and it says so:
        """),
        code(r"""
        try:
            static.update(*torch.randn(2, B, H, 5, D).to(device))  # 13 + 5 > max_len = 16
        except ValueError as err:
            print("ValueError:", err)
        """),
        md(r"""
        The copying of the dynamic cache adds up: streaming $n$ single tokens into it copies
        $1 + 2 + \dots + n = O(n^2)$ pairs, against $n$ for the static cache. (`FullMemory`,
        used by `MemoryLM`, sits in between: it writes in place into a buffer that doubles its
        capacity when full, so $n$ tokens cost only $O(\log n)$ reallocations.)
        """),
        code(r"""
        n, H, D = 1024, 8, 64
        stream = torch.randn(2, 1, H, n, D).to(device)


        def fill(cache):
            for j in range(n):
                cache.update(stream[0, :, :, j : j + 1], stream[1, :, :, j : j + 1])
            return cache


        t_dynamic, dynamic = seconds(lambda: fill(KVCache()))
        t_static, static = seconds(lambda: fill(StaticKVCache(1, H, n, D, device=device)))
        assert torch.equal(dynamic.k, static.k_buf) and torch.equal(dynamic.v, static.v_buf)
        print(f"{n} single-token updates: KVCache {t_dynamic * 1e3:.1f} ms, StaticKVCache {t_static * 1e3:.1f} ms")
        print(f"static is {t_dynamic / t_static:.1f}× (measured) faster at filling")
        """),
        *explore("02", "CostExplorer", r"""
        Change the model sizes in section 3 (try your own favourite model's $L$, $\tau$, $n_g$,
        $d_h$) and the context lengths in section 4, and re-run the cells: at what context
        length does the cache of a 7B model outgrow a 24 GB GPU? How does the time per token
        change when you double `d_model` or `n_layers` of the small model?
        """),
        md(r"""
        ## Summary

        - Keys and values of past tokens never change, so decoding keeps them in a cache:
          identical tokens, much faster.
        - Standard attention is $\mathrm{Att}(\mathbf{q}_i, \mathrm{Mem})$ with
          $\mathrm{Mem} = (\mathbf{K}_{\le i}, \mathbf{V}_{\le i})$, which grows by one pair per token and layer.
        - Cache bytes $= 2 \cdot L \cdot n_g \cdot d_h \cdot m \cdot b \cdot p$: $O(L\,\tau\, d_h\, m)$ with MHA,
          divided by $\tau / n_g$ with GQA ($n_g = 1$: MQA).
        - Time per token grows linearly with $m$ and so do the bytes; nothing in the full cache stops them.
        - A static cache preallocates and writes in place; a dynamic one reallocates and copies.
        """),
        md(r"""
        ## Check your understanding

        1. Why can the keys and values of earlier tokens be cached, but their queries are not
           kept?

           <details><summary>Answer</summary>

           With causal attention $\mathbf{k}_j$ and $\mathbf{v}_j$ depend only on tokens $0..j$ (and
           rotary positions on the absolute position $j$), so they are the same at every later step and
           every later query needs them. The query $\mathbf{q}_j$ is used only once, at step $j$, to
           compute that position's output.
           </details>

        2. Llama-2-7B needs 2 GiB of fp16 cache for one sequence of 4,096 tokens. How much for a
           batch of 8 sequences of 16,384 tokens?

           <details><summary>Answer</summary>

           The formula is linear in $m$ and $b$: $2 \text{ GiB} \times 4 \times 8 = 64$ GiB.
           </details>

        3. Llama-2-70B has $\tau = 64$ query heads and $n_g = 8$ key/value heads. By how much does
           GQA shrink its cache compared with MHA, and what would MQA give?

           <details><summary>Answer</summary>

           By $\tau / n_g = 64 / 8 = 8$ times (10 GiB instead of 80 GiB at 32k tokens). MQA ($n_g = 1$)
           would divide the MHA cache by 64.
           </details>

        4. Why does the time per token grow with the context length even with a cache, and what
           kind of memory would make it constant?

           <details><summary>Answer</summary>

           Each step attends over all $m$ cached pairs in every layer, so it reads $O(L\, n_g\, d_h\, m)$
           values: $O(i)$ per step. A memory of **fixed size** (a window, an average, a fast-weight
           matrix, a compressed memory) makes each step $O(1)$ in the sequence length: lessons 04-06.
           </details>

        5. When would you choose a `StaticKVCache` over a `KVCache`, and what does it cost you?

           <details><summary>Answer</summary>

           When the maximum length is known: it never reallocates or copies old pairs, its buffer
           stays at one address (needed for CUDA graphs and compiled decoding) and memory does not
           fragment. It costs memory reserved for `max_len` tokens from the start, and a longer
           sequence is refused.
           </details>

        6. Without a cache, roughly how much more work is generating 2,000 tokens than 1,000?

           <details><summary>Answer</summary>

           Step $i$ processes all $i + 1$ positions, so the positions processed grow as $n^2$: about
           4 times more (and the attention part, $O(n^3)$, about 8 times). With a cache it is about 2
           times for the per-position work and 4 times for attention.
           </details>
        """),
    ]


LESSONS = {"00": ("00_welcome", lesson_00), "01": ("01_attention", lesson_01), "02": ("02_kv_cache", lesson_02)}


def build(key: str) -> Path:
    name, make_cells = LESSONS[key]
    nb = new_notebook(cells=make_cells())
    for index, cell in enumerate(nb.cells):
        cell.id = f"{name}-{index:02d}"  # stable ids keep diffs small when a lesson is rebuilt
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.validate(nb)
    path = NOTEBOOKS / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def main(argv: list[str]) -> int:
    for key in argv or sorted(LESSONS):
        print("wrote", build(key))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
