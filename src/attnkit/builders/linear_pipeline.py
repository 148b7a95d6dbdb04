"""Build specs for recurrent mechanisms: feature maps + decay + normaliser over one state.

A linear-family mechanism states only how it maps queries and keys to features
and which log-decay it applies (``prepare``), and whether outputs are
normalised by ``phi(q) . z``. This module derives from that its three
*stateful forms* (``f(q, k, v, *, causal, scale, initial_state=None, **params)
-> (out, final_state)``): ``"parallel"`` (the reference), ``"chunked"`` and
``"recurrent"`` (:mod:`attnkit.kernels.linear_scan`), the incremental step,
and the registry entry. Normalisation rides along in the state: ``v`` gets a
column of ones, so the last column of ``S`` is ``z``.
"""
from __future__ import annotations

import torch

from ..kernels import linear_scan
from ..kernels.positions import repeat_kv
from ..params import Param
from ..registry import MechanismSpec
from ..state import RecurrentState, expect_state
from ..validation import check_int
from .stateful import register_stateful_mechanism

CHUNK_PARAMS = {"chunk_size": Param(64, int, "tokens per chunk of the chunked form", low=1)}
FEATURE_MAP_PATTERNS = frozenset({"causal-self", "noncausal-self", "noncausal-cross"})


def stateful_forms(
    prepare, *, normalise: bool, eps_param: str | None = None, chunked_kernel=None, rowwise: bool = False
) -> dict:
    """The three stateful forms of a mechanism given ``prepare(q, k, v, *, scale, **params) -> (q', k', v', g)``.

    ``prepare`` receives k and v already expanded to the query heads. ``eps_param``
    names a parameter added to the normaliser per visible key (``phi(q) . z + eps n``).
    ``chunked_kernel`` replaces :func:`attnkit.kernels.linear_scan.chunked` (same signature).
    ``rowwise`` declares that ``prepare`` maps every (batch, head, token) row alone, the same way for
    every head and position, with no gate: the causal chunked form then maps and normalises each of
    its slices just before and after scanning it, with no full-size temporaries (at N = 32768 those
    cost more than the scan on this CPU).
    """

    def make(kernel_name):
        kernel = getattr(linear_scan, kernel_name)
        if kernel_name == "chunked" and chunked_kernel is not None:
            kernel = chunked_kernel

        def form(q, k, v, *, causal, scale, initial_state=None, chunk_size=CHUNK_PARAMS["chunk_size"].default, **params):
            _check_chunk_size(chunk_size)
            H, Dv = q.shape[1], v.shape[-1]
            if rowwise and causal and kernel_name == "chunked" and chunked_kernel is None:
                return _chunked_by_slices(q, repeat_kv(k, H), repeat_kv(v, H), initial_state, scale, chunk_size, params)
            fq, fk, fv, g = prepare(q, repeat_kv(k, H), repeat_kv(v, H), scale=scale, **params)
            if g is not None and not causal:
                raise ValueError("a decayed/gated recurrence is only defined causally; pass causal=True")
            if normalise:
                fv = _ones_column(fv)
            S0 = _initial(initial_state, fq, fv, normalise)
            kw = {"chunk_size": chunk_size} if kernel_name == "chunked" else {}
            out, S = kernel(fq, fk, fv, g, S0, causal=causal, **kw)
            length = _length(initial_state) + k.shape[2]
            if normalise:
                out = _normalised(out, q.shape[2], length, causal, _eps(params))
            return out, _state(length, S, Dv, normalise)

        form.__name__ = kernel_name
        return form

    def _eps(params):
        return params.get(eps_param, 0.0) if eps_param else 0.0

    def _chunked_by_slices(q, k, v, initial_state, scale, chunk_size, params):
        before, eps = _length(initial_state), _eps(params)

        def features(q_s, k_s, v_s, g, start):
            fq, fk, fv, _ = prepare(q_s, k_s, v_s, scale=scale, **params)
            if not normalise:
                return fq, fk, fv, None, None
            fv = _ones_column(fv)
            length = before + start + q_s.shape[2]
            return fq, fk, fv, None, lambda out: _normalised(out, q_s.shape[2], length, True, eps)

        first = features(q[:, :, :1], k[:, :, :1], v[:, :, :1], None, 0)  # one token: the state's shapes
        S0 = _initial(initial_state, first[0], first[2], normalise)
        out, S = linear_scan.chunked(q, k, v, None, S0, causal=True, chunk_size=chunk_size, features=features,
                                     feature_dim=first[0].shape[-1])
        return out, _state(before + k.shape[2], S, v.shape[-1], normalise)

    return {name: make(name) for name in ("parallel", "chunked", "recurrent")}


def implicit_weights(prepare, *, normalise: bool, eps_param: str | None = None):
    """``weights(q, k, v, *, causal, mask, scale, **params)``: the implicit attention matrix of the
    parallel form, ``phi(q) phi(k)^T`` with the decays, divided by its normaliser when there is one."""

    def weights(q, k, v, *, causal, mask, scale, chunk_size=None, **params):
        H = q.shape[1]
        fq, fk, _, g = prepare(q, repeat_kv(k, H), repeat_kv(v, H), scale=scale, **params)
        if g is not None and not causal:
            raise ValueError("a decayed/gated recurrence is only defined causally; pass causal=True")
        w = linear_scan.parallel_weights(fq, fk, g, causal=causal)
        if not normalise:
            return w
        eps = params.get(eps_param, 0.0) if eps_param else 0.0
        return _normalised(torch.cat([w, w.sum(dim=-1, keepdim=True)], dim=-1), q.shape[2], k.shape[2], causal, eps)

    return weights


def _ones_column(v):
    """``v`` with a column of ones appended: the normaliser ``z`` then rides in ``S`` as its last column."""
    return torch.nn.functional.pad(v, (0, 1), value=1.0)


def _length(state) -> int:
    """Tokens an incoming state has consumed (0 without one)."""
    return state.length if state is not None else 0


def _state(length, S, Dv, normalise) -> RecurrentState:
    """The final state; with a normaliser its last column of ``S`` is ``z`` (the ones column of v)."""
    return RecurrentState(length, S=S[..., :Dv], z=S[..., Dv]) if normalise else RecurrentState(length, S=S)


def _check_chunk_size(chunk_size) -> None:
    check_int("chunk_size", chunk_size)


def _initial(state, fq, fv, normalise):
    B, H, _, Dk = fq.shape
    Dv = fv.shape[-1] - (1 if normalise else 0)
    names = ("S", "z") if normalise else ("S",)
    shapes = {"S": (B, H, Dk, Dv), "z": (B, H, Dk)}
    state = expect_state(state, names, shapes, fq)
    if state is None:
        return None
    return torch.cat([state["S"], state["z"][..., None]], dim=-1) if normalise else state["S"]


def _normalised(out, q_len, length, causal, eps):
    """``phi(q) S / (phi(q) z + eps n)``; a query whose normaliser is 0 outputs 0."""
    num, den = out[..., :-1], out[..., -1:]
    if eps:
        if causal:
            seen = torch.arange(length - q_len + 1, length + 1, device=out.device, dtype=out.dtype)[:, None]
        else:
            seen = torch.tensor(float(length), device=out.device, dtype=out.dtype)
        den = den + eps * seen
    return num / den.masked_fill(den == 0, float("inf"))


def register_linear_mechanism(
    name: str,
    *,
    family: str,
    papers: tuple[str, ...],
    prepare,
    normalise: bool,
    feature_dim=lambda d, params: d,
    params: dict | None = None,
    eps_param: str | None = None,
    tensor_inputs=None,
    inputs: dict | None = None,
    tensor_inputs_per_token: tuple[str, ...] = (),
    patterns=FEATURE_MAP_PATTERNS,
    summary: str = "",
    test_params: dict | None = None,
    chunked_kernel=None,
    rowwise: bool = False,
) -> MechanismSpec:
    """Register a recurrent mechanism; ``feature_dim(head_dim, params)`` is the state's key dimension.

    ``rowwise``: see :func:`stateful_forms` (refused with per-token or per-head tensor inputs).
    """
    if rowwise and tensor_inputs is not None:
        raise ValueError(f"{name}: rowwise=True needs a prepare without tensor inputs")
    forms = stateful_forms(
        prepare, normalise=normalise, eps_param=eps_param, chunked_kernel=chunked_kernel, rowwise=rowwise
    )
    all_params = {**CHUNK_PARAMS, **(params or {})}
    defaults = {n: p.default for n, p in all_params.items()}

    def state_size(batch, heads, kv_heads, seq_len, head_dim, v_dim=None, **call_params):
        dk = feature_dim(head_dim, {**defaults, **call_params})
        return batch * heads * dk * ((v_dim or head_dim) + (1 if normalise else 0))

    def flops(batch, heads, q_len, kv_len, head_dim, causal):
        """Forward FLOPs of the chunked form (scores and values in chunks, state update and read)."""
        dk, dv, c = feature_dim(head_dim, defaults), head_dim + (1 if normalise else 0), defaults["chunk_size"]
        if not causal:
            return 2 * batch * heads * (kv_len + q_len) * dk * dv
        return 2 * batch * heads * q_len * (c * dk + c * dv + 2 * dk * dv)

    # what context parallelism (attnkit.distributed.lasp2) needs to split the recurrence across ranks
    recurrence = {"prepare": prepare, "normalise": normalise, "eps_param": eps_param,
                  "chunked_kernel": chunked_kernel or linear_scan.chunked}
    return register_stateful_mechanism(
        name,
        forms=forms,
        family=family,
        papers=papers,
        patterns=frozenset(patterns),
        params=all_params,
        tensor_inputs=tensor_inputs,
        inputs=inputs or {},
        tensor_inputs_per_token=tensor_inputs_per_token,
        flops=flops,
        state_size=state_size,
        complexity="O(N)",
        summary=summary,
        test_params={"chunk_size": 16, **(test_params or {})},
        extra={"recurrence": recurrence},
        weights=implicit_weights(prepare, normalise=normalise, eps_param=eps_param),
    )
