"""Build specs for softmax attention restricted by a mask pattern (a :class:`MaskMod`).

Given ``make_mask(q, k, causal=..., **params) -> MaskMod`` this derives:

- ``reference``: the pattern materialised as a dense boolean mask, then plain
  float64-capable materialised softmax attention (the oracle);
- ``block_sparse``: the pattern's block layout and the block-sparse kernel,
  which visits only non-empty tiles (forward and backward);
- ``dedicated_forms``, if given: kernels written for this one pattern, which a
  call without ``form=`` tries first, on the calls their checks accept
  (:class:`DedicatedForm`);
- the incremental form: a KV cache over the default form (masks are
  functions of positions, so a decode step sees exactly its one-shot row).
  A pattern that declares ``decode_bound`` (its sinks and window) keeps only
  those keys, so its decode memory is constant.

``causal=True`` intersects the pattern with the causal rule. A boolean user
``mask`` is intersected too; an additive float mask has no block layout, so
``block_sparse`` refuses it and a call without ``form=`` runs the reference with
the pattern folded into the mask (exact; the mask is already ``Nq x Nk``).
Layouts of patterns without tensor inputs (that do not read q/k values) are cached per shape.
"""
from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Callable, NamedTuple

import torch

from ..kernels.auto_sparse import not_boolean
from ..kernels.block_sparse import block_sparse_attention
from ..masks.base import causal_mask, tensor_mask
from ..masks.layout import build_layout
from ..params import Param
from ..reference import materialised_attention, materialised_weights
from ..registry import ALL_PATTERNS, MechanismSpec, kv_cache_size, register
from .kv_cache_step import default_form_of, kv_cache_step, window_cache_step

# Tile sizes of the block-sparse form: execution choices, not part of the equations.
BLOCK_PARAMS = {
    "block_q": Param(128, int, "queries per tile of the block-sparse form", low=1),
    "block_k": Param(128, int, "keys per tile of the block-sparse form", low=1),
}
_LAYOUTS: OrderedDict = OrderedDict()
_CACHE_SIZE = 16


class DedicatedForm(NamedTuple):
    """A form of one pattern alone: ``can_run`` says which calls it runs, ``auto_when`` on which of those it pays
    off, so that a call without ``form=`` takes it (:mod:`attnkit.dispatch`)."""

    form: Callable
    can_run: Callable
    auto_when: Callable | None = None


def dense_pattern(mask, batch: int, heads: int, q_len: int, kv_len: int, device=None) -> torch.Tensor:
    """The element mask as a boolean tensor broadcastable to ``(batch, heads, q_len, kv_len)``."""
    b = torch.arange(batch, device=device).view(-1, 1, 1, 1)
    h = torch.arange(heads, device=device).view(1, -1, 1, 1)
    q = (kv_len - q_len + torch.arange(q_len, device=device)).view(1, 1, -1, 1)
    kv = torch.arange(kv_len, device=device).view(1, 1, 1, -1)
    out = mask(b, h, q, kv)
    return torch.broadcast_to(out, torch.broadcast_shapes(out.shape, (1, 1, q_len, kv_len)))


def register_mask_mechanism(
    name: str,
    *,
    papers: tuple[str, ...],
    make_mask,
    params: dict | None = None,
    tensor_inputs=None,
    inputs: dict | None = None,
    patterns=ALL_PATTERNS,
    summary: str = "",
    complexity: str = "O(N * visible keys)",
    family: str = "sparse",
    test_params: dict | None = None,
    content_dependent: bool = False,
    decode_bound=None,
    dedicated_forms: dict[str, DedicatedForm] | None = None,
) -> MechanismSpec:
    """``content_dependent``: the mask reads q/k values (e.g. hash buckets), so its layout is never cached.
    ``dedicated_forms = {name: DedicatedForm(...)}``: forms of this pattern alone, faster than the block-sparse
    kernel where they run and pay off; they come first in ``default_forms``.
    ``decode_bound(**params) -> (sinks, window)``: a causal query never sees a key that is neither among
    the first ``sinks`` nor among the last ``window`` before it, so a decoder keeps only those (and
    ``state_size`` counts them); without it the decoder keeps the whole KV cache."""
    params = {**(params or {}), **BLOCK_PARAMS}
    dedicated = dedicated_forms or {}

    def pattern(q, k, causal, kw):
        m = make_mask(q, k, causal=causal, **{n: x for n, x in kw.items() if n not in BLOCK_PARAMS})
        return m & causal_mask() if causal else m

    def allowed_mask(q, k, causal, mask, kw):
        B, H, Nq, _ = q.shape
        return _combine(dense_pattern(pattern(q, k, causal, kw), B, H, Nq, k.shape[2], q.device), mask)

    def reference(q, k, v, *, causal, mask, scale, **kw):
        return materialised_attention(q, k, v, causal=False, mask=allowed_mask(q, k, causal, mask, kw), scale=scale)

    def weights(q, k, v, *, causal, mask, scale, **kw):
        """Softmax weights over the pattern's keys; zeros outside it."""
        return materialised_weights(q, k, causal=False, mask=allowed_mask(q, k, causal, mask, kw), scale=scale)

    def block_sparse(q, k, v, *, causal, mask, scale, block_q, block_k, **kw):
        B, H, Nq, _ = q.shape
        Nk = k.shape[2]
        m = pattern(q, k, causal, kw)
        if mask is not None:
            m = m & tensor_mask(mask, Nq, Nk)
        key = None
        if mask is None and not content_dependent and not any(isinstance(x, torch.Tensor) for x in kw.values()):
            key = (name, causal, B, H, Nq, Nk, block_q, block_k, str(q.device), repr(sorted(kw.items())))
        layout = _LAYOUTS.get(key) if key is not None else None
        if layout is None:
            layout = build_layout(m, batch=B, heads=H, q_len=Nq, kv_len=Nk, block_q=block_q, block_k=block_k,
                                  device=q.device)
            if key is not None:
                _LAYOUTS[key] = layout
                while len(_LAYOUTS) > _CACHE_SIZE:
                    _LAYOUTS.popitem(last=False)
        return block_sparse_attention(q, k, v, layout, scale=scale)

    tensor_names = [n for n in inspect.signature(make_mask).parameters if n not in ("q", "k", "causal", *params)]

    def flops(batch, heads, q_len, kv_len, head_dim, causal, **kw):
        """Forward FLOPs, 4 * allowed pairs * head_dim, with the pairs counted on the pattern's block layout."""
        if content_dependent:
            raise ValueError(f"{name}'s pairs depend on the values of q and k: count them on the call's layout "
                             "(attnkit.masks.build_layout(...).flops(head_dim))")
        missing = [n for n in tensor_names if n not in kw]
        if missing:
            raise ValueError(f"{name}'s FLOPs depend on its tensor inputs {missing}: pass them as keywords")
        kw = {n: x for n, x in {**{n: p.default for n, p in params.items()}, **kw}.items() if n not in BLOCK_PARAMS}
        q = torch.empty(batch, heads, q_len, 1)
        k = torch.empty(batch, heads, kv_len, 1)
        layout = build_layout(pattern(q, k, causal, kw), batch=batch, heads=heads, q_len=q_len, kv_len=kv_len)
        return layout.flops(head_dim)

    reference.__name__ = f"{name}_reference"
    block_sparse.__name__ = f"{name}_block_sparse"
    return register(
        MechanismSpec(
            name=name,
            family=family,
            papers=papers,
            patterns=frozenset(patterns),
            reference=reference,
            fast={**{n: d.form for n, d in dedicated.items()}, "block_sparse": block_sparse},
            # An additive mask is already a materialised (Nq, Nk) tensor: the reference, exact, costs its size again.
            default_forms=(*dedicated, "block_sparse", "reference"),
            can_run={**{n: d.can_run for n, d in dedicated.items()}, "block_sparse": not_boolean},
            auto_when={n: d.auto_when for n, d in dedicated.items() if d.auto_when is not None},
            step=_step(default_form_of(name), decode_bound) if "causal-self" in patterns else None,
            params=params,
            flops=flops,
            tensor_inputs=tensor_inputs,
            inputs=inputs or {},
            summary=summary,
            complexity=complexity,
            state_size=kv_cache_size if decode_bound is None else _bounded_size(decode_bound, {n: p.default for n, p in params.items()}),
            test_params={"block_q": 16, "block_k": 8, **(test_params or {})},
            extra={"make_mask": make_mask},
            weights=weights,
        )
    )


def _step(form, decode_bound):
    return kv_cache_step(form) if decode_bound is None else window_cache_step(form, decode_bound)


def _bounded_size(decode_bound, defaults):
    def state_size(batch, heads, kv_heads, seq_len, head_dim, v_dim=None, **params):
        sinks, window = decode_bound(**{**defaults, **params})
        return kv_cache_size(batch, heads, kv_heads, min(seq_len, sinks + window), head_dim, v_dim)

    return state_size


def _combine(allowed: torch.Tensor, mask):
    if mask is None:
        return allowed
    if mask.dtype == torch.bool:
        return allowed & mask
    return mask.masked_fill(~allowed, float("-inf"))


def mask_of(spec, q, k, *, causal: bool, **params):
    """The full mask function of a registered pattern mechanism (pattern, and causal if asked)."""
    kw = {**{n: x for n, x in spec.defaults.items() if n not in BLOCK_PARAMS}, **params}
    m = spec.extra["make_mask"](q, k, causal=causal, **kw)
    return m & causal_mask() if causal else m
