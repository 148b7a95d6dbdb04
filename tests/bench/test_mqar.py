"""The MQAR suite's model, training loop, plan and ordering checks (small and fast)."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnkit import spec
from attnkit.bench.suites import build_parser, mqar as suite
from attnkit.cli import main
from attnkit.bench._mqar_data import mqar
from attnkit.bench._mqar_model import MQARModel, train
from attnkit.bench._mqar_budget import figure_total, measure_budget
from attnkit.bench._mqar_figure import over_seeds
from attnkit.bench._mqar_points import PointsFile


def test_model_is_causal_and_uses_the_mechanisms_layer():
    torch.manual_seed(0)
    model = MQARModel("gated_deltanet", {}, vocab=16, d_model=16, seq_len=12, qkv_conv=True, gated_norm=True)
    assert type(model.mixers[1].inputs).__name__ == "GatedDeltaNetGates"
    x = torch.randint(0, 16, (2, 12))
    y = x.clone()
    y[:, 7:] = (y[:, 7:] + 1) % 16
    a, b = model(x), model(y)
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-6) and not torch.allclose(a[:, 7:], b[:, 7:])


def test_the_mamba_2_role_has_its_blocks_convolutions_and_gates_before_the_norm():
    from attnkit import attention
    from attnkit.bench._mqar_figure import FIGURE_ROLES
    from attnkit.bench._mqar_model import Mixer

    torch.manual_seed(0)
    mixer = Mixer("mamba2", {}, d_model=16, heads=1, qk_dim=16, seq_len=12, **FIGURE_ROLES["mamba-2"]["layer"])
    x = torch.randn(2, 12, 16)
    seen = {}
    mixer.out.register_forward_hook(lambda module, inputs, output: seen.setdefault("o", inputs[0]))
    mixer(x)
    q, k, v = (F.silu(conv(t)) for conv, t in zip(mixer.convs, (mixer.q(x), mixer.k(x), mixer.v(x))))
    q, k, v = (t.view(2, 12, 1, 16).transpose(1, 2) for t in (q, k, v))
    o = attention(q, k, v, "mamba2", causal=True, **mixer.inputs(x, q, k, v)).transpose(1, 2)
    gate = F.silu(mixer.gate(x)).view(2, 12, 1, 16)
    assert torch.allclose(seen["o"], F.rms_norm(o * gate, (16,)).reshape(2, 12, 16), atol=1e-5)
    assert not torch.allclose(seen["o"], (F.rms_norm(o, (16,)) * gate).reshape(2, 12, 16), atol=1e-3)
    with pytest.raises(ValueError, match="gate_before_norm: .* needs gated_norm=True"):
        Mixer("mamba2", {}, d_model=16, heads=1, qk_dim=16, seq_len=12, gate_before_norm=True)


def test_attention_learns_a_toy_recall_task_well_above_chance():
    L, K, V = 16, 2, 16
    torch.manual_seed(0)
    model = MQARModel("softmax", {}, V, d_model=32, seq_len=L)
    out = train(model, mqar(2000, L, K, V, seed=0), mqar(200, L, K, V, seed=1), lr=1e-2, epochs=6, batch=32,
                stop_at=0.6)
    assert out["accuracy"] > 4 / (V // 2)  # chance is 1 / (V / 2) over the value half
    assert out["status"] in ("solved", "epochs") and len(out["history"]) == out["epochs"]
    assert 0 < out["cpu_seconds"] and 0 < out["seconds"]


class _NaNModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, tokens):
        return torch.full((*tokens.shape, 8), float("nan")) * self.w


def test_a_non_finite_loss_ends_training_with_the_status_diverged():
    data = mqar(40, 8, 2, 8, seed=0)
    out = train(_NaNModel(), data, data, lr=1e-3, epochs=5, batch=8)
    assert out["status"] == "diverged" and out["epochs"] == 1 and out["accuracy"] == 0.0


def test_state_sizes_count_the_window_and_the_value_dimension():
    # Based with 16-dim q/k and 64-dim values: 153 Taylor features x (64 values + the normaliser)
    assert suite.state_size("based", {}, 64, 64, 1, 16) == 153 * 65
    assert suite.state_size("softmax", {}, 64, 64, 1, 16) == 64 * (16 + 64)
    assert suite.state_size("sliding_window", {"window": 8}, 64, 64, 1, None) == 8 * 2 * 64
    assert spec("sliding_window").state_size(1, 1, 1, 4, 64, window=8) == 4 * 2 * 64
    assert suite.state_size("gated_deltanet", {}, 64, 64, 1, 32) == 32 * 64


def test_the_nsa_role_counts_the_branch_keys_and_values_its_layer_caches():
    nsa = next(e for e in suite.resolve_roles() if e["mechanism"] == "nsa")
    d, L = 32, 64
    model = suite.build_model(nsa, d, L, suite.QUICK)
    shared = suite.state_size("nsa", nsa["params"], L, d, 1, nsa["qk_dim"])
    held = suite.state_size("nsa", nsa["params"], L, d, 1, nsa["qk_dim"], model.mixers[-1].tensor_inputs(L))
    assert shared == L * 2 * d and held == 3 * shared  # k, v and the compression and window branches' own


def test_the_mamba_1_role_gives_the_scan_a_state_of_d_state_per_channel():
    role = suite.resolve_roles(suite.FIGURE_ROLES)
    mamba = next(e for e in role if e["mechanism"] == "mamba")
    d, L = 32, 12
    model = MQARModel("mamba", {"form": mamba["form"]}, vocab=16, d_model=d, seq_len=L, qk_dim=mamba["qk_dim"])
    inputs = model.mixers[1].inputs
    assert inputs.A_log.shape == (1, d, 16) and inputs.D.shape == (1, d)  # d channels, 16 states each
    assert suite.state_size("mamba", mamba["params"], L, d, 1, mamba["qk_dim"]) == 16 * d
    assert model(torch.randint(0, 16, (2, L))).shape == (2, L, 16)
    with pytest.raises(ValueError, match="v_dim"):  # an input module that assumes v_dim == head_dim says so
        MQARModel("gla", {}, vocab=16, d_model=d, seq_len=L, qk_dim=16)


def _args(*argv):
    return build_parser("mqar").parse_args(list(argv))


def test_plan_sweeps_each_roles_own_learning_rates():
    config, entries = suite.configure(_args("--roles", "attention,based"))
    config["lrs"] = {"*": [1e-3], "based": [1e-3, 3e-3]}
    items = suite.plan(config, entries)
    assert [(it["role"], it["lr"]) for it in items] == [("attention", 1e-3), ("based", 1e-3), ("based", 3e-3)]
    config, _ = suite.configure(_args("--roles", "based", "--lrs", "0.01,0.02"))
    assert suite.lrs_for(config, "based") == [0.01, 0.02]


@pytest.mark.parametrize("bad, match", [(["--roles", "attention,nope"], "unknown role 'nope'"),
                                        (["--lrs", "0,1e-3"], "positive number"),
                                        (["--jobs", "0"], "positive integer"),
                                        (["--mechanisms", "softmaxx"], "softmax"),
                                        (["--widths", "64"], "--widths chooses the figure's model widths"),
                                        (["--figure", "--widths", "64,100"], "--widths: 100 not among the figure's "
                                                                             "widths 64,128,256")])
def test_bad_configuration_is_refused_up_front(bad, match, capsys):
    """One line on stderr, exit code 2, nothing measured."""
    assert main(["bench", "mqar", *bad, "--db", "/nonexistent/never-created.sqlite"]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1


def _row(role, acc):
    return {"role": role, "mechanism": role, "L": 64, "K": 16, "d": 64, "accuracy": acc}


def test_ordering_checks_pass_fail_and_not_run():
    published = [_row("attention", 0.99), _row("linear (elu+1)", 0.5), _row("based", 0.7),
                 _row("sliding window", 0.3), _row("gated delta rule", 0.95)]
    assert [v for _, v in suite.ordering_checks(published)] == ["PASS"] * 5
    reversed_ = [_row("attention", 0.9), _row("linear (elu+1)", 0.8), _row("based", 0.85),
                 _row("sliding window", 0.85), _row("gated delta rule", 0.7)]
    assert [v for _, v in suite.ordering_checks(reversed_)] == ["FAIL"] * 5
    only_attention = suite.ordering_checks([_row("attention", 0.99)])
    assert only_attention[0][1] == "PASS" and all(v.startswith("n/a") for _, v in only_attention[1:])


def test_best_of_the_sweep_is_kept_per_setting():
    rows = [{**_row("based", 0.2), "lr": 1e-3}, {**_row("based", 0.6), "lr": 3e-3}, {**_row("based", 0.4), "lr": 1e-2}]
    (best,) = suite.best_per_setting(rows)
    assert best["lr"] == 3e-3


def test_content_sparse_roles_train_their_layers_with_the_roles_form(monkeypatch):
    config, entries = suite.configure(_args("--roles", "nsa,moba"))
    by_role = {e["role"]: e for e in entries}
    assert by_role["nsa"]["params"]["select_block"] == 8 and by_role["moba"]["params"] == {"block_size": 8, "top_k": 3}
    seen = []
    import attnkit.bench._mqar_model as model_module
    real = model_module.attention
    monkeypatch.setattr(model_module, "attention", lambda *a, **kw: seen.append(kw.get("form")) or real(*a, **kw))
    config.update(vocab=16, train_examples=64, test_examples=16, epochs=1, batch=32)
    for role in ("nsa", "moba"):
        out = suite.measure_item({"role": role, "mechanism": role, "L": 16, "K": 2, "d": 16, "lr": 1e-2}, config,
                                 by_role)
        assert 0 <= out["accuracy"] <= 1
    assert seen and set(seen) == {"reference"}


def test_figure_plans_widths_and_seeds_and_averages_the_best_of_each_seed():
    config, entries = suite.configure(_args("--figure", "--roles", "attention,rwkv-7,hyena"))
    items = suite.plan(config, entries)
    assert {it["d"] for it in items} == {64, 128, 256} and {it["seed"] for it in items} == {0, 1, 2}
    assert {e["mechanism"] for e in entries} == {"softmax", "rwkv7", "hyena"}
    rows = [{**_row("based", acc), "lr": lr, "seed": seed, "state_size": 10}
            for seed, acc, lr in [(0, 0.5, 1e-3), (0, 0.7, 1e-2), (1, 0.8, 1e-3), (2, 0.9, 1e-3)]]
    (point,) = over_seeds(suite.best_per_setting(rows))
    assert point["seeds"] == 3 and point["accuracy"] == pytest.approx(0.8)
    assert point["ci95"] == pytest.approx(4.303 * 0.1 / 3 ** 0.5, abs=1e-4)


def _tiny_figure(monkeypatch):
    tiny = dict(suite.FIGURE, d_model=[8, 16], settings=[[16, 2], [32, 4]], seeds=[0, 1], lrs={"*": [1e-3, 1e-2]})
    monkeypatch.setattr(suite, "FIGURE", tiny)
    measured = []

    def fake(item, config, entries, device="cpu"):  # attention does best at 1e-2, based at 1e-3
        measured.append(item)
        good = 1e-2 if item["role"] == "attention" else 1e-3
        return {"accuracy": 0.9 if item["lr"] == good else 0.1, "state_size": 1, "epochs": 1, "seconds": 0.0}

    monkeypatch.setattr(suite, "measure_item", fake)
    return measured


def test_figure_chooses_one_learning_rate_per_role_first_then_runs_seed_by_seed(monkeypatch, tmp_path):
    measured = _tiny_figure(monkeypatch)
    points = tmp_path / "points.jsonl"
    argv = ["bench", "mqar", "--figure", "--roles", "attention,based", "--jobs", "1", "--db", str(tmp_path / "m.db"),
            "--points", str(points)]
    assert main(argv) == 0
    sweep, figure = measured[:4], measured[4:]
    assert {(it["d"], it["L"], it["seed"]) for it in sweep} == {(8, 16, 0)} and len(sweep) == 4
    assert {(it["role"], it["lr"]) for it in figure} == {("attention", 1e-2), ("based", 1e-3)}
    # the sweep's trainings at the chosen rates are the figure's (d=8, L=16, seed 0) points: not run twice
    assert len(figure) == 2 * 2 * 2 * 2 - 2
    # cheapest first: width, then (L, K), then seed; every seed of a point before the next point
    assert [(it["d"], it["L"], it["seed"]) for it in figure] == [
        (8, 16, 1), (8, 16, 1), (8, 32, 0), (8, 32, 0), (8, 32, 1), (8, 32, 1),
        (16, 16, 0), (16, 16, 0), (16, 16, 1), (16, 16, 1), (16, 32, 0), (16, 32, 0), (16, 32, 1), (16, 32, 1)]
    assert len(points.read_text().splitlines()) == 4 + 14
    measured.clear()
    assert main(argv) == 0 and measured == []  # every point is in the file: nothing runs again


def test_figure_widths_run_some_widths_with_the_rates_chosen_at_the_first(monkeypatch, tmp_path):
    measured = _tiny_figure(monkeypatch)
    argv = ["bench", "mqar", "--figure", "--roles", "attention,based", "--jobs", "1", "--db", str(tmp_path / "m.db"),
            "--points", str(tmp_path / "points.jsonl"), "--widths", "16"]
    assert main(argv) == 0
    sweep, figure = measured[:4], measured[4:]
    assert {(it["d"], it["L"], it["seed"]) for it in sweep} == {(8, 16, 0)}
    assert {it["d"] for it in figure} == {16} and len(figure) == 2 * 2 * 2
    assert {(it["role"], it["lr"]) for it in figure} == {("attention", 1e-2), ("based", 1e-3)}


def test_figure_points_accumulate_across_runs_and_databases(monkeypatch, tmp_path, capsys):
    """A second machine (another database) with the points file continues where the first stopped,
    and the summary lists what is still missing."""
    measured = _tiny_figure(monkeypatch)
    points = tmp_path / "points.jsonl"
    argv = ["bench", "mqar", "--figure", "--roles", "attention,based", "--jobs", "1", "--points", str(points)]
    assert main([*argv, "--db", str(tmp_path / "a.db")]) == 0
    lines = points.read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["item"]["seed"] == 0]
    points.write_text("\n".join(kept) + "\n")  # as if the first run had stopped after seed 0
    measured.clear()
    assert main([*argv, "--db", str(tmp_path / "b.db"), "--roles", "attention"]) == 0
    assert {(it["role"], it["seed"]) for it in measured} == {("attention", 1)} and len(measured) == 4
    out = capsys.readouterr().out
    assert "4 lines of other setups or roles left aside" not in out  # --roles attention: based's lines are aside
    assert "left aside" in out
    line = json.loads(points.read_text().splitlines()[-1])
    assert line["commit"] and line["machine"]["cpu"] and line["setup"]["epochs"] == suite.FIGURE["epochs"]
    monkeypatch.setattr(suite, "measure_item", lambda item, config, entries, device="cpu": {"error": "boom"})
    assert main([*argv, "--db", str(tmp_path / "c.db")]) == 0
    out = capsys.readouterr().out
    assert "seed 1 L=16 K=2 d=8: based" in out and "Not finished yet (4 points" in out
    assert "boom" not in points.read_text()  # a training that raised is not a point


def test_figure_points_of_another_setup_are_left_aside_and_a_damaged_file_is_refused(tmp_path):
    config, entries = suite.configure(_args("--figure", "--roles", "attention"))
    by_role = {e["role"]: e for e in entries}
    points = PointsFile(tmp_path / "p.jsonl")
    item = {"role": "attention", "mechanism": "softmax", "L": 64, "K": 16, "d": 64, "seed": 0, "lr": 1e-3}
    points.append(item, {"accuracy": 0.5, "seconds": 1.0}, config, by_role["attention"], {"cpu": "x"}, "abc")
    points.append(item, {"accuracy": 0.7, "seconds": 1.0}, {**config, "epochs": 99}, by_role["attention"], {}, "abc")
    rows, aside = points.points(config, by_role)
    assert [r["accuracy"] for r in rows] == [0.5] and aside == 1
    (tmp_path / "bad.jsonl").write_text('{"item": {}}\n')
    with pytest.raises(ValueError, match="bad.jsonl line 1 is not a figure point"):
        PointsFile(tmp_path / "bad.jsonl").points(config, by_role)


def test_a_seeded_item_trains_from_its_own_seed():
    config, entries = suite.configure(_args("--figure", "--roles", "attention"))
    config.update(vocab=16, train_examples=64, test_examples=16, epochs=1, batch=32)
    by_role = {e["role"]: e for e in entries}
    item = {"role": "attention", "mechanism": "softmax", "L": 16, "K": 2, "d": 16, "lr": 1e-2}
    a, b = (suite.measure_item({**item, "seed": s}, config, by_role) for s in (0, 1))
    assert 0 <= a["accuracy"] <= 1 and a["history"] != b["history"]


def test_budget_times_every_role_width_and_setting_and_totals_the_figure():
    config, entries = suite.configure(_args("--figure", "--budget", "--roles", "attention,based"))
    config.update(vocab=16, d_model=[8, 16], settings=[[16, 2]], seeds=[0, 1, 2], train_examples=64,
                  test_examples=16, batch=32, epochs=3)
    seen = []
    rows = measure_budget(entries, lambda e, d, L: suite.build_model(e, d, L, config), config, steps=1,
                          report=seen.append)
    assert [(r["d"], r["role"]) for r in rows] == [(8, "attention"), (8, "based"), (16, "attention"), (16, "based")]
    assert seen == rows and all(r["step_s"] > 0 and r["gemm_gflops"] > 0 for r in rows)
    r = rows[0]
    assert r["training_s"] == pytest.approx(3 * (2 * r["step_s"] + r["eval_s"]), rel=0.01, abs=0.1)
    total = figure_total(rows, config, sweep_lrs=3)
    first = rows[0]["training_s"] + rows[1]["training_s"]
    assert total["sweep_s"] == pytest.approx(2 * first)  # its training at the chosen rate is seed 0's point
    assert total["total_s"] == pytest.approx(3 * sum(r["training_s"] for r in rows) + 2 * first)


def test_budget_without_the_figure_is_refused(capsys):
    assert main(["bench", "mqar", "--budget", "--db", "/nonexistent/never-created.sqlite"]) == 2
    assert "--budget times the figure's points: give it with --figure" in capsys.readouterr().err


def test_figure_summary_trains_nothing_and_waits_for_a_whole_sweep(monkeypatch, tmp_path, capsys):
    measured = _tiny_figure(monkeypatch)
    points = tmp_path / "points.jsonl"
    argv = ["bench", "mqar", "--figure", "--roles", "attention,based", "--jobs", "1", "--points", str(points),
            "--db", str(tmp_path / "m.db")]
    assert main([*argv, "--summary"]) == 0 and measured == []
    assert "sweep not finished, so no figure points yet: attention, based" in capsys.readouterr().out
    assert main(argv) == 0
    lines = points.read_text().splitlines()
    # drop based's sweep point at lr 1e-2: based's sweep is incomplete, so based gets no rate
    kept = [line for line in lines if not (json.loads(line)["item"]["role"] == "based"
                                           and json.loads(line)["item"]["lr"] == 1e-2
                                           and json.loads(line)["item"]["d"] == 8
                                           and json.loads(line)["item"]["L"] == 16
                                           and json.loads(line)["item"]["seed"] == 0)]
    points.write_text("\n".join(kept) + "\n")
    capsys.readouterr()
    measured.clear()
    assert main([*argv, "--summary"]) == 0 and measured == []
    out = capsys.readouterr().out
    assert "learning rates attention 0.01" in out and "no figure points yet: based" in out
    table = out[out.index("Zoology figure"):out.index("The published ordering")]
    assert "attention" in table and "based" not in table  # a role still in its sweep has no figure point
    assert "seed 0 L=16 K=2 d=8: based" in out  # listed as missing, not silently omitted
