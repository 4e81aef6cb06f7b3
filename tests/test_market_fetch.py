"""``gpurisk market fetch``: ccxt's own binance class on recorded responses (a fake transport: no network).

The recorded responses (tests/data/market/binance_recorded.json) follow the published shapes of Binance's
``GET /api/v3/exchangeInfo`` and ``GET /api/v3/klines``; ccxt parses them exactly as it parses the live API.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pandas as pd
import pytest

ccxt = pytest.importorskip("ccxt")

from gpurisk.cli import main  # noqa: E402
from gpurisk.market import MarketDataError, open_store, shipped_dir  # noqa: E402
from gpurisk.market import fetch as fetch_mod  # noqa: E402
from gpurisk.market.fetch import fetch_history  # noqa: E402

RECORDED = json.loads((Path(__file__).parent / "data" / "market" / "binance_recorded.json").read_text())
NOW = pd.Timestamp("2025-01-06T12:00:00Z")  # the bar of 2025-01-06 has not closed yet


class FakeBinance:
    """ccxt.binance whose HTTP layer answers from the recorded responses, and refuses anything else."""

    def __new__(cls, fail_on=None):
        ex = ccxt.binance({"options": {"defaultType": "spot", "fetchMarkets": {"types": ["spot"]}}})
        ex.calls = []

        def fetch(url, method="GET", headers=None, body=None):
            u = urlparse(url)
            ex.calls.append(u.path + "?" + u.query)
            if fail_on and fail_on in u.path:
                raise ccxt.ExchangeNotAvailable("binance GET " + url + " 503 Service Unavailable")
            if u.path == "/api/v3/exchangeInfo":
                return RECORDED["exchangeInfo"]
            if u.path == "/api/v3/klines":
                q = {k: v[0] for k, v in parse_qs(u.query).items()}
                bars = RECORDED["klines"][q["interval"]][q["symbol"]]
                start = int(q.get("startTime", 0))
                return [b for b in bars if b[0] >= start][: int(q.get("limit", 500))]
            raise AssertionError(f"no recorded response for {url} (the tests never reach the network)")

        ex.fetch = fetch
        return ex


def history(tmp_path, coins=("BTC", "ETH")):
    d = tmp_path / "hist"
    for c in coins:
        p = d / "market" / "daily" / f"{c}USDT_1d.csv"
        p.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shipped_dir() / "market" / "daily" / f"{c}USDT_1d.csv", p)
    return d


def test_fetch_appends_the_closed_bars_after_the_last_one(tmp_path):
    d = history(tmp_path)
    ex = FakeBinance()
    r = fetch_history(ex, "BTC/USDT,ETH/USDT", d, now=NOW)
    assert r.counts == {"read": 10, "added": 10, "duplicates": 0, "conflicts": 0, "replaced": 0, "rejected": 0}
    s = open_store(d)
    for coin, first_close, last_close in (("BTC", 94591.79, 98314.96), ("ETH", 3353.49, 3635.40)):
        new = s.daily_bars(coin).loc["2025-01-01":]
        assert list(new.index.strftime("%Y-%m-%d")) == ["2025-01-01", "2025-01-02", "2025-01-03", "2025-01-04",
                                                         "2025-01-05"]  # 01-06 closes after NOW: left out
        assert new["close"].iloc[0] == first_close and new["close"].iloc[-1] == last_close
    # it asked from the bar after the folder's last one (2024-12-31 -> 2025-01-01 00:00 UTC = 1735689600000)
    klines = [c for c in ex.calls if c.startswith("/api/v3/klines")]
    assert klines and all("startTime=1735689600000" in c for c in klines[:1])
    # again: nothing new, nothing rewritten
    before = (d / "market" / "daily" / "BTCUSDT_1d.csv").stat().st_mtime_ns
    r = fetch_history(FakeBinance(), ["BTC/USDT"], d, now=NOW)
    assert r.counts["added"] == 0 and (d / "market" / "daily" / "BTCUSDT_1d.csv").stat().st_mtime_ns == before


def test_fetch_pages_through_the_history(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch_mod, "PAGE", 2)
    d = history(tmp_path, ("BTC",))
    ex = FakeBinance()
    r = fetch_history(ex, ["BTC/USDT"], d, now=NOW + pd.Timedelta(days=1))  # now 01-06 has closed too
    assert r.counts["added"] == 6
    starts = [parse_qs(urlparse(c).query)["startTime"][0] for c in ex.calls if c.startswith("/api/v3/klines")]
    assert starts == ["1735689600000", "1735862400000", "1736035200000"]  # 3 pages of 2


def test_fetch_into_a_new_folder_needs_since(tmp_path):
    with pytest.raises(MarketDataError, match="give --since"):
        fetch_history(FakeBinance(), ["BTC/USDT"], tmp_path / "new", now=NOW)
    r = fetch_history(FakeBinance(), ["BTC/USDT"], tmp_path / "new", since="2025-01-03", now=NOW)
    assert r.counts["added"] == 3
    assert open_store(tmp_path / "new").daily_bars("BTC").index[0] == pd.Timestamp("2025-01-03")


def test_an_exchange_error_is_one_line_and_writes_nothing(tmp_path):
    d = history(tmp_path, ("BTC",))
    before = (d / "market" / "daily" / "BTCUSDT_1d.csv").read_bytes()
    with pytest.raises(MarketDataError) as err:
        fetch_history(FakeBinance(fail_on="klines"), ["BTC/USDT"], d, now=NOW)
    msg = str(err.value)
    assert "binance fetch_ohlcv BTC/USDT 1d: ExchangeNotAvailable" in msg and "\n" not in msg
    assert (d / "market" / "daily" / "BTCUSDT_1d.csv").read_bytes() == before


def test_a_conflicting_fetched_bar_is_refused(tmp_path):
    d = history(tmp_path, ("BTC",))
    assert fetch_history(FakeBinance(), ["BTC/USDT"], d, now=NOW).counts["added"] == 5
    p = d / "market" / "daily" / "BTCUSDT_1d.csv"
    p.write_text(p.read_text().replace(",98314.96,", ",98000.0,"))  # the folder's 2025-01-05 close differs
    with pytest.raises(MarketDataError, match="1 conflicting row"):
        fetch_history(FakeBinance(), ["BTC/USDT"], d, since="2025-01-01", now=NOW)


def test_bad_requests(tmp_path):
    with pytest.raises(MarketDataError, match="not an exchange ccxt knows"):
        fetch_history("nosuchexchange", ["BTC/USDT"], tmp_path, now=NOW)
    with pytest.raises(MarketDataError, match="USDT-quoted"):
        fetch_history(FakeBinance(), ["BTC/EUR"], tmp_path, since="2025-01-01", now=NOW)


def test_cli_fetch_through_the_same_path(tmp_path, capsys, monkeypatch):
    d = history(tmp_path)
    monkeypatch.setattr(fetch_mod, "make_exchange", lambda name: FakeBinance())
    real = fetch_mod.fetch_history

    def at_now(*a, **k):  # the clock of the test: 2025-01-06 12:00 UTC
        k["now"] = NOW
        return real(*a, **k)

    monkeypatch.setattr(fetch_mod, "fetch_history", at_now)
    assert main(["market", "fetch", "--exchange", "binance", "--symbols", "BTC/USDT,ETH/USDT", "--into", str(d)]) == 0
    out = capsys.readouterr().out
    assert "10 rows read: 10 added" in out
    assert open_store(d).history_end(["BTC", "ETH"])[0] == pd.Timestamp("2025-01-05")
