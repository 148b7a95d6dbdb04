"""SeerAttention-R: the fast choice equals the float64 reference's, the gate reads the queries and keys it is
given, GQA groups share one choice, and the distillation target is the paper's block-level attention."""
from __future__ import annotations

import json

import pytest
import torch

import attnkit
from attnkit.builders.estimated_sparse import selection_report
from attnkit.families.seer_decode import (_selection, decode_gate_loss, decode_gate_target, reference_mask,
                                          seer_r_inputs)

NAME = "seer_attention_r"


def _inputs(dtype=torch.float64, N=45, H=4, Hkv=2, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, h, N, D, generator=g, dtype=dtype) for h in (H, Hkv, Hkv))
    return q, k, v, seer_r_inputs(q, k, v, g)


def _kept(q, k, inputs, **params):
    blocks, valid = _selection(q, k, inputs["gate_q"], inputs["gate_k"], inputs["gate_queries"], inputs["gate_keys"],
                               rope_base=10000.0, **params)
    n = -(-k.shape[2] // params["block_size"])
    hit = torch.zeros(*blocks.shape[:3], n + 1, dtype=torch.bool)
    return hit.scatter_(3, torch.where(valid, blocks, n), True)[..., :n]


@pytest.mark.parametrize("params", [dict(block_size=4, top_k=3, threshold=0.0),
                                    dict(block_size=5, top_k=1, threshold=0.0),
                                    dict(block_size=4, top_k=64, threshold=0.1)])
def test_fast_choice_and_output_equal_the_reference(params):
    q, k, v, inputs = _inputs()
    mask = reference_mask(q, k, **inputs, rope_base=10000.0, **params)
    B = params["block_size"]
    kept = _kept(q, k, inputs, **params).repeat_interleave(B, dim=3)[..., : k.shape[2]].repeat_interleave(2, dim=1)
    causal = torch.ones(45, 45, dtype=torch.bool).tril()
    assert torch.equal(kept & causal, mask)
    assert torch.equal(mask[:, 0::2], mask[:, 1::2])  # the two heads of a group read the same keys
    fast = attnkit.attention(q, k, v, NAME, causal=True, **params, **inputs)
    ref = attnkit.attention(q, k, v, NAME, causal=True, form="reference", **params, **inputs)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-12)
    q32, k32 = q.float(), k.float()
    inputs32 = {n: x.float() for n, x in inputs.items()}
    assert torch.equal(_kept(q32, k32, inputs32, **params), _kept(q, k, inputs, **params))


def test_budget_reads_top_k_blocks_and_the_own_block():
    q, k, v, inputs = _inputs(N=64)
    mask = reference_mask(q, k, **inputs, block_size=4, top_k=3, threshold=0.0, rope_base=10000.0)
    reads = mask.sum(-1)[0, 0]
    pos = torch.arange(64)
    assert torch.equal(reads, pos % 4 + 1 + torch.clamp(pos // 4, max=2) * 4)


def test_the_gate_reads_gate_queries_and_keys_not_q_and_k():
    q, k, v, inputs = _inputs()
    params = dict(block_size=4, top_k=3, threshold=0.0)
    before = _kept(q, k, inputs, **params)
    g = torch.Generator().manual_seed(5)
    assert torch.equal(_kept(torch.randn(q.shape, generator=g, dtype=q.dtype),
                             torch.randn(k.shape, generator=g, dtype=k.dtype), inputs, **params), before)
    without = {n: x for n, x in inputs.items() if n in ("gate_q", "gate_k")}
    out = attnkit.attention(q, k, v, NAME, causal=True, **params, **without)
    ref = reference_mask(q, k, **without, **params, rope_base=10000.0)
    assert out.shape == q.shape and ref.any()


def test_target_is_group_max_of_block_max_weight_normalised():
    q, k, v, _ = _inputs(N=24)
    target = decode_gate_target(q, k, block_size=4)
    p = torch.softmax((q @ k.repeat_interleave(2, 1).transpose(-1, -2) / 4).masked_fill(
        torch.ones(24, 24, dtype=torch.bool).triu(1), float("-inf")), -1)
    t = 13
    raw = torch.stack([p[0, :, t, 4 * j:4 * j + 4].amax(-1) for j in range(3)], -1)  # blocks 0..2 before block 3
    raw = raw.view(2, 2, 3).amax(1)
    torch.testing.assert_close(target[0, :, t, :3], raw / raw.sum(-1, keepdim=True))
    assert (target[0, :, t, 3:] == 0).all() and (target[0, :, :4] == 0).all()
    mass = decode_gate_target(q, k, block_size=4, pool="sum")
    torch.testing.assert_close(mass[0, :, 13].sum(-1), torch.ones(2, dtype=torch.float64))


def test_distillation_moves_the_gate_towards_the_target():
    q, k, v, inputs = _inputs(N=48)
    gate_q = inputs["gate_q"].clone().requires_grad_()
    gate_k = inputs["gate_k"].clone().requires_grad_()
    opt = torch.optim.Adam([gate_q, gate_k], lr=0.05)
    losses = []
    for _ in range(30):
        loss = decode_gate_loss(q, k, gate_q, gate_k, block_size=4)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    before = selection_report(NAME, q, k, v, block_size=4, top_k=3, **{**inputs, "gate_queries": q, "gate_keys": k})
    trained = {"gate_q": gate_q.detach(), "gate_k": gate_k.detach(), "gate_queries": q, "gate_keys": k}
    after = selection_report(NAME, q, k, v, block_size=4, top_k=3, **trained)
    assert after["recall"] > before["recall"] and after["density"] == before["density"]


def test_an_odd_gate_width_is_refused():
    q, k, v, inputs = _inputs()
    with pytest.raises(ValueError, match="even gate_dim"):
        attnkit.attention(q, k, v, NAME, causal=True, gate_q=inputs["gate_q"][..., :7], gate_k=inputs["gate_k"][..., :7])


def test_train_seer_r_command_writes_a_gated_checkpoint_the_bench_reads(tmp_path, capsys):
    from attnkit.bench.free_sparse_runs import seer_gates
    from attnkit.cli import main
    from attnkit.data.codecs import ByteCodec
    from attnkit.models import DecoderLM, ModelConfig
    from attnkit.training.lm import TrainConfig, save_checkpoint

    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=256, dim=32, heads=4, kv_heads=2, schedule="F", mixers={"F": "softmax"}))
    path, out = tmp_path / "lm.pt", tmp_path / "gated.pt"
    save_checkpoint(path, model, ByteCodec(), TrainConfig(context=32))
    assert main(["train", "seer-r", "--from", str(path), "--block-size", "4", "--top-k", "2", "--max-steps", "3",
                 "--batch", "2", "--eval-tokens", "256", "--json", "--out", str(out)]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["steps"] == 3 and 0 < metrics["density"] < 1 and 0 < metrics["kept_mass"] <= 1
    gates = seer_gates(out)
    assert len(gates) == 1 and gates[0]["block_size"] == 4 and gates[0]["gate_q"].shape == (2, 16, 8)


def test_gate_quality_is_the_same_measured_a_few_rows_at_a_time():
    from attnkit.models import DecoderLM, ModelConfig
    from attnkit.training.seer import seer_model
    from attnkit.training.seer_decode import decode_gate_quality

    torch.manual_seed(0)
    base = DecoderLM(ModelConfig(vocab_size=256, dim=32, heads=4, kv_heads=2, schedule="F", mixers={"F": "softmax"}))
    model = seer_model(base, mechanism=NAME, block_size=4, top_k=2)
    windows = torch.randint(0, 256, (3, 40), generator=torch.Generator().manual_seed(1))
    whole = decode_gate_quality(model, windows, batch=2, rows_at_once=1000)
    assert decode_gate_quality(model, windows, batch=2, rows_at_once=7) == whole and 0 < whole["kept_mass"] <= 1


def test_capture_records_a_decode_steps_weights_over_the_blocks_it_read():
    q, k, v, inputs = _inputs(N=41)
    params = dict(block_size=4, top_k=3, threshold=0.0)
    per_token = ("gate_queries", "gate_keys")
    prompt = {n: (x[:, :, :40] if n in per_token else x) for n, x in inputs.items()}
    step = {n: (x[:, :, 40:] if n in per_token else x) for n, x in inputs.items()}
    _, state = attnkit.attention(q[:, :, :40], k[:, :, :40], v[:, :, :40], NAME, causal=True, return_state=True,
                                 **params, **prompt)
    with attnkit.capture() as rec:
        out, _ = attnkit.attention(q[:, :, 40:], k[:, :, 40:], v[:, :, 40:], NAME, causal=True, state=state,
                                   return_state=True, **params, **step)
    weights = rec[0].weights  # (1, 4, 1, 41): the new query over every key so far
    read = weights[0, :, 0] > 0
    assert read.sum(-1).tolist() == [4 + 4 + 1] * 4  # two past blocks of 4 keys, and its own block's one key
    assert torch.equal(read, reference_mask(q, k, **inputs, rope_base=10000.0, **params)[0, :, 40])
    torch.testing.assert_close(weights @ v.repeat_interleave(2, dim=1), out, rtol=0, atol=1e-12)
