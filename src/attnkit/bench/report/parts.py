"""Pieces of report sections: a table (a list of flat dicts) as HTML, Markdown or CSV, an embedded
image, the rows that were not measured."""
from __future__ import annotations

import csv
import html
import io
import json

from .glossary import title


def columns(rows: list[dict]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols.extend(c for c in r if c not in cols)
    return cols


def cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return "" if value is None else str(value)


def to_html(rows: list[dict], css: dict[str, str] | None = None) -> str:
    """``css`` maps a cell's text to a class (e.g. the pattern matrix's ``ok``/``refused``)."""
    if not rows:
        return "<p><em>no rows</em></p>"
    cols = columns(rows)
    head = "".join(f'<th title="{html.escape(title(c))}">{html.escape(c)}</th>' for c in cols)
    body = []
    for r in rows:
        cells = []
        for c in cols:
            text = cell(r.get(c))
            klass = (css or {}).get(text.split(":")[0])
            attr = f' class="{klass}"' if klass else ""
            cells.append(f"<td{attr}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def to_markdown(rows: list[dict]) -> str:
    if not rows:
        return "_no rows_\n"
    cols = columns(rows)
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(cell(r.get(c)).replace("|", "\\|") for c in cols) + " |" for r in rows]
    return "\n".join(out) + "\n"


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    cols = columns(rows)
    writer = csv.DictWriter(buf, fieldnames=cols)
    writer.writeheader()
    for r in rows:
        writer.writerow({c: cell(r.get(c)) for c in cols})
    return buf.getvalue()


def image(uri: str | None, alt: str) -> str:
    """An ``<img>`` of a plot's data URI (:mod:`.plots`), or a note that there was nothing to plot."""
    return f'<img src="{uri}" alt="{html.escape(alt)}">' if uri else f"<p><em>no data for: {html.escape(alt)}</em></p>"


def errors(rows: list[dict]) -> str:
    """The rows that hold an error or a "not registered" status, under a "Not run" heading."""
    bad = [r for r in rows if "error" in r or r.get("status") == "not registered"]
    return "<h3>Not run</h3>" + to_html(bad) if bad else ""


def gemm(run: dict) -> float | None:
    """The run's fp32 GEMM GFLOP/s (measured when it started)."""
    g = run["machine"].get("gemm_gflops_fp32")
    return float(g) if isinstance(g, (int, float)) else None


def gemm_note(per_row: list, run: dict) -> str:
    """Names the GEMM rate a "fraction of GEMM" was divided by: the rows' own (each kernel worker
    measures it before timing) when they carry one, else the run's."""
    rates = sorted(float(g) for g in per_row if isinstance(g, (int, float)))
    if not rates:
        return f"the run's fp32 GEMM ({gemm(run):.4g} GFLOP/s)" if gemm(run) else "GEMM (not measured)"
    lo, hi = rates[0], rates[-1]
    figure = f"{lo:.4g} GFLOP/s" if f"{lo:.3g}" == f"{hi:.3g}" else f"{lo:.4g}-{hi:.4g} GFLOP/s"
    return f"the fp32 GEMM measured in the same worker ({figure})"
