"""The report's sections, one per suite: ``section(run, rows) -> (html, {table name: rows})``.

Each takes the newest stored run of its suite and its rows, and returns the
HTML fragment (embedded plots and tables) plus the tables the report also
writes as Markdown, CSV and JSON.
"""
from __future__ import annotations

import html

from ..registry import PATTERNS
from . import _plots
from ._tables import to_html

PATTERN_CSS = {"ok": "ok", "refused": "refused", "leaks future": "bad", "non-finite": "bad"}


def _img(uri: str | None, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">' if uri else f"<p><em>no data for: {alt}</em></p>"


def _gemm(run: dict) -> float | None:
    return run["machine"].get("gemm_gflops_fp32")


def _errors(rows: list[dict]) -> str:
    bad = [r for r in rows if "error" in r or r.get("status") == "not registered"]
    return "<h3>Not run</h3>" + to_html(bad) if bad else ""


def kernels(run: dict, rows: list[dict]) -> tuple[str, dict]:
    """The kernel matrix (rows of ``attnkit bench kernels``): attnkit against the SDPA and compiled
    FlexAttention baselines of the same run, whose times are attnkit's times times the stored ratios."""
    lines = []
    for r in rows:
        if "seconds" not in r:
            continue
        where = {"pattern": r["pattern"], "N": r["n"], "direction": r["direction"]}
        lines.append({**where, "label": f"attnkit {r['direction']}", "seconds": r["seconds"],
                      "peak_mb": r.get("peak_mb"), "fraction_of_gemm": r.get("gemm_ratio")})
        for base in ("sdpa", "flex"):
            if r.get(f"{base}_ratio"):
                lines.append({**where, "label": f"{base} {r['direction']}", "seconds": r["seconds"] * r[f"{base}_ratio"]})
    parts = [
        _img(_plots.lines_by_panel(lines, panel="pattern", series="label", x="N", y="seconds",
                                   title="time vs N (dashed: SDPA with the equivalent mask, compiled FlexAttention)",
                                   ylabel="seconds"), "kernel time vs N"),
        _img(_plots.lines_by_panel(lines, panel="pattern", series="label", x="N", y="peak_mb",
                                   title="attnkit peak memory vs N (fresh subprocess)", ylabel="MiB"),
             "kernel memory vs N"),
        _img(_plots.lines_by_panel(lines, panel="pattern", series="label", x="N", y="fraction_of_gemm",
                                   title=f"attnkit FLOP/s as a fraction of the same run's GEMM ({_gemm(run)} GFLOP/s)",
                                   ylabel="fraction of GEMM", logy=False), "kernel GEMM fraction"),
        to_html(rows), _errors(rows),
    ]
    return "\n".join(parts), {"kernels": rows}


def cab(run: dict, rows: list[dict]) -> tuple[str, dict]:
    from .cab import efficiency_table

    gemm = _gemm(run)
    matrix = [{"mechanism": r["probe"], **{p: r[p] for p in PATTERNS},
               "disagrees with spec": ", ".join(r["disagrees_with_spec"]) or "-"} for r in rows if "probe" in r]
    timed = [r for r in rows if "seconds" in r]
    for r in timed:
        r["label"] = r["mechanism"] + (f"[{r['form']}]" if r.get("form") else "")
        r["pattern"] = "causal-self" if r["causal"] else "noncausal-self"
        if gemm and "gflops" in r:
            r["fraction_of_gemm"] = r["gflops"] / gemm
    eff = efficiency_table(rows)
    parts = [
        "<h3>Pattern matrix (each mechanism run under each pattern)</h3>", to_html(matrix, PATTERN_CSS),
        "<h3>Efficiency length against vanilla attention</h3>", to_html(eff),
        _img(_plots.lines_by_panel(timed, panel="pattern", series="label", x="N", y="seconds",
                                   title="forward time vs N (dashed: softmax via SDPA and materialised reference)",
                                   ylabel="seconds"), "CAB time vs N"),
        _img(_plots.lines_by_panel(timed, panel="pattern", series="label", x="N", y="peak_mb",
                                   title="peak memory of one forward vs N (fresh subprocess)", ylabel="MiB"),
             "CAB memory vs N"),
        _img(_plots.lines_by_panel(timed, panel="pattern", series="label", x="N", y="fraction_of_gemm",
                                   title=f"softmax-family FLOP/s as a fraction of GEMM ({gemm} GFLOP/s)",
                                   ylabel="fraction of GEMM", logy=False), "CAB GEMM fraction"),
        _errors(rows),
    ]
    timings = [{k: r.get(k) for k in ("mechanism", "form", "pattern", "N", "seconds", "tokens_per_s", "gflops",
                                      "fraction_of_gemm", "peak_mb")} for r in timed]
    return "\n".join(parts), {"cab_patterns": matrix, "cab_efficiency_length": eff, "cab_timings": timings}


def mqar(run: dict, rows: list[dict]) -> tuple[str, dict]:
    from .mqar import best_per_setting, ordering_checks

    best = best_per_setting(rows)
    table = [{k: r.get(k) for k in ("role", "mechanism", "L", "K", "d", "lr", "accuracy", "state_size", "epochs",
                                    "seconds", "status")} for r in best]
    checks = [{"claim": c, "verdict": v} for c, v in ordering_checks(best)]
    parts = [
        _img(_plots.accuracy_vs_state(best), "MQAR accuracy vs state size"),
        "<h3>Best accuracy of each learning-rate sweep</h3>", to_html(table, {"not registered": "refused"}),
        "<h3>The published ordering</h3>", to_html(checks, {"PASS": "ok", "FAIL": "bad"}),
    ]
    return "\n".join(parts), {"mqar": table, "mqar_ordering": checks}


def sparse(run: dict, rows: list[dict]) -> tuple[str, dict]:
    curves = [r for r in rows if "sparsity" in r and "quality" in r]
    parts = [
        _img(_plots.lines_by_panel(curves, panel="phase", series="method", x="sparsity", y="quality",
                                   title="quality vs sparsity, prefill and decode", ylabel="quality",
                                   logx=False, logy=False), "sparsity vs quality"),
        to_html(rows), _errors(rows),
    ]
    return "\n".join(parts), {"sparse": rows}


SECTIONS = {"kernels": kernels, "cab": cab, "mqar": mqar, "sparse": sparse}
