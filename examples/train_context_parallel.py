"""Train a small causal LM whose layers split the sequence across processes.

    torchrun --nproc-per-node 2 examples/train_context_parallel.py --scheme lasp2h --schedule LFLF
    torchrun --nproc-per-node 4 examples/train_context_parallel.py --scheme ring --schedule FF --seq 512

The model is ``attnkit.models.DecoderLM`` with ``ModelConfig(context_parallel=scheme)``:
``L`` layers are gated linear attention (GLA) and run LASP-2; ``F`` layers are
softmax with RoPE and run all-gather (``lasp2h``: LASP-2H), ring, BurstAttention or
Ulysses. Every rank holds the same batch but only its shard of each sequence (the
model's layout: contiguous when a layer runs LASP-2 or all-gather, else zigzag);
parameters are replicated and their gradients summed over the group, so every
rank takes the same step. The task is
next-token prediction on sequences that repeat a random motif (an induction
task); rank 0 prints the loss per token against log(vocab). The script shows the
wiring (sharding, layers, gradient sum); a few dozen steps of this tiny model
stay near log(vocab), so train longer to see it learn.
"""
from __future__ import annotations

import argparse
import math

import torch
import torch.distributed as dist
from torch import nn

from attnkit.distributed import Sharding
from attnkit.models import DecoderLM, ModelConfig


def motif_batch(batch, seq, vocab, generator):
    """Sequences that repeat a random motif of 8..32 tokens."""
    rows = []
    for _ in range(batch):
        period = int(torch.randint(8, 33, (1,), generator=generator))
        motif = torch.randint(vocab, (period,), generator=generator)
        rows.append(motif.repeat(seq // period + 2)[: seq + 1])
    return torch.stack(rows)


def train(scheme: str, schedule: str, seq: int, steps: int, dim: int, vocab: int, device, log=print) -> list[float]:
    """Train on this rank's shards (torch.distributed initialised); the loss per token of every step."""
    torch.manual_seed(0)  # the same parameters on every rank
    config = ModelConfig(vocab_size=vocab, dim=dim, heads=4, schedule=schedule,
                         mixers={"L": "gla", "F": "softmax"}, context_parallel=scheme)
    model = DecoderLM(config).to(device)
    shard = Sharding(seq, layout=config.context_parallel_layout())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.Generator().manual_seed(1)  # the same batches on every rank
    losses = []
    for step in range(steps):
        tokens = motif_batch(8, seq, vocab, data).to(device)
        inputs, targets = shard.shard(tokens[:, :-1], dim=1), shard.shard(tokens[:, 1:], dim=1)
        logits = model(inputs)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")
        opt.zero_grad()
        loss.backward()
        for param in model.parameters():  # the loss is the sum over ranks' tokens
            dist.all_reduce(param.grad)
        opt.step()
        total = loss.detach().clone()
        dist.all_reduce(total)
        losses.append(total.item() / tokens[:, 1:].numel())
        if dist.get_rank() == 0 and (step % 10 == 0 or step == steps - 1):
            log(f"step {step:3d}  loss/token {losses[-1]:.3f}  (log vocab {math.log(vocab):.3f})")
    return losses


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--scheme", choices=["lasp2h", "ring", "burst", "ulysses"], default="lasp2h")
    p.add_argument("--schedule", default="LFLF", help="layer letters: L = GLA (LASP-2), F = softmax")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--vocab", type=int, default=64)
    args = p.parse_args()
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if torch.cuda.is_available() else torch.device("cpu")
    train(args.scheme, args.schedule, args.seq, args.steps, args.dim, args.vocab, device,
          log=lambda line: print(line, flush=True))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
