"""The sparse suite's sweep: every method's parameters run, and the probed sparsity is the policy's."""
import math

import torch

from attnkit.bench.suites.sparse import METHODS, QUICK, kept, loss, method_loss, model_config, plan, sparsity
from attnkit.models import DecoderLM


def test_every_method_and_phase_is_planned_and_its_parameters_run():
    items, missing = plan(QUICK)
    assert missing == []
    phases = {(it["method"], it["phase"]) for it in items}
    assert ("h2o", "decode") in phases and ("h2o", "prefill+decode") in phases
    assert ("snapkv", "decode") in phases and ("snapkv", "prefill") not in phases
    prompt, n = 24, 32
    for method, (mechanism, make_params, method_phases) in METHODS.items():
        for phase in method_phases:
            rows = slice(prompt, n) if phase == "decode" else slice(0, prompt if phase == "prefill" else n)
            s = sparsity(mechanism, make_params(6, phase, prompt), n, rows)
            assert 0.0 < s < 1.0, (method, phase, s)


def test_decode_sparsity_of_a_budgeted_cache():
    prompt, n, budget = 24, 32, 6
    _, make_params, _ = METHODS["h2o"]
    # decode rows t = 24..31 see budget + 1 keys of their t + 1 causal keys
    expected = 1 - (n - prompt) * (budget + 1) / sum(t + 1 for t in range(prompt, n))
    assert abs(sparsity("h2o", make_params(budget, "decode", prompt), n, slice(prompt, n)) - expected) < 1e-9


def test_every_method_and_phase_gives_a_loss_on_a_model():
    # Every swept (method, phase) runs on a model. Quest's prompt is read with every page kept (dense);
    # a window's masked call equals the windowed model itself when the pattern covers every row.
    torch.manual_seed(0)
    c = dict(QUICK, dim=16, heads=2, layers=2)
    model = DecoderLM(model_config(c, 11, "softmax")).eval()
    prompt, n = 24, 32
    windows = torch.randint(0, 11, (2, n + 1))
    for method, (mechanism, make_params, method_phases) in METHODS.items():
        for phase in method_phases:
            params = make_params(6, phase, prompt)
            value, rows = method_loss(model, c, method, phase, params, windows, prompt)
            assert math.isfinite(value), (method, phase)
            assert rows == (slice(0, prompt) if phase == "prefill" else slice(prompt, n) if phase == "decode"
                            else slice(0, n)), (method, phase)
    dense = loss(model, model, windows, prompt)
    quest_all_pages = METHODS["quest"][1](n, "decode", prompt)
    assert abs(method_loss(model, c, "quest", "decode", quest_all_pages, windows, prompt)[0] - dense) < 1e-5
    windowed = DecoderLM(model_config(c, 11, {"mechanism": "sliding_window", "window": 6})).eval()
    windowed.load_state_dict(model.state_dict())
    with torch.no_grad():
        logits = windowed(windows[:, :-1])
    scored = logits[:, prompt:].flatten(0, 1)
    everywhere = float(torch.nn.functional.cross_entropy(scored, windows[:, prompt + 1:].flatten()))
    prefill_only = method_loss(model, c, "sliding_window", "prefill", {"window": 6}, windows, prompt)[0]
    assert prefill_only != everywhere  # the decode rows read everything in the prefill phase
    with_mask = model(windows[:, :-1], mask=kept("sliding_window", {"window": 6}, n))
    assert torch.allclose(with_mask, logits, atol=1e-5)
