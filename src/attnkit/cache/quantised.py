"""Quantised KV storage: KIVI's scheme (keys per channel, values per token, a full-precision residual).

Liu et al., "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache" (2024).
Asymmetric uniform quantisation to ``bits`` (8, 4 or 2) of a group ``x`` of
``group`` numbers: ``s = (max x - min x) / (2^bits - 1)``, ``code = round((x - min x) / s)``,
``x^ = min x + s code``, so ``|x - x^| <= s / 2``. Keys are grouped *per channel*
(each channel over ``group`` consecutive tokens: key outliers sit in fixed
channels), values *per token* (each token over ``group`` consecutive channels).
The newest tokens stay in full precision in a residual of ``residual`` to
``residual + group - 1`` tokens; whenever it reaches ``residual + group`` the
oldest ``group`` tokens are quantised. Codes are packed ``8 / bits`` to a byte;
scales and minima are kept in the cache's dtype.

:class:`QuantisedKV` has the interface of :class:`~attnkit.cache.store.LayerKV`
(``k``/``v`` are the dequantised keys/values, materialised for the one
attention call) and is a value the same way: the packed codes live in buffers
grown by 1.5x and written in place only past the slots their writer reads.
"""
from __future__ import annotations

import torch

from .store import GROWTH

BITS = (8, 4, 2)


def quantise(x: torch.Tensor, bits: int, dim: int):
    """``(codes uint8, scale, minimum)`` of ``x`` with one scale/minimum over ``dim`` (kept, size 1)."""
    lo, hi = x.amin(dim=dim, keepdim=True), x.amax(dim=dim, keepdim=True)
    scale = (hi - lo) / (2**bits - 1)
    codes = ((x - lo) / scale.clamp_min(torch.finfo(x.dtype).tiny)).round().clamp(0, 2**bits - 1)
    return codes.to(torch.uint8), scale, lo


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    per = 8 // bits
    c = codes.unflatten(-1, (-1, per))
    shifts = torch.arange(0, 8, bits, device=codes.device, dtype=torch.uint8)
    return (c << shifts).sum(dim=-1, dtype=torch.uint8)


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    shifts = torch.arange(0, 8, bits, device=packed.device, dtype=torch.uint8)
    return ((packed[..., None] >> shifts) & (2**bits - 1)).flatten(-2)


class _Packed:
    """Growing buffers ``(B, Hkv, slots, ...)`` of one tensor each; ``tail`` = slots written."""

    def __init__(self, parts, tail):
        self.parts, self.tail = parts, tail


class QuantisedKV:
    def __init__(self, bits, group, residual, packed=None, quantised=0, rk=None, rv=None, length=0, prompt=0,
                 kept_pos=None):
        self.bits, self.group, self.residual = bits, group, residual
        self.kept_pos = kept_pos  # (B, Hkv, P) int32: positions of the first P tokens, if a policy chose them
        self._packed, self.quantised = packed, quantised  # quantised: tokens in the packed buffers
        self.rk, self.rv, self.length, self.prompt, self.score = rk, rv, length, prompt, None

    # the LayerKV interface ----------------------------------------------
    @property
    def used(self) -> int:
        return self.quantised + (0 if self.rk is None else self.rk.shape[2])

    @property
    def k(self) -> torch.Tensor:
        if not self.quantised:
            return self.rk
        kq, ks, km = (t[:, :, : self._slots(i)] for i, t in enumerate(self._packed.parts[:3]))
        codes = unpack(kq, self.bits).to(self.rk.dtype).unflatten(2, (-1, self.group))  # (B, H, groups, G, D)
        return torch.cat([(km[:, :, :, None] + ks[:, :, :, None] * codes).flatten(2, 3), self.rk], dim=2)

    @property
    def v(self) -> torch.Tensor:
        if not self.quantised:
            return self.rv
        vq, vs, vm = (t[:, :, : self.quantised] for t in self._packed.parts[3:])
        codes = unpack(vq, self.bits).to(self.rv.dtype).unflatten(-1, (-1, self.group))  # (B, H, N, groups, G)
        return torch.cat([(vm[..., None] + vs[..., None] * codes).flatten(-2), self.rv], dim=2)

    @property
    def pos(self) -> torch.Tensor:
        kept = 0 if self.kept_pos is None else self.kept_pos.shape[2]
        p = torch.arange(self.length - self.used + kept, self.length, device=self.rk.device, dtype=torch.int32)
        p = p.expand(*self.rk.shape[:2], -1)
        return p if self.kept_pos is None else torch.cat([self.kept_pos, p], dim=2)

    def _slots(self, part: int) -> int:
        return self.quantised // self.group if part in (1, 2) else self.quantised

    def nbytes(self) -> int:
        if self.rk is None:
            return 0
        held = sum(t[:, :, : self._slots(i)].numel() * t.element_size()
                   for i, t in enumerate(self._packed.parts)) if self.quantised else 0
        return held + sum(t.numel() * t.element_size() for t in (self.rk, self.rv)) + self._pos_bytes()

    def _pos_bytes(self) -> int:
        return 0 if self.kept_pos is None else self.kept_pos.numel() * self.kept_pos.element_size()

    def allocated_bytes(self) -> int:
        if self.rk is None:
            return 0
        held = sum(t.numel() * t.element_size() for t in self._packed.parts) if self._packed else 0
        return held + sum(t.numel() * t.element_size() for t in (self.rk, self.rv)) + self._pos_bytes()

    def numel(self) -> int:
        return 0 if self.rk is None else self.k.numel() + self.v.numel()

    def with_score(self, score) -> "QuantisedKV":
        return self

    def check_shape(self, k, v) -> None:
        if k.shape[-1] % self.group or v.shape[-1] % self.group:
            raise ValueError(f"head dims ({k.shape[-1]}, {v.shape[-1]}) must be multiples of group={self.group} "
                             "(values are quantised per token in groups of channels)")
        if self.rk is not None and (k.shape[:2], k.shape[3], v.shape[3], k.dtype) != (
                self.rk.shape[:2], self.rk.shape[3], self.rv.shape[3], self.rk.dtype):
            raise ValueError(f"this cache layer holds keys {tuple(self.rk.shape[:2])} x head_dim {self.rk.shape[3]} "
                             f"({self.rk.dtype}); got keys {tuple(k.shape)} ({k.dtype}): a cache belongs to one model, "
                             "batch and dtype; make a new one")

    def append(self, k: torch.Tensor, v: torch.Tensor, reserve: int = 0) -> "QuantisedKV":
        self.check_shape(k, v)
        rk = k if self.rk is None else torch.cat([self.rk, k], dim=2)
        rv = v if self.rv is None else torch.cat([self.rv, v], dim=2)
        spill = max(0, (rk.shape[2] - self.residual) // self.group * self.group)
        packed, quantised = self._packed, self.quantised
        if spill:
            packed = self._write(self._encode(rk[:, :, :spill], rv[:, :, :spill]), spill)
            quantised += spill
            rk, rv = rk[:, :, spill:].clone(), rv[:, :, spill:].clone()
        return QuantisedKV(self.bits, self.group, self.residual, packed, quantised, rk, rv,
                           self.length + k.shape[2], self.prompt or k.shape[2], self.kept_pos)

    def _encode(self, k, v):
        G, b = self.group, self.bits
        kc, ks, km = quantise(k.unflatten(2, (-1, G)), b, dim=3)  # per channel over G tokens
        vc, vs, vm = quantise(v.unflatten(-1, (-1, G)), b, dim=-1)  # per token over G channels
        return (pack(kc.flatten(2, 3), b), ks.squeeze(3), km.squeeze(3),
                pack(vc.flatten(-2), b), vs.squeeze(-1), vm.squeeze(-1))

    def _write(self, parts, n: int) -> _Packed:
        buf, start = self._packed, self.quantised
        if buf is None or buf.tail != start or start + n > buf.parts[0].shape[2]:
            capacity = max(start + n, int(GROWTH * (0 if buf is None else buf.parts[0].shape[2])))
            old = buf.parts if buf is not None else [p[:, :, :0] for p in parts]
            grown = []
            for i, (o, p) in enumerate(zip(old, parts)):
                per = self.group if i in (1, 2) else 1
                t = p.new_empty(*p.shape[:2], -(-capacity // per), *p.shape[3:])
                t[:, :, : start // per] = o[:, :, : start // per]
                grown.append(t)
            buf = _Packed(grown, start)
        for i, p in enumerate(parts):
            per = self.group if i in (1, 2) else 1
            buf.parts[i][:, :, start // per : (start + n) // per] = p
        buf.tail = start + n
        return buf
