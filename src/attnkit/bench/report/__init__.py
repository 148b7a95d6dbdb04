"""The report: stored benchmark runs as one self-contained HTML page, and run comparisons.

The page opens with the answer (:mod:`.recommend`: the fastest exact and
approximate mechanism per pattern and length against SDPA, MQAR recall per
state size, and the machine that holds for). Then, for each suite, the newest
run with rows (plots embedded as PNG data URIs, so the page opens anywhere,
offline): the suite's own ``report(run, rows)`` section when it has one, else
its rows as a table. It ends with a glossary of every column shown
(:mod:`.glossary`). The Zoology figure of ``bench mqar --figure`` is drawn from its points file
(:mod:`.zoology`), not from a stored run. The same tables are
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
from .page import html_page
from .parts import columns, errors, to_csv, to_html, to_markdown
from .recommend import recommendation

def default_section(name: str, run: dict, rows: list[dict]) -> tuple[str, dict]:
    """A suite without a ``report`` function: its rows as one table."""
    measured = [r for r in rows if "error" not in r]
    return to_html(measured) + errors(rows), {name: rows}


def write_report(store: Store, out: Path, explain: str | None = None, figure_points: Path | None = None) -> Path:
    """Write ``report.html``, ``tables.md``, one CSV per table and ``results.json`` into ``out``; with
    ``explain`` (a text), the page also shows what MiniLM attends to in it (:mod:`.explain`); with
    ``figure_points`` (the points file of ``bench mqar --figure``), the Zoology figure (:mod:`.zoology`)."""
    from ..suites import all_suites

    out.mkdir(parents=True, exist_ok=True)
    plots.new_palette()
    body, tables, runs, missing, latest = [], {}, {}, [], {}
    suites = all_suites()
    for name, module in suites.items():
        joined = getattr(module, "latest", None)  # a suite whose runs measure parts apart joins them itself
        found = joined(store) if joined else store.latest_run(name)
        if found is None:
            if getattr(module, "REPORTED", True):
                missing.append(name)
            continue
        latest[name] = found if joined else (found, store.rows(found["id"]))
    answer, answer_tables = recommendation(latest)
    tables.update(answer_tables)
    for name, (run, rows) in latest.items():
        section = getattr(suites[name], "report", None)
        fragment, suite_tables = section(run, rows) if section else default_section(name, run, rows)
        body += [f'<h2 id="{name}">{name}</h2>', f'<p class="meta">{html.escape(describe_run(run))}</p>', fragment]
        tables.update(suite_tables)
        runs[name] = {k: run[k] for k in ("id", "config", "machine", "torch", "attnkit", "git_rev", "status")}
    if figure_points is not None:
        from ..suites.mqar import figure_from_file
        from .zoology import figure_section

        state = figure_from_file(figure_points)
        if state is not None:
            fragment, figure_tables = figure_section(state)
            body += ["<h2 id='mqar-figure'>The Zoology figure (<code>bench mqar --figure</code>)</h2>", fragment]
            tables.update(figure_tables)
    if explain is not None:
        from .explain import explain_html

        body += ["<h2 id='explain'>What MiniLM attends to</h2>",
                 f"<p>{html.escape(explain)}</p>", explain_html(explain, "minilm", ["rollout", "weights"])]
    if missing:
        body.append("<h2>Not run yet</h2><p>No stored run for: " + ", ".join(
            f"<code>attnkit bench {html.escape(n)}</code>" for n in missing) + "</p>")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = html_page("attnkit benchmark report",
                     f"<p class='meta'>written {stamp} from {html.escape(str(store.path))}</p>{answer}{''.join(body)}"
                     f"{glossary_html([c for rows in tables.values() for c in columns(rows)])}")
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
