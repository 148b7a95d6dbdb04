"""No tensor is created on the default device: every form and the incremental form of every mechanism
run on CPU inputs with the default device set to ``meta``.

A factory call without ``device=`` (``torch.eye(n)``, ``torch.arange(n)``, ``torch.tensor([...])``)
then makes a meta tensor, and mixing it with the CPU inputs fails. On a GPU the same call would
have made a CPU tensor next to CUDA inputs. Meta inputs themselves are refused by name.
"""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.registry import get

from .harness import cases, make_inputs


def _setup(name):
    spec = get(name)
    pattern = next(p for p in ("causal-self", "noncausal-self", "causal-cross", "noncausal-cross") if p in spec.patterns)
    size = (1, 2, 2, 8, 8 if pattern.endswith("self") else 12, 16)
    return spec, pattern.startswith("causal"), make_inputs(spec, size, dtype=torch.float32)


@pytest.mark.parametrize("name", cases("names"))
def test_no_tensor_is_created_on_the_default_device(name):
    spec, causal, (q, k, v, extra) = _setup(name)
    with torch.device("meta"):
        for form in ("reference", *spec.fast):
            out = attnkit.attention(q, k, v, name, causal=causal, form=form, **extra, **spec.test_params)
            assert out.device == q.device
        if spec.step is not None:
            def piece(t, lo, hi):
                return {n: (x[:, :, lo:hi] if n in spec.tensor_inputs_per_token else x) for n, x in t.items()}
            _, state = attnkit.attention(q[:, :, :5], k[:, :, :5], v[:, :, :5], name, causal=True, return_state=True,
                                         **piece(extra, 0, 5), **spec.test_params)
            out = attnkit.attention(q[:, :, 5:], k[:, :, 5:], v[:, :, 5:], name, causal=True, state=state,
                                    **piece(extra, 5, 8), **spec.test_params)
            assert out.device == q.device


def test_meta_inputs_are_refused_by_name():
    q = torch.empty(1, 2, 4, 8, device="meta")
    with pytest.raises(ValueError, match="q is on the meta device"):
        attnkit.attention(q, q, q)
