"""attnkit: attention mechanisms from the literature behind one PyTorch API.

    import attnkit
    out = attnkit.attention(q, k, v, "softmax", causal=True)
    attnkit.mechanisms()          # registered names
    attnkit.spec("alibi")         # paper, patterns, forms, params, FLOPs, state size
    attnkit.explain(q, k, v, "sliding_window", causal=True)   # which form runs, and why
"""
from . import nn, positional
from .api import attention, explain, mechanisms, spec
from .registry import PATTERNS, MechanismSpec, register

__version__ = "0.1.0"
__all__ = ["nn", "positional", "attention", "explain", "mechanisms", "spec", "register", "MechanismSpec", "PATTERNS", "__version__"]
