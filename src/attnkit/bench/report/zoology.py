"""The report's section on the Zoology figure (``attnkit bench mqar --figure``), drawn from its points file.

"Zoology: Measuring and Improving Recall in Efficient Language Models" (figure 2, and the Based
paper's figure 2) plots MQAR accuracy against the recurrent state size of each sequence mixer. The
figure's trainings accumulate in a points file over many sittings, not in one stored run, so this
section reads the file's summary (:func:`attnkit.bench.suites.mqar.figure_state`): how much of the
plan is present, accuracy against state size per role and width (mean and 95% interval over seeds),
and the published ordering checked in each (L, K, d) cell: it holds (PASS), fails (FAIL), or cannot be
measured yet because a role of the claim has no point in that cell (n/a).
"""
from __future__ import annotations

import html

from . import plots
from .parts import image, to_html


def figure_section(state: dict) -> tuple[str, dict]:
    """``(html, tables)`` for :func:`attnkit.bench.report.write_report`."""
    e = html.escape
    verdicts = [c["verdict"].split(" ")[0] for c in state["checks"]]
    count = {v: verdicts.count(v) for v in ("PASS", "FAIL", "n/a")}
    present = (f"{state['sweep_done']} of {state['sweep_planned']} trainings of the learning-rate sweep and "
               f"{state['points_done']} of {state['points_planned']} planned points (role, L, K, d, seed) are in "
               f"<code>{e(state['path'])}</code>; {state['hours']:.1f} h of training (wall)"
               + (f", {state['cpu_hours']:.1f} h CPU over the {state['timed']} trainings that record it"
                  if state["timed"] else "") + "."
               + (f" {state['aside']} lines of other setups were left aside." if state["aside"] else ""))
    rates = ", ".join(f"{e(role)} {lr:g}" for role, lr in state["lrs"].items()) or "none yet"
    notes = [f"<p>{present}</p>", f"<p>Learning rate of each role (the best of its sweep): {rates}.</p>"]
    if state["waiting"]:
        notes.append("<p>Sweep not finished, so no figure points yet: " + e(", ".join(state["waiting"])) + ".</p>")
    if state["unregistered"]:
        notes.append("<p>Not registered, so not in the figure: " + e(", ".join(state["unregistered"])) + ".</p>")
    means = [{k: p[k] for k in ("role", "mechanism", "L", "K", "d", "lr", "accuracy", "ci95", "seeds", "state_size")}
             for p in state["means"]]
    checks = state["checks"]
    missing = [{"seed": m["seed"], "L": m["L"], "K": m["K"], "d": m["d"], "roles": ", ".join(m["roles"])}
               for m in state["missing"]]
    parts = [
        *notes,
        image(plots.zoology_figure(state["means"], state["seeds"]),
              "The Zoology figure: MQAR accuracy vs state size per role and width"),
        "<h3>Mean accuracy over seeds, with the half-width of its 95% interval (two or more seeds)</h3>",
        to_html(means, {}),
        f"<h3>The published ordering in each (L, K, d) cell: {count['PASS']} hold, {count['FAIL']} fail, "
        f"{count['n/a']} not measurable yet</h3>",
        to_html(checks, {"PASS": "ok", "FAIL": "bad"}),
        f"<h3>Not finished yet ({sum(len(m['roles']) for m in state['missing'])} trainings)</h3>",
        to_html(missing, {}) if missing else "<p>every planned training is in the file</p>",
    ]
    return "\n".join(parts), {"mqar_figure": means, "mqar_figure_ordering": checks, "mqar_figure_missing": missing}
