"""Flow-Attention's stateful forms: parallel (the reference), chunked and recurrent (equations in the package docstring)."""
from __future__ import annotations

import torch

from ...kernels import linear_scan
from ...state import RecurrentState, expect_state
from ...kernels.positions import repeat_kv
from ...validation import check_float, check_int

PAPER = "Flowformer: Linearizing Transformers with Conservation Flows"
NAMES = ("k_sum", "q_sum", "k_out_sum", "q_in_sum", "competition_sum", "S")


def eps_dot(a, b, eps):
    """``sum_d (a_d + eps)(b_d + eps)`` over the last dimension (the authors' einsum with eps on both sides),
    expanded as ``a.b + eps (sum a + sum b) + d eps^2``: one full-size temporary instead of three."""
    return torch.linalg.vecdot(a, b) + eps * (a.sum(-1) + b.sum(-1)) + a.shape[-1] * eps * eps


def _start(q, k, v, causal, scale, initial_state, eps, chunk_size):
    if not causal:
        raise ValueError("flow is the causal Flow-Attention; pass causal=True, or use 'flow_bidirectional'")
    check_float("eps", eps, minimum=0)
    check_int("chunk_size", chunk_size)
    B, H, _, D = q.shape
    k, v = repeat_kv(k, H), repeat_kv(v, H)
    Dv = v.shape[-1]
    shapes = {"k_sum": (B, H, D), "q_sum": (B, H, D), "k_out_sum": (B, H, D), "q_in_sum": (B, H, D),
              "competition_sum": (B, H), "S": (B, H, D, Dv)}
    state = expect_state(initial_state, NAMES, shapes, q)
    if state is None:
        zeros = {n: q.new_zeros(s) for n, s in shapes.items()}
        state = RecurrentState(0, **zeros)
    positions = torch.arange(1, q.shape[2] + 1, device=q.device, dtype=q.dtype) + state.length
    return torch.sigmoid(scale * q), torch.sigmoid(k), v, state, positions


def _flows(q, k, i, k_sum, q_sum, eps):
    """Incoming flow ``I`` and outgoing flow ``O`` (scaled by the position), given the prefix sums."""
    return i / eps_dot(q, k_sum, eps), i / eps_dot(k, q_sum, eps)


def _outputs(q, k, i, I, O, k_out_sum, q_in_sum, eps):
    """Allocation of each sink and the exponent of each source's competition."""
    allocation = torch.sigmoid(eps_dot(q, k_out_sum, eps) / i)
    source = torch.clamp(eps_dot(k, q_in_sum, eps) / i, -1.0, 1.0)
    return allocation, source.exp()


def _final(state, n, **sums):
    return RecurrentState(state.length + n, **sums)


def _parallel_flows(q, k, st, i, eps):
    """Every prefix sum a product with the lower-triangular ``(N, N)`` matrix: ``(lower, reads, allocation,
    competition, sums)`` with ``out_i = allocation_i reads_i sum_{j<=i} k_j^T (v_j competition_j)`` and
    ``sums`` the state's running sums at the last token (all but ``S``)."""
    N = q.shape[2]
    lower = torch.ones(N, N, dtype=q.dtype, device=q.device).tril()
    prefix = lambda x, before: lower @ x + before[..., None, :]  # noqa: E731
    k_sum, q_sum = prefix(k, st["k_sum"]), prefix(q, st["q_sum"])
    I, O = _flows(q, k, i, k_sum, q_sum, eps)
    k_out, q_in = prefix(k * O[..., None], st["k_out_sum"]), prefix(q * I[..., None], st["q_in_sum"])
    allocation, exp_source = _outputs(q, k, i, I, O, k_out, q_in, eps)
    competition_sum = (lower @ exp_source[..., None])[..., 0] + st["competition_sum"][..., None]
    last = lambda x: x[..., -1, :]  # noqa: E731
    sums = {"k_sum": last(k_sum), "q_sum": last(q_sum), "k_out_sum": last(k_out), "q_in_sum": last(q_in),
            "competition_sum": competition_sum[..., -1]}
    return lower, q * (I / i)[..., None], allocation, i * exp_source / competition_sum, sums


def parallel(q, k, v, *, causal, scale, initial_state=None, eps=1e-6, chunk_size=64):
    """Reference: every prefix sum a product with the lower-triangular ``(N, N)`` matrix."""
    q, k, v, st, i = _start(q, k, v, causal, scale, initial_state, eps, chunk_size)
    lower, reads, allocation, competition, sums = _parallel_flows(q, k, st, i, eps)
    written = v * competition[..., None]
    out = ((reads @ k.transpose(-1, -2)) * lower) @ written + reads @ st["S"]
    S = st["S"] + k.transpose(-1, -2) @ written
    return allocation[..., None] * out, _final(st, q.shape[2], **sums, S=S)


def flow_weights(q, k, v, *, causal, mask, scale, eps=1e-6, chunk_size=64):
    """The implicit attention matrix of a sequence from its start: ``W_ij = allocation_i (reads_i . k_j)
    competition_j`` for ``j <= i``, so that ``out = W v``."""
    q, k, v, st, i = _start(q, k, v, causal, scale, None, eps, chunk_size)
    lower, reads, allocation, competition, _ = _parallel_flows(q, k, st, i, eps)
    return allocation[..., None] * (reads @ k.transpose(-1, -2)) * lower * competition[..., None, :]


def chunked(q, k, v, *, causal, scale, initial_state=None, eps=1e-6, chunk_size=64):
    """Running sums for the flows, then the chunked causal linear scan of ``(q I / i) k^T (v comp)``."""
    q, k, v, st, i = _start(q, k, v, causal, scale, initial_state, eps, chunk_size)
    k_sum = k.cumsum(2) + st["k_sum"][..., None, :]
    q_sum = q.cumsum(2) + st["q_sum"][..., None, :]
    I, O = _flows(q, k, i, k_sum, q_sum, eps)
    k_out = (k * O[..., None]).cumsum(2) + st["k_out_sum"][..., None, :]
    q_in = (q * I[..., None]).cumsum(2) + st["q_in_sum"][..., None, :]
    allocation, exp_source = _outputs(q, k, i, I, O, k_out, q_in, eps)
    competition_sum = exp_source.cumsum(-1) + st["competition_sum"][..., None]
    competition = i * exp_source / competition_sum
    out, S = linear_scan.chunked(q * (I / i)[..., None], k, v * competition[..., None], None, st["S"],
                                 causal=True, chunk_size=chunk_size)
    last = lambda x: x[..., -1, :]  # noqa: E731
    return allocation[..., None] * out, _final(
        st, q.shape[2], k_sum=last(k_sum), q_sum=last(q_sum), k_out_sum=last(k_out), q_in_sum=last(q_in),
        competition_sum=competition_sum[..., -1], S=S)


def recurrent(q, k, v, *, causal, scale, initial_state=None, eps=1e-6, chunk_size=64):
    """Token by token: the state's sums, then the token's flows, competition, allocation and output."""
    q, k, v, st, positions = _start(q, k, v, causal, scale, initial_state, eps, chunk_size)
    sums = st.tensors()
    outs = []
    for t in range(q.shape[2]):
        qt, kt, vt, i = q[:, :, t], k[:, :, t], v[:, :, t], positions[t]
        sums["k_sum"], sums["q_sum"] = sums["k_sum"] + kt, sums["q_sum"] + qt
        I, O = _flows(qt, kt, i, sums["k_sum"], sums["q_sum"], eps)
        sums["k_out_sum"] = sums["k_out_sum"] + kt * O[..., None]
        sums["q_in_sum"] = sums["q_in_sum"] + qt * I[..., None]
        allocation, exp_source = _outputs(qt, kt, i, I, O, sums["k_out_sum"], sums["q_in_sum"], eps)
        sums["competition_sum"] = sums["competition_sum"] + exp_source
        competition = i * exp_source / sums["competition_sum"]
        sums["S"] = sums["S"] + kt[..., :, None] * (vt * competition[..., None])[..., None, :]
        read = (qt * (I / i)[..., None])[..., None, :] @ sums["S"]
        outs.append(allocation[..., None] * read[..., 0, :])
    return torch.stack(outs, dim=2), _final(st, q.shape[2], **sums)


FORMS = {form.__name__: form for form in (parallel, chunked, recurrent)}
