"""Seeing attention: attributions of a model's outputs to its input tokens, attention sinks, calibration.

The attention weights come from ``attnkit.capture`` (every ``attnkit.attention`` call of a
model, with gradients when asked). On top of them:

- :func:`rollout` and :func:`attention_flow`: Abnar & Zuidema's rollout and max-flow;
- :func:`self_relevancy` / :func:`relevancy`: Chefer et al.'s gradient-weighted relevancy
  for self- and cross-attention;
- :func:`explain_similarity`: a MiniLM sentence-pair similarity explained token by token.
"""
from .flow import attention_flow
from .relevancy import relevancy, self_relevancy
from .rollout import layer_matrices, rollout
from .similarity import SimilarityExplanation, explain_similarity

__all__ = ["SimilarityExplanation", "attention_flow", "explain_similarity", "layer_matrices", "relevancy", "rollout",
           "self_relevancy"]
