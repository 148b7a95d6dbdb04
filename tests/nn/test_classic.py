"""Classic seq2seq attention layers against float64 references written per position from the papers."""
from __future__ import annotations

import math

import pytest
import torch

from attnkit.families.luong import local_p_weights
from attnkit.nn import (BiDAFAttention, LocationSensitiveAttention, LuongAttention, PointerAttention,
                        ShowAttendTellAttention, doubly_stochastic_penalty, reinforce_loss)

D64 = torch.float64


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [x / sum(e) for x in e]


@pytest.mark.parametrize("score", ["dot", "general", "concat"])
@pytest.mark.parametrize("local", [None, "monotonic", "predictive"])
@torch.no_grad()
def test_luong_attention_matches_the_equations(score, local):
    torch.manual_seed(0)
    layer = LuongAttention(6, score=score, local=local, window=2, attn_dim=5).double()
    tgt, src = torch.randn(1, 4, 6, dtype=D64), torch.randn(1, 7, 6, dtype=D64)
    h, w = layer(tgt, src)
    for t in range(4):
        ht = tgt[0, t]
        def score_of(hs):
            if score == "dot":
                return float(ht @ hs)
            if score == "general":
                return float(ht @ layer.w_a.weight @ hs)
            return float(layer.v_a @ torch.tanh(layer.w_q.weight @ ht + layer.w_k.weight @ hs))
        if local == "predictive":
            p = 7 * torch.sigmoid(layer.v_p @ torch.tanh(layer.w_p.weight @ ht)).item()
            window = [s for s in range(7) if math.floor(p) - 2 <= s <= math.floor(p) + 2]
        elif local == "monotonic":
            window = [s for s in range(7) if abs(s - t) <= 2]
        else:
            window = list(range(7))
        a = dict(zip(window, _softmax([score_of(src[0, s]) for s in window])))
        if local == "predictive":
            a = {s: x * math.exp(-(s - p) ** 2 / (2 * 1.0 ** 2)) for s, x in a.items()}
        expect = torch.tensor([a.get(s, 0.0) for s in range(7)], dtype=D64)
        torch.testing.assert_close(w[0, t], expect, rtol=1e-12, atol=1e-12)
        c = sum(a[s] * src[0, s] for s in window)
        torch.testing.assert_close(h[0, t], torch.tanh(layer.w_c.weight @ torch.cat([c, ht])), rtol=1e-12, atol=1e-12)


def test_luong_masked_source_rows_are_zero_and_bad_arguments_are_refused():
    layer = LuongAttention(4, score="dot")
    _, w = layer(torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.tensor([[True] * 5, [False] * 5]))
    assert torch.isfinite(w).all() and (w[1] == 0).all() and torch.allclose(w[0].sum(-1), torch.ones(3))
    with pytest.raises(ValueError, match="score"):
        LuongAttention(4, score="cosine")
    with pytest.raises(ValueError, match="source_mask"):
        layer(torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="centre"):
        local_p_weights(torch.randn(2, 3, 5), torch.rand(2, 4), 2)


@pytest.mark.parametrize("smoothing", [False, True])
@torch.no_grad()
def test_location_sensitive_attention_matches_the_equations(smoothing):
    torch.manual_seed(1)
    layer = LocationSensitiveAttention(5, 4, 6, filters=3, kernel_size=3, sharpening=2.0, smoothing=smoothing).double()
    s, h = torch.randn(1, 5, dtype=D64), torch.randn(1, 6, 4, dtype=D64)
    prev = torch.softmax(torch.randn(1, 6, dtype=D64), -1)
    g, a = layer(s, h, prev)
    F = layer.conv.weight[:, 0]  # (filters, 3)
    padded = [0.0] + prev[0].tolist() + [0.0]
    e = []
    for j in range(6):
        f = torch.stack([sum(F[k, r] * padded[j + r] for r in range(3)) for k in range(3)])
        e.append(float(layer.w @ torch.tanh(layer.W.weight @ s[0] + layer.V.weight @ h[0, j] + layer.U.weight @ f + layer.b)))
    if smoothing:
        sig = [1 / (1 + math.exp(-x)) for x in e]
        expect = [x / sum(sig) for x in sig]
    else:
        expect = _softmax([2.0 * x for x in e])
    torch.testing.assert_close(a[0], torch.tensor(expect, dtype=D64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g[0], sum(expect[j] * h[0, j] for j in range(6)), rtol=1e-12, atol=1e-12)


@torch.no_grad()
def test_pointer_attention_matches_the_equations_and_masks_chosen_positions():
    torch.manual_seed(2)
    layer = PointerAttention(5, 3, 4).double()
    d, e = torch.randn(1, 2, 5, dtype=D64), torch.randn(1, 6, 3, dtype=D64)
    mask = torch.tensor([[[True] * 6, [False, True, True, False, True, True]]])
    logp = layer(d, e, mask)
    for i in range(2):
        allowed = [j for j in range(6) if mask[0, i, j]]
        u = [float(layer.v @ torch.tanh(layer.W1.weight @ e[0, j] + layer.W2.weight @ d[0, i])) for j in allowed]
        expect = dict(zip(allowed, _softmax(u)))
        got = logp[0, i].exp()
        torch.testing.assert_close(got, torch.tensor([expect.get(j, 0.0) for j in range(6)], dtype=D64),
                                   rtol=1e-12, atol=1e-12)
    none = layer(d, e, torch.zeros(1, 2, 6, dtype=torch.bool))
    assert not none.isnan().any() and (none.exp() == 0).all()


@torch.no_grad()
def test_show_attend_tell_soft_matches_the_equations_and_hard_samples_a_location():
    torch.manual_seed(3)
    soft = ShowAttendTellAttention(4, 3, 5).double()
    a, h = torch.randn(2, 6, 4, dtype=D64), torch.randn(2, 3, dtype=D64)
    z, alpha, sample, _ = soft(a, h)
    assert sample is None
    for b in range(2):
        e = [float(soft.v @ torch.tanh(soft.W_a.weight @ a[b, i] + soft.W_h.weight @ h[b] + soft.W_h.bias)) for i in range(6)]
        al = _softmax(e)
        beta = torch.sigmoid(soft.f_beta.weight @ h[b] + soft.f_beta.bias)
        torch.testing.assert_close(alpha[b], torch.tensor(al, dtype=D64), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(z[b], beta * sum(al[i] * a[b, i] for i in range(6)), rtol=1e-12, atol=1e-12)
    hard = ShowAttendTellAttention(4, 3, 5, hard=True).double()
    z, alpha, sample, log_prob = hard(a, h, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z, a[torch.arange(2), sample])
    torch.testing.assert_close(log_prob, alpha[torch.arange(2), sample].log())
    alphas = torch.softmax(torch.randn(2, 5, 6, dtype=D64), -1)
    torch.testing.assert_close(doubly_stochastic_penalty(alphas), ((1 - alphas.sum(1)) ** 2).sum(-1))


def test_reinforce_loss_is_an_unbiased_gradient_of_the_expected_log_likelihood():
    """One step of hard attention over 3 locations whose log p(y | s) is known: the mean gradient of the
    loss over many samples approaches minus the exact gradient of E_s[log p(y | s)] (eq. 12, lambda_r = 1)."""
    logits = torch.tensor([0.3, -0.2, 0.5], dtype=D64, requires_grad=True)
    log_lik = torch.tensor([-1.0, -3.0, -0.5], dtype=D64)
    alpha = torch.softmax(logits, 0)
    exact, = torch.autograd.grad((alpha * log_lik).sum(), logits)
    n = 200_000
    s = torch.multinomial(alpha.detach(), n, replacement=True, generator=torch.Generator().manual_seed(0))
    loss, b = reinforce_loss(log_lik[s], torch.log_softmax(logits, 0)[s], torch.zeros(n, dtype=D64), -1.0)
    estimate, = torch.autograd.grad(-loss, logits)
    torch.testing.assert_close(estimate, exact, rtol=0, atol=0.01)
    assert b == pytest.approx(0.9 * -1.0 + 0.1 * float(log_lik[s].mean()))


@torch.no_grad()
def test_bidaf_matches_the_equations():
    torch.manual_seed(4)
    layer = BiDAFAttention(3).double()
    H, U = torch.randn(1, 4, 3, dtype=D64), torch.randn(1, 5, 3, dtype=D64)
    qmask = torch.tensor([[True, True, True, False, True]])
    G, S = layer(H, U, query_mask=qmask)
    for t in range(4):
        for j in range(5):
            h, u = H[0, t], U[0, j]
            assert abs(float(layer.w @ torch.cat([h, u, h * u])) - float(S[0, t, j])) < 1e-12
    js = [0, 1, 2, 4]
    b = _softmax([max(float(S[0, t, j]) for j in js) for t in range(4)])
    h_tilde = sum(b[t] * H[0, t] for t in range(4))
    for t in range(4):
        a = _softmax([float(S[0, t, j]) for j in js])
        u_tilde = sum(x * U[0, j] for x, j in zip(a, js))
        expect = torch.cat([H[0, t], u_tilde, H[0, t] * u_tilde, H[0, t] * h_tilde])
        torch.testing.assert_close(G[0, t], expect, rtol=1e-12, atol=1e-12)


@torch.no_grad()
def test_dual_cross_attention_matches_the_equations():
    from attnkit.nn import GlobalLocalCrossAttention, PairwiseCrossAttention, attention_rollout

    torch.manual_seed(5)
    w1, w2 = (torch.softmax(torch.randn(2, 2, 6, 6, dtype=D64), -1) for _ in range(2))
    eye = torch.eye(6, dtype=D64)
    expect = (0.5 * w2.mean(1) + 0.5 * eye) @ (0.5 * w1.mean(1) + 0.5 * eye)
    rollout = attention_rollout([w1, w2])
    torch.testing.assert_close(rollout, expect)
    torch.testing.assert_close(rollout.sum(-1), torch.ones(2, 6, dtype=D64))  # rows stay distributions

    glca = GlobalLocalCrossAttention(4, 2, ratio=0.4).double()
    x = torch.randn(2, 6, 4, dtype=D64)
    out, chosen = glca(x, rollout)
    assert chosen.shape == (2, 3) and (chosen[:, 0] == 0).all()
    for b in range(2):
        ranked = sorted(range(1, 6), key=lambda j: -float(rollout[b, 0, j]))[:2]
        assert sorted(chosen[b, 1:].tolist()) == sorted(ranked)
        qkv = glca.qkv(x[b])
        q, k, v = qkv[:, :4], qkv[:, 4:8], qkv[:, 8:]
        heads = []
        for h in range(2):
            sl = slice(2 * h, 2 * h + 2)
            a = torch.softmax(q[chosen[b], sl] @ k[:, sl].T / math.sqrt(2), -1)
            heads.append(a @ v[:, sl])
        torch.testing.assert_close(out[b], glca.proj(torch.cat(heads, -1)))

    pwca = PairwiseCrossAttention(4, 1).double()
    x1, x2 = torch.randn(1, 3, 4, dtype=D64), torch.randn(1, 5, 4, dtype=D64)
    q1, k1, v1 = pwca.qkv(x1[0]).split(4, -1)
    _, k2, v2 = pwca.qkv(x2[0]).split(4, -1)
    a = torch.softmax(q1 @ torch.cat([k1, k2]).T / 2.0, -1)  # one softmax over both images' keys
    torch.testing.assert_close(pwca(x1, x2)[0], pwca.proj(a @ torch.cat([v1, v2])))
    pwca.eval()
    torch.testing.assert_close(pwca(x1, x2), pwca(x1))  # removed at inference: plain self-attention


@torch.no_grad()
def test_gated_positional_self_attention_matches_the_equations():
    from attnkit.nn import GatedPositionalSelfAttention

    torch.manual_seed(6)
    layer = GatedPositionalSelfAttention(4, 2, locality_strength=2.0).double()
    layer.gate.copy_(torch.tensor([0.3, -1.0]))
    x = torch.randn(1, 6, 4, dtype=D64)
    out = layer(x, (2, 3))
    q, k = layer.qk(x[0]).split(4, -1)
    v = layer.v(x[0])
    pos = [(i // 3, i % 3) for i in range(6)]
    heads = []
    for h in range(2):
        sl, lam = slice(2 * h, 2 * h + 2), 1 / (1 + math.exp(-float(layer.gate[h])))
        rows = []
        for i in range(6):
            content = _softmax([float(q[i, sl] @ k[j, sl]) / math.sqrt(2) for j in range(6)])
            r = [((pos[j][0] - pos[i][0]) ** 2 + (pos[j][1] - pos[i][1]) ** 2, pos[j][0] - pos[i][0],
                  pos[j][1] - pos[i][1]) for j in range(6)]
            positional = _softmax([float(layer.v_pos[h] @ torch.tensor(rj, dtype=D64)) for rj in r])
            a = [(1 - lam) * c + lam * p for c, p in zip(content, positional)]
            rows.append(sum(a[j] * v[j, sl] for j in range(6)))
        heads.append(torch.stack(rows))
    torch.testing.assert_close(out[0], layer.proj(torch.cat(heads, -1)))
    # at initialisation head 0 (centre (-1, -1)) puts its largest positional weight up and to the left
    fresh = GatedPositionalSelfAttention(4, 4, locality_strength=5.0)
    scores = fresh.positional_scores((3, 3), "cpu", torch.float32)
    assert scores[0, 4].argmax().item() == 0


@torch.no_grad()
def test_positional_encoding_generator_matches_the_equation_and_moves_with_the_content():
    from attnkit.nn import PositionalEncodingGenerator

    torch.manual_seed(7)
    peg = PositionalEncodingGenerator(2, 3).double()
    x = torch.randn(1, 1 + 12, 2, dtype=D64)
    out = peg(x, (3, 4), class_tokens=1)
    torch.testing.assert_close(out[:, 0], x[:, 0])  # the class token passes through
    W, b = peg.conv.weight[:, 0], peg.conv.bias
    for p in range(12):
        r, c = divmod(p, 4)
        conv = b.clone()
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if 0 <= r + dr < 3 and 0 <= c + dc < 4:
                    conv = conv + W[:, dr + 1, dc + 1] * x[0, 1 + (r + dr) * 4 + c + dc]
        torch.testing.assert_close(out[0, 1 + p], x[0, 1 + p] + conv)
    # content shifted one patch right, away from the borders: the output shifts with it
    image = torch.zeros(1, 2, 5, 6, dtype=D64)
    image[..., 1:4, 1:3] = torch.randn(2, 3, 2, dtype=D64)
    shifted = image.roll(1, dims=-1)
    tokens = lambda im: im.flatten(2).transpose(1, 2)  # noqa: E731
    a = peg(tokens(image), (5, 6)).transpose(1, 2).reshape(1, 2, 5, 6)
    b2 = peg(tokens(shifted), (5, 6)).transpose(1, 2).reshape(1, 2, 5, 6)
    torch.testing.assert_close(b2[..., 1:5], a[..., 0:4])
