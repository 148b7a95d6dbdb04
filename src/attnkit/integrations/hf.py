"""Run Hugging Face transformers models on attnkit mechanisms.

Importing this module registers every attnkit mechanism that needs no learned
tensor inputs (gates, tables) with transformers' ``AttentionInterface`` as
``attnkit_<name>``, and with its ``AttentionMaskInterface``, so the model still
builds its padding/causal masks (an implementation unknown to the mask
interface gets ``mask=None`` and padding would be silently lost). Then either::

    model = AutoModel.from_pretrained(path, attn_implementation="attnkit_softmax")
    attnkit.integrations.hf.use(model, mechanism="softmax")      # an already loaded model

Masks: transformers passes a 4-D boolean or additive mask, or ``None`` and then
relies on ``module.is_causal`` (``is_causal=`` in the call wins). Both are
honoured; a mechanism that takes no mask refuses a mask that says more than
"causal" (see :mod:`attnkit.integrations.hf_masks`). Attention dropout while
training, soft-capping, position biases and attention sinks are refused rather
than ignored.

``output_attentions=True`` gets each layer's attention weights (those of
``attnkit.attention(..., return_weights=True)``); a mechanism without weights
refuses it instead of leaving ``outputs.attentions`` empty. Inside
``attnkit.capture``, a call over the keys an ``attnkit.cache.Cache`` kept records
their sequence positions, so ``rec.sequence(module)`` of a ``generate`` call has
one row per step.
"""
from __future__ import annotations

try:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("attnkit.integrations.hf needs transformers >= 5: pip install 'attnkit[hf]'") from exc

import torch

from .. import registry
from ..capture import active, amend_last
from ..api import attention
from ..cache.hf import attentions_requested, positions_read
from ..validation import check_params
from .hf_masks import pad_queries_to_keys, reduce_for_maskless

PREFIX = "attnkit_"
# Arguments of transformers' attention call that change the result; attnkit has no
# equivalent, so a call that sets them is refused.
_UNSUPPORTED = ("softcap", "position_bias", "s_aux")


def implementation_name(mechanism: str, **params) -> str:
    """``attnkit_<mechanism>``, with the parameters appended when any are set."""
    registry.get(mechanism)
    if not params:
        return PREFIX + mechanism
    return PREFIX + mechanism + "(" + ",".join(f"{k}={params[k]!r}" for k in sorted(params)) + ")"


def attention_function(mechanism: str, **params):
    """A transformers attention function backed by ``attnkit.attention(..., mechanism, **params)``."""
    spec = registry.get(mechanism)
    if spec.tensor_names:
        raise ValueError(
            f"mechanism {mechanism!r} needs learned tensor inputs {list(spec.tensor_names)} that a pretrained "
            "transformers model does not have; build it with attnkit.nn.Attention instead"
        )
    check_params(spec, params)  # unknown parameter names fail here, not at the first forward

    def forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, is_causal=None, **kwargs):
        for name in _UNSUPPORTED:
            if kwargs.get(name) is not None:
                raise ValueError(f"attnkit mechanism {mechanism!r} cannot apply transformers' {name}=; use 'eager'")
        if dropout and module.training:
            raise ValueError(
                f"attention dropout={dropout} while training: attnkit mechanisms have no attention dropout; "
                "set the config's attention dropout to 0 or call model.eval()"
            )
        causal = bool(getattr(module, "is_causal", False) if is_causal is None else is_causal)
        wanted = attentions_requested(kwargs)  # a mechanism without weights refuses return_weights loudly
        out, weights = _run(spec, query, key, value, attention_mask, causal, scaling, params, wanted)
        positions = positions_read(key) if active() else None
        if positions is not None:  # an attnkit.cache.Cache kept these keys: record where they sit
            amend_last(positions=positions.to(torch.int64).repeat_interleave(
                query.shape[1] // key.shape[1], dim=1))
        return out.transpose(1, 2).contiguous(), weights

    forward.__name__ = f"attnkit_{mechanism}_attention"
    return forward


def _run(spec, query, key, value, mask, causal, scale, params, return_weights):
    """``(out, weights)``: the attnkit call transformers asked for (weights None unless ``return_weights``)."""
    Nq, Nk = query.shape[2], key.shape[2]
    if mask is not None:
        if mask.is_floating_point():
            mask = mask.to(query.dtype)
        if not spec.supports_mask:
            causal, mask = reduce_for_maskless(spec.name, mask, causal), None
        elif ("noncausal-self" if Nq == Nk else "noncausal-cross") in spec.patterns:
            causal = False  # transformers' 4-D mask already holds the causal pattern
    elif causal and 1 < Nq < Nk:
        # Prefill into a static cache: transformers aligns causality top-left and the
        # keys past Nq are empty slots (what its SDPA path does too).
        key, value = key[:, :, :Nq], value[:, :, :Nq]
        Nk = Nq
    if causal and Nq < Nk and "causal-cross" not in spec.patterns:
        padded, mask = pad_queries_to_keys(query, key, mask)
        out = attention(padded, key, value, spec.name, causal=True, mask=mask, scale=scale,
                        return_weights=return_weights, **params)
        amend_last(rows=slice(Nk - Nq, None))  # the records hold the caller's queries only
        if not return_weights:
            return out[:, :, Nk - Nq:], None
        return out[0][:, :, Nk - Nq:], out[1][:, :, Nk - Nq:]
    out = attention(query, key, value, spec.name, causal=causal, mask=mask, scale=scale,
                    return_weights=return_weights, **params)
    return out if return_weights else (out, None)


def register(mechanism: str, **params) -> str:
    """Register one mechanism (with parameters) with transformers; returns the implementation name."""
    name = implementation_name(mechanism, **params)
    AttentionInterface.register(name, attention_function(mechanism, **params))
    AttentionMaskInterface.register(name, sdpa_mask)
    return name


def register_all() -> list[str]:
    """Register every attnkit mechanism that needs no learned tensor inputs, with default parameters."""
    return [register(name) for name in registry.names() if not registry.get(name).tensor_names]


def use(model, mechanism: str = "softmax", **params):
    """Switch a loaded transformers model to an attnkit mechanism; returns the model."""
    if not hasattr(model, "set_attn_implementation"):
        raise TypeError(f"model must be a transformers PreTrainedModel, got {type(model).__name__}")
    name = register(mechanism, **params)
    model.set_attn_implementation(name)
    if model.config._attn_implementation != name:
        raise ValueError(
            f"{type(model).__name__} does not dispatch through transformers' AttentionInterface, "
            f"so it cannot run {name!r}"
        )
    return model


register_all()
