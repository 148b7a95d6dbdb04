"""The report's figures: matplotlib (Agg) rendered to PNG and embedded as data URIs."""
from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def to_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def lines_by_panel(rows: list[dict], *, panel: str | None, series: str, x: str, y: str, title: str,
                   ylabel: str, logx: bool = True, logy: bool = True) -> str | None:
    """One subplot per value of ``panel`` (or one plot), one line per value of ``series``: y against x."""
    rows = [r for r in rows if isinstance(r.get(x), (int, float)) and isinstance(r.get(y), (int, float))]
    if not rows:
        return None
    panels = sorted({str(r.get(panel)) for r in rows}) if panel else ["all"]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, name in zip(axes[0], panels):
        mine = [r for r in rows if not panel or str(r.get(panel)) == name]
        for label in sorted({str(r[series]) for r in mine}):
            pts = sorted((r[x], r[y]) for r in mine if str(r[series]) == label)
            style = "--" if "sdpa" in label or "flex" in label or "reference" in label else "-"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=3, label=label)
        if logx:
            ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel(ylabel)
        ax.set_title(name if panel else title, fontsize=9)
        ax.legend(fontsize=6)
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
    fig, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings), 3.6), squeeze=False)
    for ax, (seq_len, num_kv) in zip(axes[0], settings):
        for role in sorted({r["role"] for r in rows}):
            pts = sorted((r["state_size"], r["accuracy"]) for r in rows
                         if r["role"] == role and (r["L"], r["K"]) == (seq_len, num_kv))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=role)
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("state size (numbers per layer)")
        ax.set_ylabel("MQAR accuracy")
        ax.set_title(f"L={seq_len}, K={num_kv}", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return to_data_uri(fig)
