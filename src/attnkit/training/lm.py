"""Train a :class:`attnkit.models.DecoderLM` on text, against a wall-clock or step budget.

AdamW with linear warm-up then cosine decay to a tenth of the peak rate; the
schedule follows the fraction of the budget used (time or steps, whichever
runs out first), so a 10-minute run anneals fully in 10 minutes. Batches are
random windows of the training ids. At the end the held-out perplexity and the
unigram baseline on the same tokens are measured (:mod:`.metrics`), and a
checkpoint holds everything needed to rebuild the model and its tokeniser.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..data.codecs import codec_from_dict
from ..models import DecoderLM, ModelConfig
from .metrics import eval_windows, model_perplexity, unigram_perplexity


@dataclass
class TrainConfig:
    context: int = 64
    batch: int = 32
    lr: float = 5e-3
    warmup_steps: int = 20
    weight_decay: float = 0.1
    minutes: float | None = 10.0
    max_steps: int | None = None
    eval_tokens: int = 65536
    seed: int = 0

    def __post_init__(self):
        if self.minutes is None and self.max_steps is None:
            raise ValueError("give a budget: minutes or max_steps (or both)")
        for name in ("context", "batch", "eval_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0 (0: evaluate only), got {self.max_steps}")
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"minutes must be > 0, got {self.minutes}")


def lr_at(cfg: TrainConfig, step: int, used: float) -> float:
    """Learning rate at ``step`` with ``used`` in [0, 1] the fraction of the budget spent."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(used, 1.0))))


def sample_batch(ids: torch.Tensor, context: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, ids.numel() - context - 1, (batch,), generator=generator)
    return torch.stack([ids[s : s + context + 1] for s in starts.tolist()])


def train(model: DecoderLM, train_ids: torch.Tensor, cfg: TrainConfig, *, optimizer=None, on_step=None,
          batches=None) -> dict:
    """Train in place; returns ``{"steps", "tokens", "seconds", "losses"}``.

    ``on_step(step, loss, used)`` is called after every step (the command's progress bar). ``batches(generator)``,
    if given, makes each batch instead of random windows of ``train_ids``: ``(windows (batch, context + 1),
    weights (batch, context))``, the loss being the targets' cross-entropy averaged with those weights.
    """
    if train_ids.numel() < cfg.context + 2:
        raise ValueError(f"training text has {train_ids.numel()} tokens; need more than context + 1 = {cfg.context + 1}")
    g = torch.Generator().manual_seed(cfg.seed)  # batches are drawn on the CPU, then moved to the model's device
    device = next(model.parameters()).device
    optimizer = optimizer or make_optimizer(model, cfg)
    model.train()
    losses, step, start = [], 0, time.perf_counter()
    while True:
        used = _used(cfg, step, time.perf_counter() - start)
        if used >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, step, used)
        if batches is None:
            w, weights = sample_batch(train_ids, cfg.context, cfg.batch, g).to(device), None
        else:
            w, weights = (t.to(device) for t in batches(g))
        logits = model(w[:, :-1])
        if weights is None:
            loss = F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten())
        else:
            each = F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten(), reduction="none")
            loss = (each * weights.flatten()).sum() / weights.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        step += 1
        if on_step is not None:
            on_step(step, losses[-1], used)
    seconds = time.perf_counter() - start
    return {"steps": step, "tokens": step * cfg.batch * cfg.context, "seconds": round(seconds, 1), "losses": losses}


def _used(cfg: TrainConfig, step: int, seconds: float) -> float:
    fractions = []
    if cfg.max_steps is not None:
        fractions.append(step / cfg.max_steps if cfg.max_steps else 1.0)
    if cfg.minutes is not None:
        fractions.append(seconds / (60 * cfg.minutes))
    return max(fractions)


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def evaluate(model, train_ids: torch.Tensor, held_ids: torch.Tensor, vocab_size: int, context: int, eval_tokens: int) -> dict:
    windows = eval_windows(held_ids, context, eval_tokens)
    return {
        "held_out_tokens": windows[:, 1:].numel(),
        "perplexity": round(model_perplexity(model, windows), 3),
        "unigram_perplexity": round(unigram_perplexity(train_ids, windows, vocab_size), 3),
    }


def save_checkpoint(path, model: DecoderLM, codec, train_cfg: TrainConfig, optimizer=None, metrics=None) -> None:
    torch.save({
        "model_config": model.config.to_dict(),
        "model": model.state_dict(),
        "codec": codec.to_dict(),
        "train_config": asdict(train_cfg),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "metrics": metrics or {},
    }, path)


def load_checkpoint(path) -> tuple[DecoderLM, object, dict]:
    """``(model, codec, checkpoint_dict)``; the model is in eval mode."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model_config", "model", "codec"):
        if key not in ckpt:
            raise ValueError(f"{path} is not an attnkit LM checkpoint: it has no {key!r} entry")
    model = DecoderLM(ModelConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval(), codec_from_dict(ckpt["codec"]), ckpt
