"""Argument checks, run before any work is done: the one place attnkit checks its inputs.

:func:`attnkit.attention`'s q, k, v, mask, scale, pattern and params; and the
helpers every mechanism, layer and module uses for its own arguments (ints,
floats, extra tensor inputs, token and feature-map tensors). Every error names
the argument and says what was expected.
"""
from __future__ import annotations

import math

import torch


# Shapes, dtypes and devices of q, k, v that passed check_qkv: a decode loop checks each once.
_CHECKED_QKV: dict = {}
_CHECKED_LIMIT = 256


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, same_value_dim: bool = False) -> None:
    """Layout ``(batch, heads, seq, head_dim)``; K/V may have fewer heads (GQA)."""
    if type(q) is torch.Tensor and type(k) is torch.Tensor and type(v) is torch.Tensor:
        key = (q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype, q.device, k.device, v.device, same_value_dim)
        if key in _CHECKED_QKV:
            return
        _check_qkv(q, k, v, same_value_dim)
        if len(_CHECKED_QKV) >= _CHECKED_LIMIT:
            _CHECKED_QKV.clear()
        _CHECKED_QKV[key] = True
        return
    _check_qkv(q, k, v, same_value_dim)


def _check_qkv(q, k, v, same_value_dim: bool) -> None:
    for arg, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{arg} must be a torch.Tensor of shape (batch, heads, seq, head_dim), got {type(t).__name__}")
        if t.ndim != 4:
            raise ValueError(
                f"{arg} must have 4 dimensions (batch, heads, seq, head_dim), got shape {tuple(t.shape)}"
            )
        if not t.is_floating_point():
            raise TypeError(f"{arg} must be a floating-point tensor, got dtype {t.dtype}")
        if t.is_meta:
            raise ValueError(f"{arg} is on the meta device: attnkit's masks, layouts and caches read values, "
                             "so it needs real tensors (CPU or GPU)")
    for arg, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{arg} has dtype {t.dtype} but q has dtype {q.dtype}; q, k and v must share one dtype")
        if t.device != q.device:
            raise ValueError(f"{arg} is on device {t.device} but q is on {q.device}; q, k and v must share one device")
    B, H, _, D = q.shape
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(f"batch sizes differ: q {B}, k {k.shape[0]}, v {v.shape[0]}; expected one batch size")
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"k has {k.shape[1]} heads but v has {v.shape[1]}; k and v must have the same number of heads")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k has sequence length {k.shape[2]} but v has {v.shape[2]}; expected equal key/value lengths")
    if k.shape[3] != D:
        raise ValueError(f"k has head_dim {k.shape[3]} but q has {D}; q and k must share head_dim")
    if same_value_dim and v.shape[3] != D:
        raise ValueError(f"v has head_dim {v.shape[3]} but q has {D}; this mechanism needs equal q/k/v head_dim")
    Hkv = k.shape[1]
    if (Hkv == 0 and H != 0) or (Hkv != 0 and H % Hkv != 0):
        raise ValueError(
            f"q has {H} heads and k/v have {Hkv}: heads % kv_heads must be 0 (GQA/MQA groups query heads over kv heads)"
        )
    if q.shape[3] == 0:
        raise ValueError("head_dim is 0; expected at least 1")


def check_scale(scale, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return float(scale)


def normalise_mask(mask, q: torch.Tensor, k: torch.Tensor):
    """Bring ``mask`` to a tensor broadcastable to ``(B, H, Nq, Nk)``.

    Accepted: boolean (True = attend) or additive float masks broadcastable to
    ``(B, H, Nq, Nk)``, and key-padding masks ``(B, Nk)``. A 2-D mask that fits
    both readings (``B == Nq > 1``) is refused rather than guessed.
    """
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    B, H, Nq, _ = q.shape
    Nk = k.shape[2]
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(f"mask must be boolean (True = attend) or an additive float mask, got dtype {mask.dtype}")
    if mask.is_floating_point() and mask.dtype != q.dtype:
        raise TypeError(f"additive mask has dtype {mask.dtype} but q has {q.dtype}; expected the same dtype")
    if mask.device != q.device:
        raise ValueError(f"mask is on device {mask.device} but q is on {q.device}")
    target = (B, H, Nq, Nk)
    if mask.ndim == 2 and B > 1 and tuple(mask.shape) == (B, Nk):
        if Nq == B:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} is ambiguous (batch {B} == q_len {Nq}); reshape it to "
                f"(B, 1, 1, Nk) for key padding or (1, 1, Nq, Nk) for a per-query mask"
            )
        return mask[:, None, None, :]
    if mask.ndim > 4 or not _broadcastable(mask.shape, target):
        raise ValueError(
            f"mask has shape {tuple(mask.shape)}; expected a shape broadcastable to (B, H, Nq, Nk) = {target} "
            f"or a key-padding mask (B, Nk) = {(B, Nk)}"
        )
    while mask.ndim < 4:
        mask = mask.unsqueeze(0)
    return mask


def _broadcastable(shape, target) -> bool:
    if len(shape) > len(target):
        return False
    for s, t in zip(reversed(tuple(shape)), reversed(tuple(target))):
        if s != 1 and s != t:
            return False
    return True


_PATTERN_OF = {(True, False): "causal-self", (False, False): "noncausal-self",
               (True, True): "causal-cross", (False, True): "noncausal-cross"}


def check_pattern(spec, causal: bool, cross: bool) -> None:
    if causal is not True and causal is not False:
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    name = _PATTERN_OF[causal, cross]
    if name not in spec.patterns:
        supported = sorted(spec.patterns)
        what = "causal=True" if causal else "causal=False"
        kind = "cross-attention (q_len != kv_len or separate memory)" if cross else "self-attention"
        raise ValueError(
            f"mechanism {spec.name!r} does not support {what} with {kind} (pattern {name!r}); "
            f"it supports {supported}"
        )


def check_params(spec, params: dict) -> dict:
    """Each value is checked against its declaration (:class:`attnkit.params.Param`); the
    undeclared fall back to their defaults; unknown names are refused."""
    if not params:
        return spec.defaults
    declared = spec.params
    for name, value in params.items():
        p = declared.get(name)
        if p is not None:
            p.check(name, value)
        elif name not in spec.tensor_names:
            _refuse_unknown(spec, params)
    merged = dict(spec.defaults)
    merged.update(params)
    return merged


def check_required_inputs(spec, params: dict) -> None:
    """Every required tensor input (:class:`attnkit.params.TensorInput`) is given; else a TypeError describing it."""
    required = spec.required_inputs
    if not required or all(n in params for n in required):
        return
    missing = [n for n in spec.required_inputs if n not in params]
    described = "; ".join(f"{n}: {spec.inputs[n].describe()}" for n in missing)
    raise TypeError(f"mechanism {spec.name!r} needs the tensor input(s) {missing} ({described}); "
                    f"attnkit.describe({spec.name!r}) lists its inputs")


def check_declared_inputs(spec, q, k, v, params: dict) -> None:
    """The given tensor inputs against their declared shapes (:meth:`attnkit.params.TensorInput.check`); an
    optional one may be None. For calls where no form runs (nothing to compute), whose checks would be skipped."""
    sizes = {"B": q.shape[0], "H": q.shape[1], "Hkv": k.shape[1], "Nq": q.shape[2], "Nk": k.shape[2],
             "D": q.shape[3], "Dk": k.shape[3], "Dv": v.shape[3]}
    for name, declared in spec.inputs.items():
        value = params.get(name)
        if value is not None or (declared.required and name in params):
            declared.check(name, value, sizes)


# Arguments of torch's scaled_dot_product_attention and what attnkit calls them.
SDPA_NAMES = {
    "is_causal": "use causal=True (bottom-right aligned when q_len != kv_len)",
    "attn_mask": "use mask= (boolean, True = attend, or additive float)",
    "enable_gqa": "grouped-query attention needs no flag: pass k and v with fewer heads than q",
}


def _refuse_unknown(spec, params: dict) -> None:
    tensor_names = set(spec.tensor_names)
    unknown = sorted(set(params) - set(spec.params) - tensor_names)
    hints = "".join(f"; {n}: {SDPA_NAMES[n]}" for n in unknown if n in SDPA_NAMES)
    raise TypeError(
        f"mechanism {spec.name!r} got unexpected keyword argument(s) {unknown}{hints}; "
        f"its parameters are {sorted(spec.params)} and its tensor inputs are {sorted(tensor_names)}"
    )


# --- argument checks shared by mechanisms, layers and modules ---------------------------


def check_int(name: str, value, *, minimum: int = 1, optional: bool = False):
    """``value`` must be an int (not a bool) ``>= minimum``; ``None`` passes when ``optional``. Returns it."""
    if value is None and optional:
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_float(name: str, value, *, positive: bool = False, minimum: float | None = None, finite: bool = False):
    """``value`` must be a real number (not a bool): ``> 0`` when ``positive``, ``>= minimum``, finite. Returns it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if finite and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if minimum is not None and not value >= minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_mixer_kind(spec: dict, key: str, options_by_kind: dict[str, tuple]) -> tuple[str, dict]:
    """A ``{key: kind, **options}`` mixer spec: the kind among ``options_by_kind``'s keys and no option
    outside its list (``rope`` belongs to the layer); returns the kind and the given options."""
    kind = spec[key]
    if kind not in options_by_kind:
        raise ValueError(f"a {key} mixer's kind must be one of {tuple(options_by_kind)}, got {kind!r}")
    options = {k: v for k, v in spec.items() if k not in (key, "rope")}
    unknown = sorted(set(options) - set(options_by_kind[kind]))
    if unknown:
        raise ValueError(f"{key} {kind!r} takes options {list(options_by_kind[kind])}, got unknown {unknown}")
    return kind, options


def check_tensor(name: str, t, shape: tuple, like: torch.Tensor, *, what: str = "", optional: bool = False) -> None:
    """``t`` must be a tensor of exactly ``shape`` (``what`` spells the shape out) with ``like``'s dtype and device."""
    spelled = f"{what} = {tuple(shape)}" if what else f"{tuple(shape)}"
    if t is None:
        if optional:
            return
        raise TypeError(f"{name} is required: a tensor of shape {spelled}")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {spelled}, got {type(t).__name__}")
    if t.dtype != like.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but q has {like.dtype}; expected the same dtype")
    if t.device != like.device:
        raise ValueError(f"{name} is on device {t.device} but q is on {like.device}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {spelled}, got {tuple(t.shape)}")


def check_divides(name: str, value: int, divisor_name: str, divisor: int) -> None:
    if value % divisor != 0:
        raise ValueError(f"{name} ({value}) must be divisible by {divisor_name} ({divisor})")


def check_tokens(name: str, x, dim: int) -> None:
    """``x`` must be a floating tensor ``(batch, seq, dim)`` with at least one token."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (batch, seq, {dim}), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.ndim != 3 or x.shape[-1] != dim:
        raise ValueError(f"{name} must have shape (batch, seq, {dim}), got {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has sequence length 0; expected at least one token")


def check_feature_map(x, channels: int, name: str = "x") -> None:
    """``x`` must be a floating-point ``(batch, channels, height, width)`` tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (batch, channels, height, width), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have 4 dimensions (batch, channels, height, width), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.shape[1] != channels:
        raise ValueError(f"{name} has {x.shape[1]} channels but the module was built for {channels}")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{name} has an empty spatial size {tuple(x.shape[2:])}; expected height, width >= 1")


def check_grid(x, size: int, size_name: str, name: str = "x") -> None:
    """Height and width must be multiples of a window / block size."""
    H, W = x.shape[2], x.shape[3]
    if H % size or W % size:
        raise ValueError(f"{name} has spatial size {(H, W)}; height and width must be multiples of {size_name}={size}")
