"""Layers built on :func:`attnkit.attention`: use any registered mechanism inside a model.

    from attnkit.nn import Attention
    layer = Attention(256, heads=8, kv_heads=2, mechanism="softmax", rope=True)
    y = layer(x, causal=True)                        # self-attention
    y, state = layer(x[:, :5], causal=True, return_state=True)   # then decode with state
    y = layer(x, context=memory)                     # cross-attention

See docs/layers.md for every module here; ``attnkit.nn.vision`` holds the vision
attention modules (NCHW in, NCHW out, docs/vision.md).
"""
from .agent import AgentAttention
from .bidaf import BiDAFAttention
from .location_sensitive import LocationSensitiveAttention
from .luong import LuongAttention
from .peg import PositionalEncodingGenerator
from .pointer import PointerAttention
from .sigma_reparam import SigmaReparamLinear, attention_entropy, sigma_reparam
from .show_attend_tell import ShowAttendTellAttention, doubly_stochastic_penalty, reinforce_loss
from .attention import Attention, CrossAttentionCache
from .bottleneck import PerceiverEncoder, PoolingByMultiheadAttention
from .decoupled import DecoupledCrossAttention
from .dual_cross import GlobalLocalCrossAttention, PairwiseCrossAttention, attention_rollout
from .flatten import FocusedLinearAttention
from .nystromformer import NystromAttention
from .gpsa import GatedPositionalSelfAttention
from .gaussian_adaptive import GaussianAdaptiveAttention
from .grouped import WeightedGQA, mean_pool_kv
from .head_embeddings import HeadEmbeddingAttention
from .key_driven import KeyDrivenGQA, allocate_queries
from .latent import LatentCache, MultiHeadLatentAttention
from .mamba2 import Mamba2Layer
from .rwkv6 import RWKV6TimeMix
from .rwkv7 import RWKV7TimeMix
from .path import PaTHAttention
from .pay_better import PayBetterAttention
from .relational import RelationalAttention
from .mixture_of_attention import MixtureOfAttentionHeads
from .mixture_of_heads import MixtureOfHeads
from .multi_source import MultiSourceCrossAttention
from .multihead import MultiheadAttention
from .retention import MultiScaleRetention
from .slot_attention import SlotAttention

__all__ = [
    "Attention", "CrossAttentionCache", "MultiheadAttention",
    "WeightedGQA", "mean_pool_kv", "KeyDrivenGQA", "allocate_queries",
    "MultiHeadLatentAttention", "LatentCache", "MixtureOfHeads", "MixtureOfAttentionHeads",
    "MultiSourceCrossAttention", "PerceiverEncoder", "PoolingByMultiheadAttention", "SlotAttention",
    "DecoupledCrossAttention",
    "LuongAttention", "LocationSensitiveAttention", "PointerAttention", "ShowAttendTellAttention",
    "doubly_stochastic_penalty", "reinforce_loss", "BiDAFAttention",
    "GlobalLocalCrossAttention", "PairwiseCrossAttention", "attention_rollout",
    "SigmaReparamLinear", "sigma_reparam", "attention_entropy", "GatedPositionalSelfAttention",
    "PositionalEncodingGenerator",
    "FocusedLinearAttention", "NystromAttention", "AgentAttention", "MultiScaleRetention", "Mamba2Layer", "RWKV6TimeMix", "RWKV7TimeMix", "PaTHAttention", "RelationalAttention",
    "HeadEmbeddingAttention", "PayBetterAttention", "GaussianAdaptiveAttention",
]
