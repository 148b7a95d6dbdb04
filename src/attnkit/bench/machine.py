"""Facts about the machine that every benchmark prints beside its figures."""
from __future__ import annotations

import platform

import torch

from .timing import median_seconds


def gemm_gflops(n: int = 2048, repeats: int = 5, dtype=torch.float32, device="cpu") -> float:
    """Median fp32 GEMM throughput of ``torch.mm`` on n x n matrices on ``device``, in GFLOP/s."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    return 2 * n**3 / median_seconds(lambda: a @ b, repeats, warmup=2) / 1e9


def bmm_seconds(batch: int, m: int, k: int, n: int, repeats: int = 5, cache_bytes: int = 1 << 21,
                dtype=torch.float32) -> float:
    """Seconds for ``batch`` products ``(m, k) @ (k, n)`` by ``torch.bmm``, timed on a sub-batch whose
    operands fit in ``cache_bytes`` and scaled: the rate of the block matmuls of a chunked or tiled
    kernel that keeps its blocks in cache (here ~140 GFLOP/s for 64 x 64 blocks, ~85 from memory)."""
    size = torch.tensor([], dtype=dtype).element_size() * (m * k + k * n + m * n)
    part = max(1, min(batch, cache_bytes // size))
    a, b = torch.randn(part, m, k, dtype=dtype), torch.randn(part, k, n, dtype=dtype)
    out = torch.empty(part, m, n, dtype=dtype)
    calls = max(1, 4096 // part)  # a timed run long enough for the clock

    def run():
        for _ in range(calls):
            torch.bmm(a, b, out=out)

    return median_seconds(run, repeats) / calls * batch / part


def exp_seconds_per_element(elements: int = 1 << 16, repeats: int = 5, dtype=torch.float32) -> float:
    """Seconds per element of ``torch.exp`` on a cache-resident buffer: the cheapest a softmax's
    exponentials can be when built from torch ops."""
    x = torch.randn(elements, dtype=dtype) - 3
    out = torch.empty_like(x)

    def run():
        for _ in range(64):
            torch.exp(x, out=out)

    return median_seconds(run, repeats) / (64 * elements)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fast_paths() -> dict[str, bool]:
    import torch.backends

    from ..kernels.compiled import KERNELS, loaded

    return {
        "sdpa": hasattr(torch.nn.functional, "scaled_dot_product_attention"),
        "flex_attention": _has_flex(),
        "cuda": torch.cuda.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "avx512": "AVX512" in torch.backends.cpu.get_cpu_capability(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        **{f"compiled_{kernel}": loaded(kernel) is not None for kernel in KERNELS},  # attnkit kernels
    }


def _has_flex() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401

        return True
    except ImportError:
        return False


def machine_info(measure_gemm: bool = True, device="cpu") -> dict:
    """CPU, threads, torch, Python, fast paths, the device and (``measure_gemm``) its fp32 GEMM rate."""
    info = {
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "fast_paths": fast_paths(),
        "device": str(device),
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    if measure_gemm:
        info["gemm_gflops_fp32"] = round(gemm_gflops(device=device), 1)
    return info
