"""The mechanism registry: one :class:`MechanismSpec` per attention mechanism.

A spec says everything other code needs to run, test and benchmark a mechanism
without knowing it: the paper it comes from, which of the four attention
patterns it supports, its forms (the float64 reference and the fast forms), its
parameters, and how to count its FLOPs and its state. The conformance suite in
``tests/conformance`` is generated from this registry, so registering a
mechanism is what gets it tested.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .params import Param, TensorInput

PATTERNS = ("causal-self", "noncausal-self", "causal-cross", "noncausal-cross")
ALL_PATTERNS = frozenset(PATTERNS)
SELF_PATTERNS = frozenset({"causal-self", "noncausal-self"})

# A form computes attention: form(q, k, v, *, causal, mask, scale, **params) -> out.
Form = Callable[..., torch.Tensor]
# A step runs one incremental call: step(q, k, v, state, *, causal, mask, scale, **params) -> (out, state).
Step = Callable[..., tuple]
# Makes the extra tensor inputs (per-token gates, learned tables, ...) for given q, k, v.
TensorInputs = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator], dict]


def dense_flops(batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, causal: bool) -> int:
    """Forward FLOPs of exact attention, FlashAttention's convention: 4 * B * H * pairs * D.

    Causal pairs are counted with the bottom-right alignment attnkit uses
    (query i sees keys up to ``kv_len - q_len + i``).
    """
    if causal:
        offset = kv_len - q_len  # query i sees keys 0 .. offset + i
        if offset >= 0:
            pairs = q_len * offset + q_len * (q_len + 1) // 2
        else:
            pairs = kv_len * (kv_len + 1) // 2
    else:
        pairs = q_len * kv_len
    return 4 * batch * heads * pairs * head_dim


def kv_cache_size(batch: int, heads: int, kv_heads: int, seq_len: int, head_dim: int, v_dim: int | None = None,
                  **params) -> int:
    """Numbers held by a KV cache after ``seq_len`` tokens: keys (``head_dim``) and values (``v_dim``)."""
    return batch * kv_heads * seq_len * (head_dim + (v_dim or head_dim))


@dataclass(frozen=True)
class MechanismSpec:
    """Everything the library knows about one mechanism.

    ``reference`` is the plainest correct form of the paper's equations; it must
    run in float64 and is the oracle every fast form is tested against.
    ``fast`` maps form names to faster forms of the same function. ``default_forms``
    declares what a call without ``form=`` runs: the first of these forms whose
    ``can_run`` check passes (may be left empty when there is one fast form, or
    none: then that form, or the reference). ``can_run`` maps a form name to
    ``check(q, k, v, *, causal, mask, **params) -> None | str``: None when the form
    can run this call, else the reason it cannot (a form without a check runs
    every call the spec accepts); ``auto_when`` holds checks of the same kind that
    only the automatic choice applies; see :mod:`attnkit.dispatch`.
    ``stateful_forms`` (recurrent mechanisms) maps ``"parallel"``, ``"chunked"``,
    ``"recurrent"``, ... to forms ``f(q, k, v, *, causal, scale, initial_state=None,
    **params) -> (out, final_state)`` (docs/design.md, "Recurrent-state contract").
    ``step`` is the incremental form; ``None`` means the
    mechanism cannot be run incrementally and the API refuses ``return_state``.
    ``params`` declares the scalar parameters, ``{name: Param(default, type, doc,
    range...)}`` (:mod:`attnkit.params`): the API checks values against it and
    ``spec.defaults`` holds the defaults; ``tensor_inputs``
    makes the extra tensors a mechanism takes (gates, learned tables) so tests
    and benchmarks can call it.  ``tensor_inputs_per_token`` names those that
    are laid out per token ``(B, H, N, ...)`` along the query/key sequence, so
    the causality and incremental tests can slice and perturb them.
    ``state_size(batch, heads, kv_heads, seq_len, head_dim, v_dim=None, **params)``
    counts the numbers a decoder holds after ``seq_len`` tokens (``v_dim``
    defaults to ``head_dim``; ``params`` are the call's parameters, e.g. a window, and
    may include its tensor inputs, for a size read from one). It equals the
    ``numel()`` of the state an incremental call returns.

    ``selection_reads_whole_prompt`` declares a mechanism whose choice of keys reads
    the whole call's queries and keys (later tokens may change an earlier query's
    choice, never its output through a later key): no incremental form, and causality
    means that no query reads a later key.

    ``weights(q, k, v, *, causal, mask, scale, **params) -> (B, H, Nq, Nk)`` is the
    mechanism's attention matrix, float64-capable like the reference: exact for the
    softmax family and the patterns (zeros outside the pattern), implicit for
    recurrent mechanisms (their parallel form, decays and transitions included).
    ``weights @ v`` (v repeated to the query heads) is the reference output unless
    ``weights_output`` is set: then ``weights_output(weights, q, k, v, **params)``
    is, and ``weights_note`` says why ``weights @ v`` is not (an output gate or a
    normalisation after the mixing). Without ``weights``, ``weights_note`` says
    why the mechanism has none; with neither, the weights are those of the
    reference's one materialised softmax (``reference.weights_of_reference``),
    which must give the output.
    """

    name: str
    family: str
    papers: tuple[str, ...]
    patterns: frozenset
    reference: Form
    fast: dict[str, Form]
    step: Step | None = None
    params: dict[str, Param] = field(default_factory=dict)
    # Shape and meaning of each extra tensor input; required ones missing from a call are refused with it.
    inputs: dict[str, TensorInput] = field(default_factory=dict)
    # Forms that take ``dropout_p`` (dropout on explicit attention weights); the API refuses it elsewhere.
    dropout_forms: frozenset = frozenset()
    tensor_inputs: TensorInputs | None = None
    tensor_inputs_per_token: tuple[str, ...] = ()
    # Per-token tensor inputs that are keys (``(B, Hkv, N, D)``, e.g. a branch's own keys): a call's positional
    # encoding (``position=``) rotates them as it rotates k.
    key_inputs: tuple[str, ...] = ()
    supports_mask: bool = True
    # True when which keys a query reads is chosen from the whole call's q and k (a prefill estimator: a later
    # query or key can change an earlier query's choice). Such a mechanism has no incremental form; its causality
    # guarantee is that no query reads a later key, so the conformance suite perturbs only later values.
    selection_reads_whole_prompt: bool = False
    flops: Callable[..., int] = dense_flops
    state_size: Callable[..., int] = kv_cache_size
    complexity: str = "O(N^2)"
    summary: str = ""
    # Parameters the conformance suite uses instead of the defaults (e.g. small
    # chunk sizes so that tests at N=129 really cross chunk boundaries).
    test_params: dict[str, Any] = field(default_factory=dict)
    default_forms: tuple[str, ...] = ()
    can_run: dict[str, Callable[..., str | None]] = field(default_factory=dict)
    auto_when: dict[str, Callable[..., str | None]] = field(default_factory=dict)
    stateful_forms: dict[str, Callable[..., tuple]] | None = None
    weights: Form | None = None
    weights_output: Callable[..., torch.Tensor] | None = None
    weights_note: str = ""
    # Set when the spec stores extra metadata for a family (e.g. the mask function of a pattern).
    extra: dict[str, Any] = field(default_factory=dict)
    # Names of the extra tensor inputs, computed once from ``tensor_inputs`` when the spec is made.
    tensor_names: tuple[str, ...] = field(init=False, default=())
    # ``{name: default}`` of the declared parameters, computed once when the spec is made.
    defaults: dict[str, Any] = field(init=False, default_factory=dict)
    # Names of the tensor inputs a call must pass (declared ``required`` in ``inputs``), computed once.
    required_inputs: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self):
        object.__setattr__(self, "defaults", {name: getattr(p, "default", p) for name, p in self.params.items()})
        object.__setattr__(self, "required_inputs", tuple(n for n, t in self.inputs.items() if t.required))
        if self.tensor_inputs is not None:
            g = torch.Generator().manual_seed(0)
            x = torch.zeros(1, 2, 3, 8)
            object.__setattr__(self, "tensor_names", tuple(self.tensor_inputs(x, x[:, :1], x[:, :1], g)))
        if self.weights_output is not None and not self.weights_note:
            raise ValueError(f"spec {self.name!r} sets weights_output: say in weights_note why weights @ v is not the output")
        if self.selection_reads_whole_prompt and self.step is not None:
            raise ValueError(f"spec {self.name!r}: a selection that reads the whole prompt has no incremental form")
        names = ("reference", *self.fast)
        for form in (*self.default_forms, *self.can_run, *self.auto_when):
            if form not in names:
                raise ValueError(f"spec {self.name!r}: {form!r} in default_forms/can_run/auto_when is not one of its forms {names}")
        if not self.default_forms and len(self.fast) > 1:
            raise ValueError(f"spec {self.name!r} has fast forms {list(self.fast)}: declare default_forms "
                             "(what a call without form= runs)")

    def __reduce__(self):
        """Pickled by name (its forms are closures): a layer holding a spec survives ``torch.save``."""
        return (get, (self.name,))

    @property
    def forms(self) -> tuple[str, ...]:
        names = ["reference", *self.fast]
        if self.step is not None:
            names.append("incremental")
        return tuple(names)

    @property
    def default_order(self) -> tuple[str, ...]:
        """The forms a call without ``form=`` tries, in order (the declared ``default_forms``)."""
        if self.default_forms:
            return self.default_forms
        return tuple(self.fast) or ("reference",)

    def form(self, name: str) -> Form:
        """The callable of the form called ``name`` (``attnkit.dispatch.choose_form`` picks the name)."""
        if name == "reference":
            return self.reference
        if name in self.fast:
            return self.fast[name]
        raise ValueError(
            f"form={name!r} is not a form of mechanism {self.name!r}; expected one of "
            f"{[f for f in self.forms if f != 'incremental']}"
        )

    def supports(self, causal: bool, cross: bool) -> bool:
        return pattern_name(causal, cross) in self.patterns

    def describe(self) -> dict:
        """A JSON-friendly summary (used by ``attnkit list --json``)."""
        return {
            "name": self.name,
            "family": self.family,
            "papers": list(self.papers),
            "patterns": [p for p in PATTERNS if p in self.patterns],
            "forms": list(self.forms),
            "params": {n: {"default": p.default, "allowed": p.describe(), "doc": p.doc} for n, p in self.params.items()},
            "tensor_inputs": list(self.tensor_names),
            "complexity": self.complexity,
            "summary": self.summary,
            "weights": self.weights_description(),
        }

    def weights_description(self) -> str:
        """What ``attention(..., return_weights=True)`` gives for this mechanism, in one sentence."""
        if self.weights is None and self.weights_note:
            return f"none: {self.weights_note}"
        if self.weights is None:
            return "exact, from the reference's materialised softmax: weights @ v is the output"
        if self.weights_output is None:
            return "exact: weights @ v is the output"
        return f"weights @ v is not the output: {self.weights_note}"


def pattern_name(causal: bool, cross: bool) -> str:
    return f"{'causal' if causal else 'noncausal'}-{'cross' if cross else 'self'}"


_REGISTRY: dict[str, MechanismSpec] = {}
# Old names, so that a call with one says the new name.
RENAMED = {"rela-gated": "rela_gated"}


def register(spec: MechanismSpec) -> MechanismSpec:
    """Add a mechanism to the registry. Names are unique."""
    if spec.name in _REGISTRY:
        raise ValueError(f"mechanism {spec.name!r} is already registered")
    bad = set(spec.patterns) - ALL_PATTERNS
    if bad:
        raise ValueError(f"spec {spec.name!r}: unknown patterns {sorted(bad)}; expected a subset of {PATTERNS}")
    _check_declarations(spec)
    _REGISTRY[spec.name] = spec
    return spec


def _check_declarations(spec: MechanismSpec) -> None:
    """Every parameter is a :class:`Param` whose default it accepts."""
    for name, p in spec.params.items():
        if not isinstance(p, Param):
            raise TypeError(f"spec {spec.name!r}: parameter {name!r} must be declared as attnkit.params.Param(default, "
                            f"type, doc, ...), got {p!r}")
        p.check(name, p.default)
        if name in spec.test_params:
            p.check(name, spec.test_params[name])
    unknown = set(spec.test_params) - set(spec.params)
    if unknown:
        raise ValueError(f"spec {spec.name!r}: test_params {sorted(unknown)} are not declared parameters")


def get(name: str) -> MechanismSpec:
    """The spec registered under ``name``; a ValueError naming close matches otherwise."""
    if not _loaded:
        _load_all()
    spec = _REGISTRY.get(name) if isinstance(name, str) else None
    if spec is not None:
        return spec
    if not isinstance(name, str):
        raise TypeError(f"mechanism must be a string naming a registered mechanism, got {type(name).__name__}")
    try:
        return _REGISTRY[name]
    except KeyError:
        if name in RENAMED:
            raise ValueError(f"mechanism {name!r} is now called {RENAMED[name]!r}") from None
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.4)
        hint = f"; closest registered names: {close}" if close else ""
        raise ValueError(
            f"unknown mechanism {name!r}{hint}. `attnkit list` shows all {len(_REGISTRY)} mechanisms"
        ) from None


def names(family: str | None = None) -> list[str]:
    _load_all()
    return sorted(n for n, s in _REGISTRY.items() if family is None or s.family == family)


_loaded = False


def _load_all() -> None:
    """Import every module in ``attnkit.families`` so their specs register."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib
    import pkgutil

    # Registering makes each spec's example tensor inputs on the CPU, whatever default device the
    # caller has set (a layer built with device="meta" may be what loads the registry first).
    with torch.device("cpu"):
        package = importlib.import_module(f"{__package__}.families")
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{info.name}")
