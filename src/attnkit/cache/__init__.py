"""A KV cache that really shrinks during generation, with eviction policies.

    import attnkit
    policy = attnkit.cache.H2O(0.25)                       # keep a quarter of the prompt
    cache = attnkit.cache.Cache(policy, model=model)        # a transformers Cache
    model.generate(ids, past_key_values=cache, max_new_tokens=64)

    state = attnkit.cache.KVState(attnkit.cache.StreamingLLM(256))   # attnkit's incremental API
    out, state = attnkit.attention(q, k, v, "softmax", causal=True, state=state, return_state=True)

See ``docs/kv-cache.md``.
"""
from .adakv import AdaKV
from .expected_attention import ExpectedAttention
from .h2o import H2O
from .kivi import KIVI
from .knorm import KeyNorm
from .policy import NoCompression, Policy
from .pyramid import PyramidKV
from .ragged import RaggedKV
from .razor import RazorAttention
from .snapkv import SnapKV
from .state import KVState, layer_states
from .store import LayerKV
from .streaming import StreamingLLM
from .tova import TOVA

__all__ = ["Cache", "CacheLayer", "KVState", "LayerKV", "layer_states", "Policy", "NoCompression", "StreamingLLM",
           "H2O", "TOVA", "SnapKV", "KeyNorm", "PyramidKV", "KIVI", "ExpectedAttention",
           "AdaKV", "RazorAttention", "RaggedKV"]


def __getattr__(name):
    """``Cache`` / ``CacheLayer`` import transformers, which is optional: loaded on first use."""
    if name in ("Cache", "CacheLayer"):
        from . import hf

        return getattr(hf, name)
    raise AttributeError(f"module 'attnkit.cache' has no attribute {name!r}")
