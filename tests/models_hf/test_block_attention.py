"""Block-Attention for RAG: passages encoded alone from position 0, re-encoded at their offsets and reused,
give exactly the one-shot forward under the block mask; without re-encoding they do not."""
from __future__ import annotations

import pytest
import torch

from attnkit.models import DecoderLM, ModelConfig
from attnkit.models.block_attention import assemble, block_attention_mask, encode_blocks
from attnkit.state import KVCache, mark_state


def _model():
    torch.manual_seed(0)
    return DecoderLM(ModelConfig(vocab_size=20, dim=16, heads=2, kv_heads=1, schedule="FF")).double().eval()


def test_the_mask_lets_passages_see_themselves_and_the_final_block_everything():
    m = block_attention_mask([2, 1, 2])
    expected = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert torch.equal(m, expected.bool())


def test_reused_passages_equal_the_one_shot_block_attention_forward():
    model = _model()
    lengths = [5, 7, 4, 6]
    tokens = torch.randint(0, 20, (2, sum(lengths)))
    blocks = list(tokens.split(lengths, dim=1))
    with torch.no_grad():
        one_shot = model(tokens, mask=block_attention_mask(lengths))[:, -lengths[-1]:]
        encoded = encode_blocks(model, blocks[:-1])
        reused = model(blocks[-1], state=assemble(model, encoded))
        # the same caches concatenated without re-encoding: every passage keeps positions from 0
        stale = [mark_state(KVCache(torch.cat([p[i].k for p in encoded], 2), torch.cat([p[i].v for p in encoded], 2)),
                            "softmax") for i in range(2)]
        not_reencoded = model(blocks[-1], state=stale)
    torch.testing.assert_close(reused, one_shot)
    assert not torch.allclose(not_reencoded, one_shot, atol=1e-6)


def test_a_model_without_rope_is_refused():
    model = DecoderLM(ModelConfig(vocab_size=20, dim=16, heads=2, schedule="F", rope=False))
    with pytest.raises(ValueError, match="RoPE"):
        encode_blocks(model, [torch.zeros(1, 3, dtype=torch.long)])
