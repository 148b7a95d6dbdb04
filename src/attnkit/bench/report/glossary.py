"""What every column of the report means: its unit and which way is better.

Table headers carry the entry as a tooltip, and the page ends with the entries
of every column it shows. A column without an entry is listed as such, so a
suite that adds one is seen to owe its explanation.
"""
from __future__ import annotations

import html

from ...registry import PATTERNS

HIGHER, LOWER = "higher is better", "lower is better"

# column -> (unit, meaning, which way is better or "")
ENTRIES: dict[str, tuple[str, str, str]] = {
    # keys
    "suite": ("", "the benchmark suite the row comes from (attnkit bench SUITE)", ""),
    "pattern": ("", "the attention pattern: a mask of the kernel matrix (attnkit masks list), or causal/"
                    "non-causal self-attention in CAB", ""),
    "N": ("tokens", "sequence length (queries and keys)", ""),
    "direction": ("", "fwd: one forward call; fwdbwd: forward and backward", ""),
    "mechanism": ("", "registered attention mechanism (attnkit list); [form] names a form or a baseline", ""),
    "form": ("", "the form run: sdpa (PyTorch's fused kernel), reference (the materialised equations); "
                 "empty: attnkit's default dispatch", ""),
    "batch": ("", "batch size", ""), "heads": ("", "attention heads", ""), "head_dim": ("", "dimension per head", ""),
    "threads": ("", "CPU threads the timing used", ""),
    # time and throughput
    "seconds": ("s", "median wall time of one call (MQAR and training rows: of the whole run)", LOWER),
    "tokens_per_s": ("tokens/s", "batch x N over seconds", HIGHER),
    "gflops": ("GFLOP/s", "attention FLOPs (4 x batch x heads x allowed pairs x head_dim forward; x3.5 with "
                          "backward) over seconds", HIGHER),
    "gemm_gflops": ("GFLOP/s", "fp32 matrix-multiply rate measured in the same worker just before timing", ""),
    "gemm_ratio": ("fraction", "gflops / gemm_gflops: how close attention runs to the machine's matmul rate", HIGHER),
    "fraction_of_gemm": ("fraction", "gflops over the GEMM rate named in the plot title", HIGHER),
    "sdpa_ratio": ("x", "SDPA's time with the equivalent boolean mask / attnkit's time; > 1: attnkit is faster",
                   HIGHER),
    "sdpa_bwd_heads_per_call": ("heads", "heads per SDPA call in its forward+backward baseline: all of them where "
                                          "the masked backward's (heads, N, N) matrices fit 6 GiB, fewer beyond", ""),
    "flex_ratio": ("x", "compiled FlexAttention's time with the equivalent BlockMask / attnkit's time; > 1: attnkit "
                        "is faster", HIGHER),
    "flex_cap": ("x", "FlexAttention's time / floor_seconds: the most flex_ratio any kernel built from torch ops "
                      "could reach", ""),
    "floor_seconds": ("s", "only the matmuls of the non-empty tiles at 100% of GEMM plus one exp per computed "
                           "score: a lower bound on a torch-op kernel's time", ""),
    "density": ("fraction", "allowed (query, key) pairs / N^2", ""),
    # memory
    "peak_mb": ("MiB", "peak anonymous memory added by one call, in a fresh subprocess", LOWER),
    "mem_x_qkv": ("x", "peak_mb / the size of q, k and v: 1 is the inputs' own size", LOWER),
    "sdpa_peak_mb": ("MiB", "SDPA's forward peak with the equivalent boolean mask (the mask itself not counted)",
                     LOWER),
    "sdpa_mem_ratio": ("x", "peak_mb / sdpa_peak_mb (forward); < 1: attnkit needs less memory than SDPA", LOWER),
    # CAB
    "disagrees with spec": ("", "patterns where the probed outcome differs from the patterns the spec declares "
                                "(- : none)", ""),
    "time vs sdpa": ("tokens", "efficiency length: the N from which the mechanism stays faster than SDPA", LOWER),
    "memory vs sdpa": ("tokens", "the N from which the mechanism stays below SDPA's peak memory", LOWER),
    "time vs reference": ("tokens", "the N from which the mechanism stays faster than materialised softmax", LOWER),
    "memory vs reference": ("tokens", "the N from which it stays below materialised softmax's memory", LOWER),
    # MQAR
    "role": ("", "the kind of sequence mixer MQAR compares (attention, linear, ...), resolved to a mechanism", ""),
    "L": ("tokens", "MQAR sequence length", ""), "K": ("pairs", "MQAR key-value pairs to recall", ""),
    "d": ("", "model width", ""), "lr": ("", "learning rate (the best of the sweep is shown)", ""),
    "accuracy": ("fraction", "MQAR recall: queried values predicted correctly", HIGHER),
    "recall": ("fraction", "MQAR accuracy (best of the learning-rate sweep)", HIGHER),
    "state_size": ("numbers", "what a decoder holds per layer after L tokens (KV cache or recurrent state)", LOWER),
    "epochs": ("", "training epochs run", ""),
    "status": ("", "how the row ended (done, not registered, stopped, ...)", ""),
    "claim": ("", "an ordering the MQAR papers report", ""),
    "verdict": ("", "PASS / FAIL on this run's best accuracies (n/a: a role missing)", ""),
    "rank": ("", "position by recall within its setting (1 = best)", ""),
    "seed": ("", "the seed of a training's data and initialisation", ""),
    "seeds": ("", "seeds the mean is over (ordering table: the counts per role in that cell)", ""),
    "ci95": ("fraction", "half-width of the 95% interval of the mean over seeds (Student's t; none with 1 seed)", LOWER),
    "roles": ("", "roles whose training is not in the points file yet", ""),
    "frontier": ("", "yes: no mechanism with an equal or smaller state has higher recall", ""),
    # sparse
    "method": ("", "training-free sparse method or cache policy", ""),
    "phase": ("", "where the sparsity applies: prefill, decode or both", ""),
    "value": ("tokens", "the swept window or cache budget", ""),
    "sparsity": ("fraction", "causal (query, key) pairs of the phase left out", HIGHER),
    "quality": ("x", "dense perplexity / sparse perplexity (1 = no loss)", HIGHER),
    "loss": ("nats", "held-out next-token cross-entropy", LOWER),
    "perplexity": ("", "exp(loss)", LOWER),
    "params": ("", "the mechanism's parameters for this row", ""),
    # the recommendation
    "exact": ("", "fastest candidate computing exactly SDPA's function under the pattern", ""),
    "exact_speedup": ("x", "SDPA's time / the exact candidate's time (same run)", HIGHER),
    "exact_memory": ("x", "the exact candidate's peak memory / SDPA's (same run; empty: not measured)", LOWER),
    "approx": ("", "fastest sub-quadratic mechanism (a different function: linear, recurrent, windowed ...)", ""),
    "approx_speedup": ("x", "SDPA's time / the approximate mechanism's time (same run)", HIGHER),
    "approx_memory": ("x", "the approximate mechanism's peak memory / SDPA's (same run)", LOWER),
    # other suites
    "causal": ("", "causal (True) or not", ""),
    "probe": ("", "the mechanism whose patterns were probed", ""),
    "disagrees_with_spec": ("", "patterns where the probed outcome differs from the spec's", ""),
    "flex_seconds": ("s", "compiled FlexAttention's median time on the same callables", LOWER),
    "qkv_mb": ("MiB", "the size of q, k and v", ""),
    "peak_over_qkv": ("x", "peak_mb / qkv_mb", LOWER),
    "section": ("", "which part of the suite the row belongs to", ""),
    "shape": ("", "the call's tensor shape (batch, heads, queries, keys, head_dim)", ""),
    "attnkit_us": ("µs", "median time of one attnkit.attention call", LOWER),
    "sdpa_us": ("µs", "median time of one direct SDPA call", LOWER),
    "overhead_us": ("µs", "attnkit's time minus SDPA's, per call (the API's overhead)", LOWER),
    "t_attnkit": ("s", "attnkit's median time", LOWER), "t_sdpa": ("s", "SDPA's median time in the same run", ""),
    "ratio_attnkit": ("x", "SDPA's time / attnkit's; 1 = no overhead", HIGHER),
    "gflops_attnkit": ("GFLOP/s", "attnkit's attention FLOP rate", HIGHER),
    "gflops_sdpa": ("GFLOP/s", "SDPA's attention FLOP rate in the same run", ""),
    "n": ("tokens", "sequence length (key/value tokens for decoding)", ""),
    "kv_heads": ("", "key/value heads (fewer than heads: grouped-query attention)", ""),
    "lean_ms": ("ms", "LeanAttention's median decode time", LOWER),
    "sdpa_ms": ("ms", "SDPA's median decode time in the same run", ""),
    "gb_per_s": ("GB/s", "key and value bytes read per second", HIGHER),
    "max_abs_diff": ("", "largest absolute difference from the reference output", LOWER),
    "load_average": ("", "the machine's 1-minute load average when measured (> cores: timings are noisy)", ""),
    "strategy": ("", "context-parallel strategy (ring, ulysses, lasp2, ...; single: one process)", ""),
    "P": ("processes", "context-parallel ranks", ""),
    "overlap": ("", "communication overlapped with compute", ""),
    "bytes": ("bytes", "bytes one rank sent, counted around the collectives", LOWER),
    "bytes_analytic": ("bytes", "what the strategy should send by its formula", ""),
    "bytes_ratio": ("x", "bytes / bytes_analytic; 1 = as the formula says", ""),
    "memory_vs_single_times_p": ("x", "P x a rank's peak / the single process's peak; < P: sharding saves memory",
                                 LOWER),
    "no_overlap_over_overlap": ("x", "time without overlap / time with it; > 1: overlap helps", HIGHER),
    "policy": ("", "KV-cache compression policy (full: no compression)", ""),
    "budget": ("fraction", "share of the context the compressed cache keeps", ""),
    "context": ("tokens", "prompt length", ""),
    "model": ("", "the model the row was measured on", ""),
    "prefill_mode": ("", "how the prompt was prefilled (whole prompt or in chunks)", ""),
    "perplexity_vs_full": ("x", "perplexity through the compressed cache / through the full cache", LOWER),
    "argmax_agreement": ("fraction", "decoded tokens equal to the full cache's", HIGHER),
    "passkey_accuracy": ("fraction", "passkeys retrieved from the compressed cache", HIGHER),
    "full_bytes": ("bytes", "the full cache's bytes", ""),
    "bytes_after_prefill": ("bytes", "the cache's bytes once the prompt is in", LOWER),
    "peak_bytes": ("bytes", "the cache's peak bytes while decoding", LOWER),
    "peak_vs_full": ("x", "peak_bytes / full_bytes", LOWER),
    "prefill_peak_vs_full": ("x", "the cache's peak while prefilling / full_bytes", LOWER),
    "decode_tokens_per_s": ("tokens/s", "decode speed through the compressed cache", HIGHER),
    "decode_vs_full": ("x", "decode speed / the full cache's", HIGHER),
    "compress_seconds": ("s", "time the policy spent compressing", LOWER),
    "prefill_seconds": ("s", "time to prefill the prompt", LOWER),
    "chunked_prefill_seconds": ("s", "time to prefill the prompt in chunks", LOWER),
    "queries": ("", "query tokens of the call", ""),
    "backward": ("", "forward and backward (True) or forward only", ""),
    "history": ("", "per epoch (loss, accuracy) of the training", ""),
    "rows": ("", "the rows a summary was built from", ""),
    # sinks and ACT calibration (attnkit bench sinks)
    "part": ("", "sinks: per-head sink statistics; act: attention calibration measured before and after", ""),
    "first_mass_mean": ("fraction", "attention on the first token, mean over layers and heads", ""),
    "first_mass_max": ("fraction", "attention on the first token, largest head", ""),
    "entropy_mean": ("nats", "attention entropy per query, mean over layers and heads", ""),
    "heads_with_hidden_sinks": ("heads", "heads with a sink other than the first token (mean received attention "
                                         "above the threshold)", ""),
    "max_over_median": ("x", "largest hidden-state magnitude over its layer's median (massive activations)", ""),
    "perplexity_before": ("", "held-out perplexity without calibration", LOWER),
    "perplexity_after": ("", "held-out perplexity with ACT on the kept heads", LOWER),
    "mrr_before": ("fraction", "sentence-pair retrieval mean reciprocal rank without calibration", HIGHER),
    "mrr_after": ("fraction", "the same with ACT on the kept heads", HIGHER),
    "accuracy_before": ("fraction", "genre probe accuracy on the test passages without calibration", HIGHER),
    "accuracy_after": ("fraction", "the same with ACT on the kept heads", HIGHER),
    "heads_searched": ("heads", "heads ACT's search calibrated one at a time", ""),
    "heads_kept": ("heads", "heads whose calibration alone improved the search split", ""),
    "kept": ("", "the kept heads, module:head,head;...", ""),
    # errors
    "error": ("", "what went wrong for this row (the run kept going)", ""),
    "looked_for": ("", "registered names tried for a role", ""),
}
for _p in PATTERNS:
    ENTRIES[_p] = ("", f"outcome of running the mechanism as {_p} attention: ok, refused (a clear error), "
                       "leaks future, non-finite, or the error raised", "")


# Families of columns named after a mechanism or form: prefix -> (unit, meaning with {} for the name, better).
PREFIXES = {
    "t_": ("s", "median time of {}", LOWER),
    "speedup_": ("x", "SDPA's time / {}'s time in the same run; > 1: {} is faster", HIGHER),
    "sdpa_over_": ("x", "SDPA's time / {}'s time in the same run; > 1: {} is faster", HIGHER),
}


def entry(column: str) -> tuple[str, str, str] | None:
    """``(unit, meaning, better)`` of a column, or None when the glossary has no entry for it."""
    if column in ENTRIES:
        return ENTRIES[column]
    for prefix, (unit, meaning, better) in PREFIXES.items():
        if column.startswith(prefix) and len(column) > len(prefix):
            name = column[len(prefix):]
            return unit, meaning.format(name, name), better
    return None


def title(column: str) -> str:
    """A header tooltip: unit, meaning and direction."""
    unit, meaning, better = entry(column) or ("", "", "")
    return "; ".join(x for x in (meaning, f"unit: {unit}" if unit else "", better) if x)


def glossary_html(columns: list[str]) -> str:
    """The entries of ``columns`` (in first-seen order) as a definition table."""
    rows = []
    for c in dict.fromkeys(columns):
        unit, meaning, better = entry(c) or ("", "(no entry)", "")
        rows.append(f"<tr><td><code>{html.escape(c)}</code></td><td>{html.escape(unit)}</td>"
                    f"<td>{html.escape(meaning)}</td><td>{html.escape(better)}</td></tr>")
    return ("<h2 id='glossary'>Glossary</h2><table class='glossary'><thead><tr><th>column</th><th>unit</th>"
            f"<th>meaning</th><th>better</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
