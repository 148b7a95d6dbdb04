"""``attnkit.describe`` / ``attnkit info NAME`` for every mechanism; missing inputs and SDPA's names explained."""
from __future__ import annotations

import re

import pytest
import torch

import attnkit
from attnkit.cli import main
from attnkit.mechanism_info import snippet
from attnkit.registry import get

from .harness import CROSS_SIZES, SELF_SIZES, cases, make_inputs


@pytest.mark.parametrize("name", cases("names"))
def test_describe_lists_everything_and_its_example_runs(name):
    spec = get(name)
    text = attnkit.describe(name)
    for paper in spec.papers:
        assert paper in text
    for form in spec.fast:
        assert form in text
    assert f"{spec.default_order[0]}  (default" in text
    for param, declared in spec.params.items():
        assert f"{param} " in text and declared.describe() in text
    for tensor in spec.tensor_names:
        assert f"  {tensor}: " in text, f"tensor input {tensor} is not described"
    scope: dict = {}
    exec(snippet(name), scope)  # noqa: S102 — the printed example must run as printed
    assert isinstance(scope["out"], torch.Tensor) and torch.isfinite(scope["out"]).all()


@pytest.mark.parametrize("name", cases("names"))
def test_every_tensor_input_is_declared(name):
    spec = get(name)
    for tensor in spec.tensor_names:
        assert tensor in spec.inputs or tensor in spec.params, f"{name}: tensor input {tensor} has no declaration"


@pytest.mark.parametrize("name", [n for n in cases("names") if get(n).required_inputs])
def test_a_missing_tensor_input_is_described(name):
    spec = get(name)
    causal = "causal-self" in spec.patterns
    q, k, v, extra = make_inputs(spec, (1, 2, 2, 8, 8, 16), dtype=torch.float32)
    for missing in spec.required_inputs:
        kw = {n: t for n, t in extra.items() if n != missing}
        with pytest.raises(TypeError, match=rf"needs the tensor input.*{missing}: {re.escape(spec.inputs[missing].shape)}"):
            attnkit.attention(q, k, v, name, causal=causal, **kw)


@pytest.mark.parametrize("name", [n for n in cases("names") if get(n).inputs])
def test_declared_input_shapes_fit_the_example_inputs(name):
    """The declared shapes are what the API checks on empty calls: they must hold for real inputs, GQA and
    cross-attention included."""
    spec = get(name)
    sizes = SELF_SIZES + (CROSS_SIZES if any(p.endswith("cross") for p in spec.patterns) else [])
    for size in sizes:
        q, k, v, extra = make_inputs(spec, size)
        dims = {"B": q.shape[0], "H": q.shape[1], "Hkv": k.shape[1], "Nq": q.shape[2], "Nk": k.shape[2],
                "D": q.shape[3], "Dk": k.shape[3], "Dv": v.shape[3]}
        for input_name, tensor in extra.items():
            if input_name in spec.inputs:
                spec.inputs[input_name].check(input_name, tensor, dims)


def _optional_inputs(name):
    spec = get(name)
    return [t for t in spec.tensor_names if t not in spec.required_inputs]


@pytest.mark.parametrize("name", [n for n in cases("names") if _optional_inputs(n)])
def test_an_input_not_declared_required_can_be_left_out(name):
    """What a form cannot run without is a required TensorInput, so that the missing-input error,
    `attnkit info` and these tests come from that one declaration."""
    spec = get(name)
    causal = "causal-self" in spec.patterns
    q, k, v, extra = make_inputs(spec, (1, 2, 2, 8, 8, 16), dtype=torch.float32)
    for optional in _optional_inputs(name):
        kw = {n: t for n, t in extra.items() if n != optional}
        out = attnkit.attention(q, k, v, name, causal=causal, **kw)
        assert out.shape[:3] == q.shape[:3], f"{name} without {optional}"


@pytest.mark.parametrize("sdpa_name, hint", [("is_causal", "causal="), ("attn_mask", "mask="), ("enable_gqa", "fewer heads")])
def test_sdpa_argument_names_get_a_hint(sdpa_name, hint):
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(TypeError, match=hint):
        attnkit.attention(q, q, q, **{sdpa_name: True})


def test_info_command_prints_the_description(capsys):
    assert main(["info", "mamba2"]) == 0
    out = capsys.readouterr().out
    assert "dt: (B, H, N)" in out and "chunk_size" in out and "attnkit.attention(" in out
    assert main(["info", "no_such_mechanism"]) == 2
