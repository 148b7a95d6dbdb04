"""PostNAS (scaled down): the super-network's paths, placements, beam search and the retrieval rows."""
from __future__ import annotations

import torch

from attnkit.models import DecoderLM, ModelConfig
from attnkit.training import postnas


def tiny(seed=0):
    torch.manual_seed(seed)
    return DecoderLM(ModelConfig(vocab_size=20, dim=16, heads=2, kv_heads=1, schedule="FFF")).eval()


def test_the_full_paths_are_the_pretrained_model_and_only_linear_paths_train():
    teacher, model = tiny(), tiny()
    postnas.super_network(model, "gated_deltanet")
    x = torch.randint(0, 20, (2, 9))
    postnas.set_placement(model, {0, 1, 2})
    with torch.no_grad():
        assert torch.equal(model(x), teacher(x))
    postnas.set_placement(model, {1})
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".mixer.linear." in n for n in trainable)
    g = torch.Generator().manual_seed(0)
    before = model.blocks[0].mixer.linear.q_proj.weight.clone()
    losses = postnas.train_super_network(model, teacher, lambda gen: torch.randint(0, 20, (2, 9), generator=gen),
                                         keep=1, steps=3, lr=1e-2, generator=g)
    assert len(losses) == 3 and not torch.equal(before, model.blocks[0].mixer.linear.q_proj.weight)


def test_linear_paths_start_from_the_attention_projections():
    model = postnas.super_network(tiny(), "gla")
    choice = model.blocks[2].mixer
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        assert torch.equal(getattr(choice.full, name).weight, getattr(choice.linear, name).weight)


def test_beam_search_scores_placements_and_ranks_them():
    model = postnas.super_network(tiny(), "gla")
    held = torch.randint(0, 20, (3, 11))
    retrieval = postnas.retrieval_rows(torch.randint(0, 20, (200,)), 5, 4)
    assert retrieval.shape == (4, 10) and torch.equal(retrieval[:, :5], retrieval[:, 5:])
    ranked = postnas.beam_search(model, held, retrieval, keep=2, beam=1, objective="lm")
    assert all(len(r["full_layers"]) == 2 for r in ranked)
    assert [r["lm"] for r in ranked] == sorted(r["lm"] for r in ranked)
    everything = postnas.beam_search(model, held, retrieval, keep=2, beam=3, objective="retrieval")
    assert len(everything) == 3  # beam 3 over 3 layers reaches every pair
