"""Train a small causal LM whose attention layers split the sequence across processes.

    torchrun --nproc-per-node 2 examples/train_context_parallel.py --strategy ring
    torchrun --nproc-per-node 4 examples/train_context_parallel.py --strategy ulysses --seq 512

Every rank holds the same batch but only its shard of each sequence (zigzag for
ring and Ulysses, contiguous for LASP-2); parameters are replicated and their
gradients summed over the group, so every rank takes the same step. The task is
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
from attnkit.nn import Attention


class Block(nn.Module):
    def __init__(self, dim, heads, mechanism, strategy):
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(dim), nn.RMSNorm(dim)
        self.attn = Attention(dim, heads, mechanism=mechanism, rope=mechanism == "softmax", context_parallel=True,
                              strategy=strategy)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x), causal=True)
        return x + self.mlp(self.norm2(x))


def motif_batch(batch, seq, vocab, generator):
    """Sequences that repeat a random motif of 8..32 tokens."""
    rows = []
    for _ in range(batch):
        period = int(torch.randint(8, 33, (1,), generator=generator))
        motif = torch.randint(vocab, (period,), generator=generator)
        rows.append(motif.repeat(seq // period + 2)[: seq + 1])
    return torch.stack(rows)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--strategy", choices=["ring", "ulysses", "lasp2"], default="ring")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--vocab", type=int, default=64)
    args = p.parse_args()
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if torch.cuda.is_available() else torch.device("cpu")
    mechanism = "linear" if args.strategy == "lasp2" else "softmax"
    torch.manual_seed(0)  # the same parameters on every rank
    model = nn.ModuleDict({
        "embed": nn.Embedding(args.vocab, args.dim),
        "blocks": nn.Sequential(*[Block(args.dim, 4, mechanism, args.strategy) for _ in range(2)]),
        "head": nn.Linear(args.dim, args.vocab),
    }).to(device)
    layout = model["blocks"][0].attn.context_parallel.layout
    shard = Sharding(args.seq, layout=layout)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.Generator().manual_seed(1)  # the same batches on every rank
    for step in range(args.steps):
        tokens = motif_batch(8, args.seq, args.vocab, data).to(device)
        inputs, targets = shard.shard(tokens[:, :-1], dim=1), shard.shard(tokens[:, 1:], dim=1)
        logits = model["head"](model["blocks"](model["embed"](inputs)))
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")
        opt.zero_grad()
        loss.backward()
        for param in model.parameters():  # the loss is the sum over ranks' tokens
            dist.all_reduce(param.grad)
        opt.step()
        total = loss.detach().clone()
        dist.all_reduce(total)
        if rank == 0 and (step % 10 == 0 or step == args.steps - 1):
            print(f"step {step:3d}  loss/token {total.item() / tokens[:, 1:].numel():.3f}  "
                  f"(log vocab {math.log(args.vocab):.3f})", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
