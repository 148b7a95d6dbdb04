"""RWKV-6's time-mixing block: the paper's equations token by token, and decoding in pieces."""
import torch
import torch.nn.functional as F

from attnkit.nn import RWKV6TimeMix

from .layer_checks import assert_continues_in_pieces, perturbed


def _block(seed=0):
    torch.manual_seed(seed)
    return perturbed(RWKV6TimeMix(8, 2, rank=3, decay_rank=4, chunk_size=4).double())


def _paper(block, x):
    """Eagle and Finch eq. 9-19 one token at a time: wkv_t = diag(u) k^T v + s, s' = diag(w) s + k^T v."""
    B, N, C = x.shape
    H, D = block.heads, block.head_dim
    s = x.new_zeros(B, H, D, D)  # (Dk, Dv) per head
    prev = x.new_zeros(B, C)
    A = block.mix_down.weight.T.view(C, 5, -1)  # the shared A, in its five blocks
    outs = []
    for t in range(N):
        xt = x[:, t]
        dx = prev - xt
        prev = xt
        y = xt + dx * block.mix_x
        lerp = [xt + dx * (block.mix[i] + torch.tanh(y @ A[:, i]) @ block.mix_up[i]) for i in range(5)]
        xw, xk, xv, xr, xg = lerp
        r, k, v = (lin(z).view(B, H, D) for lin, z in ((block.receptance, xr), (block.key, xk), (block.value, xv)))
        g = F.silu(block.gate(xg))
        w = torch.exp(-torch.exp(block.decay + block.decay_up(torch.tanh(block.decay_down(xw))))).view(B, H, D)
        kv = k[..., :, None] * v[..., None, :]
        wkv = block.bonus[..., None] * kv + s
        p = (r[..., None, :] @ wkv).squeeze(-2).reshape(B, C)
        s = w[..., None] * s + kv
        p = F.group_norm(p, H, block.norm.weight, block.norm.bias, eps=64e-5)
        outs.append(block.output(p * g))
    return torch.stack(outs, 1)


def test_the_block_is_the_papers_recurrence_token_by_token():
    block = _block()
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    torch.testing.assert_close(block(x), _paper(block, x))


def test_decoding_in_pieces_equals_one_shot_the_token_shift_is_carried():
    block = _block(seed=1)
    _, _, s3 = assert_continues_in_pieces(block, torch.randn(2, 10, 8, dtype=torch.float64), (3, 4))
    assert s3.length == 10
