"""Model configuration: sizes, and which sequence mixer each layer uses.

A layer schedule is a string with one letter per layer (``"LLLF"``: three
linear layers, then one full-attention layer, the ratios "A Systematic Analysis
of Hybrid Linear Attention" studies). ``mixers`` maps each letter to a mixer:

- a mechanism name (``"softmax"``, ``"nha"``, any ``attnkit.mechanisms()`` entry);
- a dict ``{"mechanism": name, "rope": bool, "log_scaling": L, **params}`` to set its parameters;
  ``"rope": False`` makes a NoPE layer, ``"log_scaling": L`` scales its queries by
  ``max(1, log(position + 1) / log(L))`` past the training length ``L`` (SWAN-GPT's dynamic
  scaling, :class:`attnkit.positional.LogScaling`);
- a dict ``{"hymba": [mixer, mixer, ...]}``: parallel hybrid heads in one layer
  (Hymba), the layer's heads split evenly between the branches;
- a dict ``{"titans": "mac" | "mag" | "mal", **options}``: one of Titans' architectures
  around its neural memory (:mod:`attnkit.models.titans`; options ``segment``, ``window``,
  ``persistent``, ``chunk_size``);
- a dict ``{"deconstructed": kind, **options}``: one of Deconstructing Attention's relaxed
  variants (:mod:`attnkit.models.deconstructed`; kinds ``mlp``, ``non_approximate``,
  ``static_emb_qk``, ``rnd_emb_qk`` (options ``length``, ``sigma``), ``fixed_seq_qk`` (option
  ``tokens``); the Approximate variant is the ``based`` mechanism);
- a dict ``{"jetblock": {option: value}}``: Jet-Nemotron's JetBlock (:mod:`attnkit.models.jetblock`;
  options ``conv_size``, ``reduction``, ``expand_v``).

The default maps every letter ``F`` to softmax attention.

Hymba's options (:func:`attnkit.models.hymba_config` builds the paper's recipe):
``meta_tokens`` learnable tokens prepended to every sequence (their outputs are dropped), and
``kv_sharing``: a layer whose letter equals the previous layer's, when that layer does not
itself share, reads the previous layer's keys and values and keeps no cache of its own (for
every attention mechanism without learned tensor inputs, in a Hymba layer branch by branch).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .. import registry
from ..positional import LogScaling
from ..validation import check_int


@dataclass
class ModelConfig:
    vocab_size: int = 256
    dim: int = 128
    heads: int = 4
    kv_heads: int | None = None
    schedule: str = "FFFF"
    mixers: dict = field(default_factory=lambda: {"F": "softmax"})
    mlp_ratio: float = 4.0
    rope: bool = True
    tie_embeddings: bool = True
    # sigmaReparam ("Stabilizing Transformer Training by Preventing Attention Entropy Collapse"): every
    # linear layer of the blocks uses (gamma / sigma(W)) W (attnkit.nn.sigma_reparam).
    sigma_reparam: bool = False
    meta_tokens: int = 0
    kv_sharing: bool = False
    # None: one process. Else the layers split each sequence across the default process group:
    # "lasp2h" (LASP-2 for linear-recurrence layers, all-gather for softmax ones), "ring", "burst" or
    # "ulysses" (for the non-linear layers; linear-recurrence layers run LASP-2 in every scheme).
    context_parallel: str | None = None

    def __post_init__(self):
        for name in ("vocab_size", "dim", "heads"):
            check_int(name, getattr(self, name))
        check_int("meta_tokens", self.meta_tokens, minimum=0)
        if not isinstance(self.kv_sharing, bool):
            raise TypeError(f"kv_sharing must be a bool, got {type(self.kv_sharing).__name__}")
        if not isinstance(self.schedule, str) or not self.schedule:
            raise ValueError(f"schedule must be a non-empty string of layer letters (e.g. 'LLLF'), got {self.schedule!r}")
        if not isinstance(self.mixers, dict):
            raise TypeError(f"mixers must be a dict mapping schedule letters to mixers, got {type(self.mixers).__name__}")
        missing = sorted(set(self.schedule) - set(self.mixers))
        if missing:
            raise ValueError(f"schedule {self.schedule!r} uses letters {missing} that mixers {sorted(self.mixers)} does not define")
        for letter in set(self.schedule):
            spec = mixer_spec(self.mixers[letter], self.rope)  # validates before any module is built
            if ("titans" in spec or "jetblock" in spec or "deconstructed" in spec) and self.context_parallel is not None:
                raise ValueError(f"mixer {letter!r}: Titans' architectures, JetBlock and the deconstructed variants "
                                 "do not run with context_parallel")
            if "log_scaling" in spec and self.context_parallel is not None:
                raise ValueError(f"mixer {letter!r}: log_scaling does not run with context_parallel")
        self.fixed_qk_stream()  # at most one fixed Q/K sequence per model
        if self.context_parallel is not None and (self.kv_sharing or self.meta_tokens):
            raise ValueError("kv_sharing and meta_tokens do not run with context_parallel")
        if self.kv_sharing and not any(p is not None for p in self.kv_producers()):
            raise ValueError(f"kv_sharing: schedule {self.schedule!r} has no two consecutive layers with the same letter "
                             "whose mixer has an attention mechanism without learned tensor inputs")
        if self.context_parallel is not None:
            from ..distributed.layer import SCHEMES
            if self.context_parallel not in SCHEMES:
                raise ValueError(f"context_parallel must be None or one of {SCHEMES}, got {self.context_parallel!r}")

    def layer_mixers(self) -> list[dict]:
        """The normalised mixer spec of every layer, in order (with ``strategy`` and ``layout`` under
        ``context_parallel``: every layer of the model shares one layout)."""
        specs = [mixer_spec(self.mixers[letter], self.rope) for letter in self.schedule]
        if self.context_parallel is not None:
            from ..distributed.layer import layer_strategy, model_layout
            leaves = [s for spec in specs for s in spec.get("hymba", [spec])]
            for leaf in leaves:
                leaf["strategy"] = layer_strategy(self.context_parallel, registry.get(leaf["mechanism"]))
            layout = model_layout([leaf["strategy"] for leaf in leaves])
            for leaf in leaves:
                leaf["layout"] = layout
        return specs

    def fixed_qk_stream(self) -> tuple[str, dict] | None:
        """``(kind, options)`` of the fixed sequence RndEmbQK / FixedSeqQK layers take Q and K from
        (None: no such layer). Every such layer of a model shares one; none with meta tokens."""
        from .deconstructed import QK_SOURCE

        found = {}
        for letter in set(self.schedule):
            spec = mixer_spec(self.mixers[letter], self.rope)
            if QK_SOURCE.get(spec.get("deconstructed")) is not None and self.meta_tokens:
                raise ValueError(f"mixer {letter!r}: Q/K-source variants take no meta_tokens")
            if QK_SOURCE.get(spec.get("deconstructed")) == "fixed":
                found[letter] = (spec["deconstructed"], spec["params"])
        if len({repr(v) for v in found.values()}) > 1:
            raise ValueError(f"mixers {sorted(found)}: a model has one fixed Q/K sequence; give every "
                             "rnd_emb_qk / fixed_seq_qk layer the same kind and options")
        return next(iter(found.values()), None)

    def kv_producers(self) -> list[int | None]:
        """Per layer, the index of the layer whose keys and values it reads (None: its own)."""
        out: list[int | None] = [None] * len(self.schedule)
        if not self.kv_sharing:
            return out
        for i in range(1, len(self.schedule)):
            same = self.schedule[i] == self.schedule[i - 1]
            if same and out[i - 1] is None and _shares(mixer_spec(self.mixers[self.schedule[i]], self.rope)):
                out[i] = i - 1
        return out

    def context_parallel_layout(self) -> str | None:
        """How to shard tokens for this model (``attnkit.distributed.Sharding(N, layout=...)``); None: one process."""
        if self.context_parallel is None:
            return None
        first = self.layer_mixers()[0]
        return first.get("hymba", [first])[0]["layout"]

    def require_pattern(self, pattern: str, model: str) -> None:
        """Refuse a schedule whose mechanisms (every Hymba branch too) lack ``pattern``."""
        for i, spec in enumerate(self.layer_mixers()):
            for s in spec.get("hymba", [spec]):
                if pattern not in registry.get(s["mechanism"]).patterns:
                    raise ValueError(
                        f"layer {i}: mechanism {s['mechanism']!r} has no {_PATTERN_WORDS[pattern]}, "
                        f"so it cannot run in {model}"
                    )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


JETBLOCK_OPTIONS = {"conv_size": 4, "reduction": 8, "expand_v": 2}


def check_jetblock_mixer(spec: dict) -> dict:
    """Validate ``{"jetblock": {options}}`` (:class:`attnkit.models.JetBlock`); returns the options with defaults."""
    options = spec["jetblock"]
    if not isinstance(options, dict) or set(spec) != {"jetblock"}:
        raise ValueError(f"a jetblock mixer is {{'jetblock': {{option: value}}}} with options {list(JETBLOCK_OPTIONS)}, "
                         f"got {spec!r}")
    unknown = sorted(set(options) - set(JETBLOCK_OPTIONS))
    if unknown:
        raise ValueError(f"jetblock takes options {list(JETBLOCK_OPTIONS)}, got unknown {unknown}")
    options = {**JETBLOCK_OPTIONS, **options}
    for name, value in options.items():
        check_int(name, value)
    return options


def shareable(spec: dict) -> bool:
    """Whether a (non-hymba) mixer can read another layer's keys and values: a plain mechanism
    whose layer learns no tensor inputs (its state is whatever the shared call continues)."""
    if "titans" in spec or "hymba" in spec or "jetblock" in spec or "deconstructed" in spec:
        return False
    return not registry.get(spec["mechanism"]).tensor_names


def _shares(spec: dict) -> bool:
    return any(shareable(s) for s in spec["hymba"]) if "hymba" in spec else shareable(spec)


_PATTERN_WORDS = {"causal-self": "causal self-attention", "noncausal-self": "non-causal self-attention"}


def mixer_spec(spec, default_rope: bool) -> dict:
    """Normalise a mixer to ``{"mechanism", "rope", "params"}`` or ``{"hymba": [...]}``."""
    if isinstance(spec, str):
        spec = {"mechanism": spec}
    if not isinstance(spec, dict):
        raise TypeError(f"a mixer must be a mechanism name or a dict, got {type(spec).__name__}")
    if "jetblock" in spec:
        return {"jetblock": check_jetblock_mixer(spec), "mechanism": "gated_deltanet", "rope": False, "params": {}}
    if "deconstructed" in spec:
        from .deconstructed import check_deconstructed_mixer

        return {"deconstructed": spec["deconstructed"], "mechanism": "softmax",
                "rope": bool(spec.get("rope", default_rope)), "params": check_deconstructed_mixer(spec)}
    if "titans" in spec:
        from .titans import check_titans_mixer

        options = check_titans_mixer(spec)
        return {"titans": spec["titans"], "mechanism": "titans", "rope": bool(spec.get("rope", default_rope)),
                "params": options}
    if "hymba" in spec:
        branches = spec["hymba"]
        if set(spec) != {"hymba"} or not isinstance(branches, (list, tuple)) or len(branches) < 2:
            raise ValueError(f"a hymba mixer is {{'hymba': [mixer, mixer, ...]}} with at least two branches, got {spec!r}")
        return {"hymba": [mixer_spec(b, default_rope) for b in branches]}
    if "mechanism" not in spec:
        raise ValueError(f"a mixer dict needs 'mechanism' (or 'hymba', 'titans', 'jetblock', 'deconstructed'), "
                         f"got keys {sorted(spec)}")
    params = {k: v for k, v in spec.items() if k not in ("mechanism", "rope", "log_scaling")}
    mech = registry.get(spec["mechanism"])
    if "causal-self" not in mech.patterns and "noncausal-self" not in mech.patterns:
        raise ValueError(f"mechanism {mech.name!r} supports no self-attention pattern, so it cannot mix a layer")
    out = {"mechanism": mech.name, "rope": bool(spec.get("rope", default_rope)), "params": params}
    if spec.get("log_scaling") is not None:
        LogScaling(spec["log_scaling"])  # validates the training length
        out["log_scaling"] = spec["log_scaling"]
    return out
