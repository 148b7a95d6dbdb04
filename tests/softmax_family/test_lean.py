"""LeanAttention's stream-K decode: the schedule, the exact merge, the threaded workers."""
import pytest
import torch

import attnkit
from attnkit.kernels.lean import _pieces, lean_attention, stream_k_runs
from attnkit.reference import materialised_attention


def test_stream_k_runs_split_the_work_evenly_across_head_boundaries():
    runs = stream_k_runs(units_per_head=5, heads=3, workers=4)  # 15 units
    assert runs[0][0] == 0 and runs[-1][1] == 15
    assert all(a[1] == b[0] for a, b in zip(runs, runs[1:]))
    assert max(b - a for a, b in runs) - min(b - a for a, b in runs) <= 1
    pieces = [p for r in runs for p in _pieces(r, 5)]
    covered = [(h, u) for h0, h1, u0, u1 in pieces for h in range(h0, h1) for u in range(u0, u1)]
    assert covered == [(h, u) for h in range(3) for u in range(5)]  # every unit once, in order
    assert _pieces((5, 15), 5) == [(1, 3, 0, 5)]  # whole heads are one batched piece


@pytest.mark.parametrize("B,H,Hkv,Nq,Nk,workers,tile", [
    (1, 8, 8, 1, 300, 2, 64),    # decode, heads split evenly
    (1, 1, 1, 1, 300, 5, 16),    # one head cut between five workers
    (2, 6, 2, 3, 97, 4, 8),      # GQA, a few causal queries (speculative decoding), ragged last tile
    (3, 3, 3, 1, 50, 7, 1),      # more workers than heads, one-key tiles
])
def test_merged_partial_states_equal_the_float64_reference(B, H, Hkv, Nq, Nk, workers, tile):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, Nq, 16, generator=g, dtype=torch.float64)
    k, v = (torch.randn(B, Hkv, Nk, 16, generator=g, dtype=torch.float64) for _ in range(2))
    ref = materialised_attention(q, k, v, causal=True, mask=None, scale=0.25)
    out = lean_attention(q, k, v, causal=True, mask=None, scale=0.25, workers=workers, tile=tile)
    assert (out - ref).abs().max() < 1e-12


def test_masks_and_fully_masked_rows():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, 2, 16, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, 4, 40, 16, generator=g, dtype=torch.float64) for _ in range(2))
    mask = torch.rand(2, 1, 2, 40, generator=g) < 0.5
    mask[0, 0, 1] = False  # batch 0, query 1 sees no key
    ref = materialised_attention(q, k, v, causal=False, mask=mask, scale=0.25)
    out = lean_attention(q, k, v, causal=False, mask=mask, scale=0.25, workers=3, tile=8)
    assert (out - ref).abs().max() < 1e-12 and torch.equal(out[0, :, 1], torch.zeros_like(out[0, :, 1]))
    additive = torch.randn(1, 4, 1, 40, generator=g, dtype=torch.float64)
    ref = materialised_attention(q, k, v, causal=False, mask=additive, scale=0.25)
    assert (lean_attention(q, k, v, causal=False, mask=additive, scale=0.25, workers=2, tile=8) - ref).abs().max() < 1e-12


def test_threaded_workers_match_the_sequential_schedule_and_restore_the_thread_count():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 3, 1, 32, generator=g)
    k, v = (torch.randn(1, 3, 5000, 32, generator=g) for _ in range(2))
    threads = torch.get_num_threads()
    with torch.no_grad():
        threaded = attnkit.attention(q, k, v, "lean", causal=True, workers=2, tile=128)
    assert torch.get_num_threads() == threads
    sequential = lean_attention(q.requires_grad_(), k, v, causal=True, mask=None, scale=32 ** -0.5, workers=2,
                                tile=128)  # under autograd the workers run on the calling thread
    assert torch.equal(threaded, sequential.detach())


def test_decode_steps_on_a_kv_cache_equal_one_call():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 4, 40, 16, generator=g) for _ in range(3))
    whole = attnkit.attention(q, k, v, "lean", causal=True, tile=8)
    out, state = attnkit.attention(q[:, :, :32], k[:, :, :32], v[:, :, :32], "lean", causal=True, tile=8,
                                   state=None, return_state=True)
    steps = [out]
    for t in range(32, 40):
        o, state = attnkit.attention(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], "lean", causal=True,
                                     tile=8, state=state, return_state=True)
        steps.append(o)
    assert (torch.cat(steps, dim=2) - whole).abs().max() < 1e-5


@pytest.mark.parametrize("params,error", [({"workers": 0}, ValueError), ({"tile": 2.5}, TypeError)])
def test_bad_parameters_are_refused(params, error):
    q = torch.randn(1, 2, 1, 8)
    with pytest.raises(error, match=next(iter(params))):
        attnkit.attention(q, q, q, "lean", causal=True, **params)
