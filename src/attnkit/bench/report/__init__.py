"""The report: stored benchmark runs as one self-contained HTML page, and run comparisons.

The page opens with the answer (:mod:`.recommend`: the fastest exact and
approximate mechanism per pattern and length against SDPA, MQAR recall per
state size, and the machine that holds for). Then, for each suite, the newest
run with rows (plots embedded as PNG data URIs, so the page opens anywhere,
offline): the suite's own ``report(run, rows)`` section when it has one, else
its rows as a table. It ends with a glossary of every column shown
(:mod:`.glossary`). The same tables are
written beside the page as Markdown, CSV and JSON. :func:`compare` prints run
B against run A (e.g. two machines or two versions) row by row, with B/A ratios.
"""
from __future__ import annotations

import datetime
import html
import json
from pathlib import Path

from ..store import Store, canonical
from . import plots
from .glossary import glossary_html
from .parts import columns, errors, to_csv, to_html, to_markdown
from .recommend import recommendation

STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 1200px; }
#recommendation { border: 2px solid #4a7; border-radius: 6px; padding: 0 1em 0.5em; background: #f4fbf6; }
ul.ranked li { margin: 0.3em 0; } .holds { font-weight: bold; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 12px; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: left; }
th { background: #eee; } td.ok { background: #d8f5d0; } td.refused { background: #eee; color: #777; }
td.bad { background: #f8d0d0; } img { width: 100%; display: block; margin: 0.5em 0; }
.meta { color: #555; font-size: 12px; }
"""

# Marks the page once it has loaded, so a headless browser's DOM dump shows what it rendered: how many
# images decoded (and the alt text of any that did not), and where the recommendation block was laid out.
IMAGE_CHECK = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  var broken = imgs.filter(function (i) { return ok.indexOf(i) < 0; }).map(function (i) { return i.alt; });
  document.body.setAttribute('data-images', imgs.length);
  document.body.setAttribute('data-images-rendered', ok.length);
  document.body.setAttribute('data-images-broken', broken.join('|'));
  var rec = document.getElementById('recommendation');
  if (rec) {
    var box = rec.getBoundingClientRect();
    document.body.setAttribute('data-recommendation-box', [Math.round(box.top), Math.round(box.height)].join(','));
  }
});
"""


def default_section(name: str, run: dict, rows: list[dict]) -> tuple[str, dict]:
    """A suite without a ``report`` function: its rows as one table."""
    measured = [r for r in rows if "error" not in r]
    return to_html(measured) + errors(rows), {name: rows}


def write_report(store: Store, out: Path) -> Path:
    """Write ``report.html``, ``tables.md``, one CSV per table and ``results.json`` into ``out``."""
    from ..suites import all_suites

    out.mkdir(parents=True, exist_ok=True)
    plots.new_palette()
    body, tables, runs, missing, latest = [], {}, {}, [], {}
    suites = all_suites()
    for name, module in suites.items():
        run = store.latest_run(name)
        if run is None:
            if getattr(module, "REPORTED", True):
                missing.append(name)
            continue
        latest[name] = (run, store.rows(run["id"]))
    answer, answer_tables = recommendation(latest)
    tables.update(answer_tables)
    for name, (run, rows) in latest.items():
        section = getattr(suites[name], "report", None)
        fragment, suite_tables = section(run, rows) if section else default_section(name, run, rows)
        body += [f'<h2 id="{name}">{name}</h2>', f'<p class="meta">{html.escape(describe_run(run))}</p>', fragment]
        tables.update(suite_tables)
        runs[name] = {k: run[k] for k in ("id", "config", "machine", "torch", "attnkit", "git_rev", "status")}
    if missing:
        body.append("<h2>Not run yet</h2><p>No stored run for: " + ", ".join(
            f"<code>attnkit bench {html.escape(n)}</code>" for n in missing) + "</p>")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>attnkit benchmark report</title>"
            f"<style>{STYLE}</style></head><body><h1>attnkit benchmark report</h1>"
            f"<p class='meta'>written {stamp} from {html.escape(str(store.path))}</p>{answer}{''.join(body)}"
            f"{glossary_html([c for rows in tables.values() for c in columns(rows)])}"
            f"<script>{IMAGE_CHECK}</script></body></html>")
    (out / "report.html").write_text(page)
    (out / "tables.md").write_text("".join(f"## {name}\n\n{to_markdown(rows)}\n" for name, rows in tables.items()))
    for name, rows in tables.items():
        (out / f"{name}.csv").write_text(to_csv(rows))
    (out / "results.json").write_text(json.dumps({"runs": runs, "tables": tables}, indent=1, default=str))
    return out / "report.html"


def describe_run(run: dict) -> str:
    m = run["machine"]
    when = datetime.datetime.fromtimestamp(run["started"], datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    device = f", {m['device']}" if m.get("device", "cpu") != "cpu" else ""
    return (f"run {run['id']} ({run['status']}), {when}; {m.get('cpu', '?')}{device}, {m.get('threads', '?')} "
            f"threads, fp32 GEMM {m.get('gemm_gflops_fp32', '?')} GFLOP/s; torch {run['torch']}, "
            f"attnkit {run['attnkit']}, git {run['git_rev']}")


def compare(store: Store, a: int, b: int) -> str:
    """Markdown: rows of run B matched to run A by key, each numeric figure with its B/A ratio."""
    run_a, run_b = store.run(a), store.run(b)
    if run_a["suite"] != run_b["suite"]:
        raise ValueError(f"--compare: run {a} is suite {run_a['suite']!r} but run {b} is {run_b['suite']!r}")
    keys_a = {canonical(k): f for k, f in store.keyed_rows(a)}
    out = []
    for key, fig_b in store.keyed_rows(b):
        fig_a = keys_a.get(canonical(key))
        row = dict(key)
        for name, vb in fig_b.items():
            va = None if fig_a is None else fig_a.get(name)
            if isinstance(vb, (int, float)) and isinstance(va, (int, float)) and not isinstance(vb, bool):
                row[f"{name} A"], row[f"{name} B"] = va, vb
                row[f"{name} B/A"] = vb / va if va else None
        if len(row) > len(key):
            out.append(row)
    header = f"# {run_a['suite']}: run {b} vs run {a}\n\nA: {describe_run(run_a)}\n\nB: {describe_run(run_b)}\n\n"
    return header + to_markdown(out)
