"""The conformance checks on ``cuda``: every form and the incremental form of every mechanism, in
float32 on the GPU, against the float64 reference on the CPU (the suite's 10x + 1e-6 rule, with the
CPU float32 reference's error as the yardstick). Skipped when no GPU is present."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.registry import get

from .harness import assert_close_to_reference, cases, make_inputs, run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: torch.cuda.is_available() is False")

SIZE = (2, 4, 2, 33, 33, 32)
CROSS_SIZE = (2, 4, 2, 9, 33, 32)


def _on(device, tensors: dict) -> dict:
    return {n: t.to(device) for n, t in tensors.items()}


@pytest.mark.parametrize("name, form, pattern", cases("forms"))
def test_form_on_cuda_matches_the_reference(name, form, pattern):
    spec = get(name)
    causal = pattern.startswith("causal")
    size = SIZE if pattern.endswith("self") else CROSS_SIZE
    size = (*size[:5], size[5])
    q, k, v, extra = make_inputs(spec, size)
    ref64 = run(spec, "reference", q, k, v, extra, causal=causal)
    q32, k32, v32, extra32 = make_inputs(spec, size, dtype=torch.float32)
    ref32 = run(spec, "reference", q32, k32, v32, extra32, causal=causal)
    gpu = run(spec, form, q32.cuda(), k32.cuda(), v32.cuda(), _on("cuda", extra32), causal=causal)
    assert gpu.device.type == "cuda"
    assert_close_to_reference(gpu.cpu(), ref32, ref64, f"{name}/{form} {pattern} on cuda")


@pytest.mark.parametrize("name", [n for n in cases("names") if get(n).step is not None])
def test_incremental_on_cuda_equals_one_shot(name):
    spec = get(name)
    q, k, v, extra = make_inputs(spec, (1, 4, 2, 24, 24, 32), dtype=torch.float32)
    q, k, v, extra = q.cuda(), k.cuda(), v.cuda(), _on("cuda", extra)
    whole = attnkit.attention(q, k, v, name, causal=True, **extra, **spec.test_params)
    state, outs = None, []
    for lo, hi in ((0, 10), (10, 11), (11, 24)):
        piece = {n: (t[:, :, lo:hi] if n in spec.tensor_inputs_per_token else t) for n, t in extra.items()}
        out, state = attnkit.attention(q[:, :, lo:hi], k[:, :, lo:hi], v[:, :, lo:hi], name, causal=True,
                                       state=state, return_state=True, **piece, **spec.test_params)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=2), whole, rtol=1e-4, atol=1e-5)
