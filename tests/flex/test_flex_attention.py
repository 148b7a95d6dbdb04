"""attnkit.flex_attention runs FlexAttention's user functions unchanged.

The masks and score mods below are written the way attention-gym and user code
write them (plain functions and factories returning closures). Each case checks
attnkit's output against eager FlexAttention (``torch.nn.attention.flex_attention``
without compile) and against the float64 reference, and its gradients against
autograd through eager FlexAttention's own implementation (the public call
refuses a backward on CPU) and the float64 reference.
"""
import pytest
import torch
from torch._higher_order_ops.flex_attention import math_attention
from torch.nn.attention.flex_attention import and_masks, create_block_mask, flex_attention, or_masks

try:  # torch >= 2.9; older torch returns the lse through return_lse only
    from torch.nn.attention.flex_attention import AuxRequest
except ImportError:
    AuxRequest = None
needs_aux_request = pytest.mark.skipif(AuxRequest is None, reason="this torch has no flex_attention AuxRequest")

import attnkit
from attnkit.flex import flex_reference

pytestmark = [pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile"),
              pytest.mark.filterwarnings("ignore:return_lse is deprecated")]

B, H, N, D = 2, 4, 150, 16


# ---- masks, as attention-gym writes them -------------------------------------------------------
def causal_mask(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def generate_sliding_window(window_size):
    def sliding_window(b, h, q_idx, kv_idx):
        return q_idx - kv_idx <= window_size

    return and_masks(sliding_window, causal_mask)


def generate_prefix_lm_mask(prefix_length):
    def prefix_mask(b, h, q_idx, kv_idx):
        return kv_idx < prefix_length[b]  # a prefix length per sequence of the batch

    return or_masks(prefix_mask, causal_mask)


def _offsets_to_doc_ids_tensor(offsets):
    counts = offsets[1:] - offsets[:-1]
    return torch.repeat_interleave(torch.arange(len(counts), dtype=torch.int32), counts)


def generate_doc_mask_mod(mask_mod, offsets):
    document_id = _offsets_to_doc_ids_tensor(offsets)

    def doc_mask_mod(b, h, q_idx, kv_idx):
        same_doc = document_id[q_idx] == document_id[kv_idx]
        q_logical = q_idx - offsets[document_id[q_idx]]
        kv_logical = kv_idx - offsets[document_id[kv_idx]]
        return same_doc & mask_mod(b, h, q_logical, kv_logical)

    return doc_mask_mod


def generate_head_windows(windows):
    def head_window(b, h, q_idx, kv_idx):  # a window per head: the layout differs per head
        return (q_idx >= kv_idx) & (q_idx - kv_idx < windows[h])

    return head_window


# ---- score mods --------------------------------------------------------------------------------
def generate_alibi_bias(heads):
    slopes = torch.exp2(-((torch.arange(heads) + 1) * 8.0 / heads))

    def alibi(score, b, h, q_idx, kv_idx):
        return score + slopes[h] * (kv_idx - q_idx)

    return alibi


def generate_tanh_softcap(soft_cap):
    def tanh_softcap(score, b, h, q_idx, kv_idx):
        return soft_cap * torch.tanh(score / soft_cap)

    return tanh_softcap


def relative_positional(score, b, h, q_idx, kv_idx):
    return score + (q_idx - kv_idx) / 16


def generate_learned_bias(length, heads):
    bias = torch.randn(heads, 2 * length - 1, generator=torch.Generator().manual_seed(3), requires_grad=True)

    def learned_relative_bias(score, b, h, q_idx, kv_idx):
        return score + bias[h, q_idx - kv_idx + length - 1]

    return learned_relative_bias, bias


def causal_by_score(score, b, h, q_idx, kv_idx):
    return torch.where(q_idx >= kv_idx, score, -float("inf"))


OFFSETS = torch.tensor([0, 40, 47, 110, N])
PREFIX = torch.tensor([30, 90])
LEARNED, LEARNED_BIAS = generate_learned_bias(N, H)

CASES = {
    "causal+alibi": (causal_mask, generate_alibi_bias(H)),
    "sliding_window+softcap": (generate_sliding_window(37), generate_tanh_softcap(2.0)),
    "prefix_lm+relative": (generate_prefix_lm_mask(PREFIX), relative_positional),
    "document_causal+learned_bias": (generate_doc_mask_mod(causal_mask, OFFSETS), LEARNED),
    "head_windows+alibi": (generate_head_windows(torch.tensor([5, 20, 64, 150])), generate_alibi_bias(H)),
    "no_mask+causal_by_score": (None, causal_by_score),
    "sliding_window": (generate_sliding_window(37), None),
}


def _inputs(seed=0, heads_kv=H, q_len=N, kv_len=N, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, q_len, D, generator=g, dtype=dtype),
            torch.randn(B, heads_kv, kv_len, D, generator=g, dtype=dtype),
            torch.randn(B, heads_kv, kv_len, D, generator=g, dtype=dtype))


def _block_mask(mask_mod, q_len=N, kv_len=N):
    """As users build it: per head (H) only when the mask reads ``h`` (a BlockMask made with H=None holds head 0's
    blocks for every head)."""
    heads = H if mask_mod is CASES["head_windows+alibi"][0] else None
    return None if mask_mod is None else create_block_mask(mask_mod, B, heads, q_len, kv_len, device="cpu",
                                                           BLOCK_SIZE=32)


def _grads(fn, tensors, weights):
    for t in tensors:
        t.grad = None
    out = fn(*tensors[:3])
    (out * weights).sum().backward()
    return [t.grad.clone() for t in tensors]


def _err(a, b):
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("case", list(CASES))
def test_output_matches_eager_flex_and_reference(case):
    mask_mod, score_mod = CASES[case]
    q, k, v = _inputs()
    bm = _block_mask(mask_mod)
    ours = attnkit.flex_attention(q, k, v, score_mod=score_mod, block_mask=bm)
    with torch.no_grad():
        eager = flex_attention(q, k, v, score_mod=score_mod, block_mask=bm)
        ref, _ = flex_reference(q, k, v, score_mod, mask_mod)
    assert _err(ours, eager) < 2e-5
    assert _err(ours, ref) <= 10 * _err(eager, ref) + 1e-6
    with torch.no_grad():  # without autograd the kernel's groups run on two worker threads
        threads = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            threaded = attnkit.flex_attention(q, k, v, score_mod=score_mod, block_mask=bm)
        finally:
            torch.set_num_threads(threads)
    assert _err(threaded, eager) < 2e-5 and _err(threaded, ref) <= 10 * _err(eager, ref) + 1e-6
    if mask_mod is not None:  # the same mask given as mask_mod: the layout is built from the function itself
        direct = attnkit.flex_attention(q, k, v, score_mod=score_mod, mask_mod=mask_mod, block_size=32)
        assert _err(direct, ours) < 1e-6


@pytest.mark.parametrize("case", ["causal+alibi", "document_causal+learned_bias", "head_windows+alibi",
                                  "prefix_lm+relative"])
def test_gradients_match_eager_flex_math_and_reference(case):
    mask_mod, score_mod = CASES[case]
    q, k, v = (t.requires_grad_() for t in _inputs(1))
    tensors = [q, k, v] + ([LEARNED_BIAS] if score_mod is LEARNED else [])
    bm = _block_mask(mask_mod) if mask_mod is not None else _block_mask(lambda b, h, i, j: i >= 0)
    w = torch.randn(B, H, N, D, generator=torch.Generator().manual_seed(5))
    ours = _grads(lambda *x: attnkit.flex_attention(*x, score_mod=score_mod, block_mask=bm), tensors, w)
    eager = _grads(lambda *x: math_attention(*x, score_mod, bm.as_tuple(), D ** -0.5, {})[0], tensors, w)
    ref = _grads(lambda *x: flex_reference(*x, score_mod, mask_mod)[0], tensors, w.double())
    for name, a, e, r in zip(("q", "k", "v", "bias"), ours, eager, ref):
        assert _err(a, r) <= 10 * _err(e, r) + 1e-6, name
        assert _err(a, e) < 1e-4 * max(1.0, e.abs().max().item()), name


def test_gqa_cross_attention_and_mask_mod_directly():
    q, k, v = _inputs(2, heads_kv=2, q_len=70, kv_len=150)
    mask_mod, score_mod = generate_sliding_window(40), generate_alibi_bias(H)
    ours = attnkit.flex_attention(q, k, v, score_mod=score_mod, mask_mod=mask_mod, enable_gqa=True, block_size=32)
    bm = create_block_mask(mask_mod, B, None, 70, 150, device="cpu", BLOCK_SIZE=32)
    with torch.no_grad():
        eager = flex_attention(q, k, v, score_mod=score_mod, block_mask=bm, enable_gqa=True)
    ref, _ = flex_reference(q, k, v, score_mod, mask_mod)
    assert _err(ours, eager) < 2e-5
    assert _err(ours, ref) <= 10 * _err(eager, ref) + 1e-6


@needs_aux_request
def test_lse_matches_eager_flex():
    mask_mod, score_mod = CASES["sliding_window+softcap"]
    q, k, v = _inputs(3)
    bm = _block_mask(mask_mod)
    out, lse = attnkit.flex_attention(q, k, v, score_mod=score_mod, block_mask=bm, return_lse=True)
    out2, aux = attnkit.flex_attention(q, k, v, score_mod=score_mod, block_mask=bm, return_aux=AuxRequest(lse=True))
    with torch.no_grad():
        eager, eager_aux = flex_attention(q, k, v, score_mod=score_mod, block_mask=bm, return_aux=AuxRequest(lse=True))
    assert _err(lse, eager_aux.lse) < 2e-5 and torch.equal(lse, aux.lse) and torch.equal(out, out2)


def test_fully_masked_rows_are_zero_with_lse_minus_inf_like_eager_flex():
    def late_start(b, h, q_idx, kv_idx):  # queries 0..9 see no key
        return (q_idx >= kv_idx) & (q_idx >= 10)

    q, k, v = (t.requires_grad_() for t in _inputs(4))
    bm = _block_mask(late_start)
    out, lse = attnkit.flex_attention(q, k, v, score_mod=generate_alibi_bias(H), block_mask=bm, return_lse=True)
    with torch.no_grad():
        eager, eager_lse = flex_attention(q.detach(), k.detach(), v.detach(), score_mod=generate_alibi_bias(H),
                                          block_mask=bm, return_lse=True)
    assert torch.equal(out[:, :, :10], torch.zeros_like(out[:, :, :10]))
    assert torch.equal(eager[:, :, :10], torch.zeros_like(eager[:, :, :10]))  # eager FlexAttention: zeros too
    assert torch.isneginf(lse[:, :, :10]).all() and torch.isneginf(eager_lse[:, :, :10]).all()
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    fast = attnkit.flex_attention(q.detach(), k.detach(), v.detach(), block_mask=bm)  # no score_mod: fast path
    assert torch.equal(fast[:, :, :10], torch.zeros_like(fast[:, :, :10]))


def test_fast_path_without_score_mod_has_gradients():
    q, k, v = (t.requires_grad_() for t in _inputs(6))
    mask_mod = generate_doc_mask_mod(causal_mask, OFFSETS)
    w = torch.randn(B, H, N, D, generator=torch.Generator().manual_seed(7))
    ours = _grads(lambda *x: attnkit.flex_attention(*x, block_mask=_block_mask(mask_mod)), [q, k, v], w)
    ref = _grads(lambda *x: flex_reference(*x, None, mask_mod)[0], [q, k, v], w.double())
    for a, r in zip(ours, ref):
        assert _err(a, r) < 1e-5


def test_float64_inputs_match_the_reference():
    mask_mod, score_mod = CASES["document_causal+learned_bias"]
    q, k, v = _inputs(8, dtype=torch.float64)
    ours = attnkit.flex_attention(q, k, v, score_mod=score_mod, block_mask=_block_mask(mask_mod))
    assert ours.dtype == torch.float64 and _err(ours, flex_reference(q, k, v, score_mod, mask_mod)[0]) < 1e-12


def test_bad_input_is_refused_with_a_clear_error():
    q, k, v = _inputs()
    bm = _block_mask(causal_mask)
    with pytest.raises(ValueError, match="block_mask was built for"):
        attnkit.flex_attention(q[:, :, :100], k, v, block_mask=bm)
    with pytest.raises(ValueError, match="block_mask or mask_mod"):
        attnkit.flex_attention(q, k, v, block_mask=bm, mask_mod=causal_mask)
    with pytest.raises(TypeError, match="score_mod"):
        attnkit.flex_attention(q, k, v, score_mod="alibi")
    with pytest.raises(TypeError, match="block_mask"):
        attnkit.flex_attention(q, k, v, block_mask=torch.ones(N, N, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask_mod must return a boolean"):
        attnkit.flex_attention(q, k, v, mask_mod=lambda b, h, i, j: (i >= j).int())
    with pytest.raises(ValueError, match="score_mod returned shape"):
        attnkit.flex_attention(q, k, v, score_mod=lambda s, b, h, i, j: s.sum(-1))
    with pytest.raises(ValueError, match="enable_gqa"):
        attnkit.flex_attention(q, k[:, :2], v[:, :2])
    if AuxRequest is not None:
        with pytest.raises(ValueError, match="max_scores"):
            attnkit.flex_attention(q, k, v, return_aux=AuxRequest(lse=True, max_scores=True))
    with pytest.raises(ValueError, match="block_size"):
        attnkit.flex_attention(q, k, v, mask_mod=causal_mask, block_size=0)
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        attnkit.flex_attention(q.numpy(), k, v)


@pytest.mark.parametrize("grad", [False, True])
def test_a_nan_key_leaves_the_rows_that_may_not_see_it_finite(grad):
    """The element mask of partial tiles is written as -inf, not added, when a key is NaN (NaN + -inf = NaN)."""
    q, k, v = _inputs(9)
    k[:, :, 40] = float("nan")
    with torch.set_grad_enabled(grad):
        leaves = [t.requires_grad_(grad) for t in (q, k, v)]
        for score_mod in (generate_alibi_bias(H), None):  # the modifier's kernel and the plain block-sparse one
            out = attnkit.flex_attention(*leaves, score_mod=score_mod, block_mask=_block_mask(causal_mask))
            assert torch.isfinite(out[:, :, :40]).all() and torch.isnan(out[:, :, 40:]).all()
