"""One self-contained HTML page from sections of blocks: figures, tables, inline SVG plots, text.

Every report builds a list of ``Section``s and ``render`` puts them through the one Jinja2 template
(``templates/report.html.j2``): CSS and the table script are inline, plots are inline SVG, and a
Content-Security-Policy forbids any fetch, so the page opens without a network. Tables sort on a click
and page by ``page_size`` rows (printing shows every row). A key figure carries its raw value in
``data-value`` next to the formatted text, so a test can check it against the run's tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__
from ..errors import GpuriskError

#: rows per table page on screen
PAGE_SIZE = 25


class ReportError(GpuriskError):
    """A report cannot be written; the message names the folder or the missing piece."""


def require() -> None:
    """ReportError naming the optional extra when Jinja2 or matplotlib is missing."""
    missing = []
    for mod in ("jinja2", "matplotlib"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ReportError(f"HTML reports need {' and '.join(missing)}: install the optional extra with "
                          "pip install 'gpurisk[reports]'")


@dataclass
class Section:
    """A titled part of a report: ``blocks`` are dicts with a ``type`` (see the template)."""

    id: str
    title: str
    blocks: list = field(default_factory=list)

    def text(self, text: str, note: bool = False) -> "Section":
        self.blocks.append({"type": "text", "text": text, "note": note})
        return self

    def heading(self, text: str) -> "Section":
        self.blocks.append({"type": "heading", "text": text})
        return self

    def items(self, kind: str, items) -> "Section":
        self.blocks.append({"type": kind, "items": list(items)})
        return self

    def figures(self, items) -> "Section":
        self.blocks.append({"type": "figures", "items": list(items)})
        return self

    def svg(self, markup: str, caption: str = "") -> "Section":
        from markupsafe import Markup

        self.blocks.append({"type": "svg", "svg": Markup(markup), "caption": caption})
        return self

    def table(self, df: pd.DataFrame, table_id: str, columns: dict | None = None, caption: str = "",
              page_size: int = PAGE_SIZE, formats: dict | None = None) -> "Section":
        self.blocks.append(table_block(df, table_id, columns, caption, page_size, formats))
        return self


def fmt_usd(x) -> str:
    """A USD amount with thousands separators and no decimals ('—' for a missing one)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{float(x):,.0f}"


def fmt_pct(x, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{float(x):.{digits}f} %"


def fmt_move(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{100.0 * float(x):+.4f} %"


def raw(x) -> str:
    """A value as the exact text of ``data-value`` (repr of a float; '' for a missing one)."""
    if x is None:
        return ""
    if isinstance(x, (float, np.floating)):
        return "" if not math.isfinite(float(x)) else repr(float(x))
    if isinstance(x, (np.integer,)):
        return str(int(x))
    if isinstance(x, (bool, np.bool_)):
        return "true" if x else "false"
    return str(x)


def figure(label: str, key: str, value, text: str | None = None, sub: str = "", level: str = "") -> dict:
    """A key figure: its label, ``data-key``, raw value and shown text (USD format by default)."""
    return {"label": label, "key": key, "raw": raw(value), "text": fmt_usd(value) if text is None else text,
            "sub": sub, "level": level}


def _cell_text(v, fmt) -> str:
    if fmt is not None:
        return fmt(v)
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):,.2f}" if abs(float(v)) < 1000 else f"{float(v):,.0f}"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    return str(v)


def table_block(df: pd.DataFrame, table_id: str, columns: dict | None = None, caption: str = "",
                page_size: int = PAGE_SIZE, formats: dict | None = None) -> dict:
    """A table block: ``columns`` {column: label} (default: all), ``formats`` {column: callable}."""
    columns = columns or {c: c for c in df.columns}
    formats = formats or {}
    cols = []
    for c, label in columns.items():
        num = pd.api.types.is_numeric_dtype(df[c].dtype) and not pd.api.types.is_bool_dtype(df[c].dtype)
        cols.append({"name": c, "label": label, "num": bool(num)})
    data = [df[c].to_numpy(dtype=object) for c in columns]
    rows = [[(_cell_text(v, formats.get(c)), raw(v)) for c, v in zip(columns, vals)] for vals in zip(*data)] \
        if len(df) else []
    return {"type": "table", "id": table_id, "columns": cols, "rows": rows, "caption": caption,
            "page_size": int(page_size)}


def render(title: str, subtitle: str, sections: list[Section], footer: str = "") -> str:
    """The page as one HTML string."""
    require()
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    tpl = env.get_template("report.html.j2")
    return tpl.render(title=title, subtitle=subtitle, sections=sections, version=__version__,
                      footer=footer or f"gpurisk {__version__}: figures read from the run's Parquet tables; "
                                        "nothing is recomputed here.")


__all__ = ["PAGE_SIZE", "ReportError", "require", "Section", "fmt_usd", "fmt_pct", "fmt_move", "raw", "figure",
           "table_block", "render"]
