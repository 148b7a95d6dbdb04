"""Facts about the machine that every benchmark prints beside its figures."""
from __future__ import annotations

import platform
import statistics
import time

import torch


def gemm_gflops(n: int = 2048, repeats: int = 5, dtype=torch.float32) -> float:
    """Median fp32 GEMM throughput of ``torch.mm`` on n x n matrices, in GFLOP/s."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


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

    return {
        "sdpa": hasattr(torch.nn.functional, "scaled_dot_product_attention"),
        "flex_attention": _has_flex(),
        "cuda": torch.cuda.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "avx512": "AVX512" in torch.backends.cpu.get_cpu_capability(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def _has_flex() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401

        return True
    except ImportError:
        return False


def machine_info(measure_gemm: bool = True) -> dict:
    info = {
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "fast_paths": fast_paths(),
    }
    if measure_gemm:
        info["gemm_gflops_fp32"] = round(gemm_gflops(), 1)
    return info
