"""HTML reports and disclosure tables, read from finished run folders (manifest + Parquet); never recomputed.

``write_report(RUN_DIR, OUT.html)`` recognises the folder: a stress run (``gpurisk stress``, a ``stress``
job), a margin run (``gpurisk run`` of a margin job, or ``gpurisk margin --out``) or a backtest run
(``daily.parquet`` + ``summary.parquet``), writes one self-contained page and, beside it, the disclosure
rows as ``OUT.pqd.csv``. Jinja2 and matplotlib come with the optional extra ``reports``
(``pip install 'gpurisk[reports]'``); without them ``require()`` says so in one line.
"""

from __future__ import annotations

import json
from pathlib import Path

from .page import ReportError, require

KINDS = ("stress", "margin", "backtest")


def detect(folder) -> str:
    """``stress``, ``margin`` or ``backtest``: what the run folder holds; ReportError otherwise."""
    from . import backtest, margin, stress

    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"{folder}: run folder not found")
    if stress.is_stress_run(folder):
        return "stress"
    if backtest.is_backtest_run(folder):
        return "backtest"
    if margin.is_margin_run(folder):
        return "margin"
    raise ReportError(f"{folder}: not a finished run folder (expected a stress run's summary.json and cover.parquet, "
                      "a margin run's manifest.json and <model>/margin.parquet, or a backtest's daily.parquet and "
                      "summary.parquet)")


def write_report(run_dir, out, *, anonymise: bool = False, backtest=None, previous=None, stress=None) -> Path:
    """Write the report of ``run_dir`` to ``out`` (HTML) and its disclosure rows to ``out`` with ``.pqd.csv``.

    backtest: a backtest run folder whose statistics fill the disclosure's backtest rows; previous: the
    margin run to compare with (default: the latest earlier one beside ``run_dir``); stress: a stress run
    folder whose Cover-1/Cover-2 fill a margin report's disclosure rows; anonymise: groups as ``group #rank``.
    """
    require()
    from ..fileio import write_text
    from . import backtest as _bt
    from . import margin as _mg
    from . import stress as _st
    from .disclosure import read_backtest, write_pqd_csv
    from .page import render

    run_dir = Path(run_dir)
    kind = detect(run_dir)
    bt = read_backtest(backtest) if backtest is not None else None
    if kind == "stress":
        run = _st.load(run_dir)
        secs, pqd = _st.sections(run, anonymise=anonymise, backtest=bt)
        title, sub = "Stress report", _st.subtitle(run["summary"], run_dir)
    elif kind == "margin":
        run = _mg.load(run_dir)
        prev_dir = Path(previous) if previous is not None else _mg.previous_run(run_dir, run["manifest"])
        prev = _mg.load(prev_dir) if prev_dir is not None else None
        st_summary = None
        if stress is not None:
            if detect(stress) != "stress":
                raise ReportError(f"{stress}: not a stress run folder")
            st_summary = json.loads((Path(stress) / "summary.json").read_text(encoding="utf-8"))
        secs, pqd = _mg.sections(run, prev, st_summary, bt)
        title, sub = "Intraday margin report", _mg.subtitle(run)
    else:
        run = _bt.load(run_dir)
        secs, pqd = _bt.sections(run)
        title, sub = "Backtest report", _bt.subtitle(run)
    out = Path(out)
    path = write_text(render(title, sub, secs), out)
    write_pqd_csv(pqd, out.with_suffix(".pqd.csv"))
    return path


__all__ = ["KINDS", "ReportError", "require", "detect", "write_report"]
