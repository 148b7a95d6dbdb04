"""Peak memory of one training-free prefill call (``attnkit bench sparse --speed --memory``).

Each method runs once on the random inputs of the prefill timing (B=1, H=8,
D=64, fp32, causal, no gradient, at the same parameters) in a fresh
subprocess started with :data:`~attnkit.bench.memory.MALLOC_ENV`, and
:func:`~attnkit.bench.memory.peak_mb` reads the anonymous memory the call adds
above its inputs, output included; dense causal SDPA is measured the same way.
Memory is counted, not timed: the figures do not depend on the machine's load.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from .memory import MALLOC_ENV, peak_mb


def child(method: str, n: int, sparsity: float, threads: int) -> None:
    """One call of ``method`` (or ``sdpa``) in this fresh process; prints its peak memory in MiB as JSON."""
    import torch.nn.functional as F

    from .. import attention
    from .free_sparse_runs import prefill_params, random_qkv

    torch.set_num_threads(threads)
    q, k, v = random_qkv(n)
    if method == "sdpa":
        def call():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        params = prefill_params(method, n, sparsity)

        def call():
            return attention(q, k, v, method, causal=True, **params)
    with torch.no_grad():
        _, peak = peak_mb(call)
    print(json.dumps({"peak_mb": round(peak, 1)}))


def _measure(method: str, n: int, sparsity: float, threads: int) -> float:
    cmd = [sys.executable, "-m", "attnkit.bench.prefill_memory", method, str(n), str(sparsity), str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, **MALLOC_ENV})
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]


def prefill_memory(n: int, methods, sparsity: float) -> list[dict]:
    """Each method's peak against dense causal SDPA's and against the bytes of q, k, v."""
    from .free_sparse_runs import B, D, H

    threads = torch.get_num_threads()
    qkv_mb = 3 * B * H * n * D * 4 / 2**20
    sdpa = _measure("sdpa", n, sparsity, threads)
    rows = []
    for m in methods:
        mb = _measure(m, n, sparsity, threads)
        rows.append({"phase": "prefill", "method": m, "N": n, "peak_mb": mb, "sdpa_peak_mb": sdpa,
                     "peak_over_sdpa": mb / max(sdpa, 1.0), "peak_over_qkv": mb / qkv_mb})
        print(f"prefill N={n:>6} {m:>16}: peak {mb:8.1f} MiB = {mb / max(sdpa, 1.0):5.2f}x SDPA's {sdpa:.1f} MiB, "
              f"{mb / qkv_mb:5.2f}x q, k, v", flush=True)
    return rows


if __name__ == "__main__":
    if len(sys.argv) != 5:
        raise SystemExit("usage: python -m attnkit.bench.prefill_memory METHOD N SPARSITY THREADS")
    child(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
