"""Twins-PCPVT (Chu et al.; "Twins: Revisiting the Design of Spatial Attention in Vision
Transformers"): the Pyramid Vision Transformer with its absolute position embeddings replaced
by the conditional position encoding generator (PEG) of CPVT.

- Each of the four stages starts with a patch embedding (a ``patch x patch`` stride-``patch``
  convolution, then LayerNorm) and stacks PVT layers: pre-norm transformer layers whose
  attention takes its keys and values from the map reduced by a stride-``sr`` convolution
  (spatial-reduction attention, the same layer as Twins-SVT's global sub-sampled attention,
  :class:`~attnkit.nn.vision.twins.GlobalSubsampledAttention`).
- **PEG**: after the first layer of every stage, ``x <- x + DWConv3x3(x)`` (a depth-wise 3x3
  convolution with bias): positions are encoded from the local neighbourhood, so the model
  takes any input size.
- Classification: LayerNorm after the last stage, global average pooling, a linear head.

:func:`twins_pcpvt` builds the paper's Small / Base / Large models (24.1 M, 43.8 M, 60.9 M
parameters with 1000 classes, Table 1); :class:`PCPVTStage` is one stage.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ...validation import check_feature_map, check_int
from ..factory import factory_kwargs
from .twins import GlobalSubsampledAttention

PAPER = "Twins: Revisiting the Design of Spatial Attention in Vision Transformers"

# dims, heads, mlp ratios, depths per stage (sr ratios 8, 4, 2, 1 and patches 4, 2, 2, 2 for all three)
VARIANTS = {
    "small": ((64, 128, 320, 512), (1, 2, 5, 8), (8, 8, 4, 4), (3, 4, 6, 3)),
    "base": ((64, 128, 320, 512), (1, 2, 5, 8), (8, 8, 4, 4), (3, 4, 18, 3)),
    "large": ((64, 128, 320, 512), (1, 2, 5, 8), (8, 8, 4, 4), (3, 8, 27, 3)),
}
SR_RATIOS, PATCHES = (8, 4, 2, 1), (4, 2, 2, 2)


@factory_kwargs
class ConditionalPositionEncoding(nn.Module):
    """CPVT's PEG on an NCHW map: ``x + DWConv3x3(x)``."""

    paper = "Conditional Positional Encodings for Vision Transformers"

    def __init__(self, dim: int):
        super().__init__()
        self.dim = check_int("dim", dim)
        self.proj = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.dim)
        return x + self.proj(x)


@factory_kwargs
class PCPVTStage(nn.Module):
    """Patch embedding, then ``depth`` spatial-reduction attention layers with the PEG after the first
    (a stage changes the map's size, so it is not in the catalogue of same-shape modules)."""

    def __init__(self, in_dim: int, dim: int, *, depth: int, heads: int, sr_ratio: int, mlp_ratio: float, patch: int):
        super().__init__()
        self.in_dim, self.dim = check_int("in_dim", in_dim), check_int("dim", dim)
        self.patch = check_int("patch", patch)
        check_int("depth", depth)
        self.embed = nn.Conv2d(in_dim, dim, patch, stride=patch)
        self.embed_norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(GlobalSubsampledAttention(dim, heads, sr_ratio, mlp_ratio) for _ in range(depth))
        self.position = ConditionalPositionEncoding(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.in_dim)
        if x.shape[-2] % self.patch or x.shape[-1] % self.patch:
            raise ValueError(f"x's height and width {tuple(x.shape[-2:])} must be multiples of patch={self.patch}")
        x = self.embed(x)
        x = self.embed_norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i == 0:
                x = self.position(x)
        return x


@factory_kwargs
class TwinsPCPVT(nn.Module):
    """Four :class:`PCPVTStage` s, LayerNorm, global average pooling, a linear classifier: ``(B, 3, H, W) -> (B, classes)``."""

    def __init__(self, dims, heads, mlp_ratios, depths, *, in_channels: int = 3, num_classes: int = 1000):
        super().__init__()
        if not len(dims) == len(heads) == len(mlp_ratios) == len(depths) == 4:
            raise ValueError("dims, heads, mlp_ratios and depths must give four stages each")
        ins = (check_int("in_channels", in_channels),) + tuple(dims[:-1])
        self.stages = nn.ModuleList(
            PCPVTStage(i, d, depth=n, heads=h, sr_ratio=sr, mlp_ratio=r, patch=p)
            for i, d, h, r, n, sr, p in zip(ins, dims, heads, mlp_ratios, depths, SR_RATIOS, PATCHES))
        self.norm = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], check_int("num_classes", num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map ``(B, dims[-1], H / 32, W / 32)``."""
        for stage in self.stages:
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.norm(self.features(x).flatten(2).transpose(1, 2)).mean(1)
        return self.head(pooled)


def twins_pcpvt(variant: str = "small", **kwargs) -> TwinsPCPVT:
    """The paper's Twins-PCPVT-S / B / L (``variant`` ``"small"``, ``"base"``, ``"large"``)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    return TwinsPCPVT(*VARIANTS[variant], **kwargs)
