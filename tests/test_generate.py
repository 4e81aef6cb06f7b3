"""Sample-book generator: determinism, zero rejects, and realism against independent sources.

Independent sources: the raw CSV files in ``datasets/`` read directly with
pandas (closes, DVOL), the calendar (Fridays, last Friday of the month), the
published contract sizes, and the validator.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gpurisk.cli import main
from gpurisk.generate import DEFAULT_AS_OF, expiry_calendar, generate_book, sample_book, strike_grid
from gpurisk.io import TABLES, load_book, read_book_toml, write_book
from gpurisk.market import shipped_dir
from gpurisk.validate import validate


@pytest.fixture(scope="module")
def g400():
    return generate_book(400, 5)


def _raw_close(coin: str, date: str) -> float:
    df = pd.read_csv(shipped_dir() / "market" / "daily" / f"{coin}USDT_1d.csv")
    return float(df.loc[df["timestamp"] == date, "close"].iloc[0])


def _raw_dvol(date: str) -> float:
    df = pd.read_csv(shipped_dir() / "options" / "deribit_btc_dvol_daily.csv")
    return float(df.loc[df["date"] == date, "dvol"].iloc[0]) / 100.0


def test_deterministic_per_seed(tmp_path):
    a, b, c = generate_book(300, 42), generate_book(300, 42), generate_book(300, 43)
    for k in TABLES:
        pd.testing.assert_frame_equal(a[k], b[k])
    assert a["meta"] == b["meta"]
    assert not a["positions"].equals(c["positions"])
    write_book(tmp_path / "a", {k: a[k] for k in TABLES}, a["meta"])
    write_book(tmp_path / "b", {k: b[k] for k in TABLES}, b["meta"])
    for k in TABLES:
        assert (tmp_path / "a" / f"{k}.parquet").read_bytes() == (tmp_path / "b" / f"{k}.parquet").read_bytes()
    assert (tmp_path / "a" / "book.toml").read_bytes() == (tmp_path / "b" / "book.toml").read_bytes()


@pytest.mark.parametrize("n,seed,as_of", [(1, 0, None), (400, 5, None), (250, 9, "2023-06-15T12:30:00Z"),
                                          (250, 3, "2022-11-09T00:00:00Z")])
def test_output_validates_with_zero_rejects(n, seed, as_of):
    g = generate_book(n, seed, as_of)
    clean, rejects, summary = validate({k: g[k] for k in TABLES}, g["meta"]["as_of"], strict=True)
    assert rejects.empty and summary["total_rejected"] == 0
    assert summary["positions"]["merged"] == 0
    assert g["positions"]["instrument_id"].isin(g["instruments"]["instrument_id"]).all()
    assert set(g["positions"]["account_id"]) <= set(g["balances"]["account_id"])


def test_index_from_real_closes_before_as_of(g400):
    idx = g400["index"].set_index("underlying")["price"]
    assert set(idx.index) == {"BTC", "ETH", "SOL", "USDT", "USDC"}
    assert idx["USDT"] == idx["USDC"] == 1.0
    for coin in ("BTC", "ETH", "SOL"):  # as_of 2024-12-31T08:00Z: the last complete bar is 2024-12-30
        assert idx[coin] == _raw_close(coin, "2024-12-30")
    mk = g400["market"].merge(g400["instruments"], on="instrument_id")
    spot = mk[mk["kind"].isin(["spot", "perpetual"])]
    assert (spot["underlying_price"] == spot["underlying"].map(idx)).all()


def test_expiry_calendar_follows_deribit_conventions():
    cal = expiry_calendar(DEFAULT_AS_OF)
    as_of = np.datetime64("2024-12-31T08:00:00")
    for fam, days in cal.items():
        assert (days > as_of).all(), fam
        ts = pd.DatetimeIndex(days)
        assert (ts.hour == 8).all() and (ts.minute == 0).all()
    for fam in ("weekly", "monthly", "quarterly"):
        assert (pd.DatetimeIndex(cal[fam]).day_of_week == 4).all(), fam
    for fam in ("monthly", "quarterly"):  # last Friday: a week later is next month
        ts = pd.DatetimeIndex(cal[fam])
        assert ((ts + pd.Timedelta(days=7)).month != ts.month).all()
    assert (pd.DatetimeIndex(cal["quarterly"]).month % 3 == 0).all()
    assert list(pd.DatetimeIndex(cal["daily"]).strftime("%Y-%m-%d")) == ["2025-01-01", "2025-01-02", "2025-01-03"]
    assert str(cal["quarterly"][0])[:10] == "2025-03-28" and str(cal["monthly"][0])[:10] == "2025-01-31"
    assert set(cal["futures"]) <= set(cal["options"])


def test_strike_grid_steps():
    k = strike_grid(93_000.0, 0.6, 0.5, 1000.0)
    near = k[(k >= 93_000 * 0.9) & (k <= 93_000 * 1.1)]
    assert set(np.diff(near)) == {1000.0}
    assert len(near) >= 18
    steps = np.diff(k)
    below = steps[k[1:] < 93_000]  # moving away from the money the step never shrinks
    above = steps[k[:-1] > 93_000]
    assert np.all(np.diff(below[::-1]) >= 0) and np.all(np.diff(above) >= 0)
    assert steps.max() == 10_000.0 and k.min() >= 0.2 * 93_000 and k.max() <= 4 * 93_000
    # a daily still spans at least +-10 %
    d = strike_grid(93_000.0, 0.6, 1 / 365, 1000.0)
    assert d.min() <= 0.9 * 93_000 + 1000 and d.max() >= 1.1 * 93_000 - 1000


def test_forwards_contango_and_vols_anchored_on_dvol(g400):
    mk = g400["market"].merge(g400["instruments"], on="instrument_id")
    idx = g400["index"].set_index("underlying")["price"]
    as_of = pd.Timestamp(DEFAULT_AS_OF)
    fut = mk[mk["kind"] == "future"].copy()
    t = (fut["expiry"] - as_of).dt.total_seconds() / (365 * 86400)
    basis = np.log(fut["underlying_price"] / fut["underlying"].map(idx)) / t
    assert basis.between(0.05, 0.12 + 1e-9).all()
    dvol = _raw_dvol("2024-12-30")
    opt = mk[mk["kind"] == "option"].copy()
    opt["t"] = (opt["expiry"] - as_of).dt.total_seconds() / (365 * 86400)
    opt["m"] = np.abs(np.log(opt["strike"] / opt["underlying_price"]))
    atm = opt.loc[opt.groupby(["venue", "underlying", "expiry"])["m"].idxmin()]
    btc_monthly = atm[(atm["underlying"] == "BTC") & (atm["t"].between(20 / 365, 40 / 365))]
    assert len(btc_monthly) and np.allclose(btc_monthly["implied_vol"], dvol, rtol=0.05)
    eth = atm[(atm["underlying"] == "ETH") & (atm["venue"] == "deribit")].set_index("expiry")["implied_vol"]
    btc = atm[(atm["underlying"] == "BTC") & (atm["venue"] == "deribit")].set_index("expiry")["implied_vol"]
    np.testing.assert_allclose((eth / btc).to_numpy(), 1.25, rtol=0.06)  # ATM strike is not exactly F
    assert opt["implied_vol"].between(0.3, 2.5).all()
    # put skew: a 20 % OTM put is dearer than a 20 % OTM call at the same quarterly expiry
    q = opt[(opt["instrument_id"].str.startswith("BTC-28MAR25-"))]
    f = q["underlying_price"].iloc[0]
    vol_at = lambda k: float(q.iloc[(q["strike"] - k).abs().argsort().iloc[0]]["implied_vol"])  # noqa: E731
    assert vol_at(0.8 * f) > vol_at(1.2 * f)


def test_contract_sizes_and_lots(g400):
    ins = g400["instruments"].set_index("instrument_id")
    assert ins.loc["BTC-PERPETUAL", "contract_size"] == 10.0 and ins.loc["ETH-PERPETUAL", "contract_size"] == 1.0
    assert ins.loc["BTC-PERPETUAL", "settlement"] == "inverse"
    assert ins.loc["BTC-USDT-SWAP", "contract_size"] == 0.01 and ins.loc["ETH-USDT-SWAP", "contract_size"] == 0.1
    assert ins.loc["SOL-USDT-SWAP", "contract_size"] == 1.0 and ins.loc["SOLUSDT", "contract_size"] == 1.0
    der_opt = ins[(ins["venue"] == "deribit") & (ins["kind"] == "option")]
    assert (der_opt["contract_size"] == 1.0).all() and (der_opt["settlement"] == "inverse").all()
    assert not ((ins["venue"] == "deribit") & (ins["underlying"] == "SOL")).any()
    assert set(ins.loc[ins["venue"] == "binance", "kind"]) == {"spot"}
    pos = g400["positions"].merge(ins, left_on="instrument_id", right_index=True)
    der_fut = pos[(pos["venue"] == "deribit") & (pos["kind"] != "option")]["quantity"]
    assert (der_fut == np.round(der_fut)).all()
    der_o = pos[(pos["venue"] == "deribit") & (pos["kind"] == "option")]["quantity"]
    assert np.allclose(der_o * 10, np.round(der_o * 10))


def test_account_mix_and_heavy_tails(g400):
    meta = g400["meta"]
    assert sum(meta["account_types"].values()) == 400 and min(meta["account_types"].values()) > 40
    pos = g400["positions"].merge(g400["instruments"], on="instrument_id").merge(g400["index"], on="underlying")
    acct_kinds = pos.groupby("account_id")["kind"].agg(lambda s: ",".join(sorted(set(s))))
    assert (acct_kinds == "future,spot").sum() > 40  # basis trades
    opts = pos[pos["kind"] == "option"]
    short_only = opts.groupby("account_id")["quantity"].agg(lambda q: (q < 0).all())
    assert short_only.sum() > 40  # short strangles
    coin = np.where((pos["settlement"] == "inverse") & (pos["kind"] != "option"),
                    pos["contract_size"] / pos["price"], pos["contract_size"])
    gross = (pos["quantity"].abs() * coin * pos["price"]).groupby(pos["account_id"]).sum().sort_values()
    top = gross.iloc[-len(gross) // 100:].sum() / gross.sum()
    assert top > 0.08  # top 1 % of accounts hold a heavy share (Pareto sizes)
    assert set(g400["balances"]["asset"]) == {"USDT", "USDC", "BTC", "ETH"}


def test_sample_book_builds():
    book = sample_book(50, 1)
    assert book.n_accounts == 50 and len(book.positions.quantity) > 50
    assert np.isfinite(book.market.underlying_price).all()


def test_cli_generate_writes_a_valid_book(tmp_path, capsys):
    out = tmp_path / "book"
    assert main(["generate", "--accounts", "60", "--seed", "2", "--out", str(out), "--format", "csv"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{k}.csv" for k in TABLES] + ["book.toml"])
    meta = read_book_toml(out)
    assert meta["seed"] == 2 and meta["n_accounts"] == 60 and meta["generator"].startswith("gpurisk.generate")
    lb = load_book(out, strict=True)
    assert lb.book.n_accounts == 60
    # re-generating in the same format with --force replaces the book's files
    assert main(["generate", "--accounts", "60", "--seed", "2", "--out", str(out), "--as-of",
                 "2024-06-01T08:00:00Z", "--format", "csv", "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{k}.csv" for k in TABLES] + ["book.toml"])
    assert load_book(out).summary["book"]["as_of"] == "2024-06-01T08:00:00Z"


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_cli_generate_refuses_a_non_empty_folder(tmp_path, capsys):
    """The issue's case: generating into an existing book used to overwrite (and delete) its tables."""
    out = tmp_path / "book"
    assert main(["generate", "--accounts", "20", "--seed", "1", "--out", str(out), "--format", "csv"]) == 0
    (out / "notes.txt").write_text("mine")
    before = _snapshot(out)
    capsys.readouterr()
    rc = main(["generate", "--accounts", "30", "--seed", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and "not empty" in err and "--force" in err and "Traceback" not in err
    assert _snapshot(out) == before  # nothing written, nothing deleted
    # --force in the other format: the csv tables would make the book ambiguous, and are not generate's to delete
    rc = main(["generate", "--accounts", "30", "--seed", "2", "--out", str(out), "--force"])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and "instruments.csv" in err and "never deletes" in err
    assert _snapshot(out) == before
    # --force in the same format replaces only the files it writes
    assert main(["generate", "--accounts", "30", "--seed", "2", "--out", str(out), "--format", "csv", "--force"]) == 0
    after = _snapshot(out)
    assert sorted(after) == sorted(before) and after["notes.txt"] == b"mine"
    assert after["positions.csv"] != before["positions.csv"]
    assert load_book(out).book.n_accounts == 30


def test_cli_generate_into_an_empty_or_new_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["generate", "--accounts", "5", "--seed", "1", "--out", str(empty)]) == 0
    assert load_book(empty).book.n_accounts == 5
    assert main(["generate", "--accounts", "5", "--seed", "1", "--out", str(tmp_path / "new")]) == 0


@pytest.mark.parametrize("where,fragment", [("missing/book", "parent folder"), ("afile", "not a folder"),
                                            ("afile/book", "not a folder")])
def test_cli_generate_out_errors(tmp_path, capsys, where, fragment):
    (tmp_path / "afile").write_text("x")
    rc = main(["generate", "--accounts", "5", "--out", str(tmp_path / where)])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and fragment in err and "Traceback" not in err
    assert not (tmp_path / "missing").exists() and (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("argv,fragment", [
    (["--as-of", "someday"], "not an ISO-8601"),
    (["--as-of", "2015-01-01T00:00:00Z"], "cannot generate"),
    (["--accounts", "0"], "n_accounts must be >= 1"),
])
def test_cli_generate_bad_request(tmp_path, capsys, argv, fragment):
    args = ["generate", "--accounts", "5", "--out", str(tmp_path / "b")] + argv
    rc = main(args)
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and fragment in err and "Traceback" not in err


def test_meta_records_the_dates_of_the_data_used():
    g = generate_book(5, 0, "2026-03-01T00:00:00Z")  # past the end of the data: last values, dated
    assert g["meta"]["price_date"] == "2024-12-31" and g["meta"]["dvol_date"] == "2024-12-31"
    assert generate_book(5, 0)["meta"]["price_date"] == "2024-12-30"
