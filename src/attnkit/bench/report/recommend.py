"""The answer at the top of the report: which attention to use on this machine.

From the newest stored runs of the kernel matrix (``bench kernels``: masks, each
run by attnkit, SDPA with the same boolean mask and compiled FlexAttention), CAB
(``bench cab``: mechanisms against SDPA and the materialised reference) and
MQAR (``bench mqar``: recall against state size):

- per pattern, length and direction, the fastest **exact** candidate (one that
  computes softmax attention under that pattern, as SDPA does: attnkit's masked
  kernels, SDPA, FlexAttention, and ``softmax`` in any form) and the fastest
  **approximate** one (a mechanism with less than quadratic cost, computing a
  different function), each with its speed-up over SDPA (SDPA's time over its
  time) and its peak memory over SDPA's, both from the same run;
- per MQAR setting, the mechanisms ranked by recall, with their state sizes and
  whether they are on the recall/state-size frontier;
- the machine (and torch) these figures hold for, from the runs' machine records.
"""
from __future__ import annotations

import html

from .parts import to_html

SDPA = ("sdpa", "softmax[sdpa]")


def kernel_candidates(rows: list[dict]) -> dict[tuple, list[dict]]:
    """(pattern, N, direction) -> the exact candidates of one kernel-matrix row, with seconds and peak MiB."""
    from ..patterns import PATTERNS

    out: dict[tuple, list[dict]] = {}
    for r in rows:
        if "seconds" not in r:
            continue
        n = r.get("N", r.get("n"))
        mechanism = PATTERNS[r["pattern"]].mechanism if r["pattern"] in PATTERNS else r["pattern"]
        found = [{"name": f"attnkit {mechanism}", "exact": True, "seconds": r["seconds"], "peak_mb": r.get("peak_mb")}]
        if r.get("sdpa_ratio"):
            found.append({"name": "sdpa", "exact": True, "seconds": r["seconds"] * r["sdpa_ratio"],
                          "peak_mb": r.get("sdpa_peak_mb")})
        if r.get("flex_ratio"):
            found.append({"name": "flex", "exact": True, "seconds": r["seconds"] * r["flex_ratio"], "peak_mb": None})
        out[(r["pattern"], n, r["direction"])] = found
    return out


def cab_candidates(rows: list[dict]) -> dict[tuple, list[dict]]:
    """(pattern, N, "fwd") -> CAB's timed mechanisms: ``softmax`` (any form) exact, sub-quadratic ones approximate."""
    from ..suites.cab import efficient

    out: dict[tuple, list[dict]] = {}
    for r in rows:
        if "seconds" not in r or "N" not in r:
            continue
        exact = r["mechanism"] == "softmax"
        if not exact and not _sub_quadratic(r["mechanism"], efficient):
            continue  # a different quadratic mechanism (or one no longer registered): neither SDPA's function nor cheaper
        name = r["mechanism"] + (f"[{r['form']}]" if r.get("form") else "")
        pattern = "causal-self" if r["causal"] else "noncausal-self"
        out.setdefault((pattern, r["N"], "fwd"), []).append(
            {"name": name, "exact": exact, "seconds": r["seconds"], "peak_mb": r.get("peak_mb")})
    return out


def _sub_quadratic(name: str, efficient) -> bool:
    try:
        return efficient(name)
    except ValueError:  # a run stored before the mechanism was renamed or removed
        return False


def against_sdpa(found: list[dict]) -> list[dict]:
    """The candidates fastest first, each with ``speedup`` and ``memory`` relative to SDPA (None if unknown)."""
    sdpa = next((c for c in found if c["name"] in SDPA), None)
    ranked = []
    for c in sorted(found, key=lambda c: c["seconds"]):
        speedup = sdpa["seconds"] / c["seconds"] if sdpa else None
        memory = (c["peak_mb"] / sdpa["peak_mb"] if sdpa and sdpa.get("peak_mb") and c.get("peak_mb") is not None
                  else None)
        ranked.append({**c, "speedup": speedup, "memory": memory})
    return ranked


def speed_table(groups: dict[str, dict[tuple, list[dict]]]) -> list[dict]:
    """One row per (suite, pattern, N, direction): the fastest exact and the fastest approximate candidate."""
    out = []
    for suite, by_key in groups.items():
        for (pattern, n, direction), found in sorted(by_key.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
            ranked = against_sdpa(found)
            row = {"suite": suite, "pattern": pattern, "N": n, "direction": direction}
            for kind, exact in (("exact", True), ("approx", False)):
                best = next((c for c in ranked if c["exact"] == exact), None)
                row[kind] = best["name"] if best else "-"
                row[f"{kind}_speedup"] = best["speedup"] if best else None
                row[f"{kind}_memory"] = best["memory"] if best else None
            out.append(row)
    return out


def recall_table(mqar_rows: list[dict]) -> list[dict]:
    """Per MQAR setting (L, K): mechanisms by recall (ties: the smaller state first); ``frontier`` marks those
    no smaller-or-equal state beats."""
    from ..suites.mqar import best_per_setting

    best = [r for r in best_per_setting(mqar_rows) if "accuracy" in r and r.get("state_size") is not None]
    out = []
    for setting in sorted({(r["L"], r["K"]) for r in best}):
        mine = sorted((r for r in best if (r["L"], r["K"]) == setting), key=lambda r: (-r["accuracy"], r["state_size"]))
        for rank, r in enumerate(mine, 1):
            beaten = any(o is not r and o["state_size"] <= r["state_size"] and o["accuracy"] > r["accuracy"]
                         for o in mine)
            out.append({"L": r["L"], "K": r["K"], "rank": rank, "mechanism": r["mechanism"], "role": r["role"],
                        "state_size": r["state_size"], "recall": r["accuracy"], "frontier": "yes" if not beaten else "-"})
    return out


def machine_line(runs: dict[str, dict]) -> str:
    """The machine(s) and torch the stored runs were measured on, one phrase per distinct machine."""
    seen: dict[str, list[str]] = {}
    for suite, run in runs.items():
        m = run["machine"]
        device = m.get("device", "cpu")
        gemm = m.get("gemm_gflops_fp32")
        rate = f"{gemm:.4g}" if isinstance(gemm, (int, float)) else "?"
        text = (f"{m.get('cpu', '?')}, {m.get('threads', '?')} threads, {device}, fp32 GEMM {rate} "
                f"GFLOP/s, torch {run['torch']}")
        seen.setdefault(text, []).append(f"{suite} run {run['id']}")
    return "; ".join(f"{text} ({', '.join(which)})" for text, which in seen.items())


def _times(x) -> str:
    return "?" if x is None else f"{x:.2g}×" if x < 10 else f"{x:.0f}×"


def _against_sdpa(c: dict) -> str:
    """"SDPA itself", or "2.1× faster than SDPA, 0.34× its memory" / "3.2× slower than SDPA"."""
    if c["name"] in SDPA:
        return "the baseline"
    if c["speedup"] is None:
        return "no SDPA time in this run"
    speed = (f"{_times(c['speedup'])} faster than SDPA" if c["speedup"] >= 1
             else f"{_times(1 / c['speedup'])} slower than SDPA")
    return speed + (f", {_times(c['memory'])} its memory" if c["memory"] is not None else "")


def ranked_list(groups: dict[str, dict[tuple, list[dict]]]) -> str:
    """Per suite and pattern, at the longest length measured (forward): the three fastest candidates."""
    items = []
    for suite, by_key in groups.items():
        for pattern in sorted({k[0] for k in by_key if k[2] == "fwd"}):
            n = max(k[1] for k in by_key if k[0] == pattern and k[2] == "fwd")
            ranked = against_sdpa(by_key[(pattern, n, "fwd")])[:3]
            names = "; ".join(
                f"{i}. <b>{html.escape(c['name'])}</b> ({'exact' if c['exact'] else 'approximate'}): {_against_sdpa(c)}"
                for i, c in enumerate(ranked, 1))
            items.append(f"<li><b>{html.escape(str(pattern))}</b>, N={n} ({suite}): {names}</li>")
    return f"<ul class='ranked'>{''.join(items)}</ul>" if items else ""


def recall_list(recall: list[dict]) -> str:
    """Per MQAR setting: the best recall, and the smallest state reaching 0.9 (if any)."""
    items = []
    for setting in sorted({(r["L"], r["K"]) for r in recall}):
        mine = [r for r in recall if (r["L"], r["K"]) == setting]
        ranked = "; ".join(f"{r['rank']}. <b>{html.escape(str(r['role']))}</b> {r['recall']:.2f} "
                           f"(state {r['state_size']:,})" for r in mine[:3])
        good = [r for r in mine if r["recall"] >= 0.9]
        small = min(good, key=lambda r: r["state_size"]) if good else None
        note = (f" — smallest state with recall ≥ 0.9: {html.escape(str(small['role']))} ({small['state_size']:,})"
                if small else " — no mechanism reached recall 0.9")
        items.append(f"<li><b>MQAR L={setting[0]}, K={setting[1]}</b>: {ranked}{note}</li>")
    return f"<ul class='ranked'>{''.join(items)}</ul>" if items else ""


def recommendation(latest: dict[str, tuple[dict, list[dict]]]) -> tuple[str, dict]:
    """The block at the top of the report and its tables, from ``{suite: (run, rows)}`` of the newest runs."""
    groups = {}
    if "kernels" in latest:
        groups["kernels"] = kernel_candidates(latest["kernels"][1])
    if "cab" in latest:
        groups["cab"] = cab_candidates(latest["cab"][1])
    groups = {k: v for k, v in groups.items() if v}
    recall = recall_table(latest["mqar"][1]) if "mqar" in latest else []
    used = {s: latest[s][0] for s in (*groups, *(["mqar"] if recall else []))}
    head = "<section id='recommendation'><h2>Which attention should I use?</h2>"
    if not used:
        return (head + "<p>Nothing measured yet: run <code>attnkit bench</code> (the kernel matrix, CAB and MQAR), "
                "then <code>attnkit report</code>.</p></section>", {})
    speed = speed_table(groups)
    parts = [head, f"<p class='holds'>These figures hold for: {html.escape(machine_line(used))}.</p>"]
    if speed:
        parts += ["<h3>Fastest first (longest length measured, forward; × is relative to SDPA in the same run)</h3>",
                  ranked_list(groups),
                  "<details><summary>Fastest exact and approximate mechanism at every length</summary>",
                  to_html(speed), "</details>"]
    if recall:
        parts += ["<h3>Recall (MQAR) per state size</h3>", recall_list(recall),
                  "<details><summary>Every mechanism's recall and state size</summary>", to_html(recall), "</details>"]
    missing = [s for s in ("kernels", "cab", "mqar") if s not in used]
    if missing:
        parts.append("<p class='meta'>Not in this answer (no stored run): "
                     + ", ".join(f"<code>attnkit bench {s}</code>" for s in missing) + "</p>")
    parts.append("</section>")
    return "\n".join(parts), {"recommendation_speed": speed, "recommendation_recall": recall}
