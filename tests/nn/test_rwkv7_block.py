"""RWKV-7's time-mixing block: the paper's equations token by token, and decoding in pieces."""
import math

import torch
import torch.nn.functional as F

from attnkit.nn import RWKV7TimeMix
from attnkit.nn.rwkv7 import RWKV7State

from .layer_checks import assert_continues_in_pieces, perturbed


def _block(dim=8, heads=2, seed=0):
    torch.manual_seed(seed)
    return perturbed(RWKV7TimeMix(dim, heads, rank=4, chunk_size=4).double())


def _paper(block, x):
    """The row-vector recurrence of the paper, one token at a time, with the block's parameters."""
    B, N, C = x.shape
    H, D = block.heads, block.head_dim
    mu = block.mix
    wkv = x.new_zeros(B, H, D, D)  # (Dv, Dk) per head
    prev = x.new_zeros(B, C)
    outs = []
    for t in range(N):
        xt = x[:, t]
        xr, xw, xk, xv, xa, xg = (xt + (prev - xt) * mu[s] for s in range(6))
        prev = xt
        r, k, v = block.receptance(xr), block.key(xk), block.value(xv)
        w = torch.exp(-math.exp(-0.5) * torch.sigmoid(block.w0 + block.decay_lora(xw)))
        a = torch.sigmoid(block.a0 + block.rate_lora(xa))
        g = torch.sigmoid(xg @ block.gate_lora[0].weight.T) @ block.gate_lora[2].weight.T
        kappa = F.normalize((k * block.removal_scale).view(B, H, D), dim=-1)
        k_new = (k * (1 + (a - 1) * block.replacement_scale)).view(B, H, D)
        r, v, w, a = (z.view(B, H, D) for z in (r, v, w, a))
        transition = torch.diag_embed(w) - kappa[..., :, None] * (a * kappa)[..., None, :]
        wkv = wkv @ transition + v[..., :, None] * k_new[..., None, :]
        p = (wkv @ r[..., None]).squeeze(-1)  # (B, H, Dv)
        p = F.group_norm(p.reshape(B, C), H, block.norm.weight, block.norm.bias, eps=64e-5)
        bonus = ((r * block.bonus * k_new).sum(-1, keepdim=True) * v).reshape(B, C)
        outs.append(block.output((p + bonus) * g))
    return torch.stack(outs, 1)


def test_the_block_is_the_papers_recurrence_token_by_token():
    block = _block()
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    torch.testing.assert_close(block(x), _paper(block, x))


def test_decoding_in_pieces_equals_one_shot_the_token_shift_is_carried():
    block = _block(seed=1)
    x = torch.randn(2, 10, 8, dtype=torch.float64)
    s1, _, s3 = assert_continues_in_pieces(block, x, (3, 4))
    assert isinstance(s3, RWKV7State) and s3.length == 10
    torch.testing.assert_close(s1.shift, x[:, 2])


def test_without_the_carried_token_the_next_piece_differs():
    block = _block(seed=2)
    x = torch.randn(1, 6, 8, dtype=torch.float64)
    _, s = block(x[:, :3], return_state=True)
    lost = RWKV7State(torch.zeros_like(s.shift), s.wkv)
    assert (block(x[:, 3:], state=lost) - block(x)[:, 3:]).abs().max() > 1e-3
