"""attnkit: attention mechanisms from the literature behind one PyTorch API.

    import attnkit
    out = attnkit.attention(q, k, v, "softmax", causal=True)
    attnkit.mechanisms()          # registered names
    attnkit.spec("alibi")         # paper, patterns, forms, params, FLOPs, state size
    attnkit.explain(q, k, v, "sliding_window", causal=True)   # which form runs, and why
    print(attnkit.describe("gla"))  # the same for a reader: parameters, tensor inputs, an example
    out, w = attnkit.attention(q, k, v, "gla", causal=True, g=g, return_weights=True)  # (B, H, N, N)
    with attnkit.capture(model) as rec:    # the weights of every attention call of a model
        model(x)
"""
from . import cache, nn, positional
from .api import attention, explain, mechanisms, spec
from .capture import capture
from .flex import flex_attention
from .mechanism_info import describe
from .registry import PATTERNS, MechanismSpec, register

__version__ = "0.1.0"
__all__ = ["cache", "nn", "positional", "attention", "capture", "explain", "flex_attention", "mechanisms", "spec", "describe",
           "register", "MechanismSpec", "PATTERNS", "__version__"]
