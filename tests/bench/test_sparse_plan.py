"""The sparse suite's sweep: every method's parameters run, and the probed sparsity is the policy's."""
from attnkit.bench.suites.sparse import METHODS, QUICK, plan, sparsity


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
