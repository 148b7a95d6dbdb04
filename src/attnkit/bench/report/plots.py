"""The report's figures: matplotlib (Agg) rendered to PNG and embedded as data URIs.

Every figure is as wide as the page (panels wrap three to a row), and a
mechanism keeps one colour in every figure of a report: :func:`colour` hands
out colours in the order names are first drawn, after :func:`new_palette`
(which :func:`attnkit.bench.report.write_report` calls once per page). The
baselines have fixed colours: SDPA black, compiled FlexAttention grey, the
materialised reference brown.
"""
from __future__ import annotations

import base64
import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

WIDTH = 12.0  # inches: the page's width at 90 dpi
PANELS_PER_ROW = 3
FIXED = {"sdpa": "#000000", "flex": "#8a8a8a", "reference": "#8c564b"}
CYCLE = [c for c in plt.get_cmap("tab10").colors if c != plt.get_cmap("tab10").colors[5]]  # tab10 minus brown
CYCLE += list(plt.get_cmap("Dark2").colors) + list(plt.get_cmap("tab20b").colors)
_assigned: dict[str, object] = {}


def new_palette() -> None:
    """Forget the colours handed out so far (one palette per report page)."""
    _assigned.clear()


def colour(name: str):
    """The colour of mechanism or baseline ``name`` in this report (the same in every figure)."""
    key = str(name)
    for base, fixed in FIXED.items():
        if key == base or key.endswith(f"[{base}]") or key.startswith(f"{base} "):
            return fixed
    if key not in _assigned:
        _assigned[key] = CYCLE[len(_assigned) % len(CYCLE)]
    return _assigned[key]


def to_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def panel_grid(count: int, height: float = 3.4):
    """A page-wide figure with ``count`` panels, three to a row; the unused axes are hidden."""
    cols = min(count, PANELS_PER_ROW)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(WIDTH, height * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def _half_width(e) -> float:
    return float(e) if isinstance(e, (int, float)) and math.isfinite(e) else 0.0


def lines_by_panel(rows: list[dict], *, panel: str | None, series: str, x: str, y: str, title: str,
                   ylabel: str, logx: bool = True, logy: bool = True, style: str | None = None,
                   err: str | None = None) -> str | None:
    """One panel per value of ``panel`` (or one plot), one line per value of ``series`` (its colour:
    :func:`colour`), and per value of ``style`` (if given) a line style: y against x, with error bars of
    half-width ``row[err]`` when ``err`` is given."""
    rows = [r for r in rows if isinstance(r.get(x), (int, float)) and isinstance(r.get(y), (int, float))]
    if not rows:
        return None
    panels = sorted({str(r.get(panel)) for r in rows}) if panel else ["all"]
    styles = sorted({str(r.get(style)) for r in rows}) if style else [None]
    dashes = dict(zip(styles, ["-", "--", ":", "-."] * len(styles)))
    fig, axes = panel_grid(len(panels))
    for ax, name in zip(axes, panels):
        mine = [r for r in rows if not panel or str(r.get(panel)) == name]
        for label in sorted({str(r[series]) for r in mine}):
            for kind in styles:
                pts = sorted((r[x], r[y], _half_width(r.get(err)) if err else 0.0) for r in mine
                             if str(r[series]) == label and (kind is None or str(r.get(style)) == kind))
                if pts:
                    ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts] if err else None,
                                fmt=dashes[kind], marker="o", ms=3, capsize=2, color=colour(label),
                                label=label if kind is None else f"{label} {kind}")
        if logx:
            ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel(ylabel)
        ax.set_title(name if panel else title, fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if panel:
        fig.suptitle(title, fontsize=10)
    return to_data_uri(fig)


def accuracy_vs_state(best: list[dict]) -> str | None:
    """MQAR: best accuracy against state size, one panel per (L, K), one marker per mechanism (Based's figure)."""
    rows = [r for r in best if "accuracy" in r]
    if not rows:
        return None
    settings = sorted({(r["L"], r["K"]) for r in rows})
    fig, axes = panel_grid(len(settings))
    for ax, (seq_len, num_kv) in zip(axes, settings):
        for role in sorted({r["role"] for r in rows}):
            mine = [r for r in rows if r["role"] == role and (r["L"], r["K"]) == (seq_len, num_kv)]
            pts = sorted((r["state_size"], r["accuracy"]) for r in mine)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=role,
                        color=colour(mine[0].get("mechanism") or role))
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("state size (numbers per layer)")
        ax.set_ylabel("MQAR accuracy")
        ax.set_title(f"L={seq_len}, K={num_kv}", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return to_data_uri(fig)


def accuracy_vs_width(points: list[dict]) -> str | None:
    """The Zoology figure: mean MQAR accuracy over seeds (95% interval as error bars) against model width,
    one panel per (L, K), one line per mechanism."""
    if not points:
        return None
    settings = sorted({(p["L"], p["K"]) for p in points})
    fig, axes = panel_grid(len(settings))
    for ax, (seq_len, num_kv) in zip(axes, settings):
        for role in sorted({p["role"] for p in points}):
            mine = sorted((p for p in points if p["role"] == role and (p["L"], p["K"]) == (seq_len, num_kv)),
                          key=lambda p: p["d"])
            if mine:
                ax.errorbar([p["d"] for p in mine], [p["accuracy"] for p in mine],
                            yerr=[p["ci95"] or 0.0 for p in mine], marker="o", capsize=3, label=role,
                            color=colour(mine[0].get("mechanism") or role))
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("model width d")
        ax.set_ylabel("MQAR accuracy")
        ax.set_title(f"L={seq_len}, K={num_kv}", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return to_data_uri(fig)


WIDTH_MARKERS = ["o", "s", "^", "D", "v", "P"]


def zoology_figure(means: list[dict], seeds: list[dict]) -> str | None:
    """The Zoology figure from its points file: MQAR accuracy against state size, one panel per (L, K),
    one colour per role, one marker per model width. A role's widths are joined by a line; the mean over
    seeds carries its 95% interval (cut to [0, 1]) where two or more seeds are in; each seed's own
    accuracy is a small open marker."""
    means = [p for p in means if isinstance(p.get("state_size"), (int, float))]
    if not means:
        return None
    settings = sorted({(p["L"], p["K"]) for p in means})
    widths = sorted({p["d"] for p in means})
    marker = {d: WIDTH_MARKERS[i % len(WIDTH_MARKERS)] for i, d in enumerate(widths)}
    fig, axes = panel_grid(len(settings), height=4.2)
    for ax, (seq_len, num_kv) in zip(axes, settings):
        for role in sorted({p["role"] for p in means}):
            mine = sorted((p for p in means if p["role"] == role and (p["L"], p["K"]) == (seq_len, num_kv)),
                          key=lambda p: p["state_size"])
            if not mine:
                continue
            c = colour(mine[0].get("mechanism") or role)
            ax.plot([p["state_size"] for p in mine], [p["accuracy"] for p in mine], color=c, lw=1, label=role)
            for p in mine:
                half = p["ci95"] or 0.0
                low, high = min(half, p["accuracy"]), min(half, 1.0 - p["accuracy"])  # the interval within [0, 1]
                ax.errorbar([p["state_size"]], [p["accuracy"]], yerr=[[low], [high]] if half else None,
                            marker=marker[p["d"]], ms=6, capsize=3, color=c, ls="none")
            own = [s for s in seeds if s["role"] == role and (s["L"], s["K"]) == (seq_len, num_kv)]
            ax.scatter([s["state_size"] for s in own], [s["accuracy"] for s in own], s=14, facecolors="none",
                       edgecolors=[c], linewidths=0.8)
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("state size (numbers per layer)")
        ax.set_ylabel("MQAR accuracy")
        ax.set_title(f"L={seq_len}, K={num_kv}", fontsize=9)
        ax.grid(alpha=0.3)
    names = sorted({p["role"]: p.get("mechanism") or p["role"] for p in means}.items())
    handles = [plt.Line2D([], [], color=colour(mechanism), label=role) for role, mechanism in names]
    handles += [plt.Line2D([], [], color="black", marker=marker[d], ls="none", label=f"d={d}") for d in widths]
    fig.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle("MQAR accuracy vs state size: mean over seeds, 95% interval where >= 2 seeds; "
                 "open markers: single seeds", fontsize=10)
    return to_data_uri(fig)


def speed_memory_gemm(lines: list[dict], *, what: str, gemm_note: str, style: str | None = None) -> list[tuple]:
    """The three figures the kernel matrix and CAB share, one panel per ``pattern``, one colour per
    ``mechanism``: time, peak memory and FLOP/s as a fraction of GEMM (``fraction_of_gemm``, divided
    by the figure ``gemm_note`` names) against N. Returns ``[(data URI or None, title), ...]``."""
    common = dict(panel="pattern", series="mechanism", x="N", style=style)
    titles = (f"{what}: time vs N (black: SDPA with the same mask, grey: compiled FlexAttention, brown: "
              f"materialised reference)", f"{what}: peak memory of one call vs N (fresh subprocess)",
              f"{what}: FLOP/s as a fraction of {gemm_note}")
    return [
        (lines_by_panel(lines, y="seconds", ylabel="seconds (lower is better)", title=titles[0], **common), titles[0]),
        (lines_by_panel(lines, y="peak_mb", ylabel="MiB (lower is better)", title=titles[1], **common), titles[1]),
        (lines_by_panel(lines, y="fraction_of_gemm", ylabel="fraction of GEMM (higher is better)", logy=False,
                        title=titles[2], **common), titles[2]),
    ]
