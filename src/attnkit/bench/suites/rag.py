"""``attnkit bench rag``: Block-Attention for RAG on a retrieval task: accuracy with passage KV reuse, prefill time.

Block-Attention (Sun et al., "Block-Attention for Efficient RAG") at CPU scale on attnkit's
``DecoderLM`` (2 layers, RoPE). Each prompt holds ``--passages`` passages of ``--passage-len``
tokens, each with ``--pairs`` key-value pairs among filler tokens (keys unique in the prompt),
then a final block ``? key value``: the model must retrieve the value. A model is trained with
full causal attention, then fine-tuned under the block mask (passages see only themselves, the
final block sees everything). Accuracy on fresh prompts: the full-attention model run on the
whole prompt; the same model with every passage encoded alone and reused (KV caches re-encoded
at their offsets, :mod:`attnkit.models.block_attention`) without fine-tuning; the fine-tuned
model with reuse. Last, the time to answer a prompt from reused passage caches (the final block
alone) against prefilling the whole prompt, medians in turns in one process.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ...models import DecoderLM, ModelConfig
from ...models.block_attention import assemble, block_attention_mask, encode_blocks
from ..options import positive_int
from ..runner import run_items
from ..store import canonical
from ..timing import median_times

THREADS = 1  # the machine is usually shared
KEYS, VALUES, FILLER = 24, 32, 16  # token ranges: keys, values, filler; then the query marker


def add_arguments(p) -> None:
    p.add_argument("--passages", type=positive_int, default=4, help="passages per prompt (default 4)")
    p.add_argument("--passage-len", type=positive_int, default=12, help="tokens per passage (default 12)")
    p.add_argument("--pairs", type=positive_int, default=2, help="key-value pairs per passage (default 2)")
    p.add_argument("--steps", type=positive_int, default=1500, help="full-attention training steps (default 1500)")
    p.add_argument("--finetune-steps", type=positive_int, default=300, help="block-attention fine-tuning steps")
    p.add_argument("--seed", type=int, default=0)


def prompts(count: int, passages: int, length: int, pairs: int, g: torch.Generator):
    """``(count, passages * length + 3)`` tokens: passages with key-value pairs, then ``? key value``."""
    if 2 * pairs > length:
        raise ValueError(f"--pairs {pairs} key-value pairs do not fit in --passage-len {length}")
    if pairs * passages > KEYS:
        raise ValueError(f"{pairs * passages} keys per prompt exceed the {KEYS} key tokens")
    query = KEYS + VALUES + FILLER
    rows = []
    for _ in range(count):
        keys = torch.randperm(KEYS, generator=g)[: passages * pairs]
        values = KEYS + torch.randint(0, VALUES, (passages * pairs,), generator=g)
        text = []
        for p in range(passages):
            body = KEYS + VALUES + torch.randint(0, FILLER, (length,), generator=g)
            slots = torch.randperm(length // 2, generator=g)[:pairs] * 2
            for i, s in enumerate(slots.tolist()):
                body[s], body[s + 1] = keys[p * pairs + i], values[p * pairs + i]
            text.append(body)
        asked = int(torch.randint(0, passages * pairs, (1,), generator=g))
        text.append(torch.tensor([query, int(keys[asked]), int(values[asked])]))
        rows.append(torch.cat(text))
    return torch.stack(rows)


def _loss(model, batch, mask):
    logits = model(batch[:, :-1], mask=mask)
    return F.cross_entropy(logits[:, -1], batch[:, -1])


def _train(model, steps, make_batch, mask, lr):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        loss = _loss(model, make_batch(), mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def _accuracy(model, batch, lengths, reuse: bool) -> float:
    if not reuse:
        guess = model(batch[:, :-1])[:, -1].argmax(-1)
    else:
        blocks = list(batch[:, :-1].split(lengths, dim=1))
        state = assemble(model, encode_blocks(model, blocks[:-1]))
        guess = model(blocks[-1], state=state)[:, -1].argmax(-1)
    return float((guess == batch[:, -1]).double().mean())


def run(args) -> int:
    cache: dict = {}
    lengths = [args.passage_len] * args.passages + [2]

    def prepare():
        torch.manual_seed(args.seed)
        g = torch.Generator().manual_seed(args.seed)
        make = lambda: prompts(64, args.passages, args.passage_len, args.pairs, g).to(args.device)  # noqa: E731
        config = ModelConfig(vocab_size=KEYS + VALUES + FILLER + 1, dim=64, heads=4, schedule="FF")
        start = time.perf_counter()
        full = _train(DecoderLM(config).to(args.device), args.steps, make, None, 3e-3)
        tuned = DecoderLM(config).to(args.device)
        tuned.load_state_dict(full.state_dict())
        mask = block_attention_mask(lengths, device=args.device)
        tuned = _train(tuned, args.finetune_steps, make, mask, 1e-3)
        test = prompts(1000, args.passages, args.passage_len, args.pairs, g).to(args.device)
        print(f"trained {args.steps} + {args.finetune_steps} fine-tuning steps in {time.perf_counter() - start:.0f} s "
              f"(threads={torch.get_num_threads()}, {args.device}); prompts of {test.shape[1]} tokens, "
              f"{args.passages} passages of {args.passage_len}, chance {1 / VALUES:.3f}")
        cache.update(full=full, tuned=tuned, test=test)

    def measure(item):
        if not cache:
            prepare()
        full, tuned, test = cache["full"], cache["tuned"], cache["test"]
        if item["section"] == "accuracy":
            row = {"full_attention": _accuracy(full, test, lengths, reuse=False),
                   "reuse_without_finetuning": _accuracy(full, test, lengths, reuse=True),
                   "block_attention_reuse": _accuracy(tuned, test, lengths, reuse=True),
                   "block_attention_one_shot": float((tuned(test[:, :-1], mask=block_attention_mask(
                       lengths, device=args.device))[:, -1].argmax(-1) == test[:, -1]).double().mean())}
            print("accuracy: " + ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in row.items()))
            return row
        batch = test[:16, :-1]
        blocks = list(batch.split(lengths, dim=1))
        with torch.no_grad():
            state = assemble(tuned, encode_blocks(tuned, blocks[:-1]))
            t_reuse, t_full = median_times([lambda: tuned(blocks[-1], state=state), lambda: tuned(batch)], 20)
        row = {"reuse_seconds": t_reuse, "full_prefill_seconds": t_full, "reuse_over_full": t_reuse / t_full,
               "prompt_tokens": batch.shape[1], "final_block_tokens": lengths[-1]}
        print(f"answer from reused passage caches: {t_reuse * 1e3:.2f} ms vs prefilling the {batch.shape[1]}-token "
              f"prompt {t_full * 1e3:.2f} ms (batch 16; ratio {row['reuse_over_full']:.2f})")
        return row

    items = [{"section": "accuracy"}, {"section": "prefill time"}]
    config = {"passages": args.passages, "passage_len": args.passage_len, "pairs": args.pairs, "steps": args.steps,
              "finetune_steps": args.finetune_steps, "seed": args.seed, "device": args.device}
    code, _ = run_items("rag", config, items, measure, args, describe=canonical)
    return code
