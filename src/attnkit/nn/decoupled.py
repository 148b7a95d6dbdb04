"""Decoupled cross-attention, from Ye et al., "IP-Adapter: Text Compatible Image Prompt
Adapter for Text-to-Image Diffusion Models" (2023).

A frozen text cross-attention layer is extended with a second cross-attention
over image-prompt features that shares its queries but has its own key and
value projections ``W'_K``, ``W'_V``; the two results are added with a weight:

    Z = Attention(Q, K_text, V_text) + scale * Attention(Q, K_image, V_image),

before the (shared) output projection. Only ``W'_K``, ``W'_V`` are new
(:meth:`adapter_parameters`); they start as copies of the text projections
when the widths match, as the paper does. ``scale=0`` gives back the text-only layer.
"""
from __future__ import annotations

from torch import nn

from ..api import attention
from .attention import Attention
from ..validation import check_float, check_int, check_tokens
from .dropout import dropout_p
from .factory import factory_kwargs


@factory_kwargs
class DecoupledCrossAttention(nn.Module):
    """IP-Adapter's decoupled cross-attention: a text cross-attention plus a separate image
    cross-attention whose output is added with weight ``scale``. See the module docstring. The
    attention-weight dropout is the text layer's (``text_attention.dropout``), in both attentions.
    """

    def __init__(self, text_attention: Attention, image_dim: int, *, scale: float = 1.0):
        super().__init__()
        if not isinstance(text_attention, Attention):
            raise TypeError(f"text_attention must be an attnkit.nn.Attention, got {type(text_attention).__name__}")
        check_int("image_dim", image_dim)
        check_float("scale", scale, finite=True)
        self.text = text_attention
        inner, bias = text_attention.kv_heads * text_attention.head_dim, text_attention.k_proj.bias is not None
        dtype = text_attention.k_proj.weight.dtype
        self.image_k = nn.Linear(image_dim, inner, bias=bias, dtype=dtype)
        self.image_v = nn.Linear(image_dim, inner, bias=bias, dtype=dtype)
        if image_dim == text_attention.context_dim:
            self.image_k.load_state_dict(text_attention.k_proj.state_dict())
            self.image_v.load_state_dict(text_attention.v_proj.state_dict())
        self.image_dim, self.scale = image_dim, scale

    def adapter_parameters(self):
        """The new parameters (the text layer stays frozen when training the adapter)."""
        return [*self.image_k.parameters(), *self.image_v.parameters()]

    def forward(self, x, text, image, *, scale: float | None = None, text_mask=None, image_mask=None):
        """``x (B, N, dim)``, ``text (B, M, context_dim)``, ``image (B, P, image_dim)`` -> ``(B, N, dim)``."""
        t = self.text
        check_tokens("x", x, t.dim)
        check_tokens("text", text, t.context_dim)
        check_tokens("image", image, self.image_dim)
        scale = self.scale if scale is None else scale
        q = t.split_heads(t.q_proj(x), t.heads)
        if t.q_norm is not None:
            q = t.q_norm(q)
        k, v = t.project_kv(text)
        z = attention(q, k, v, t.mechanism, mask=text_mask, dropout_p=dropout_p(t), **t.mechanism_params)
        ki = t.split_heads(self.image_k(image), t.kv_heads)
        if t.k_norm is not None:
            ki = t.k_norm(ki)
        vi = t.split_heads(self.image_v(image), t.kv_heads)
        z = z + scale * attention(q, ki, vi, t.mechanism, mask=image_mask, dropout_p=dropout_p(t), **t.mechanism_params)
        return t.merge_heads(z, x)
