"""The margin output contract: standard columns, finite and plausible figures, one entry point for any book form."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import gpurisk
from gpurisk import io
from gpurisk.cli import main
from gpurisk.margin.plan import STANDARD_COLUMNS, MarginError, MarginResult, standard_frame
from test_measures import PRICES, instruments_frame


def _book_dir(tmp_path, qty: float, name="b"):
    ins = instruments_frame()
    d = tmp_path / name
    io.write_book(d, {
        "instruments": ins.drop(columns=["underlying_price", "implied_vol"]),
        "market": ins[["instrument_id", "underlying_price", "implied_vol"]],
        "index": pd.DataFrame({"underlying": [*PRICES, "USDT"], "price": [*PRICES.values(), 1.0]}),
        "positions": pd.DataFrame({"account_id": ["big", "small"], "instrument_id": ["OKX-BTC-PERP"] * 2,
                                   "quantity": [qty, 3.0]}),
        "balances": pd.DataFrame({"account_id": ["small"], "venue": ["okx"], "asset": ["USDT"], "amount": [5e4]}),
    }, {"as_of": "2024-06-03T08:00:00Z"})
    return d


def _scen():
    from gpurisk.scenarios import make_scenario_set

    return make_scenario_set(["BTC", "ETH"], np.array([[-0.3, -0.3], [0.1, 0.2], [0.0, 0.0]]), horizon_days=1.0)


@pytest.mark.parametrize("qty", [1e300, 1e30])
def test_absurd_positions_are_rejected_by_default(tmp_path, qty):
    loaded = io.load_book(_book_dir(tmp_path, qty))
    assert set(loaded.rejects["reason"]) == {"implausible_notional"}
    res = gpurisk.margin(loaded, "house", scenarios=_scen(), backend="reference")
    assert list(res.margin["account_id"]) == ["small"] and np.isfinite(res.margin["im_usd"]).all()


@pytest.mark.parametrize("qty", [1e300, 1e30])
def test_an_absurd_margin_is_an_error_naming_the_account_never_an_output(tmp_path, qty):
    # with the plausibility bound switched off, the model must still refuse to output inf or 1e43
    loaded = io.load_book(_book_dir(tmp_path, qty), max_notional_usd=float("inf"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw RuntimeWarning either
        with pytest.raises(MarginError, match=r"account big .*cannot be right") as e:
            gpurisk.margin(loaded, "house", scenarios=_scen(), backend="reference")
    assert "\n" not in str(e.value)


def test_margin_accepts_a_book_a_loaded_book_or_a_folder(tmp_path):
    d = _book_dir(tmp_path, 2.0)
    loaded = io.load_book(d)
    a = gpurisk.margin(loaded.book, "measures", scenarios=_scen(), backend="reference").margin
    b = gpurisk.margin(loaded, "measures", scenarios=_scen(), backend="reference").margin
    c = gpurisk.margin(str(d), "measures", scenarios=_scen(), backend="reference").margin
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(a, c)
    with pytest.raises(gpurisk.errors.ConfigError, match="needs a Book"):
        gpurisk.margin(42, "measures")


def test_every_model_carries_the_standard_columns(tmp_path):
    from gpurisk.generate import generate_book

    t = generate_book(30, 3)
    meta = t.pop("meta")
    io.write_book(tmp_path / "g", t, meta)
    book = io.load_book(tmp_path / "g").book
    for model in ("measures", "house", "deribit", "okx", "venue"):
        from gpurisk.scenarios import registry

        kw = {"scenarios": registry.generate("stress", {})} if model == "measures" else {}
        if model == "house":
            kw = {"params": gpurisk.margin.get_model("house").Params(mc_scenarios=200)}
        res = gpurisk.margin(book, model, backend="reference", **kw)
        m = res.margin
        assert list(m.columns[: len(STANDARD_COLUMNS)]) == list(STANDARD_COLUMNS), model
        usd = m["currency"] == "USD"
        np.testing.assert_array_equal(m.loc[usd, "im"], m.loc[usd, "im_usd"])
        np.testing.assert_allclose(m["excess_usd"], m["equity_usd"] - m["im_usd"], rtol=1e-12, atol=1e-9)
        assert set(res.totals()["status"]) == {"ok", "call", "reduce_only", "liquidation"}


def test_check_rejects_bad_figures_and_allows_uncovered_rows():
    good = standard_frame(["a", "b"], "x", "m", "USD", [1.0, 2.0], [0.8, 1.6], [5.0, 1.0])
    MarginResult("m", {"margin": good}).check()
    for col, val in (("im", np.nan), ("equity_usd", np.inf), ("im_usd", 2e15)):
        bad = good.copy()
        bad.loc[1, col] = val
        with pytest.raises(MarginError, match=f"account b .*{col}"):
            MarginResult("m", {"margin": bad}).check()
    unc = good.copy()
    unc.loc[1, ["im", "im_usd", "excess_usd"]] = np.nan
    unc.loc[1, "status"] = "uncovered"
    MarginResult("m", {"margin": unc}).check()
    assert MarginResult("m", {"margin": unc}).totals()["uncovered"] == 1
    with pytest.raises(MarginError, match="standard column"):
        MarginResult("m", {"margin": good.drop(columns="status")}).check()


def test_validate_flags_venues_no_methodology_covers(tmp_path, capsys):
    src = _book_dir(tmp_path, 2.0)
    bal = pd.read_parquet(src / "balances.parquet")
    bal.loc[len(bal)] = ["small", "kraken", "USDT", 10.0]
    d = tmp_path / "k"
    io.write_book(d, {n: pd.read_parquet(src / f"{n}.parquet") for n in io.TABLES} | {"balances": bal},
                  {"as_of": "2024-06-03T08:00:00Z"})
    out = tmp_path / "chk"
    assert main(["validate", str(d), "--out", str(out)]) == 0
    assert "kraken" in capsys.readouterr().out
    import json

    assert json.loads((out / "summary.json").read_text())["uncovered_venues"] == ["kraken"]


def test_standard_frame_labels_are_text_with_or_without_rows(tmp_path):
    """An empty margin table (a replica with nothing to margin) has the same label dtypes as a full one, so
    its Parquet schema types ``account_id`` as a string, not as null (hypothesis once found a venue
    replica's empty table failing a comparison on exactly that)."""
    import pyarrow.parquet as pq

    from gpurisk.margin.output import write_result

    full = standard_frame(["a", "b"], "x", "m", "USD", [1.0, 2.0], [0.8, 1.6], [5.0, 1.0])
    empty = standard_frame([], [], "m", "USD", [], [], [])
    labels = ["account_id", "venue", "model", "currency", "status"]
    assert len(empty) == 0 and list(empty.dtypes[labels]) == list(full.dtypes[labels])
    assert all(pd.api.types.is_string_dtype(full[c].dtype) for c in labels)
    res = MarginResult("m", {"margin": empty}, {"model": "m"})
    write_result(res, tmp_path)
    assert str(pq.read_schema(tmp_path / "margin.parquet").field("account_id").type) in ("string", "large_string")
