"""PostNAS at CPU scale: where a pretrained full-attention LM keeps full attention, and which linear block replaces it elsewhere.

Gu et al., "Jet-Nemotron: Efficient Language Model with Post Neural Architecture Search"
(2025), section 2. PostNAS starts from a pretrained full-attention model, freezes its MLPs and
searches, in order: (1) the placement of the few full-attention layers it keeps, with a
once-for-all super-network (every layer holds its full attention and a linear-attention
alternative; each training step samples one sub-network; the trained super-network is then
searched by beam search, scored per task); (2) the linear-attention block; (3) a new block
(JetBlock); (4) hardware-aware hyperparameters. Here steps (1) and (2), scaled down:

- the super-network: every layer of an :class:`attnkit.models.DecoderLM` gets a linear
  alternative (``attnkit.nn.Attention`` with a linear mechanism, its q/k/v/o projections
  initialised from the layer's attention); each step draws ``keep`` layers at random to run full
  attention, the others run the linear path; only the linear paths train (embeddings, norms,
  MLPs and the full attention stay as pretrained);
- the loss: the KL divergence from the pretrained model's next-token distribution (distillation:
  the paper trains the super-network against the original model; which divergence, and on
  logits rather than features, is this implementation's reading);
- the search: beam search over placements, adding one full-attention layer at a time (``beam``
  best partial placements kept), each scored on held-out text by (a) the LM loss and (b) a
  retrieval loss: the loss on the second copy of a held-out passage repeated twice (what the
  model can only get right by finding the first copy in its context);
- the block choice: the super-network is trained and searched once per candidate linear
  mechanism with the same budget; the best placement's scores compare the candidates.

Not done here: the paper's task suites (MMLU, math, retrieval, coding) and their per-task
placements, the JetBlock design step (JetBlock exists as :class:`attnkit.models.JetBlock`) and the
hardware-aware search; the scale (4 layers, minutes of CPU training).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import Attention


class Choice(nn.Module):
    """One layer's mixer in the super-network: the pretrained full attention or its linear alternative."""

    def __init__(self, full: Attention, linear: Attention):
        super().__init__()
        self.full, self.linear = full, linear
        self.use_full = True

    def forward(self, x, **kwargs):
        return (self.full if self.use_full else self.linear)(x, **kwargs)


def linear_alternative(full: Attention, mechanism: str) -> Attention:
    """A linear-attention layer shaped as ``full``, its projections copied from it."""
    alt = Attention(full.dim, full.heads, mechanism=mechanism, kv_heads=full.kv_heads, head_dim=full.head_dim)
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        getattr(alt, name).load_state_dict(getattr(full, name).state_dict())
    return alt.to(next(full.parameters()).device)


def super_network(model: nn.Module, mechanism: str) -> nn.Module:
    """``model`` with every block's mixer a :class:`Choice`; everything but the linear paths frozen."""
    for p in model.parameters():
        p.requires_grad_(False)
    for block in model.blocks:
        block.mixer = Choice(block.mixer, linear_alternative(block.mixer, mechanism))
    return model


def set_placement(model: nn.Module, full_layers) -> None:
    """Layers in ``full_layers`` (0-based) run full attention, the others their linear path."""
    for i, block in enumerate(model.blocks):
        block.mixer.use_full = i in full_layers


def train_super_network(model, teacher, batches, *, keep: int, steps: int, lr: float, generator) -> list[float]:
    """Each step: a random placement of ``keep`` full-attention layers, KL(teacher || sub-network)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    layers = len(model.blocks)
    losses = []
    for _ in range(steps):
        chosen = torch.randperm(layers, generator=generator)[:keep].tolist()
        set_placement(model, set(chosen))
        x = batches(generator)
        with torch.no_grad():
            target = F.log_softmax(teacher(x), -1)
        loss = F.kl_div(F.log_softmax(model(x), -1), target, log_target=True, reduction="batchmean") / x.shape[1]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def scores(model, held: torch.Tensor, retrieval: torch.Tensor) -> dict:
    """``lm``: mean next-token loss on ``held (W, N + 1)``; ``retrieval``: mean loss on the second
    half of ``retrieval (W, 2P)`` (each row a passage written twice)."""
    model.eval()
    lm = F.cross_entropy(model(held[:, :-1]).flatten(0, 1), held[:, 1:].flatten()).item()
    p = retrieval.shape[1] // 2
    logits = model(retrieval[:, :-1])[:, p - 1:]
    ret = F.cross_entropy(logits.flatten(0, 1), retrieval[:, p:].flatten()).item()
    return {"lm": round(lm, 4), "retrieval": round(ret, 4)}


def beam_search(model, held, retrieval, *, keep: int, beam: int, objective: str) -> list[dict]:
    """Placements of ``keep`` full-attention layers grown one layer at a time, the ``beam`` best (lowest
    ``objective`` score) kept at each size; returns every placement scored, best first at the end."""
    layers = len(model.blocks)
    frontier, seen = [()], {}
    for _ in range(keep):
        candidates = {tuple(sorted((*p, i))) for p in frontier for i in range(layers) if i not in p}
        for c in candidates:
            if c not in seen:
                set_placement(model, set(c))
                seen[c] = scores(model, held, retrieval)
        frontier = sorted(candidates, key=lambda c: seen[c][objective])[:beam]
    final = sorted((c for c in seen if len(c) == keep), key=lambda c: seen[c][objective])
    return [{"full_layers": list(c), **seen[c]} for c in final]


def retrieval_rows(ids: torch.Tensor, passage: int, rows: int) -> torch.Tensor:
    """``rows`` held-out passages of ``passage`` tokens, each written twice: ``(rows, 2 * passage)``."""
    starts = torch.linspace(0, ids.numel() - passage - 1, rows).long().tolist()
    return torch.stack([ids[s:s + passage].repeat(2) for s in starts])


