"""``attnkit bench content-sparse``: NSA and MoBA against dense causal SDPA: time, memory, density, recall.

B=1, H=8 query heads, 2 kv heads (NSA shares a selection across a GQA group;
MoBA selects per head), D=64, fp32, causal, on random inputs. At each N, in one
process and in turns (:func:`attnkit.bench.timing.timings`):

- time of the forward and of forward + backward (gradients of q, k, v and, for
  NSA, of its gates and compression MLPs), selection included, against
  ``F.scaled_dot_product_attention(..., is_causal=True, enable_gqa=True)``;
  reported as the ratio ``t_sdpa / t_mechanism``;
- density: the mechanism's attention work (its FLOP count, ``spec.flops``:
  NSA's three branches, MoBA's selected blocks and gates) over dense causal
  attention's;
- recall: the share of dense causal attention's softmax mass that falls on the
  keys the mechanism attends to exactly (MoBA: its selected blocks; NSA: its
  selected blocks and its window; the compressed branch is not counted), on
  ``--recall-queries`` query positions evenly spread over the sequence;
- peak memory (``--memory``): forward + backward in a fresh subprocess, in MiB
  and as a multiple of the q, k, v bytes;
- with ``--checkpoint`` (a Shakespeare LM from ``attnkit train lm --out``): the
  same recall on the LM's own q, k, v, every layer, on held-out text (repeated
  end to end up to N; positions past the LM's training context are RoPE
  extrapolation), the mean over layers and each layer's. NSA's compression MLPs
  are random there (the LM was not trained with NSA), so its selection is
  scored by untrained compressed keys.

Parameters are the papers' defaults: NSA ``l=32, d=16, l'=64, n=16, w=512``
(compression MLP hidden size 64), MoBA ``block_size=512, top_k=3``. ``--mechanisms`` may add
``dma`` (``window=2048``) and ``sparsek`` (``select_count=64, window=512``), attnkit's defaults, with
random key scores: timed only.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

from ..memory import MALLOC_ENV, peak_mb
from ..options import ints, names, positive_int
from ..runner import run_items
from ..timing import median_times

NAME = "content-sparse"
THREADS = 2
B, H, HKV, D = 1, 8, 2, 64
FULL_SIZES = [4096, 8192, 16384, 32768]
QUICK_SIZES = [1024, 2048]
MECHANISMS = ("nsa", "moba")
TIMED_ONLY = ("dma", "sparsek")  # timed beside NSA and MoBA on request (their masks are per token: no recall here)


def inputs(name: str, n: int, requires_grad: bool, device="cpu"):
    """q, k, v and the mechanism's tensor inputs at the papers' defaults (NSA's compression block 32)."""
    from attnkit.families.nsa import nsa_inputs

    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, n, D, generator=g)
    k, v = (torch.randn(B, HKV, n, D, generator=g) for _ in range(2))
    if name == "nsa":
        extra = nsa_inputs(q, k, v, g, compress_block=32)
    elif name in TIMED_ONLY:
        import attnkit

        extra = attnkit.spec(name).tensor_inputs(q, k, v, g)
    else:
        extra = {}
    leaves = [q, k, v, *extra.values()]
    leaves = [t.to(device).requires_grad_(requires_grad) for t in leaves]
    return leaves[0], leaves[1], leaves[2], dict(zip(extra, leaves[3:]))


def _call(name, q, k, v, extra, backward):
    import attnkit

    def run():
        with torch.set_grad_enabled(backward):
            if name == "sdpa":
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            else:
                out = attnkit.attention(q, k, v, name, causal=True, **extra)
            if backward:
                out.sum().backward()
        for t in (q, k, v, *extra.values()):
            t.grad = None

    return run


def speed(n: int, mechanisms, backward: bool, repeats: int, device="cpu") -> dict:
    calls = {}
    for name in ("sdpa", *mechanisms):
        q, k, v, extra = inputs(name, n, backward, device)
        calls[name] = _call(name, q, k, v, extra, backward)
    t = dict(zip(calls, median_times(list(calls.values()), repeats)))
    row = {f"t_{m}": s for m, s in t.items()}
    row.update({f"speedup_{m}": t["sdpa"] / t[m] for m in mechanisms})
    parts = "  ".join(f"{m} {t[m]:7.2f} s ({row[f'speedup_{m}']:5.2f}x)" for m in mechanisms)
    print(f"N={n:>6} {'fwd+bwd' if backward else 'fwd    '}  sdpa {t['sdpa']:7.2f} s  {parts}", flush=True)
    return row


def nsa_parts(n: int, repeats: int, device="cpu") -> dict:
    """Where NSA's forward + backward time goes, each part timed alone in turns with SDPA and all of NSA.

    ``compression``: the compressed keys and values (MLPs), the compression branch and the block
    importance with its top-n (the selection), backward through the branch; ``selected``: the
    selected-block kernel alone on the precomputed selection; ``window``: the sliding-window branch
    alone. ``t_sdpa / t_selected`` bounds NSA's speed-up from above: NSA runs that kernel and more.

    The floor: ``selected_matmuls`` and ``compression_matmuls`` are the batched matmuls the kernel and
    the compression branch run (two per step forward, five backward, the same sizes and count), alone on
    random operands: no gathers, softmax, masks, merges or selection. ``t_sdpa / (t_selected_matmuls +
    t_compression_matmuls + t_window)`` is the best ratio NSA could reach with these matmul shapes and this
    window branch; ``window_matmuls`` are the window kernel's matmuls alone (two per tile forward, five
    backward), and ``t_sdpa / (the three branches' matmuls)`` the ratio with nothing but the matmuls.
    """
    from attnkit.families import nsa
    from attnkit.kernels import nsa_compression
    from attnkit.kernels.positions import query_positions
    from attnkit.kernels.selected_blocks import matmul_shapes, selected_block_attention
    from attnkit.kernels.sliding_window import matmul_shapes as window_shapes, sliding_window_attention

    q, k, v, extra = inputs("nsa", n, True, device)
    params = attnkit_defaults("nsa")
    scale = D**-0.5
    gates = extra["gates"]
    tensors = {name: t for name, t in extra.items() if name != "gates"}
    with torch.no_grad():
        sel = nsa.nsa_selection(q, k, v, gates=gates, scale=scale, **params, **tensors)
        kc, _ = nsa._compressed_kv(k, v, tensors, tensors["k_pos"].shape[0], params["compress_stride"])
        compression_shapes = nsa_compression.matmul_shapes(q, kc, query_positions(n, n, q.device),
                                                           block=tensors["k_pos"].shape[0],
                                                           stride=params["compress_stride"])
    leaves = (q, k, v, *extra.values())

    def part(fn):
        def run():
            fn().sum().backward()
            for t in leaves:
                t.grad = None
        return run

    calls = {
        "sdpa": _call("sdpa", q, k, v, {}, True),
        "nsa": _call("nsa", q, k, v, extra, True),
        "compression": part(lambda: nsa._selection(q, k, v, gates, tensors, scale, params["compress_stride"],
                                                   params["select_block"], params["select_count"],
                                                   params["window"])[0]),
        "selected": part(lambda: selected_block_attention(q, k, v, sel, scale=scale, causal=True)),
        "window": part(lambda: sliding_window_attention(q, k, v, window=params["window"], scale=scale)),
        "selected_matmuls": matmuls_alone(matmul_shapes(q, k, v, sel, causal=True), q.device, forward=2),
        "compression_matmuls": matmuls_alone(compression_shapes, q.device, forward=2),
        "window_matmuls": matmuls_alone(window_shapes(q, k, v, window=params["window"]), q.device, forward=2),
    }
    t = dict(zip(calls, median_times(list(calls.values()), repeats)))
    row = {f"t_{name}": s for name, s in t.items()}
    row.update({f"sdpa_over_{name}": t["sdpa"] / t[name] for name in calls if name != "sdpa"})
    row["sdpa_over_floor"] = t["sdpa"] / (t["selected_matmuls"] + t["compression_matmuls"] + t["window"])
    row["sdpa_over_matmuls"] = t["sdpa"] / (t["selected_matmuls"] + t["compression_matmuls"] + t["window_matmuls"])
    print(f"N={n:>6} NSA fwd+bwd parts: sdpa {t['sdpa']:.2f} s, nsa {t['nsa']:.2f} s ({row['sdpa_over_nsa']:.2f}x); "
          f"compression+selection {t['compression']:.2f} s, selected-block kernel alone {t['selected']:.2f} s "
          f"(sdpa / kernel = {row['sdpa_over_selected']:.2f}x: NSA's ceiling), window {t['window']:.2f} s",
          flush=True)
    print(f"N={n:>6} NSA floor: the kernel's matmuls alone {t['selected_matmuls']:.2f} s, the compression branch's "
          f"{t['compression_matmuls']:.2f} s; sdpa / (both + window) = {row['sdpa_over_floor']:.2f}x; the window's "
          f"matmuls alone {t['window_matmuls']:.2f} s, sdpa / (all three branches' matmuls) = "
          f"{row['sdpa_over_matmuls']:.2f}x", flush=True)
    return row


def matmuls_alone(shapes, device, *, forward: int):
    """A closure running, for each step ``(batch, rows, keys, dim)``, the ``forward`` (2: scores, P V; 3: the
    scores twice, P V) and five backward batched matmuls of attention over those sizes (scores again, dV, dP,
    dQ, dK) on random operands, with nothing else."""
    most = max((b * max(r, c) * max(c, d) for b, r, c, d in shapes), default=1)
    pool = torch.randn(3, most, device=device)
    outs = torch.empty(2, most, device=device)  # results land here, as the kernels write theirs into buffers

    def run():
        for b, r, c, d in shapes:
            a, kv = pool[0, : b * r * d].view(b, r, d), pool[1, : b * c * d].view(b, c, d)
            s = pool[2, : b * r * c].view(b, r, c)
            rows_out, keys_out = outs[0, : b * r * d].view(b, r, d), outs[1, : b * c * d].view(b, c, d)
            for _ in range(forward - 1):
                torch.bmm(a, kv.transpose(1, 2), out=s)
            torch.bmm(s, kv, out=rows_out)
            torch.bmm(a, kv.transpose(1, 2), out=s)
            torch.bmm(s.transpose(1, 2), a, out=keys_out)
            torch.bmm(a, kv.transpose(1, 2), out=s)
            torch.bmm(s, kv, out=rows_out)
            torch.bmm(s.transpose(1, 2), a, out=keys_out)

    return run


def attnkit_defaults(name: str) -> dict:
    import attnkit

    return dict(attnkit.spec(name).defaults)


def _attended(name, q, k, v, extra, rows):
    """Boolean ``(B, H, len(rows), N)``: the keys each sampled query attends to exactly."""
    from attnkit.families.moba import moba_selection
    from attnkit.families.nsa import nsa_selection

    n, heads = q.shape[2], q.shape[1]
    if name == "moba":
        sel = moba_selection(q, k, block_size=512, top_k=3)
    else:
        sel = nsa_selection(q, k, v, **extra)
    hit = torch.zeros(*sel.blocks.shape[:2], len(rows), sel.n_key_blocks + 1, dtype=torch.bool, device=q.device)
    part = sel.blocks[:, :, rows]
    hit.scatter_(3, torch.where(sel.valid[:, :, rows], part, sel.n_key_blocks), True)
    keys = hit[..., :-1].repeat_interleave(sel.block_k, dim=3)[..., :n].repeat_interleave(heads // sel.groups, dim=1)
    kpos = torch.arange(n, device=q.device)
    past = kpos <= rows[:, None]
    if name == "nsa":
        keys = keys | (kpos > rows[:, None] - 512)
    return keys & past


def recall(name: str, q, k, v, extra, queries: int) -> tuple[float, int]:
    """Dense causal softmax mass on the keys the mechanism attends to, mean over ``queries`` spread rows."""
    n = q.shape[2]
    rows = torch.linspace(0, n - 1, min(queries, n), device=q.device).round().long().unique()
    with torch.no_grad():
        keys = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        scores = (q[:, :, rows] @ keys.transpose(-1, -2)) * q.shape[-1] ** -0.5
        past = torch.arange(n, device=q.device) <= rows[:, None]
        p = torch.softmax(scores.masked_fill(~past, float("-inf")), dim=-1)
        return float((p * _attended(name, q, k, v, extra, rows)).sum(-1).mean()), len(rows)


def quality(name: str, n: int, queries: int, device="cpu") -> dict:
    """Density (work / dense causal work) and recall (dense softmax mass on the attended keys) at ``n``."""
    import attnkit
    from attnkit.registry import dense_flops

    q, k, v, extra = inputs(name, n, False, device)
    spec = attnkit.spec(name)
    density = spec.flops(B, H, n, n, D, True, **spec.defaults) / dense_flops(B, H, n, n, D, True)
    kept, count = recall(name, q, k, v, extra, queries)
    print(f"N={n:>6} {name:5s} density {density:.4f}  recall {kept:.3f} ({count} queries)", flush=True)
    return {"density": density, "recall": kept, "queries": count}


def lm_quality(name: str, n: int, queries: int, lm, held_ids, device="cpu") -> dict:
    """Recall on the q, k, v of every layer of a trained LM on ``n`` held-out tokens."""
    from attnkit.families.nsa import nsa_inputs

    from ..free_sparse_runs import captured_qkv

    text = held_ids.repeat(-(-n // held_ids.numel()))[:n][None].to(device)
    per_layer = []
    for q, k, v in captured_qkv(lm.to(device).eval(), text):
        g = torch.Generator().manual_seed(0)
        extra = nsa_inputs(q, k, v, g, compress_block=32) if name == "nsa" else {}
        per_layer.append(recall(name, q, k, v, extra, queries)[0])
    mean = sum(per_layer) / len(per_layer)
    print(f"N={n:>6} {name:5s} LM recall {mean:.3f} (layers " + ", ".join(f"{r:.3f}" for r in per_layer) + ")",
          flush=True)
    return {"lm_recall": mean, "lm_recall_per_layer": per_layer, "heads": int(q.shape[1]), "head_dim": int(q.shape[3])}


def child(name: str, n: int, threads: int) -> None:
    """Forward + backward of one mechanism in this (fresh) process; prints its peak memory above the inputs."""
    torch.set_num_threads(threads)
    q, k, v, extra = inputs(name, n, True)
    _, peak = peak_mb(_call(name, q, k, v, extra, True))
    print(json.dumps({"peak_mb": round(peak, 1)}))


def memory(name: str, n: int, threads: int) -> dict:
    cmd = [sys.executable, "-m", "attnkit.bench.suites.content_sparse", "--child", name, str(n), str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, **MALLOC_ENV})
    mb = json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]
    qkv_mb = B * (H + 2 * HKV) * n * D * 4 / 2**20
    print(f"N={n:>6} {name:5s} fwd+bwd peak {mb:8.1f} MB = {mb / qkv_mb:5.2f} x q,k,v bytes", flush=True)
    return {"peak_mb": mb, "qkv_mb": qkv_mb, "peak_over_qkv": mb / qkv_mb}


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true", help=f"N in {QUICK_SIZES} instead of {FULL_SIZES}")
    parser.add_argument("--n", type=ints, default=None, help="comma list of sequence lengths")
    parser.add_argument("--mechanisms", type=names, default=list(MECHANISMS), help="comma list from nsa,moba (dma,sparsek: timed only)")
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--recall-queries", type=positive_int, default=256, help="query positions sampled for recall")
    parser.add_argument("--no-forward", action="store_true", help="time forward + backward only")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory in subprocesses (CPU)")
    parser.add_argument("--nsa-parts", action="store_true",
                        help="also time NSA's parts alone (compression + selection, selected-block kernel, window)")
    parser.add_argument("--checkpoint", default=None,
                        help="Shakespeare LM (attnkit train lm --out): recall also on its own q, k, v, held-out text")


def run(args) -> int:
    sizes = args.n or (QUICK_SIZES if args.quick else FULL_SIZES)
    unknown = sorted(set(args.mechanisms) - set(MECHANISMS) - set(TIMED_ONLY))
    if unknown:
        from ..options import UsageError

        raise UsageError(f"--mechanisms: unknown {unknown}; expected names from {list(MECHANISMS + TIMED_ONLY)}")
    items = []
    scored = [m for m in args.mechanisms if m in MECHANISMS]
    for n in sizes:
        items += [{"section": "quality", "N": n, "mechanism": m} for m in scored]
        items += [{"section": "speed", "N": n, "backward": b} for b in ((True,) if args.no_forward else (False, True))]
        if args.memory and args.device == "cpu":
            items += [{"section": "memory", "N": n, "mechanism": m} for m in scored]
        if args.nsa_parts and "nsa" in args.mechanisms:
            items.append({"section": "nsa-parts", "N": n})
        if args.checkpoint:
            items += [{"section": "lm-recall", "N": n, "mechanism": m} for m in scored]
    config = {"sizes": sizes, "mechanisms": args.mechanisms, "repeats": args.repeats, "device": args.device,
              "B": B, "H": H, "Hkv": HKV, "D": D, "checkpoint": args.checkpoint}
    lm = held_ids = None
    if args.checkpoint:
        from ...data import shakespeare
        from ...training.lm import load_checkpoint

        lm, codec, _ = load_checkpoint(args.checkpoint)
        held_ids = codec.encode(shakespeare.load_split()[1])
    print(f"attnkit bench content-sparse: B={B} H={H} Hkv={HKV} D={D} fp32 causal, device {args.device}")

    def measure(item):
        if item["section"] == "quality":
            return quality(item["mechanism"], item["N"], args.recall_queries, args.device)
        if item["section"] == "nsa-parts":
            return nsa_parts(item["N"], args.repeats, args.device)
        if item["section"] == "lm-recall":
            return lm_quality(item["mechanism"], item["N"], args.recall_queries, lm, held_ids, args.device)
        if item["section"] == "speed":
            return speed(item["N"], args.mechanisms, item["backward"], args.repeats, args.device)
        return memory(item["mechanism"], item["N"], torch.get_num_threads())

    code, _ = run_items("content-sparse", config, items, measure, args)
    return code


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        raise SystemExit("usage: python -m attnkit.bench.suites.content_sparse --child NAME N THREADS")
