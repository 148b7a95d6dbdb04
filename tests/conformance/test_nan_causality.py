"""A NaN stays causal: a NaN in token t of q, k or v leaves every earlier output finite, in every causal
form, wherever the float64 reference keeps them finite (in softmax attention a NaN value reaches the
past through P @ V, 0 * NaN, in the reference too). A NaN key that a mask blocks reaches no output.

Kernels that add a -inf mask to the scores would break both (NaN + -inf = NaN): they write -inf when
a key is not finite."""
from __future__ import annotations

import pytest
import torch

from attnkit.registry import get

from .harness import cases, make_inputs, run
from .test_causality_and_incremental import CAUSAL_SIZE, _causal_cases

def _finite_before(spec, form, which, t):
    q, k, v, extra = make_inputs(spec, CAUSAL_SIZE, seed=3)
    inputs = {"q": q, "k": k, "v": v}
    inputs[which] = inputs[which].clone()
    inputs[which][:, :, t] = float("nan")
    out = run(spec, form, inputs["q"], inputs["k"], inputs["v"], extra, causal=True)
    return bool(torch.isfinite(out[:, :, :t]).all())


@pytest.mark.parametrize("which", ["q", "k", "v"])
@pytest.mark.parametrize("name,form,pattern", [c for c in _causal_cases() if c[1] != "reference"])
def test_a_nan_in_a_token_leaves_earlier_outputs_finite(name, form, pattern, which):
    spec, t = get(name), 20
    if not _finite_before(spec, "reference", which, t):
        pytest.skip(f"the reference of {name} itself carries a NaN {which} into the past")
    assert _finite_before(spec, form, which, t), f"{name}/{form}: a NaN {which} at token {t} reached earlier outputs"


def _masked_key_cases():
    out = []
    for name in cases("names"):
        spec = get(name)
        pattern = next((p for p in ("causal-cross", "noncausal-self", "causal-self") if p in spec.patterns), None)
        if spec.supports_mask and pattern is not None:
            out.extend((name, form, pattern) for form in spec.fast)
    return out


@pytest.mark.parametrize("name,form,pattern", _masked_key_cases())
def test_a_nan_key_blocked_by_a_mask_reaches_no_output(name, form, pattern):
    """Key padding whose padded keys hold NaN (garbage in a padded batch): every output stays finite."""
    spec = get(name)
    size = (1, 4, 2, 9, 37, 16) if pattern == "causal-cross" else CAUSAL_SIZE
    q, k, v, extra = make_inputs(spec, size, seed=5)
    k = k.clone()
    k[:, :, -4:] = float("nan")
    mask = torch.ones(size[3], size[4], dtype=torch.bool)
    mask[:, -4:] = False
    causal = pattern.startswith("causal")
    if form != "reference" and not torch.isfinite(run(spec, "reference", q, k, v, extra, causal=causal, mask=mask)).all():
        pytest.skip(f"the reference of {name} itself carries a blocked NaN key into the output (a key used as a value)")
    out = run(spec, form, q, k, v, extra, causal=causal, mask=mask)
    assert torch.isfinite(out).all(), f"{name}/{form}: a NaN key blocked by the mask reached the output"
