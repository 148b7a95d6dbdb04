"""Huang et al.'s method 4: the relative embedding meets the query and the key."""
import torch

import attnkit


def _explicit(q, k, v, table, causal):
    """e_ij = (q_i.k_j + q_i.a_ij + k_j.a_ij) / sqrt(D), one pair at a time, a_ij = table[clip(j - i)]."""
    B, H, N, D = q.shape
    K = (table.shape[1] - 1) // 2
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            for i in range(N):
                e = torch.full((N,), float("-inf"), dtype=q.dtype)
                for j in range(N if not causal else i + 1):
                    a = table[h, max(-K, min(K, j - i)) + K]
                    e[j] = (q[b, h, i] @ k[b, h, j] + q[b, h, i] @ a + k[b, h, j] @ a) / D ** 0.5
                out[b, h, i] = torch.softmax(e, 0) @ v[b, h]
    return out


def test_matches_the_papers_equation_pair_by_pair():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 9, 4, dtype=torch.float64) for _ in range(3))
    table = torch.randn(2, 7, 4, dtype=torch.float64)
    for causal in (True, False):
        expected = _explicit(q, k, v, table, causal)
        for form in ("reference", "chunked"):
            out = attnkit.attention(q, k, v, "relative_key_query", causal=causal, table=table, form=form,
                                    **({"q_chunk": 4, "kv_chunk": 3} if form == "chunked" else {}))
            torch.testing.assert_close(out, expected)


def test_the_key_term_moves_weights_where_shaws_query_only_term_cannot():
    """With q = 0, Shaw's q.a vanishes and attention is uniform; method 4 keeps k_j.a_ij."""
    torch.manual_seed(1)
    k, v = (torch.randn(1, 1, 6, 4, dtype=torch.float64) for _ in range(2))
    q = torch.zeros_like(k)
    table = torch.randn(1, 5, 4, dtype=torch.float64)
    shaw = attnkit.attention(q, k, v, "shaw", causal=False, table=table)
    torch.testing.assert_close(shaw, v.mean(2, keepdim=True).expand_as(v))
    ours = attnkit.attention(q, k, v, "relative_key_query", causal=False, table=table)
    assert (ours - shaw).abs().max() > 1e-2


def test_relative_positions_only_a_shifted_window_gives_the_same_output():
    """Scores depend on content and j - i only: the same tokens later in a longer sequence give the same rows."""
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, 2, 12, 4, dtype=torch.float64) for _ in range(3))
    table = torch.randn(2, 5, 4, dtype=torch.float64)
    head = attnkit.attention(q[:, :, 4:], k[:, :, 4:], v[:, :, 4:], "relative_key_query", causal=False, table=table)
    # the full sequence's rows 4.. see keys 0..3 too; masking them leaves the window alone
    mask = torch.zeros(12, 12, dtype=torch.bool)
    mask[:, 4:] = True
    full = attnkit.attention(q, k, v, "relative_key_query", causal=False, mask=mask, table=table)
    torch.testing.assert_close(full[:, :, 4:], head)
