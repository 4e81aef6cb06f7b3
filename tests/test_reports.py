"""Reports read finished run folders: the stress, margin and backtest pages and the disclosure CSV.

Fixtures here (``stress_run``, ``margin_runs``, ``backtest_run``) are reused by the browser tests.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import TINY_AS_OF, tiny_tables

pytest.importorskip("jinja2", reason="the reports extra (jinja2) is not installed")
pytest.importorskip("matplotlib", reason="the reports extra (matplotlib) is not installed")

from gpurisk.cli import main  # noqa: E402
from gpurisk.reports import ReportError, detect, write_report  # noqa: E402

HOUSE = "mc_scenarios = 0\nlookback_days = 365\n"


def make_stress_run(folder, tmp):
    """A finished ``gpurisk stress`` folder on the tiny book with member groups."""
    from gpurisk.io import write_book

    t = tiny_tables()
    t["accounts"] = pd.DataFrame({"account_id": ["A1", "A2", "A3"], "group_id": ["G1", "G1", "G2"],
                                  "name": ["one", "two", "three"], "kind": ["house", "client", "fund"]}, dtype=object)
    write_book(tmp / "book", t, {"as_of": TINY_AS_OF}, fmt="parquet")
    (tmp / "house.toml").write_text(HOUSE, encoding="utf-8")
    rc = main(["stress", str(tmp / "book"), "--out", str(folder), "--params", str(tmp / "house.toml"),
               "--default-fund-usd", "20000", "--no-sensitivity", "--backend", "reference",
               "--scenarios", "historical", "hypothetical", "squeeze", "flash", "depeg"])
    assert rc == 0
    return folder


def make_margin_run(root, run_id, book, scale=1.0, rejects=None):
    """A margin run folder as ``gpurisk run`` writes it: manifest.json, <label>/margin.parquet + summary.json."""
    from gpurisk.fileio import write_json, write_parquet
    from gpurisk.margin import compute
    from gpurisk.margin.house import Params
    from gpurisk.margin.output import write_result

    run = root / run_id
    run.mkdir(parents=True)
    hp = Params(mc_scenarios=0, lookback_days=365)
    models = {}
    for label, name, params in (("house", "house", hp), ("venue", "venue", None)):
        res = compute(book, model=name, params=params, backend="reference")
        if scale != 1.0:
            res.tables["margin"]["im_usd"] *= scale
        write_result(res, run / label)
        write_json(res.summary, run / label / "summary.json")
        models[label] = {"name": name, "params": {"confidence": 0.99, "horizon_days": 2.0, "lookback_days": 365}
                         if name == "house" else {}}
    if rejects is not None:
        write_parquet(rejects, run / "rejects.parquet")
    write_json({"run_id": run_id, "job": "intraday_margin", "status": "succeeded", "started": "2026-01-01T00:00:00Z",
                "finished": "2026-01-01T00:01:00Z", "workers": 2, "timings": {"plan": 1.5, "tail_stats": 2.5},
                "counts": {"accounts": int(book.n_accounts)}, "models": models}, run / "manifest.json")
    return run


@pytest.fixture(scope="module")
def stress_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stress")
    return make_stress_run(tmp / "run", tmp)


@pytest.fixture(scope="module")
def margin_runs(tmp_path_factory):
    from conftest import tiny_tables as tt
    from gpurisk.book import Book
    from gpurisk.validate import validate

    root = tmp_path_factory.mktemp("runs")
    t = tt()
    t["positions"].loc[5, "quantity"] = "lots"
    clean, rejects, _ = validate(t, TINY_AS_OF)
    book = Book.from_frames(TINY_AS_OF, **clean)
    old = make_margin_run(root, "20260101T000000Z-aaaaaaaa", book, scale=0.8)
    new = make_margin_run(root, "20260101T040000Z-bbbbbbbb", book, rejects=rejects)
    return old, new


@pytest.fixture(scope="module")
def backtest_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("backtest")
    dates = pd.date_range("2024-01-01", periods=30, freq="D")
    rng = np.random.default_rng(0)
    daily = pd.DataFrame({"date": np.tile(dates, 2), "portfolio": np.repeat(["long_BTC", "short_BTC"], 30),
                          "im": 100.0, "pnl": rng.normal(0, 40, 60)})
    daily["exception"] = -daily["pnl"] > daily["im"]
    rows = []
    for name, g in list(daily.groupby("portfolio")) + [("pooled", daily)]:
        exc = -g["pnl"] - g["im"]
        rows.append({"portfolio": name, "n_obs": len(g), "n_exceptions": int(g["exception"].sum()),
                     "coverage": 1.0 - g["exception"].mean(), "mean_im": 100.0,
                     "max_exceedance": float(max(exc.max(), 0.0)), "zone": "green"})
    daily.to_parquet(folder / "daily.parquet")
    pd.DataFrame(rows).to_parquet(folder / "summary.parquet")
    return folder


def test_detect_tells_the_run_kinds_apart(stress_run, margin_runs, backtest_run, tmp_path):
    assert detect(stress_run) == "stress"
    assert detect(margin_runs[1]) == "margin"
    assert detect(backtest_run) == "backtest"
    with pytest.raises(ReportError, match="not a finished run folder"):
        detect(tmp_path)


def test_stress_report_and_its_disclosure_csv(stress_run, tmp_path):
    out = write_report(stress_run, tmp_path / "r.html")
    html = out.read_text(encoding="utf-8")
    s = json.loads((stress_run / "summary.json").read_text(encoding="utf-8"))
    assert f'data-key="cover2_usd" data-value="{s["cover2"]["usd"]!r}"' in html
    for title in ("Cover-1 and Cover-2", "Reverse stress", "Sensitivity", "Public quantitative disclosures",
                  "assumptions"):
        assert title in html
    assert "<svg" in html and "<metadata>" not in html
    import re

    # nothing to fetch: no external src/href, no stylesheet link, no script file
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html) and "<link" not in html
    assert "<script src" not in html
    assert "Sensitivity was not run" in html  # --no-sensitivity, said so
    pqd = pd.read_csv(tmp_path / "r.pqd.csv", dtype=str, keep_default_na=False)
    assert list(pqd.columns) == ["item", "item_reconstructed", "section", "description", "value", "unit", "source"]
    back = pqd[pqd["section"] == "Backtesting"]
    assert len(back) == 1 and "no backtest run given" in back["value"].iloc[0]
    c2 = pqd[pqd["description"].str.contains("any two participant groups")]
    assert float(c2["value"].iloc[0]) == s["cover2"]["usd"]
    assert (pqd.loc[pqd["item"] != "", "item"] == "6.4.5").all()


def test_a_backtest_run_fills_the_disclosure_backtest_rows(stress_run, backtest_run, tmp_path):
    write_report(stress_run, tmp_path / "r.html", backtest=backtest_run)
    pqd = pd.read_csv(tmp_path / "r.pqd.csv", dtype=str, keep_default_na=False)
    back = pqd[pqd["section"] == "Backtesting"].set_index("unit")
    summ = pd.read_parquet(backtest_run / "summary.parquet").set_index("portfolio").loc["pooled"]
    assert int(back.loc["observations", "value"]) == summ["n_obs"]
    assert int(back.loc["exceptions", "value"]) == summ["n_exceptions"]
    assert float(back.loc["1", "value"]) == pytest.approx(summ["coverage"])
    out = write_report(backtest_run, tmp_path / "b.html")
    assert f'data-key="n_obs" data-value="{int(summ["n_obs"])}"' in out.read_text(encoding="utf-8")


def test_anonymised_report_names_no_group(stress_run, tmp_path):
    html = write_report(stress_run, tmp_path / "a.html", anonymise=True).read_text(encoding="utf-8")
    assert "group #1" in html
    assert ">G1<" not in html and ">G2<" not in html and "groups G1" not in html and "groups G2" not in html


def test_margin_report_compares_with_the_previous_run(margin_runs, tmp_path, stress_run):
    old, new = margin_runs
    html = write_report(new, tmp_path / "m.html", stress=stress_run).read_text(encoding="utf-8")
    m = pd.read_parquet(new / "house" / "margin.parquet")
    total = float(m["im_usd"].sum())
    assert f'data-key="im_usd:house:ALL" data-value="{total!r}"' in html
    assert old.name in html  # the previous run found beside this one
    for title in ("Change against the previous run", "Largest accounts", "Calls by status", "Deficits",
                  "Cross-margin benefit", "Backend and timings", "Rejected input rows"):
        assert title in html
    pqd = pd.read_csv(tmp_path / "m.pqd.csv", dtype=str, keep_default_na=False)
    assert pqd["description"].str.contains("one participant group").any()  # from --stress
    house_row = pqd[pqd["description"].str.contains("model house, venue ALL")]
    assert float(house_row["value"].iloc[0]) == pytest.approx(total, rel=1e-12)


def test_report_cli_errors_are_one_line(tmp_path, capsys):
    rc = main(["report", str(tmp_path), "--out", str(tmp_path / "x.html")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "not a finished run folder" in err and err.count("\n") == 0


def test_a_missing_extra_is_named(monkeypatch):
    import builtins

    from gpurisk.reports import require

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "matplotlib":
            raise ImportError("no matplotlib")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ReportError, match=r"pip install 'gpurisk\[reports\]'"):
        require()
