"""SeerAttention: the gate's block choice as the paper's equations, its distillation, the training command."""
from __future__ import annotations

import json
import math

import pytest
import torch

import attnkit
from attnkit.cli import main
from attnkit.data.codecs import ByteCodec
from attnkit.families.seer import (block_mask, distillation_loss, distillation_target, gate_logits, seer_inputs,
                                   seer_selection)
from attnkit.models import DecoderLM, ModelConfig
from attnkit.training.lm import TrainConfig, save_checkpoint


def _inputs(N=45, H=4, Hkv=2, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, H, N, D, generator=g, dtype=torch.float64)
    k = torch.randn(1, Hkv, N, D, generator=g, dtype=torch.float64)
    v = torch.randn(1, Hkv, N, D, generator=g, dtype=torch.float64)
    return q, k, v, seer_inputs(q, k, v, g)


def _gate_by_loops(q, k, wq, wk, B):
    """S[h, i, j] = Q~_i K~_j / sqrt(d_gate), Q~ = avg-pooled q W_q, K~ = [max; min; avg]-pooled k W_k."""
    H, N = q.shape[1], q.shape[2]
    R = -(-N // B)
    S = torch.empty(H, R, R, dtype=torch.float64)
    for h in range(H):
        kk = k[0, h // (H // k.shape[1])]
        for i in range(R):
            qt = q[0, h, i * B : (i + 1) * B].mean(0) @ wq[h]
            for j in range(R):
                blk = kk[j * B : (j + 1) * B]
                kt = torch.cat([blk.max(0).values, blk.min(0).values, blk.mean(0)]) @ wk[h]
                S[h, i, j] = qt @ kt / math.sqrt(wq.shape[-1])
    return S


def test_gate_and_block_choice_follow_the_equations():
    q, k, _, t = _inputs()
    B, top = 8, 3
    S = _gate_by_loops(q, k, t["gate_q"], t["gate_k"], B)
    R = S.shape[-1]
    causal_S = S.masked_fill(torch.ones(R, R, dtype=torch.bool).triu(1), float("-inf"))
    assert torch.allclose(gate_logits(q, k, t["gate_q"], t["gate_k"], block_size=B, causal=True)[0], causal_S)
    kept = block_mask(q, k, t["gate_q"], t["gate_k"], B, top, 0.0, True)[0]
    for h in range(4):
        for i in range(R):
            past = sorted(range(i), key=lambda j: (-float(S[h, i, j]), j))[: top - 1]
            assert set(kept[h, i].nonzero().flatten().tolist()) == {i, *past}


@pytest.mark.parametrize("causal", [True, False])
def test_both_forms_attend_within_the_kept_blocks(causal):
    q, k, v, t = _inputs()
    B = 8
    kept = block_mask(q, k, t["gate_q"], t["gate_k"], B, 3, 0.0, causal)
    blocks = torch.arange(45) // B
    allowed = kept[:, :, blocks][..., blocks]
    if causal:
        allowed = allowed & torch.ones(45, 45, dtype=torch.bool).tril()
    scores = (q @ k.repeat_interleave(2, 1).transpose(-1, -2)) / math.sqrt(8)
    expected = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v.repeat_interleave(2, 1)
    for form in ("reference", "selected_blocks"):
        out = attnkit.attention(q, k, v, "seer_attention", causal=causal, form=form, block_size=B, top_k=3, **t)
        assert (out - expected).abs().max() < 1e-12, form


def test_threshold_keeps_the_blocks_whose_score_reaches_it():
    q, k, _, t = _inputs(seed=1)
    logits = gate_logits(q, k, t["gate_q"], t["gate_k"], block_size=8, causal=True)
    kept = block_mask(q, k, t["gate_q"], t["gate_k"], 8, 1, 0.2, True)
    R = logits.shape[-1]
    assert torch.equal(kept, ((logits.softmax(-1) >= 0.2) | torch.eye(R, dtype=torch.bool)) & (logits > -math.inf))
    sel = seer_selection(q, k, block_size=8, top_k=1, threshold=0.2, **t)
    assert torch.equal(sel.element_mask(4, causal=True),
                       kept[:, :, torch.arange(45) // 8][..., torch.arange(45) // 8] & torch.ones(45, 45).tril().bool())


def test_float32_and_float64_keep_the_same_blocks_without_near_ties():
    q, k, _, t = _inputs(N=160, seed=2)
    logits = gate_logits(q, k, t["gate_q"], t["gate_k"], block_size=8, causal=True)
    gaps = logits.sort(dim=-1).values.diff(dim=-1)
    assert gaps[gaps.isfinite()].min() > 1e-6  # no near-ties within a row in this draw
    a = block_mask(q, k, t["gate_q"], t["gate_k"], 8, 4, 0.0, True)
    b = block_mask(q.float(), k.float(), t["gate_q"].float(), t["gate_k"].float(), 8, 4, 0.0, True)
    assert torch.equal(a, b)


def test_distillation_targets_pool_the_dense_attention_map():
    q, k, _, _ = _inputs(N=20, seed=3)
    p = (q @ k.repeat_interleave(2, 1).transpose(-1, -2) / math.sqrt(8)).masked_fill(
        torch.ones(20, 20, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
    tiles = torch.nn.functional.pad(p, (0, 4, 0, 4), value=float("nan")).reshape(1, 4, 3, 8, 3, 8)
    mass = tiles.nansum(5).nanmean(3)
    peak = tiles.nan_to_num(float("-inf")).amax((3, 5))
    for pool, expected in (("sum", mass), ("max", peak / peak.sum(-1, keepdim=True))):
        got = distillation_target(q, k, block_size=8, pool=pool, chunk=8)
        assert torch.allclose(got, expected / expected.sum(-1, keepdim=True)) and torch.allclose(got.sum(-1), torch.ones(1, dtype=got.dtype))


def test_distillation_trains_the_gate_towards_the_attention_mass():
    q, k, _, t = _inputs(N=48, seed=4)
    q = q * 3  # peaked attention: something to learn
    wq, wk = (t[n].clone().requires_grad_(True) for n in ("gate_q", "gate_k"))
    opt = torch.optim.Adam([wq, wk], lr=5e-2)
    target = distillation_target(q, k, block_size=8, pool="sum")
    kept_mass = lambda: float((target * block_mask(q, k, wq, wk, 8, 3, 0.0, True)).sum(-1).mean())  # noqa: E731
    first, mass_before = None, kept_mass()
    for _ in range(25):
        loss = distillation_loss(q, k, wq, wk, block_size=8, pool="sum")
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first and kept_mass() > mass_before + 0.05


def test_train_seer_command_distils_gates_into_a_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=256, dim=16, heads=2, schedule="F", mixers={"F": "softmax"}))
    path = tmp_path / "lm.pt"
    save_checkpoint(path, model, ByteCodec(), TrainConfig(context=32))
    assert main(["train", "seer", "--from", str(path), "--block-size", "8", "--top-k", "2", "--max-steps", "3",
                 "--batch", "2", "--eval-tokens", "256", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["steps"] == 3 and metrics["context"] == 32 and 0 < metrics["density"] < 1
    assert 0 < metrics["kept_mass"] <= 1 and metrics["perplexity"] > 1


def test_bad_gates_are_refused():
    q, k, v, t = _inputs(N=16)
    with pytest.raises(ValueError, match="gate_k"):
        attnkit.attention(q, k, v, "seer_attention", causal=True, gate_q=t["gate_q"], gate_k=t["gate_k"][:, :8])
    with pytest.raises(ValueError, match="gate_q"):
        attnkit.attention(q, k, v, "seer_attention", causal=True, gate_q=t["gate_q"][:2], gate_k=t["gate_k"])


def test_distillation_targets_are_the_layers_own_attention_after_rope():
    from attnkit.training.seer import after_rope, capture_gates, distill_gates, gated_layers, seer_model

    torch.manual_seed(0)
    base = DecoderLM(ModelConfig(vocab_size=256, dim=16, heads=2, schedule="F", mixers={"F": "softmax"}))
    assert base.config.rope  # the gate's input module sees q and k before the layer's RoPE
    gated = seer_model(base, block_size=8, top_k=4)
    x = torch.randint(0, 256, (1, 32))
    with attnkit.capture(base) as rec, torch.no_grad():
        base(x)
    mass = rec[0].weights.reshape(1, 2, 4, 8, 4, 8).sum(5).mean(3)
    seen = []
    handles = capture_gates(gated_layers(gated), lambda layer, q, k, gates: seen.append((layer, q, k, gates)))
    try:
        with torch.no_grad():
            gated(x)
    finally:
        for handle in handles:
            handle.remove()
    layer, q, k, gates = seen[0]
    qr, kr = after_rope(layer, q, k)
    assert torch.allclose(distillation_target(qr, kr, block_size=8, pool="sum"), mass / mass.sum(-1, keepdim=True), atol=1e-6)
    # and the training loop fits the gates to that target
    expected = distillation_loss(qr, kr, gates["gate_q"], gates["gate_k"], block_size=8, pool="sum")
    ids = torch.cat([x[0], x[0, :2]])  # one possible window: the batch the loop samples is x
    got = distill_gates(gated, ids, context=32, batch=1, lr=1e-9, max_steps=1, minutes=None, pool="sum")
    assert got["losses"][0] == pytest.approx(expected.item(), rel=1e-5)
