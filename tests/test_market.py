"""The market history store: point-in-time reads, poisoned future rows, the staleness policy, choosing the folder.

Independent sources: the shipped CSV files read straight with pandas, and the rule "a daily bar dated d is
known from d+1 00:00 UTC, a 4-hour bar from its close" applied by hand.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_measures import make_book

import gpurisk.margin as gm
from gpurisk.cli import main
from gpurisk.generate import generate_book
from gpurisk.market import (COINS, ENV_VAR, MarketDataError, MarketSettings, StaleHistoryError, default_store,
                            history_state, market_store, open_store, resolve_store, shipped_dir)
from gpurisk.market.layout import Table, read_table, table_for_name, table_text
from gpurisk.scenarios import historical_scenarios, named_stress
from gpurisk.scenarios.montecarlo import estimate_targets

SHIPPED = shipped_dir()


def raw(rel: str, tcol: str = "timestamp") -> pd.DataFrame:
    return pd.read_csv(SHIPPED / rel, index_col=tcol, parse_dates=True)


def copy_history(dest, coins=COINS, extras=True):
    """A copy of the shipped folder (the daily files of ``coins``; DVOL, 4h and funding when ``extras``)."""
    for c in coins:
        p = dest / "market" / "daily" / f"{c}USDT_1d.csv"
        p.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHIPPED / "market" / "daily" / f"{c}USDT_1d.csv", p)
    if extras:
        for rel in ("options/deribit_btc_dvol_daily.csv", "market/4h/BTCUSDT_4h.csv", "market/4h/ETHUSDT_4h.csv",
                    "funding/binance_BTCUSDT_perp_funding_8h.csv"):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(SHIPPED / rel, dest / rel)
    return dest


# --------------------------------------------------------------------------- layout


def test_the_shipped_files_round_trip_byte_for_byte():
    for t in default_store().series():
        path = SHIPPED / t.relpath
        assert table_text(t, read_table(path, t)).encode() == path.read_bytes(), t.relpath


def test_layout_names():
    assert table_for_name("BTCUSDT_1d.csv") == Table("ohlcv", "BTC", "1d")
    assert table_for_name("ETHUSDT_4h.json").relpath == "market/4h/ETHUSDT_4h.csv"
    assert table_for_name("deribit_btc_dvol_daily.csv").relpath == "options/deribit_btc_dvol_daily.csv"
    assert table_for_name("binance_BTCUSDT_perp_funding_8h.csv").kind == "funding"
    assert table_for_name("prices.csv") is None and table_for_name("BTCUSD_1d.csv") is None
    with pytest.raises(MarketDataError, match="timeframe"):
        Table("ohlcv", "BTC", "1M")
    with pytest.raises(MarketDataError, match="coin"):
        Table("ohlcv", "../x", "1d")


@pytest.mark.parametrize("text,fragment", [
    ("timestamp,open,high,low,close,volume\n2024-01-01,1,2,0.5,1.5,10\n2024-01-02,1,2,0.5,abc,10\n",
     "line 3, column close: 'abc' is not a number > 0"),
    ("timestamp,open,high,low,close,volume\n2024-01-01,1,2,0.5,1.5,10\nsoon,1,2,0.5,1,10\n",
     "line 3, column timestamp: cannot read 'soon'"),
    ("timestamp,open,high,low,close,volume\n2024-01-01,1,2,0.5,1.5,10\n2024-01-01,1,2,0.5,1.5,10\n",
     "appears twice"),
    ("timestamp,open,close\n2024-01-01,1,2\n", "missing column(s) high, low, volume"),
    ("timestamp,open,high,low,close,volume\n2024-01-01,1,2,0.5,-1.5,10\n", "column close: '-1.5' is not a number > 0"),
])
def test_a_malformed_history_file_is_one_line_naming_file_line_and_column(tmp_path, text, fragment):
    p = tmp_path / "market" / "daily" / "BTCUSDT_1d.csv"
    p.parent.mkdir(parents=True)
    p.write_text(text)
    with pytest.raises(MarketDataError) as err:
        open_store(tmp_path).daily_bars("BTC")
    msg = str(err.value)
    assert fragment in msg and "BTCUSDT_1d.csv" in msg and "\n" not in msg


# --------------------------------------------------------------------------- point in time


def test_daily_bar_is_known_from_the_next_midnight():
    s = default_store()
    closes = raw("market/daily/BTCUSDT_1d.csv")["close"]
    for as_of, last in (("2024-06-10T00:00:00Z", "2024-06-09"), ("2024-06-09T23:59:59Z", "2024-06-08"),
                        ("2024-06-10T12:00:00Z", "2024-06-09")):
        got = s.daily_bars("BTC", as_of)
        assert got.index[-1] == pd.Timestamp(last)
        np.testing.assert_array_equal(got["close"].to_numpy(), closes.loc[:last].to_numpy())
        assert s.last_daily("BTC", as_of) == pd.Timestamp(last)
        assert s.daily_closes(["BTC", "SOL"], as_of).index[-1] == pd.Timestamp(last)
    assert s.daily_bars("BTC", "2017-08-17T23:00:00Z").empty  # the first bar closes 2017-08-18 00:00


def test_four_hour_bar_is_known_from_its_close_and_funding_from_its_time():
    s = default_store()
    b = s.intraday_bars("BTC", "4h", "2024-06-10T10:00:00Z")
    assert b.index[-1] == pd.Timestamp("2024-06-10T04:00:00")  # the 08:00 bar closes at 12:00
    b = s.intraday_bars("BTC", "4h", "2024-06-10T12:00:00Z")
    assert b.index[-1] == pd.Timestamp("2024-06-10T08:00:00")
    f = s.funding_rates("BTC", "2024-06-10T08:00:01Z")
    assert f.index[-1] <= pd.Timestamp("2024-06-10T08:00:01") and f.index[-1] >= pd.Timestamp("2024-06-10T07:59")
    d = s.dvol("2024-06-10T00:00:00Z")
    assert d.index[-1] == pd.Timestamp("2024-06-09")
    assert d.iloc[-1] == pytest.approx(raw("options/deribit_btc_dvol_daily.csv", "date")["dvol"]
                                       .asfreq("D").ffill().loc["2024-06-09"] / 100.0, rel=1e-15)


@settings(max_examples=40, deadline=None)
@given(st.datetimes(min_value=pd.Timestamp("2017-08-18").to_pydatetime(),
                    max_value=pd.Timestamp("2025-02-01").to_pydatetime()))
def test_nothing_read_is_unknown_at_the_as_of(t):
    s = default_store()
    as_of = pd.Timestamp(t)
    assert (s.daily_bars("ETH", as_of).index + pd.Timedelta(days=1) <= as_of).all()
    assert (s.intraday_bars("ETH", "4h", as_of).index + pd.Timedelta(hours=4) <= as_of).all()
    assert (s.dvol(as_of).index + pd.Timedelta(days=1) <= as_of).all()
    assert (s.funding_rates("BTC", as_of).index <= as_of).all()
    # and nothing known is left out
    full = s.daily_bars("ETH")
    assert len(s.daily_bars("ETH", as_of)) == int((full.index + pd.Timedelta(days=1) <= as_of).sum())


def _poison(folder, after: str, factor: float = 50.0):
    """Multiply every price of every daily file, the DVOL and the 4h files after ``after`` by ``factor``."""
    for t in open_store(folder).series():
        p = folder / t.relpath
        df = read_table(p, t)
        later = df.index > pd.Timestamp(after)
        for c in t.values:
            if c in ("open", "high", "low", "close", "dvol"):
                df.loc[later, c] = df.loc[later, c] * factor
        p.write_text(table_text(t, df))


def test_a_poisoned_future_row_changes_nothing_before_it(tmp_path):
    clean = open_store(copy_history(tmp_path / "clean"))
    bad_dir = copy_history(tmp_path / "bad")
    _poison(bad_dir, "2024-05-31")  # every bar dated after the last one a book at 2024-06-01 00:00 can use
    bad = open_store(bad_dir)
    assert bad.daily_bars("BTC").loc["2024-06-01", "close"] == 50 * clean.daily_bars("BTC").loc["2024-06-01", "close"]
    # the house model (FHS + Monte Carlo + stress, APC, liquidity) and the measures model
    pos = pd.DataFrame({"account_id": ["a", "a", "b"], "instrument_id": ["OKX-BTC-PERP", "OKX-ETH-PERP", "BIN-BTC"],
                        "quantity": [200.0, -300.0, 3.0]})
    book = make_book(pos)  # as of 2024-06-01T00:00Z
    p = gm.get_model("house").Params(mc_scenarios=2000)
    for model, params in (("house", p), ("measures", None)):
        a = gm.compute(book, model, params=params, backend="reference", market=clean)
        b = gm.compute(book, model, params=params, backend="reference", market=bad)
        pd.testing.assert_frame_equal(a.tables["margin"], b.tables["margin"], check_exact=True)
        assert a.summary["market_history"]["end"] == "2024-05-31"
    # the generators and the sample books one by one
    for f in (lambda m: historical_scenarios("2024-06-01", lookback_days=300, market=m).price_shock,
              lambda m: estimate_targets("2024-06-01", market=m)[1],
              lambda m: named_stress(market=m, as_of="2024-06-01").price_shock,
              lambda m: generate_book(30, 1, "2024-06-01T08:00:00Z", market=m)["market"]["underlying_price"]):
        np.testing.assert_array_equal(np.asarray(f(clean)), np.asarray(f(bad)))
    # the poison is seen once it is in the past
    late = make_book(pos, as_of="2024-06-03T00:00:00Z")
    a = gm.compute(late, "measures", backend="reference", market=clean).tables["margin"]["im_usd"]
    b = gm.compute(late, "measures", backend="reference", market=bad).tables["margin"]["im_usd"]
    assert not np.allclose(a, b)


def test_stress_episodes_count_only_once_in_the_past():
    before = named_stress(as_of="2022-05-10")
    ids = list(before.scenario_id)
    assert "covid_2020_03_12" in ids and "crash_2021_05_19" in ids
    assert "luna_2022_05" not in ids and "ftx_2022_11" not in ids
    assert set(before.metadata["episodes_left_out"]) == {"luna_2022_05", "ftx_2022_11"}
    after = named_stress(as_of="2023-01-01")
    assert {"luna_2022_05", "ftx_2022_11"} <= set(after.scenario_id) and not after.metadata["episodes_left_out"]


# --------------------------------------------------------------------------- staleness


def test_history_end_is_the_earliest_last_close_among_the_coins(tmp_path):
    folder = copy_history(tmp_path / "h", ("BTC", "ETH"), extras=False)
    p = folder / "market" / "daily" / "ETHUSDT_1d.csv"
    t = Table("ohlcv", "ETH", "1d")
    p.write_text(table_text(t, read_table(p, t).loc[:"2024-12-28"]))
    s = open_store(folder)
    assert s.history_end(["BTC", "ETH"], "2025-01-01T08:00Z") == (pd.Timestamp("2024-12-28"), "ETH")
    st_ = history_state(s.with_policy(max_history_age_days=4), ["BTC", "ETH"], "2025-01-01T08:00Z")
    assert (st_.end, st_.limiting_coin, st_.age_days, st_.stale) == (pd.Timestamp("2024-12-28"), "ETH", 4, False)
    with pytest.raises(StaleHistoryError) as err:
        history_state(s, ["BTC", "ETH"], "2025-01-01T08:00Z")  # 4 days > 3
    assert "2024-12-28" in str(err.value) and "ETH" in str(err.value) and "2025-01-01T08:00:00Z" in str(err.value)
    ok = history_state(s, ["BTC"], "2025-01-01T08:00Z")  # BTC alone is current
    assert ok.end == pd.Timestamp("2024-12-31") and ok.age_days == 1 and not ok.stale


def test_the_sample_job_book_is_fresh_on_the_shipped_history():
    # jobs/intraday_margin.toml margins the sample book at its default as-of, 2024-12-31T08:00Z
    st_ = history_state(default_store(), ["BTC", "ETH", "SOL"], "2024-12-31T08:00:00Z")
    assert st_.end == pd.Timestamp("2024-12-30") and st_.age_days == 1 and not st_.stale


# --------------------------------------------------------------------------- choosing the folder


def test_precedence_cli_job_env_shipped(tmp_path):
    a, b, c = (copy_history(tmp_path / x, ("BTC",), extras=False) for x in "abc")
    env = {ENV_VAR: str(c)}
    assert resolve_store(a, b, environ=env).root == a.resolve()
    assert resolve_store(None, b, environ=env).root == b.resolve()
    assert resolve_store(None, None, environ=env).root == c.resolve()
    s = resolve_store(None, None, environ={})
    assert s.shipped and s.source == "shipped"
    assert resolve_store(a, b, environ=env).source == "cli" and resolve_store(None, b, environ=env).source == "job"
    # the policy: command line over job over defaults
    job = MarketSettings(history=b, max_history_age_days=7, allow_stale_history=True)
    s = resolve_store(MarketSettings(max_history_age_days=1), job, environ={})
    assert (s.root, s.max_history_age_days, s.allow_stale_history) == (b.resolve(), 1, True)
    s = resolve_store(None, None, environ={})
    assert (s.max_history_age_days, s.allow_stale_history) == (3, False)


def test_the_environment_variable_reaches_a_model_given_no_store(tmp_path, monkeypatch):
    folder = copy_history(tmp_path / "h", ("BTC", "ETH"), extras=False)
    monkeypatch.setenv(ENV_VAR, str(folder))
    assert market_store(None).root == folder.resolve() and market_store(None).source == "env"
    pos = pd.DataFrame({"account_id": ["a"], "instrument_id": ["OKX-BTC-PERP"], "quantity": [1.0]})
    res = gm.compute(make_book(pos), "measures", backend="reference")
    assert res.summary["market_history"]["path"] == str(folder.resolve())


@pytest.mark.parametrize("make,fragment", [
    (lambda p: p / "missing", "market history folder not found"),
    (lambda p: (p / "f").write_text("x") and p / "f", "not a folder"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "not a market history folder"),
])
def test_a_bad_folder_is_one_line_naming_the_option(tmp_path, make, fragment):
    folder = make(tmp_path)
    with pytest.raises(MarketDataError) as err:
        resolve_store(folder, environ={})
    assert fragment in str(err.value) and "--market-data" in str(err.value)
    with pytest.raises(MarketDataError, match=ENV_VAR):
        resolve_store(None, None, environ={ENV_VAR: str(folder)})


def test_a_coin_the_folder_lacks_is_named(tmp_path):
    s = open_store(copy_history(tmp_path / "h", ("BTC",), extras=False))
    assert s.coins() == ("BTC",) and s.dvol().empty
    with pytest.raises(MarketDataError) as err:
        s.daily_bars("ETH")
    assert "no daily history for ETH in" in str(err.value) and "(coins with daily bars: BTC)" in str(err.value)


def test_a_changed_file_is_read_again(tmp_path):
    folder = copy_history(tmp_path / "h", ("BTC",), extras=False)
    s1 = open_store(folder)
    n, fp = len(s1.daily_bars("BTC")), s1.fingerprint()
    p = folder / "market" / "daily" / "BTCUSDT_1d.csv"
    t = Table("ohlcv", "BTC", "1d")
    p.write_text(table_text(t, read_table(p, t).iloc[:-10]))
    assert len(open_store(folder).daily_bars("BTC")) == n - 10
    assert open_store(folder).fingerprint() != fp and len(s1.daily_bars("BTC")) == n  # s1 keeps what it read


def test_market_info_command(capsys):
    assert main(["market", "info", "--as-of", "2025-01-02T08:00:00Z", "--coins", "BTC,ETH"]) == 0
    out = capsys.readouterr().out
    assert "BTC    daily 2017-08-17..2024-12-31" in out and '"age_days": 2' in out and '"end": "2024-12-31"' in out


# --------------------------------------------------------------------------- job files and commands


def _job(tmp_path, market: str):
    p = tmp_path / "jobs" / "j.toml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text('[job]\nname = "j"\n[book]\npath = "b"\n[[models]]\nname = "house"\n' + market)
    return p


def test_job_market_table(tmp_path):
    from gpurisk.config import load_job

    folder = copy_history(tmp_path / "jobs" / "hist", ("BTC",), extras=False)
    job = load_job(_job(tmp_path, '[market]\nhistory = "hist"\nmax_history_age_days = 5\n'))
    assert job.market == MarketSettings(history=folder, max_history_age_days=5, allow_stale_history=None)
    s = resolve_store(None, job.market, environ={})
    assert (s.root, s.source, s.max_history_age_days, s.allow_stale_history) == (folder.resolve(), "job", 5, False)
    assert load_job(_job(tmp_path, "")).market == MarketSettings()


@pytest.mark.parametrize("table,fragment", [
    ("max_history_age_days = -1", "market.max_history_age_days: must be ≥ 0"),
    ("max_history_age_days = 1.5", "market.max_history_age_days: expected an integer"),
    ('allow_stale_history = "yes"', "market.allow_stale_history: expected true or false"),
    ('history = ""', "market.history: must not be empty"),
    ("folder = 'x'", "market.folder: unknown key"),
])
def test_job_market_table_errors_name_the_key(tmp_path, table, fragment):
    from gpurisk.config import load_job
    from gpurisk.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        load_job(_job(tmp_path, "[market]\n" + table + "\n"))
    assert fragment in str(err.value) and "j.toml" in str(err.value)


def test_scenarios_and_generate_commands_take_market_data(tmp_path, capsys):
    folder = copy_history(tmp_path / "h", ("BTC", "ETH"), extras=False)
    out = tmp_path / "fhs.parquet"
    assert main(["scenarios", "historical", "--as-of", "2024-06-01", "--underlyings", "BTC,ETH",
                 "--lookback-days", "100", "--market-data", str(folder), "--out", str(out)]) == 0
    assert str(folder.resolve()) in capsys.readouterr().out  # the provenance names the folder
    assert main(["scenarios", "historical", "--as-of", "2024-06-01", "--market-data", str(folder),
                 "--out", str(out)]) == 2  # the default coins include SOL, which the folder lacks
    assert "no daily history for ['SOL'" in capsys.readouterr().err
    assert main(["generate", "--accounts", "3", "--market-data", str(folder), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no daily history for SOL" in err


def test_margin_command_policy_options(tmp_path, sample_book_dir, capsys):
    assert main(["margin", str(sample_book_dir), "--model", "measures", "--max-history-age-days", "-1",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--max-history-age-days must be ≥ 0" in capsys.readouterr().err
    assert main(["margin", str(sample_book_dir), "--model", "measures", "--market-data", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "--market-data" in capsys.readouterr().err and not (tmp_path / "o").exists()
