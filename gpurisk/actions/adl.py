"""The auto-deleveraging rank each venue would give an account's positions (the venues' own view).

When a liquidation cannot be closed in the market and the insurance fund is spent, a venue closes
opposite positions of other accounts at the bankruptcy price, in queue order. Per position, with
notional N = |q|·contract size·mark (USD), the venue's equity E behind it (the venue model's
``equity_usd`` of the account × venue, cross margin) and the unrealised P&L U (needs an entry price):

* **BitMEX style** (BitMEX, "Auto-Deleveraging"): PnL% = U / |entry value|; effective leverage
  = N / E (|mark value| over the margin behind the position, i.e. mark − bankruptcy value); score
  = PnL%·leverage when PnL% > 0, else PnL% / leverage; ranked separately for longs and shorts of each
  instrument; shown as 20 % quantile lights 1-5 (5 = first in the queue);
* **Binance style** (Binance ADL FAQ): PnL% = max(0, U) / max(1, wallet balance); margin ratio
  = MM / (wallet balance + U) (0 when that equity is ≤ 0); score = PnL%·margin ratio; quantile 1-5;
* **OKX** publishes the indicator ``adl`` 0-5 per position (5 = first in the queue, rising with uPnL and
  leverage) but not its formula: gpurisk reports the BitMEX-style score's quantile (1-5; 0 for no
  position), marked as an approximation.

Deribit publishes no ranking formula: its positions get the BitMEX-style rank (``method`` says which
applies). The book format has no entry price; where the positions table carries an ``entry_price``
column it is used; otherwise U is unknown (``pnl_known`` false, U reported as 0) and the BitMEX-style score
is the effective leverage alone, the Binance-style one the margin ratio alone.
Vectorised over positions; quantiles per (venue, instrument, side) over the whole book.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

COLUMNS = ["account_id", "venue", "instrument_id", "side", "quantity", "notional_usd", "pnl_known", "upnl_usd",
           "pnl_pct", "effective_leverage", "bitmex_score", "bitmex_light", "binance_score", "binance_light",
           "okx_adl", "method"]
#: which ranking is the venue's own (others: BitMEX style, the published formula closest to them)
VENUE_METHOD = {"binance": "binance", "okx": "okx", "bitmex": "bitmex"}


def _entry_prices(book_path) -> pd.Series | None:
    """``entry_price`` by (account_id, instrument_id) from the raw positions table, when it has the column."""
    if book_path is None:
        return None
    from ..io import find_table, read_table

    try:
        raw = read_table(find_table(book_path, "positions"))
    except Exception:  # noqa: BLE001 - no extra column to read: entry prices unknown
        return None
    if "entry_price" not in raw.columns:
        return None
    ep = pd.to_numeric(raw["entry_price"], errors="coerce")
    return pd.Series(ep.to_numpy(np.float64),
                     index=pd.MultiIndex.from_arrays([raw["account_id"].astype(str), raw["instrument_id"].astype(str)]))


def _light(score: pd.Series, group: pd.Series) -> np.ndarray:
    """Quantile lights 1-5 of ``score`` within each group (5 = the highest 20 %)."""
    pct = score.groupby(group.to_numpy(), sort=False).rank(pct=True, method="average").to_numpy()
    return np.clip(np.ceil(pct * 5.0), 1, 5).astype(np.int64)


def adl_ranks(clean: dict, venue_margin: pd.DataFrame, accounts=None, book_path=None,
              entry_prices: pd.Series | None = None) -> pd.DataFrame:
    """ADL ranks of every position (module docstring); rows of ``accounts`` only when given (the quantiles
    are over the whole book either way). ``entry_prices``: by (account_id, instrument_id), else the book's
    positions table's ``entry_price`` column when it has one."""
    pos = clean["positions"]
    pos = pos[pos["quantity"] != 0]
    ins = clean["instruments"].set_index("instrument_id")
    mk = clean["market"].set_index("instrument_id")
    df = pd.DataFrame({"account_id": pos["account_id"].astype(str).to_numpy(dtype=object),
                       "instrument_id": pos["instrument_id"].astype(str).to_numpy(dtype=object),
                       "quantity": pos["quantity"].to_numpy(np.float64)})
    df = df.groupby(["account_id", "instrument_id"], as_index=False, sort=True)["quantity"].sum()
    df = df[df["quantity"] != 0].reset_index(drop=True)
    if df.empty:
        return pd.DataFrame(columns=COLUMNS)
    iid = df["instrument_id"]
    df["venue"] = ins.loc[iid, "venue"].astype(str).to_numpy(dtype=object)
    settle_inverse = ins.loc[iid, "settlement"].astype(str).to_numpy() == "inverse"
    kind = ins.loc[iid, "kind"].astype(str).to_numpy()
    cs = ins.loc[iid, "contract_size"].to_numpy(np.float64)
    mark = mk.loc[iid, "underlying_price"].to_numpy(np.float64)
    q = df["quantity"].to_numpy()
    # USD notional: inverse futures/perpetuals are USD per contract; everything else coins per contract
    inv_usd = settle_inverse & (kind != "option")
    notional = np.abs(q) * np.where(inv_usd, cs, cs * mark)
    ep = entry_prices if entry_prices is not None else _entry_prices(book_path)
    entry = ep.reindex(pd.MultiIndex.from_arrays([df["account_id"], iid])).to_numpy(np.float64) if ep is not None \
        else np.full(len(df), np.nan)
    known = np.isfinite(entry) & (entry > 0)
    move = np.where(known, mark / np.where(known, entry, 1.0) - 1.0, 0.0)
    if (inv_usd & known).any():  # an inverse contract's USD value is fixed; its P&L in coin is N·(1/entry − 1/mark)
        move = np.where(inv_usd & known, 1.0 - np.where(known, entry, 1.0) / mark, move)
    pnl_pct = np.sign(q) * move
    # USD P&L: linear |q|·cs·(mark − entry); inverse N·(mark/entry − 1) (its coin P&L at the mark); times the side
    e = np.where(known, entry, 1.0)
    upnl = np.where(known, np.sign(q) * np.where(inv_usd, notional * (mark / e - 1.0),
                                                 np.abs(q) * cs * (mark - e)), 0.0)
    vm = venue_margin.assign(account_id=venue_margin["account_id"].astype(str), venue=venue_margin["venue"].astype(str))
    vm = vm.set_index(["account_id", "venue"])
    at = pd.MultiIndex.from_arrays([df["account_id"], df["venue"]])
    equity = vm["equity_usd"].reindex(at).to_numpy(np.float64)
    mm = vm["mm_usd"].reindex(at).to_numpy(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        lev = np.where(equity > 0, notional / equity, np.inf)
        bitmex = np.where(pnl_pct > 0, pnl_pct * lev, np.where(np.isinf(lev), 0.0, pnl_pct / lev))
        bitmex = np.where(np.isinf(lev) & (pnl_pct >= 0), np.inf, bitmex)
        wallet = np.nan_to_num(equity)
        bpct = np.maximum(0.0, upnl) / np.maximum(1.0, wallet)
        eq_b = wallet + upnl
        mratio = np.where(eq_b > 0, np.nan_to_num(mm) / np.where(eq_b > 0, eq_b, 1.0), 0.0)
    binance = bpct * mratio
    # no entry price: the P&L factor is unknown, so the queue orders by leverage (margin ratio) alone
    bitmex = np.where(known, bitmex, lev)
    binance = np.where(known, binance, mratio)
    side = np.where(q > 0, "long", "short").astype(object)
    group = df["venue"].astype(str) + "|" + iid.astype(str) + "|" + pd.Series(side)
    out = pd.DataFrame({
        "account_id": df["account_id"], "venue": df["venue"], "instrument_id": iid, "side": side, "quantity": q,
        "notional_usd": notional, "pnl_known": known, "upnl_usd": upnl, "pnl_pct": pnl_pct,
        "effective_leverage": lev, "bitmex_score": bitmex,
        "bitmex_light": _light(pd.Series(bitmex), group), "binance_score": binance,
        "binance_light": _light(pd.Series(binance), group),
    })
    out["okx_adl"] = out["bitmex_light"]
    out["method"] = out["venue"].map(VENUE_METHOD).fillna("bitmex (no published formula)").astype(object)
    if accounts is not None:
        out = out[out["account_id"].isin(set(map(str, accounts)))]
    return out[COLUMNS].reset_index(drop=True)


__all__ = ["COLUMNS", "adl_ranks"]
