"""Seeing attention: attributions of a model's outputs to its input tokens, attention sinks, calibration.

The attention weights come from ``attnkit.capture`` (every ``attnkit.attention`` call of a
model, with gradients when asked). On top of them:

- :func:`rollout` and :func:`attention_flow`: Abnar & Zuidema's rollout and max-flow;
- :func:`self_relevancy` / :func:`relevancy`: Chefer et al.'s gradient-weighted relevancy
  for self- and cross-attention;
- :func:`attn_lrp`: AttnLRP, layer-wise relevance propagation through softmax attention;
- :func:`explain_similarity`: a MiniLM sentence-pair similarity explained token by token;
- :func:`sink_stats`, :func:`massive_activations`: attention sinks per layer and head, and the
  hidden-state entries behind them;
- :func:`calibrated`, :func:`search_heads`: ACT, training-free attention calibration;
- :func:`moa_profile`, :func:`moa_search`: MoA's per-head elastic windows chosen from the attention
  influence under a density budget (:mod:`attnkit.interpret.moa_search`).
"""
from .calibration import calibrate_weights, calibrated, search_heads
from .flow import attention_flow
from .lrp import Relevance, attn_lrp
from .moa_search import MoAPlan, attention_influence
from .moa_search import profile as moa_profile
from .moa_search import search as moa_search
from .relevancy import relevancy, self_relevancy
from .rollout import layer_matrices, rollout
from .similarity import SimilarityExplanation, explain_similarity
from .sinks import massive_activations, sink_stats

__all__ = ["MoAPlan", "Relevance", "attention_influence", "moa_profile", "moa_search", "SimilarityExplanation", "attn_lrp", "attention_flow", "calibrate_weights", "calibrated", "explain_similarity",
           "layer_matrices", "massive_activations", "relevancy", "rollout", "search_heads", "self_relevancy",
           "sink_stats"]
