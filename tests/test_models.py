"""MemoryLM with the full KV cache: caching is exact, chunking does not matter, errors are clear."""

import pytest
import torch

from course_lib import FullMemory, MemoryLM, seed_everything


@pytest.fixture
def lm():
    seed_everything(0)
    return MemoryLM(vocab_size=50, d_model=32, n_layers=2, n_heads=4).double().eval()


def recompute_greedy(model, prompt, n):
    seq = prompt
    for _ in range(n):
        logits, _ = model(seq)  # no state: the whole sequence again
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq


@pytest.mark.parametrize("n_kv_heads", [None, 2, 1])
def test_greedy_generate_equals_recomputing_everything(lm, n_kv_heads):
    if n_kv_heads is not None:
        seed_everything(1)
        lm = MemoryLM(50, 32, 2, 4, n_kv_heads=n_kv_heads).double().eval()
    prompt = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(lm.generate(prompt, 12), recompute_greedy(lm, prompt, 12), rtol=0, atol=0)


def test_one_pass_logits_equal_chunk_by_chunk_logits(lm):
    x = torch.randint(0, 50, (2, 50), generator=torch.Generator().manual_seed(4))
    full, _ = lm(x)
    state, pieces, start = lm.init_state(2), [], 0
    for size in (1, 7, 1, 21, 50 - 30):
        logits, state = lm(x[:, start:start + size], state)
        pieces.append(logits)
        start += size
    assert state.pos == 50
    torch.testing.assert_close(torch.cat(pieces, dim=1), full)


def test_a_conversation_continues_from_the_returned_state(lm):
    """Reply, then feed the user's next message with the state: same as from scratch."""
    g = torch.Generator().manual_seed(5)
    prompt, next_message = torch.randint(0, 50, (1, 4), generator=g), torch.randint(0, 50, (1, 3), generator=g)
    reply, state = lm.generate(prompt, 4, return_state=True)
    assert state.pos == 8  # the prompt and the whole reply are in the memory
    continued = lm.generate(next_message, 5, state=state)
    from_scratch = lm.generate(torch.cat([reply, next_message], dim=1), 5)
    torch.testing.assert_close(continued, from_scratch[:, 8:], rtol=0, atol=0)


def test_a_kept_state_keeps_its_meaning_after_branching(lm):
    x = torch.randint(0, 50, (1, 9), generator=torch.Generator().manual_seed(6))
    _, state = lm(x[:, :5])
    a, _ = lm(x[:, 5:7], state)
    lm(x[:, 7:9], state)  # another branch from the same state writes other tokens
    again, _ = lm(x[:, 5:7], state)
    torch.testing.assert_close(a, again)


def test_sampling_is_reproducible_with_a_generator_and_respects_top_k(lm):
    prompt = torch.zeros(1, 1, dtype=torch.long)
    a = lm.generate(prompt, 20, temperature=1.0, top_k=3, generator=torch.Generator().manual_seed(0))
    b = lm.generate(prompt, 20, temperature=1.0, top_k=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    # with top_k=1 sampling is greedy
    c = lm.generate(prompt, 20, temperature=0.7, top_k=1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(c, lm.generate(prompt, 20))


def test_state_bytes_grow_with_the_full_cache(lm):
    _, state = lm(torch.zeros(1, 10, dtype=torch.long))
    # 2 layers x (k and v) x 4 heads x 10 tokens x 8 dims x 8 bytes (float64)
    assert lm.state_nbytes(state) == 2 * 2 * 4 * 10 * 8 * 8


def test_gradients_flow_through_a_training_step(lm):
    lm.train()
    x = torch.randint(0, 50, (2, 12))
    logits, _ = lm(x[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), x[:, 1:].reshape(-1))
    loss.backward()
    assert all(p.grad is not None for p in lm.parameters())


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m: m(torch.zeros(2, 3)), TypeError, "idx must hold token ids"),
        (lambda m: m(torch.zeros(3, dtype=torch.long)), ValueError, "idx must have 2 dimensions"),
        (lambda m: m(torch.zeros(2, 3, dtype=torch.long), m.init_state(1)), ValueError, "batch 1"),
        (lambda m: m(torch.zeros(1, 3, dtype=torch.long, device="meta")), ValueError, "device|on meta"),
        (lambda m: m(torch.zeros(1, 3, dtype=torch.long), "state"), TypeError, "LMState"),
        (lambda m: m.generate(torch.zeros(1, 3, dtype=torch.long), -1), ValueError, "max_new_tokens"),
        (lambda m: m.generate(torch.zeros(1, 3, dtype=torch.long), 2, temperature=-1), ValueError, "temperature"),
        (lambda m: MemoryLM(10, 30, 1, 4), ValueError, "divisible"),
        (lambda m: MemoryLM(10, 32, 1, 4, n_kv_heads=3), ValueError, "multiple of n_kv_heads"),
        (lambda m: MemoryLM(10, 32, 1, 4, memory="full"), TypeError, "memory must be"),
        (lambda m: MemoryLM(10, 32, 1, 4, d_ff=0), ValueError, "d_ff must be >= 1, got 0"),
        (lambda m: MemoryLM(10, 32, 1, 4, d_ff=-5), ValueError, "d_ff must be >= 1, got -5"),
        (lambda m: m(torch.tensor([[1, 50]])), ValueError, r"token id 50.*vocab_size=50.*0 <= id <= 49"),
        (lambda m: m(torch.tensor([[-1, 3]])), ValueError, r"token id -1.*vocab_size=50"),
        (lambda m: m.generate(torch.tensor([[7, 99]]), 2), ValueError, r"token id 99.*vocab_size=50"),
        (lambda m: m.generate(torch.tensor([[50]]), 1), ValueError, r"token id 50"),  # one token: the decoding step
        (lambda m: m.generate(torch.zeros(1, 3, dtype=torch.long), 2, temperature=float("nan")), ValueError,
         r"temperature must be a finite number >= 0.*nan"),
        (lambda m: m.generate(torch.zeros(1, 3, dtype=torch.long), 2, temperature="hot"), TypeError, "temperature"),
    ],
)
def test_bad_input_names_the_argument(lm, call, error, match):
    with pytest.raises(error, match=match):
        call(lm)


def test_full_memory_state_of_the_wrong_batch_is_rejected():
    mem = FullMemory()
    state = mem.init_state(2, 1, 4, dtype=torch.float64)
    q = torch.zeros(3, 1, 1, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="batch 3.*batch 2"):
        mem(q, q, q, state)


@pytest.mark.gpu
def test_generate_on_cuda_matches_cpu_greedy_tokens():
    seed_everything(0)
    cpu = MemoryLM(50, 32, 2, 4).eval()
    gpu = MemoryLM(50, 32, 2, 4).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu.cuda()
    prompt = torch.randint(0, 50, (1, 6))
    torch.testing.assert_close(cpu.generate(prompt, 8), gpu.generate(prompt.cuda(), 8).cpu())
