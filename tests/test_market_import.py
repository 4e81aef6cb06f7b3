"""``gpurisk market import``: CSV of the shipped format and CCXT OHLCV JSON; duplicates, conflicts, gaps, rejects,
idempotence, atomicity, and the command line (one-line errors, exit codes)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpurisk.cli import main
from gpurisk.market import MarketDataError, open_store, shipped_dir
from gpurisk.market.importer import import_files
from gpurisk.market.layout import Table, read_table, table_text

SHIPPED = shipped_dir()
BTC = Table("ohlcv", "BTC", "1d")
NOW = pd.Timestamp("2025-01-07T12:00:00Z")
#: illustrative daily BTC/USDT bars after the shipped history (the format of CCXT's fetch_ohlcv)
NEW_BARS = [
    [1735689600000, 93576.0, 95151.15, 92888.0, 94591.79, 10373.32613],
    [1735776000000, 94591.78, 97839.5, 94392.0, 96984.79, 21970.48948],
    [1735862400000, 96984.79, 98976.91, 96100.01, 98174.18, 15253.82936],
    [1735948800000, 98174.17, 98778.43, 97514.79, 98236.23, 8990.05651],
    [1736035200000, 98236.24, 98813.3, 97291.76, 98314.96, 8095.63723],
]
#: the shipped BTC bar of 2024-12-31 (open, high, low, close, volume)
LAST_ROW = read_table(SHIPPED / BTC.relpath, BTC).iloc[-1].tolist()


def new_history(tmp_path, coins=("BTC",)):
    """A history folder holding a copy of the shipped daily files of ``coins``."""
    d = tmp_path / "hist"
    for c in coins:
        p = d / "market" / "daily" / f"{c}USDT_1d.csv"
        p.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHIPPED / "market" / "daily" / f"{c}USDT_1d.csv", p)
    return d


def write_json(path, rows):
    path.write_text(json.dumps(rows))
    return path


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ccxt_json_appends_new_bars_and_keeps_the_old_bytes(tmp_path):
    d = new_history(tmp_path)
    before = (d / BTC.relpath).read_bytes()
    src = write_json(tmp_path / "BTCUSDT_1d.json", NEW_BARS)
    r = import_files([src], d, now=NOW)
    assert r.counts == {"read": 5, "added": 5, "duplicates": 0, "conflicts": 0, "replaced": 0, "rejected": 0}
    assert r.balanced and r.tables[0].written and r.tables[0].last == "2025-01-05 00:00:00"
    after = (d / BTC.relpath).read_bytes()
    assert after.startswith(before)  # the shipped rows are untouched, byte for byte
    assert after[len(before):].decode() == (
        "2025-01-01,93576.0,95151.15,92888.0,94591.79,10373.32613\n"
        "2025-01-02,94591.78,97839.5,94392.0,96984.79,21970.48948\n"
        "2025-01-03,96984.79,98976.91,96100.01,98174.18,15253.82936\n"
        "2025-01-04,98174.17,98778.43,97514.79,98236.23,8990.05651\n"
        "2025-01-05,98236.24,98813.3,97291.76,98314.96,8095.63723\n")
    s = open_store(d)
    assert s.last_daily("BTC") == pd.Timestamp("2025-01-05")
    assert s.daily_bars("BTC", "2025-01-04T12:00Z").index[-1] == pd.Timestamp("2025-01-03")


def test_importing_twice_changes_nothing(tmp_path):
    d = new_history(tmp_path)
    src = write_json(tmp_path / "BTCUSDT_1d.json", NEW_BARS)
    import_files([src], d, now=NOW)
    snap = snapshot(d)
    r = import_files([src, src], d, now=NOW)
    assert r.counts["added"] == 0 and r.counts["duplicates"] == 10 and not r.tables[0].written
    assert snapshot(d) == snap  # not even rewritten
    # the shipped file itself, re-imported as CSV: every row a duplicate
    r = import_files([SHIPPED / BTC.relpath], d, now=NOW)
    assert r.counts["duplicates"] == r.counts["read"] == 2694 and snapshot(d) == snap


def test_csv_and_json_of_the_same_bars_agree(tmp_path):
    a, b = new_history(tmp_path / "a"), new_history(tmp_path / "b")
    import_files([write_json(tmp_path / "BTCUSDT_1d.json", NEW_BARS)], a, now=NOW)
    csv = tmp_path / "BTCUSDT_1d.csv"
    df = pd.DataFrame(NEW_BARS, columns=["t", "open", "high", "low", "close", "volume"])
    df.insert(0, "timestamp", pd.to_datetime(df.pop("t"), unit="ms").dt.strftime("%Y-%m-%d"))
    df.to_csv(csv, index=False)
    import_files([csv], b, now=NOW)
    assert (a / BTC.relpath).read_bytes() == (b / BTC.relpath).read_bytes()
    r = import_files([write_json(tmp_path / "BTCUSDT_1d.json", NEW_BARS)], b, now=NOW)
    assert r.counts["duplicates"] == 5


def test_a_conflict_stops_the_import_and_writes_nothing(tmp_path):
    d = new_history(tmp_path)
    eth = d / "market" / "daily" / "ETHUSDT_1d.csv"
    shutil.copyfile(SHIPPED / "market" / "daily" / "ETHUSDT_1d.csv", eth)
    snap = snapshot(d)
    bad = [list(r) for r in NEW_BARS]
    bad.insert(0, [1735603200000, *LAST_ROW[:3], 92500.0, LAST_ROW[4]])  # 2024-12-31, close differs
    eth_new = write_json(tmp_path / "ETHUSDT_1d.json", [[1735689600000, 3332.0, 3364.0, 3330.0, 3353.0, 1.0]])
    with pytest.raises(MarketDataError) as err:
        import_files([eth_new, write_json(tmp_path / "BTCUSDT_1d.json", bad)], d, now=NOW)
    msg = str(err.value)
    assert "\n" not in msg and "1 conflicting row(s), nothing written" in msg and "entry 1" in msg
    assert "2024-12-31" in msg and "92500.0" in msg and "--on-conflict" in msg
    assert snapshot(d) == snap  # not even the ETH table, which had no conflict


def test_keep_and_replace_report_every_conflict(tmp_path):
    d = new_history(tmp_path)
    t31 = pd.Timestamp("2024-12-31")
    old = read_table(d / BTC.relpath, BTC).loc[t31]
    bad = [[1735603200000, *LAST_ROW[:3], 92500.0, LAST_ROW[4]]] + NEW_BARS
    src = write_json(tmp_path / "BTCUSDT_1d.json", bad)
    r = import_files([src], d, on_conflict="keep", now=NOW)
    assert r.counts == {"read": 6, "added": 5, "duplicates": 0, "conflicts": 1, "replaced": 0, "rejected": 0}
    c = r.tables[0].conflict_examples[0]
    assert (c["column"], c["existing"], c["incoming"], c["applied"]) == ("close", old["close"], 92500.0, False)
    assert read_table(d / BTC.relpath, BTC).loc[t31, "close"] == old["close"]
    r = import_files([src], d, on_conflict="replace", now=NOW)
    assert r.counts["conflicts"] == 1 and r.counts["replaced"] == 1 and r.tables[0].conflict_examples[0]["applied"]
    assert read_table(d / BTC.relpath, BTC).loc[t31, "close"] == 92500.0
    assert len(read_table(d / BTC.relpath, BTC)) == 2694 + 5


def test_gaps_next_to_the_new_rows_are_reported(tmp_path):
    d = new_history(tmp_path)
    r = import_files([write_json(tmp_path / "BTCUSDT_1d.json", NEW_BARS[3:])], d, now=NOW)  # 01-04, 01-05
    g = r.tables[0]
    assert g.gaps == 1 and g.new_gaps == [{"after": "2024-12-31 00:00:00", "before": "2025-01-04 00:00:00",
                                           "missing": 3}]
    assert any("3 missing between 2024-12-31" in line for line in r.lines())
    r = import_files([write_json(tmp_path / "BTCUSDT_1d.json", NEW_BARS[:3])], d, now=NOW)  # fills it
    assert r.tables[0].gaps == 0 and r.tables[0].new_gaps == []


def test_bad_rows_are_rejected_by_line_and_the_rest_imported(tmp_path):
    d = new_history(tmp_path)
    rows = [
        NEW_BARS[0],
        [1735776000000, 94591.78, 97839.5, 94392.0, "x", 21970.4],  # close not a number
        [1735862400000, 96984.79, 98976.91, 96100.01, -1.0, 15253.8],  # close < 0
        [1735948800000, 98174.17, 90000.0, 97514.79, 98236.23, 8990.0],  # high < low
        [1736035200001, 98236.24, 98813.3, 97291.76, 98314.96, 8095.6],  # off the daily grid
        [1736208000000, 98236.24, 98813.3, 97291.76, 98314.96, 8095.6],  # 2025-01-07: closes after NOW
        [1736035200000, 98236.24],  # wrong shape
        True,
    ]
    r = import_files([write_json(tmp_path / "BTCUSDT_1d.json", rows)], d, now=NOW)
    assert r.counts["added"] == 1 and r.counts["rejected"] == 7 and r.counts["read"] == 8 and r.balanced
    why = {x["line"]: (x["column"], x["reason"]) for x in r.rejects}
    assert why["entry 2"] == ("close", "'x' is not a number")
    assert why["entry 3"] == ("close", "must be > 0")
    assert why["entry 4"] == ("high", "high is below low")
    assert why["entry 5"][0] == "timestamp" and "not on the 1d grid" in why["entry 5"][1]
    assert "not closed at the time of the import (closes 2025-01-08T00:00:00Z)" in why["entry 6"][1]
    assert why["entry 7"][0] == why["entry 8"][0] == "entry"
    # a CSV: line numbers count the header as line 1
    csv = tmp_path / "BTCUSDT_1d.csv"
    csv.write_text("timestamp,open,high,low,close,volume\n2025-01-02,1,2,0.5,1.5,3\nlater,1,2,0.5,1.5,3\n"
                   "2025-01-03,1,2,0.5,,3\n")
    r = import_files([csv], d, now=NOW)
    assert {x["line"] for x in r.rejects} == {"line 3", "line 4"} and r.counts["added"] == 1


@pytest.mark.parametrize("name,text,fragment", [
    ("BTCUSDT_1d.json", '[[1735689600000, 1, 2, 0.5, 1.5, 3], [17356', "not valid JSON (line 1, column"),
    ("BTCUSDT_1d.json", '{"a": 1}', "expected a JSON list"),
    ("prices.json", "[]", "cannot tell which table it is"),
    ("BTCUSDT_1d.csv", "date,price\n2025-01-01,3\n", "none of the shipped formats"),
    ("BTCUSDT_1d.csv", "date,dvol\n2025-01-01,3\n", "the name says BTC/USDT 1d bars but the columns are those of a"),
    ("BTCUSDT_1d.txt", "x", "expected a .csv file"),
])
def test_an_unreadable_input_is_one_line_and_writes_nothing(tmp_path, name, text, fragment):
    d = new_history(tmp_path)
    snap = snapshot(d)
    (tmp_path / name).write_text(text)
    with pytest.raises(MarketDataError) as err:
        import_files([tmp_path / name], d, now=NOW)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert snapshot(d) == snap


def test_the_shipped_history_is_never_written():
    with pytest.raises(MarketDataError, match="shipped history"):
        import_files([SHIPPED / BTC.relpath], SHIPPED, now=NOW)


def test_symbol_and_timeframe_name_the_table_and_new_series_are_created(tmp_path):
    d = tmp_path / "fresh"
    src = write_json(tmp_path / "bars.json", [[1735689600000, 1.0, 2.0, 0.5, 1.5, 3.0],
                                              [1735704000000, 1.5, 2.0, 1.0, 1.8, 4.0]])
    with pytest.raises(MarketDataError, match="--symbol and --timeframe"):
        import_files([src], d, symbol="PEPE/USDT", now=NOW)
    with pytest.raises(MarketDataError, match="USDT-quoted"):
        import_files([src], d, symbol="PEPE/USD", timeframe="4h", now=NOW)
    r = import_files([src], d, symbol="PEPE/USDT", timeframe="4h", now=NOW)
    assert r.tables[0].table == "market/4h/PEPEUSDT_4h.csv" and r.counts["added"] == 2
    assert (d / "market" / "4h" / "PEPEUSDT_4h.csv").read_text().splitlines()[1:] == [
        "2025-01-01 00:00:00,1.0,2.0,0.5,1.5,3.0", "2025-01-01 04:00:00,1.5,2.0,1.0,1.8,4.0"]
    # DVOL and funding in the shipped format extend their tables
    dv = tmp_path / "deribit_btc_dvol_daily.csv"
    dv.write_text("date,dvol\n2025-01-01,55.5\n2025-01-02,56.1\n")
    fu = tmp_path / "binance_BTCUSDT_perp_funding_8h.csv"
    fu.write_text("timestamp,funding_rate\n2025-01-01 00:00:00.002,0.0001\n2025-01-01 08:00:00.000,-0.0002\n")
    r = import_files([dv, fu], d, now=NOW)
    assert r.counts["added"] == 4
    s = open_store(d) if (d / "market" / "daily").is_dir() else None
    assert s is None  # no daily bars yet: not a usable history folder on its own
    assert (d / "options" / "deribit_btc_dvol_daily.csv").read_text() == "date,dvol\n2025-01-01,55.5\n2025-01-02,56.1\n"
    assert (d / "funding" / "binance_BTCUSDT_perp_funding_8h.csv").read_text().splitlines()[1] == \
        "2025-01-01 00:00:00.002,0.0001"


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 59), min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_any_split_and_order_of_the_rows_gives_the_same_table(cuts, rnd):
    # the last 60 shipped ETH bars, cut into pieces, imported in any order, some twice: the same file as at once
    import tempfile
    from pathlib import Path

    src = read_table(SHIPPED / "market" / "daily" / "ETHUSDT_1d.csv", Table("ohlcv", "ETH", "1d"))
    tail = src.iloc[-60:]
    bounds = sorted(set([0, 60] + cuts))
    pieces = [tail.iloc[a:b] for a, b in zip(bounds, bounds[1:])]
    order = pieces + [pieces[0]]
    rnd.shuffle(order)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = []
        for i, p in enumerate(order):
            f = tmp / f"in{i}" / "ETHUSDT_1d.json"
            f.parent.mkdir()
            ms = (p.index.asi8 // 1_000_000).tolist()
            f.write_text(json.dumps([[m, *row] for m, row in zip(ms, p.to_numpy().tolist())]))
            files.append(f)
        out = tmp / "h"
        half = max(1, len(files) // 2)
        r1 = import_files(files[:half], out, now=NOW)
        r2 = import_files(files[half:], out, now=NOW)
        got = (out / "market" / "daily" / "ETHUSDT_1d.csv").read_text()
        assert got == table_text(Table("ohlcv", "ETH", "1d"), tail)
        assert r1.counts["added"] + r2.counts["added"] == 60
        assert r1.counts["conflicts"] == r2.counts["conflicts"] == 0


# --------------------------------------------------------------------------- command line


def test_cli_import_twice_then_a_conflict(tmp_path, capsys):
    d = new_history(tmp_path)
    src = write_json(tmp_path / "BTCUSDT_1d.json", NEW_BARS[:2])
    assert main(["market", "import", str(src), "--into", str(d)]) == 0
    out = capsys.readouterr().out
    assert "market/daily/BTCUSDT_1d.csv: 2 added, 0 duplicate, 0 conflicting" in out and "2 rows read" in out
    assert main(["market", "import", str(src), "--into", str(d), "--report", str(tmp_path / "r.json")]) == 0
    assert "(unchanged)" in capsys.readouterr().out
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["counts"]["duplicates"] == 2 and rep["balanced"]
    (tmp_path / "x").mkdir()
    bad = write_json(tmp_path / "x" / "BTCUSDT_1d.json", [[NEW_BARS[0][0], 1.0, 2.0, 0.5, 1.5, 3.0]])
    assert main(["market", "import", str(bad), "--into", str(d)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gpurisk market: error: 1 conflicting row(s)" in err and "Traceback" not in err


def test_cli_rejects_give_exit_1_and_a_list(tmp_path, capsys):
    d = new_history(tmp_path)
    src = write_json(tmp_path / "BTCUSDT_1d.json", [NEW_BARS[0], [NEW_BARS[1][0], 1, 2, 3, "x", 1]])
    assert main(["market", "import", str(src), "--into", str(d)]) == 1
    out = capsys.readouterr().out
    assert "rejected: BTCUSDT_1d.json entry 2: close: 'x' is not a number" in out and "1 rejected" in out


@pytest.mark.parametrize("args,fragment", [
    (["--into", "{tmp}/no/such/dir"], "parent folder"),
    (["--into", "{shipped}"], "shipped history"),
    (["--into", "{tmp}/h", "--on-conflict", "ignore"], "invalid choice"),
])
def test_cli_bad_target_is_one_line(tmp_path, capsys, args, fragment):
    src = write_json(tmp_path / "BTCUSDT_1d.json", NEW_BARS[:1])
    argv = ["market", "import", str(src)] + [a.format(tmp=tmp_path, shipped=SHIPPED) for a in args]
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2 and fragment in err and "Traceback" not in err


def test_cli_init_copies_the_shipped_history(tmp_path, capsys):
    assert main(["market", "init", str(tmp_path / "mine")]) == 0
    for p in SHIPPED.rglob("*.csv"):
        assert (tmp_path / "mine" / p.relative_to(SHIPPED)).read_bytes() == p.read_bytes()
    assert main(["market", "init", str(tmp_path / "mine")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert np.array_equal(open_store(tmp_path / "mine").daily_closes().to_numpy(),
                          open_store(SHIPPED).daily_closes().to_numpy(), equal_nan=True)
