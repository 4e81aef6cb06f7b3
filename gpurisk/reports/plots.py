"""Plots as inline SVG (matplotlib, Agg, glyphs drawn as paths: no font or file is fetched when viewed).

Each function takes plain arrays and returns the ``<svg>`` element as text; the figure is closed.
"""

from __future__ import annotations

import io
import re

import numpy as np

#: colours (colour-blind safe pair for losses and gains)
LOSS, GAIN, BAR, LINE = "#b2182b", "#2166ac", "#4a6fa5", "#a3201b"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "path", "svg.hashsalt": "gpurisk", "font.size": 9,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _svg(fig) -> str:
    plt = _plt()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    text = buf.getvalue()
    start = text.find("<svg")
    text = text[start:]
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)  # the RDF block names licence URLs
    return re.sub(r"<!--.*?-->", "", text, flags=re.S)


def _usd_axis(ax, axis="x"):
    from matplotlib.ticker import FuncFormatter

    def f(v, _):
        a = abs(v)
        if a >= 1e9:
            return f"{v / 1e9:.1f}bn"
        if a >= 1e6:
            return f"{v / 1e6:.1f}m"
        if a >= 1e3:
            return f"{v / 1e3:.0f}k"
        return f"{v:.0f}"

    (ax.xaxis if axis == "x" else ax.yaxis).set_major_formatter(FuncFormatter(f))


def bars(labels, values, title: str, xlabel: str = "USD", reference: float | None = None,
         reference_label: str = "") -> str:
    """Horizontal bars of ``values`` [n] (largest first as given), an optional vertical reference line."""
    plt = _plt()
    labels = [str(x) for x in labels]
    v = np.asarray(values, dtype=np.float64)
    h = max(1.6, 0.28 * len(v) + 0.8)
    fig, ax = plt.subplots(figsize=(8.5, h))
    y = np.arange(len(v))[::-1]
    ax.barh(y, v, color=np.where(v >= 0, LOSS, GAIN), height=0.7)
    ax.set_yticks(y, labels)
    ax.set_title(title, loc="left")
    ax.set_xlabel(xlabel)
    _usd_axis(ax)
    if reference is not None and np.isfinite(reference):
        ax.axvline(reference, color="k", linestyle="--", linewidth=1)
        ax.text(reference, len(v) - 0.4, f" {reference_label}", va="bottom", fontsize=8)
    return _svg(fig)


def heatmap(rows, cols, values, title: str, cbar_label: str = "loss (USD)") -> str:
    """A scenario × column heat map of ``values`` [R, C] (red = loss, blue = gain), amounts annotated."""
    plt = _plt()
    from matplotlib.colors import TwoSlopeNorm

    Z = np.asarray(values, dtype=np.float64)
    R, C = Z.shape
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * C + 3.5), max(2.0, 0.3 * R + 1.2)))
    lim = float(np.nanmax(np.abs(Z))) if Z.size and np.isfinite(Z).any() else 1.0
    lim = lim if lim > 0 else 1.0
    im = ax.imshow(Z, aspect="auto", cmap="RdBu_r", norm=TwoSlopeNorm(vcenter=0.0, vmin=-lim, vmax=lim))
    ax.set_xticks(range(C), [str(c) for c in cols], rotation=30, ha="right")
    ax.set_yticks(range(R), [str(r) for r in rows])
    for i in range(R):  # a few dozen cells
        for j in range(C):
            z = Z[i, j]
            if np.isfinite(z) and abs(z) >= 500:  # smaller amounts would print as 0k
                ax.text(j, i, f"{z / 1e6:.1f}m" if abs(z) >= 1e5 else f"{z / 1e3:.0f}k", ha="center", va="center",
                        fontsize=6.5, color="white" if abs(z) > 0.6 * lim else "black")
    cb = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    cb.set_label(cbar_label)
    ax.set_title(title, loc="left")
    return _svg(fig)


def lines(x, series: dict, title: str, ylabel: str = "USD") -> str:
    """Line chart of ``series`` {name: [n]} against ``x`` [n]."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 3.0))
    for name, y in series.items():
        ax.plot(np.asarray(x), np.asarray(y, dtype=np.float64), label=str(name), linewidth=1.2)
    ax.set_title(title, loc="left")
    ax.set_ylabel(ylabel)
    _usd_axis(ax, "y")
    if len(series) > 1:
        ax.legend(fontsize=8, frameon=False)
    fig.autofmt_xdate()
    return _svg(fig)


__all__ = ["bars", "heatmap", "lines"]
