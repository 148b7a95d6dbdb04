"""Pieces of report sections: a table (a list of flat dicts) as HTML, Markdown or CSV, an embedded
image, the rows that were not measured."""
from __future__ import annotations

import csv
import html
import io
import json


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
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
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
    return run["machine"].get("gemm_gflops_fp32")
