"""Block Transformer: the batched forward equals the equations written token by token (float64),
no logit sees its own token or a later one, and bad sizes are refused by name."""
from __future__ import annotations

import pytest
import torch

from attnkit.models.block_transformer import BlockTransformerLM


def _model(**kw):
    torch.manual_seed(0)
    return BlockTransformerLM(vocab_size=11, block_len=3, dim=12, heads=2, prefix_len=2, **kw).double().eval()


def _token_by_token(model, tokens):
    """logits[t] from the paper's three steps, one token at a time: the block decoder over the start block and
    the blocks before t's block, its last output through the prefix projection, then the token decoder over
    the prefix and the tokens of t's block before t."""
    L, D = model.block_len, model.dim
    rows = []
    for t in range(tokens.shape[1]):
        b, j = divmod(t, L)
        past = model.block_embed(tokens[:, : b * L]).reshape(tokens.shape[0], b, D)
        x = torch.cat([model.start.expand(tokens.shape[0], 1, D), past], dim=1)
        for block in model.block_decoder:
            x = block(x, causal=True)
        context = model.block_norm(x)[:, -1]
        y = torch.cat([model.to_prefix(context).reshape(-1, model.prefix_len, D),
                       model.token_embed(tokens[:, b * L : b * L + j])], dim=1)
        for block in model.token_decoder:
            y = block(y, causal=True)
        rows.append(model.head(model.norm(y[:, -1])))
    return torch.stack(rows, dim=1)


def test_forward_is_the_token_by_token_equations():
    model = _model()
    tokens = torch.randint(0, 11, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), _token_by_token(model, tokens))


def test_a_token_changes_no_logit_up_to_itself():
    model = _model()
    tokens = torch.randint(0, 11, (1, 12))
    changed = tokens.clone()
    changed[0, 7] = (changed[0, 7] + 1) % 11
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8], rtol=0, atol=0)
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_it_learns_and_refuses_bad_sizes():
    model = BlockTransformerLM(vocab_size=5, block_len=2, dim=8, heads=2, block_layers=1, token_layers=1)
    tokens = torch.tensor([[0, 1, 2, 3] * 4])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = model.loss(tokens).item()
    for _ in range(30):
        opt.zero_grad()
        loss = model.loss(tokens)
        loss.backward()
        opt.step()
    assert loss.item() < first / 2
    with pytest.raises(ValueError, match="block_len"):
        model(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="block_len"):
        BlockTransformerLM(dim=10, block_len=4)


def _recomputed(model, prompt, new):
    """Greedy continuation by recomputing the whole forward for every token (padded to whole blocks: a
    logit never reads its own token or a later one)."""
    out = prompt
    for _ in range(new):
        t, L = out.shape[1], model.block_len
        padded = torch.nn.functional.pad(out, (0, (t // L + 1) * L - t))
        out = torch.cat([out, model(padded)[:, t].argmax(-1, keepdim=True)], dim=1)
    return out


@pytest.mark.parametrize("prompt_len", [1, 3, 5])
def test_cached_generation_equals_recomputing(prompt_len):
    model = _model(block_layers=2, token_layers=1)
    prompt = torch.randint(0, 11, (3, prompt_len))
    with torch.no_grad():
        assert torch.equal(model.generate(prompt, 10), _recomputed(model, prompt, 10))


def test_generation_caches_stay_small_and_bad_arguments_are_refused():
    model = _model()
    calls = []
    original = model.token_decoder[0].forward

    def spy(x, **kw):
        out = original(x, **kw)
        calls.append(out[1].length)
        return out

    model.token_decoder[0].forward = spy
    model.generate(torch.randint(0, 11, (1, 4)), 9)
    assert max(calls) <= model.prefix_len + model.block_len
    g = torch.Generator().manual_seed(0)
    assert model.generate(torch.randint(0, 11, (2, 2)), 4, temperature=1.0, generator=g).shape == (2, 6)
    with pytest.raises(TypeError, match="prompt"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(torch.zeros(1, 2, dtype=torch.long), 2, temperature=-1.0)
