"""Show, Attend and Tell's soft and hard attention, from Xu et al., "Show, Attend and Tell: Neural
Image Caption Generation with Visual Attention" (2015), section 4.

Over annotation vectors ``a_i`` (``L`` image locations) and the previous LSTM
state ``h_{t-1}`` (eq. 4-5):

    e_ti = f_att(a_i, h_{t-1}) = v^T tanh(W_a a_i + W_h h_{t-1}),   alpha_ti = softmax_i(e_ti)

- *soft* (section 4.2): ``z_t = beta_t sum_i alpha_ti a_i`` with the gate
  ``beta_t = sigmoid(f_beta(h_{t-1}))`` (section 4.2.1; ``gate=False`` drops it),
  trained by backpropagation, optionally with the doubly stochastic penalty
  ``lambda sum_i (1 - sum_t alpha_ti)^2`` (eq. 14, :func:`doubly_stochastic_penalty`);
- *hard* (section 4.1): a location ``s_t ~ Multinoulli(alpha_t)`` is sampled and
  ``z_t = a_{s_t}``. Its gradient is the paper's Monte-Carlo estimator (eq. 12),

      dL/dW ~ 1/N sum_n [ d log p(y | s^n, a)/dW
                           + lambda_r (log p(y | s^n, a) - b) d log p(s^n | a)/dW
                           + lambda_e d H[s^n]/dW ],

  with the moving-average baseline ``b_k = 0.9 b_{k-1} + 0.1 log p(y | s_k, a)``:
  :func:`reinforce_loss` is a loss whose gradient is minus that estimate.
"""
from __future__ import annotations

import torch
from torch import nn

from ..validation import check_float, check_int, check_tokens
from .dropout import check_dropout, drop_weights
from .factory import factory_kwargs


@factory_kwargs
class ShowAttendTellAttention(nn.Module):
    """``forward(features, hidden, generator=None) -> (z, alpha, sample, sample_log_prob)``.

    ``features (B, L, feature_dim)`` the annotation vectors, ``hidden (B, hidden_dim)`` the previous LSTM
    state. ``z (B, feature_dim)`` the context, ``alpha (B, L)``; for ``hard=True`` ``sample (B,)`` the sampled
    locations and ``sample_log_prob (B,)`` their ``log alpha`` (else both None). ``dropout``: dropout on the attention weights while training (:mod:`attnkit.nn.dropout`),
    on the ``alpha`` that weighs soft attention's context (hard attention samples one location, and the
    returned ``alpha`` is not dropped).
    """

    def __init__(self, feature_dim: int, hidden_dim: int, attn_dim: int, *, hard: bool = False, gate: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        self.dropout = check_dropout(dropout)
        for name, value in (("feature_dim", feature_dim), ("hidden_dim", hidden_dim), ("attn_dim", attn_dim)):
            check_int(name, value)
        self.feature_dim, self.hidden_dim, self.hard = feature_dim, hidden_dim, hard
        self.W_a = nn.Linear(feature_dim, attn_dim, bias=False)
        self.W_h = nn.Linear(hidden_dim, attn_dim)
        self.v = nn.Parameter(torch.randn(attn_dim) * attn_dim ** -0.5)
        self.f_beta = nn.Linear(hidden_dim, 1) if gate else None

    def forward(self, features, hidden, generator: torch.Generator | None = None):
        check_tokens("features", features, self.feature_dim)
        if not isinstance(hidden, torch.Tensor) or hidden.shape != (features.shape[0], self.hidden_dim):
            raise ValueError(f"hidden must be a tensor of shape {(features.shape[0], self.hidden_dim)}")
        alpha = torch.softmax(self._energies(features, hidden), dim=-1)
        if self.hard:
            sample = torch.multinomial(alpha.detach(), 1, generator=generator).squeeze(1)
            z = features[torch.arange(features.shape[0], device=features.device), sample]
            log_prob = torch.log(alpha.gather(1, sample[:, None]).squeeze(1))
            return z, alpha, sample, log_prob
        z = (drop_weights(self, alpha).unsqueeze(1) @ features).squeeze(1)
        if self.f_beta is not None:
            z = torch.sigmoid(self.f_beta(hidden)) * z
        return z, alpha, None, None

    def _energies(self, features, hidden):
        return torch.tanh(self.W_a(features) + self.W_h(hidden).unsqueeze(1)) @ self.v


def doubly_stochastic_penalty(alphas: torch.Tensor) -> torch.Tensor:
    """``sum_i (1 - sum_t alpha_ti)^2`` per caption (eq. 14 without ``lambda``): ``alphas (B, T, L)`` -> ``(B,)``.

    It pushes the model to attend to every location about once over the caption.
    """
    if not isinstance(alphas, torch.Tensor) or alphas.ndim != 3:
        raise ValueError("alphas must be a tensor of shape (batch, steps, locations)")
    return ((1 - alphas.sum(dim=1)) ** 2).sum(dim=-1)


def reinforce_loss(log_likelihood: torch.Tensor, sample_log_prob: torch.Tensor, entropy: torch.Tensor,
                   baseline: float, *, lambda_r: float = 1.0, lambda_e: float = 0.0) -> tuple[torch.Tensor, float]:
    """The hard-attention training loss and the next baseline: ``(loss, b_next)``.

    ``log_likelihood (N,)`` is ``log p(y | s^n, a)`` per sampled sequence of locations,
    ``sample_log_prob (N,)`` is ``log p(s^n | a)`` (the sum over steps of the sampled locations'
    ``log alpha``), ``entropy (N,)`` is ``H[s^n]`` (the sum over steps of the entropy of
    ``alpha_t``). ``loss.backward()`` gives minus eq. 12's estimate; the baseline update is
    ``b_next = 0.9 b + 0.1 mean(log p(y | s, a))``.
    """
    check_float("baseline", baseline, finite=True)
    check_float("lambda_r", lambda_r, minimum=0.0)
    check_float("lambda_e", lambda_e, minimum=0.0)
    for name, t in (("log_likelihood", log_likelihood), ("sample_log_prob", sample_log_prob), ("entropy", entropy)):
        if not isinstance(t, torch.Tensor) or t.ndim != 1 or t.shape != log_likelihood.shape:
            raise ValueError(f"{name} must be a tensor of shape (N,) like log_likelihood")
    advantage = (log_likelihood - baseline).detach()
    objective = log_likelihood + lambda_r * advantage * sample_log_prob + lambda_e * entropy
    next_baseline = 0.9 * baseline + 0.1 * float(log_likelihood.detach().mean())
    return -objective.mean(), next_baseline
