"""On a CUDA GPU, every memory and the model compute what they compute on the CPU.

The library's promise is "CUDA when there is a GPU, the CPU otherwise" with the same numbers. These
scenarios run each registered memory (and the variants that take other code paths) over one random
chunking on both devices in float64, and a small ``MemoryLM`` of each memory through a forward pass,
its fast one-token decoding step and ``generate``. Marked ``gpu``: skipped where CUDA is missing
(``tests/conftest.py``), run by ``make gpu-check`` on a machine that has one.
"""

from __future__ import annotations

import pytest
import torch
from memory_helpers import MEMORY_CASES, qkv, run

from course_lib import MemoryLM
from course_lib.device import seed_everything
from course_lib.memory import MEMORIES

pytestmark = pytest.mark.gpu

SIZES = [5, 1, 1, 9, 3, 1, 17]  # awkward chunks, past every example memory's capacity


@pytest.mark.parametrize("name", sorted(MEMORY_CASES))
def test_every_memory_on_cuda_matches_the_cpu_in_float64(name):
    seed_everything(0)
    memory = MEMORY_CASES[name]()
    q, k, v = qkv(1, 2, 2, sum(SIZES), 8)
    out_cpu, _ = run(memory.double(), q, k, v, SIZES)
    memory.cuda()
    state = memory.init_state(k.shape[0], k.shape[1], k.shape[3], device="cuda", dtype=k.dtype, v_dim=v.shape[3])
    out_gpu, _ = run(memory, q.cuda(), k.cuda(), v.cuda(), SIZES, state=state)
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name", sorted(MEMORIES))
def test_a_model_of_every_memory_decodes_on_cuda_as_it_reads_on_the_cpu(name):
    seed_everything(0)
    cpu = MemoryLM(50, 32, 2, 2, memory=MEMORIES[name].example(8, n_heads=2)).double().eval()
    gpu = MemoryLM(50, 32, 2, 2, memory=MEMORIES[name].example(8, n_heads=2)).double().eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu.cuda()
    idx = torch.randint(0, 50, (2, 21))
    with torch.inference_mode():
        logits_cpu, _ = cpu(idx)
        logits_gpu, _ = gpu(idx.cuda())
        torch.testing.assert_close(logits_gpu.cpu(), logits_cpu, atol=1e-9, rtol=1e-9)
        # the fast one-token step: token by token on the GPU as on the CPU (and as the whole chunk, where
        # the memory's output does not depend on the chunking)
        steps = {}
        for model in (cpu, gpu):
            state, outs = None, []
            for t in range(idx.shape[1]):
                out, state = model(idx[:, t:t + 1].to(next(model.parameters()).device), state)
                outs.append(out.cpu())
            steps[model] = torch.cat(outs, dim=1)
        torch.testing.assert_close(steps[gpu], steps[cpu], atol=1e-9, rtol=1e-9)
        if MEMORIES[name].example(8, n_heads=2).chunk_invariant:
            torch.testing.assert_close(steps[gpu], logits_cpu, atol=1e-9, rtol=1e-9)
        prompt = idx[:1, :5]
        torch.testing.assert_close(gpu.generate(prompt.cuda(), 12).cpu(), cpu.generate(prompt, 12))
