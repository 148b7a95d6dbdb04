"""Softmax attention of one block of queries against one block of keys, with its log-sum-exp.

The unit of work of the context-parallel strategies: a run of consecutive
query positions against a run of consecutive key positions. Forward returns the
block's normalised output and its log-sum-exp (both fp32, fp64 for fp64 inputs), which
:func:`attnkit.kernels.online_softmax.merge_normalised` combines exactly across blocks (the
online softmax of FlashAttention / Rabe & Staats, one block at a time):

    lse = log(exp(lse_a) + exp(lse_b)),  out = exp(lse_a - lse) out_a + exp(lse_b - lse) out_b.

Backward is FlashAttention's: with the *final* ``lse`` and ``delta = rowsum(dO * O)``,
``P = exp(S - lse)``, ``dV = P^T dO``, ``dS = P * (dO V^T - delta)``,
``dQ = scale dS K``, ``dK = scale dS^T Q``. Queries are processed ``chunk`` rows
at a time, so a block never holds more than ``chunk x keys`` scores.

Masks are :class:`attnkit.masks.MaskMod` functions of global positions; a
block pair the mask's tile classifier calls empty is skipped, one it calls full
runs without a mask.

A *score modifier* ``mod(scores, q_pos, k_pos)`` (the chunked kernel's: ALiBi,
soft-capping, T5 buckets, ...) sees global positions too, so a sharded sequence
gets the single-process scores. Backward differentiates it per tile: with
``S' = mod(S)`` and ``dS' = P * (dP - delta)``, autograd gives ``dS`` and the
gradients of the tensors it reads (``mod_inputs``, e.g. a learned bias table).
"""
from __future__ import annotations

import torch

from ..masks import base, documents, window as windows
from ..masks.base import MaskMod

EMPTY, PARTIAL, FULL = 0, 1, 2


def build_mask(*, causal: bool, window: int | None, doc_ids: torch.Tensor | None,
               mask_mod: MaskMod | None) -> MaskMod | None:
    """The mask of a call as one function of global positions (``None``: every pair)."""
    parts = []
    if causal:
        parts.append(base.causal_mask())
    if window is not None:
        parts.append(windows.sliding_window(window, 0 if causal else window))
    if doc_ids is not None:
        parts.append(documents.same_label(doc_ids))
    if mask_mod is not None:
        if not isinstance(mask_mod, MaskMod):
            raise TypeError(f"mask_mod must be an attnkit.masks MaskMod, got {type(mask_mod).__name__}")
        parts.append(mask_mod)
    return None if not parts else parts[0] if len(parts) == 1 else base.and_masks(*parts)


def classify(mask: MaskMod | None, q_run, k_run, batch: int, heads: int, device) -> int:
    """EMPTY, PARTIAL or FULL for the pairs of two ``(start, length)`` position runs."""
    if mask is None:
        return FULL
    if mask.tiles is None:
        m = element_mask(mask, batch, heads, torch.arange(q_run[0], q_run[0] + q_run[1], device=device),
                         torch.arange(k_run[0], k_run[0] + k_run[1], device=device))
        return EMPTY if not bool(m.any()) else FULL if bool(m.all()) else PARTIAL
    b = torch.arange(batch, device=device)[:, None]
    h = torch.arange(heads, device=device)[None, :]

    def at(p):
        return torch.tensor(p, device=device)

    any_, all_ = mask.tiles(b, h, at(q_run[0]), at(q_run[0] + q_run[1] - 1), at(k_run[0]), at(k_run[0] + k_run[1] - 1))
    if not bool(torch.as_tensor(any_).any()):
        return EMPTY
    return FULL if bool(torch.as_tensor(all_).all()) else PARTIAL


def element_mask(mask: MaskMod, batch: int, heads: int, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """The mask on ``(batch or 1, heads or 1, len(q_pos), len(k_pos))``."""
    b = torch.arange(batch, device=q_pos.device).view(-1, 1, 1, 1)
    h = torch.arange(heads, device=q_pos.device).view(1, -1, 1, 1)
    return mask(b, h, q_pos.view(1, 1, -1, 1), k_pos.view(1, 1, 1, -1))


def _grouped_mask(m: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """A ``(B|1, H|1, nq, nk)`` mask as ``(B|1, Hkv|1, group|1, nq, nk)`` to match grouped scores."""
    if m.shape[1] == 1:
        return m.unsqueeze(2)
    return m.reshape(m.shape[0], kv_heads, m.shape[1] // kv_heads, *m.shape[2:])


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half and single precision inputs, fp64 for double."""
    return torch.promote_types(dtype, torch.float32)


def _scores(q5, k, scale):
    acc = accumulator_dtype(q5.dtype)
    return (q5.to(acc) @ k.to(acc)[:, :, None].transpose(-1, -2)).mul_(scale)


class Block:
    """One (query run, key run) pair: the mask restricted to it, the score modifier and the query chunking."""

    def __init__(self, mask: MaskMod | None, kind: int, q_pos: torch.Tensor, k_pos: torch.Tensor, scale: float,
                 chunk: int, mod=None, mod_inputs: tuple = ()):
        self.mask, self.kind, self.q_pos, self.k_pos = mask, kind, q_pos, k_pos
        self.scale, self.chunk, self.mod, self.mod_inputs = scale, chunk, mod, mod_inputs

    def _modified(self, sc, rows: slice):
        """Grouped scores ``(B, Hkv, g, nq, nk)`` through the score modifier (which sees ``(B, H, nq, nk)``)."""
        if self.mod is None:
            return sc
        B, Hkv, g, nq, nk = sc.shape
        return self.mod(sc.reshape(B, Hkv * g, nq, nk), self.q_pos[rows], self.k_pos).reshape(sc.shape)

    def _allowed(self, rows: slice, batch: int, heads: int, kv_heads: int):
        if self.kind == FULL:
            return None
        m = element_mask(self.mask, batch, heads, self.q_pos[rows], self.k_pos)
        return _grouped_mask(m, kv_heads)

    def forward(self, q, k, v):
        """``(out, lse)`` in fp32 (fp64 for fp64 inputs) for queries ``q (B, H, nq, D)`` against ``k, v (B, Hkv, nk, .)``."""
        B, H, nq, D = q.shape
        Hkv = k.shape[1]
        outs, lses = [], []
        for s in range(0, nq, self.chunk):
            rows = slice(s, min(s + self.chunk, nq))
            q5 = q[:, :, rows].reshape(B, Hkv, H // Hkv, -1, D)
            sc = self._modified(_scores(q5, k, self.scale), rows)
            allowed = self._allowed(rows, B, H, Hkv)
            if allowed is not None:
                sc.masked_fill_(~allowed, float("-inf"))
            m = sc.amax(dim=-1, keepdim=True)
            m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
            p = sc.sub_(m).exp_()  # in place: one tile of scores held at a time
            denom = p.sum(dim=-1, keepdim=True)
            out = (p @ v.to(p.dtype)[:, :, None]) / denom.clamp_min(torch.finfo(p.dtype).tiny)
            lse = torch.where(denom > 0, m + denom.log(), torch.full_like(m, float("-inf")))
            outs.append(out.reshape(B, H, -1, v.shape[-1]))
            lses.append(lse.reshape(B, H, -1))
        return torch.cat(outs, dim=2), torch.cat(lses, dim=2)

    def backward(self, q, k, v, dout, lse, delta):
        """``(dq, dk, dv, d mod_inputs)`` of this block's share in the accumulator dtype, given the final
        ``lse`` and ``delta`` (``d mod_inputs`` is ``None`` for each input the modifier did not use)."""
        B, H, nq, D = q.shape
        Hkv, g = k.shape[1], H // k.shape[1]
        acc = accumulator_dtype(q.dtype)
        dq = torch.empty(B, H, nq, D, dtype=acc, device=q.device)
        dk = torch.zeros(k.shape, dtype=acc, device=k.device)
        dv = torch.zeros(v.shape, dtype=acc, device=v.device)
        d_inputs = [None] * len(self.mod_inputs)
        kf, vf = k.to(acc)[:, :, None], v.to(acc)[:, :, None]
        for s in range(0, nq, self.chunk):
            rows = slice(s, min(s + self.chunk, nq))
            q5 = q[:, :, rows].reshape(B, Hkv, g, -1, D).to(acc)
            do5 = dout[:, :, rows].reshape(B, Hkv, g, -1, dout.shape[-1]).to(acc)
            row_lse = lse[:, :, rows].reshape(B, Hkv, g, -1, 1)
            row_lse = torch.where(torch.isfinite(row_lse), row_lse, torch.zeros_like(row_lse))
            raw = (q5 @ kf.transpose(-1, -2)).mul_(self.scale)
            if self.mod is not None:
                with torch.enable_grad():
                    raw = raw.requires_grad_()
                    modified = self._modified(raw, rows)
                p = torch.exp(modified.detach() - row_lse)
            else:  # in place: two tiles (P, then dS) held at a time
                p = raw.sub_(row_lse).exp_()
            allowed = self._allowed(rows, B, H, Hkv)
            if allowed is not None:
                p.masked_fill_(~allowed, 0.0)
            dv += (p.transpose(-1, -2) @ do5).sum(dim=2)
            ds = (do5 @ vf.transpose(-1, -2)).sub_(delta[:, :, rows].reshape(B, Hkv, g, -1, 1)).mul_(p)
            if self.mod is not None:
                ds, *grads = torch.autograd.grad(modified, (raw, *self.mod_inputs), ds, allow_unused=True)
                d_inputs = add_grads(d_inputs, grads)
            dq[:, :, rows] = (ds @ kf).reshape(B, H, -1, D) * self.scale
            dk += (ds.transpose(-1, -2) @ q5).sum(dim=2) * self.scale
        return dq, dk, dv, d_inputs


def add_grads(total: list, part: list) -> list:
    """Gradients of the modifier's inputs summed over tiles (``None``: not reached yet)."""
    return [a if b is None else b if a is None else a + b for a, b in zip(total, part)]
