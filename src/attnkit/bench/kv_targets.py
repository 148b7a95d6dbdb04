"""The KV-cache targets ``attnkit bench kv`` checks, printed as met / not met.

At the context of the memory and speed runs (the targets are stated for 16k):

- at a 25% budget, every policy's cache peak (the larger of its peak while
  prefilling and while decoding) at most 0.35x the full cache's, and decode at
  least 1.0x the full cache's tokens/s;
- KIVI with int4 keys and values: peak at most 0.3x the full cache's, held-out
  perplexity within 2% of the full cache's.

A target is checked only from rows that measured its columns, so a run of
``--measure quality,memory`` and one of ``--measure speed`` each print theirs.
"""
from __future__ import annotations

TARGET_CONTEXT = 16384
BUDGET = 0.25


def _peak(row: dict) -> float | None:
    if "peak_vs_full" not in row:
        return None
    return max(row["peak_vs_full"], row["prefill_peak_vs_full"])


def checks(rows: list[dict]) -> list[dict]:
    """One dict per (row, target) that the rows measured: model, policy, target, value, met."""
    out = []
    for r in rows:
        if "error" in r or r.get("policy") == "full":
            continue
        found = []
        if r.get("budget") == BUDGET:
            found.append(("cache peak <= 0.35x full", _peak(r), lambda v: v <= 0.35))
            found.append(("decode >= 1.0x full tokens/s", r.get("decode_vs_full"), lambda v: v >= 1.0))
        if r.get("policy") == "kivi4":
            found.append(("int4 cache peak <= 0.3x full", _peak(r), lambda v: v <= 0.3))
            found.append(("int4 perplexity within 2% of full", r.get("perplexity_vs_full"), lambda v: v <= 1.02))
        out += [{"model": r["model"], "policy": r["policy"], "target": name, "value": value, "met": ok(value),
                 "context": r.get("context")} for name, value, ok in found if value is not None]
    return out


def print_targets(rows: list[dict]) -> None:
    found = checks(rows)
    if not found:
        return
    contexts = {c["context"] for c in found if c["context"] is not None}
    where = ", ".join(str(c) for c in sorted(contexts)) or "the quality window"
    note = "" if contexts <= {TARGET_CONTEXT} else f" (the targets are stated for {TARGET_CONTEXT})"
    print(f"\ntargets at context {where}{note}:")
    for c in found:
        print(f"  {c['model']:<15}{c['policy']:<13}{c['target']:<36}{c['value']:>8.3f}  "
              f"{'met' if c['met'] else 'NOT MET'}")
