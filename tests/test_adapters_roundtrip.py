"""Round trips: a book -> the venues' structures -> ``gpurisk ingest`` -> the same book tables and the same margins.

The shipped sample (a generated book) and the hand-built tiny book go out as Deribit JSON, OKX JSON
(net and long/short modes), CCXT structures (parsed by ccxt itself from those responses and from Binance
spot responses) and FIXML position and collateral reports, and come back as identical book tables
(numbers to 1e-12 relative) with identical margins (venue replicas, the measures model and, for one
path, the house model) to 1e-12.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from gpurisk.adapters import base, ccxt as cc, deribit, fixml, okx
from gpurisk.adapters import ingest as ing
from gpurisk.book import Book
from gpurisk.cli import main
from gpurisk.generate import generate_book
from gpurisk.io import TABLES, load_book, write_book
from gpurisk.margin import compute
from gpurisk.validate import validate

from conftest import TINY_AS_OF, tiny_tables
from test_adapters_support import CcxtVenues, accounts, assert_same_tables

MARGIN_FIGURES = ["im", "mm", "equity", "excess", "im_usd", "mm_usd", "equity_usd", "excess_usd", "call_amount_usd"]


def _sample():
    g = generate_book(12, 11)
    return {k: g[k] for k in TABLES}, g["meta"]


def _tiny():
    return tiny_tables(), {"as_of": TINY_AS_OF}


BOOKS = {"sample": _sample, "tiny": _tiny}


@pytest.fixture(scope="module", params=sorted(BOOKS))
def book(request, tmp_path_factory):
    """(name, folder, validated tables, as_of) of each book."""
    tables, meta = BOOKS[request.param]()
    folder = tmp_path_factory.mktemp(f"{request.param}_book")
    write_book(folder, tables, meta)
    clean, rejects, _ = validate(tables, meta["as_of"])
    assert len(rejects) == 0
    return request.param, folder, clean, meta["as_of"]


def same_margins(a: Book, b: Book, models=("venue", "measures")) -> None:
    for model in models:
        x = compute(a, model=model, backend="reference").margin
        y = compute(b, model=model, backend="reference").margin
        key = ["account_id", "venue"]
        x = x.sort_values(key).reset_index(drop=True)
        y = y.sort_values(key).reset_index(drop=True)
        assert x[key].astype(str).equals(y[key].astype(str)), model
        assert x["status"].astype(str).tolist() == y["status"].astype(str).tolist(), model
        for c in MARGIN_FIGURES:
            np.testing.assert_allclose(y[c].to_numpy(float), x[c].to_numpy(float), rtol=1e-12, atol=1e-9,
                                       err_msg=f"{model}.{c}")


def held(clean: dict) -> dict:
    """The book restricted to held instruments (what a position feed describes)."""
    out = {k: v.copy() for k, v in clean.items()}
    ids = set(out["positions"]["instrument_id"])
    out["instruments"] = out["instruments"][out["instruments"]["instrument_id"].isin(ids)]
    out["market"] = out["market"][out["market"]["instrument_id"].isin(ids)]
    return out


def via_venue_json(clean: dict) -> dict:
    """What the venues' JSON gives back: every Deribit and OKX instrument (their instrument lists and tickers
    cover all), and the Binance spot pairs an account holds (a spot wallet is a balance, not a list)."""
    out = {k: v.copy() for k, v in clean.items()}
    ids = set(out["positions"]["instrument_id"])
    ins = out["instruments"]
    keep = (ins["venue"] != "binance") | ins["instrument_id"].isin(ids)
    out["instruments"] = ins[keep]
    out["market"] = out["market"][out["market"]["instrument_id"].isin(set(ins.loc[keep, "instrument_id"]))]
    return out


def write_venue_sources(folder, clean, as_of, okx_mode="net"):
    """Each account's Deribit and OKX JSON in ``folder/<account>/``, the venues' market data in ``folder/``,
    and each Binance spot account as the CCXT structures ccxt parses from Binance's responses."""
    folder.mkdir()
    venues = CcxtVenues(clean, as_of)
    for venue, mod in (("deribit", deribit), ("okx", okx)):
        kw = {"mode": okx_mode} if venue == "okx" else {}
        for k, v in mod.responses(clean, accounts(clean)[0], as_of, **kw).items():
            if k not in ("positions", "account_summaries", "balance"):
                (folder / f"{venue}_{k}.json").write_text(json.dumps(v))
    has_binance = (clean["instruments"]["venue"] == "binance").any()
    for a in accounts(clean):
        (folder / a).mkdir()
        for venue, mod in (("deribit", deribit), ("okx", okx)):
            kw = {"mode": okx_mode} if venue == "okx" else {}
            for k, v in mod.responses(clean, a, as_of, market=False, **kw).items():
                (folder / a / f"{venue}_{k}.json").write_text(json.dumps(v))
        if has_binance:
            st = venues.structures("binance", a)
            (folder / a / "binance_ccxt.json").write_text(json.dumps(st, default=str))
    return folder


@pytest.mark.slow
def test_book_through_venue_json_comes_back_identical(book, tmp_path):
    name, folder, clean, as_of = book
    src = write_venue_sources(tmp_path / "src", clean, as_of)
    out = tmp_path / "ingested"
    assert main(["ingest", str(src), "--venue", "binance", "--out", str(out)]) == 0
    back = load_book(out)
    assert back.summary["total_rejected"] == 0
    clean_back, _, _ = validate(*_read_tables(out))
    assert_same_tables(via_venue_json(clean), clean_back)
    same_margins(load_book(folder).book, back.book, models=("venue", "measures", "house") if name == "sample"
                 else ("venue", "measures"))
    summary = json.loads((out / "ingest.json").read_text())
    for kind, c in summary["records"].items():
        assert c["input"] == c["mapped"] + c["rejected"], kind


def _read_tables(folder):
    from gpurisk.io import read_tables

    tables, meta = read_tables(folder)
    return tables, meta["as_of"]


@pytest.mark.slow
def test_okx_long_short_mode_nets_to_the_same_margins(book, tmp_path):
    name, folder, clean, as_of = book
    if not (clean["instruments"]["venue"] == "okx").any():
        pytest.skip("no OKX instruments")
    src = write_venue_sources(tmp_path / "src", clean, as_of, okx_mode="long_short")
    result = ing.ingest([src], venue="binance")
    assert len(result.rejects) == 0
    assert_same_tables(via_venue_json(clean), result.clean)
    same_margins(load_book(folder).book, Book.from_frames(result.as_of, **result.clean), models=("venue",))


@pytest.mark.slow
def test_book_through_ccxt_parsers_comes_back_identical(book):
    name, folder, clean, as_of = book
    venues = CcxtVenues(clean, as_of)
    m = base.Mapped()
    for a in accounts(clean):
        for v in sorted(set(clean["instruments"]["venue"])):
            m.extend(cc.from_ccxt(**venues.structures(v, a), venue=v, account=a))
    result = ing.ingest(mapped=m)
    assert len(result.rejects) == 0
    assert_same_tables(held(clean), result.clean)
    same_margins(load_book(folder).book, Book.from_frames(result.as_of, **result.clean))


def test_book_through_fixml_comes_back_identical(book, tmp_path):
    name, folder, clean, as_of = book
    xml, mapping = fixml.position_reports(clean, as_of)
    (tmp_path / "positions.xml").write_text(xml)
    (tmp_path / "mapping.toml").write_text(mapping)
    out = tmp_path / "ingested"
    assert main(["ingest", str(tmp_path / "positions.xml"), "--mapping", str(tmp_path / "mapping.toml"),
                 "--market", str(folder), "--out", str(out)]) == 0
    back = load_book(out)
    clean_back, _, _ = validate(*_read_tables(out))
    assert_same_tables(clean, clean_back)
    same_margins(load_book(folder).book, back.book)


@pytest.mark.slow
def test_snapshots_are_what_a_job_picks_up(book, tmp_path):
    """``--snapshots DIR`` writes DIR/<as-of>/ atomically; ``latest_snapshot`` (``[book] snapshots``) finds it."""
    from gpurisk.batch.sources import latest_snapshot

    name, folder, clean, as_of = book
    src = write_venue_sources(tmp_path / "src", clean, as_of)
    snaps = tmp_path / "snapshots"
    assert main(["ingest", str(src), "--venue", "binance", "--snapshots", str(snaps)]) == 0
    assert main(["ingest", str(src), "--venue", "binance", "--snapshots", str(snaps),
                 "--as-of", str(pd.Timestamp(as_of) + pd.Timedelta(hours=1))]) == 0
    names = sorted(p.name for p in snaps.iterdir())
    assert len(names) == 2 and not any(n.startswith(".") for n in names)
    latest = latest_snapshot(snaps)
    assert latest.name == names[-1] and latest.name.endswith("Z")
    assert load_book(latest).summary["total_rejected"] == 0
    # the same as-of again is refused without --force (a snapshot is never half-replaced)
    assert main(["ingest", str(src), "--venue", "binance", "--snapshots", str(snaps)]) == 2
