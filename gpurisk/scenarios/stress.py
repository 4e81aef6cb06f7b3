"""Named stress scenarios: real episodes measured from ``datasets/`` and hypothetical shocks.

Episodes are the joint close-to-close moves of every coin from the close of
``start`` to the close of ``end`` (daily bars, UTC):

=================  ==========  ==========  =========================================
id                 start       end         what
=================  ==========  ==========  =========================================
covid_2020_03_12   2020-03-11  2020-03-12  COVID crash day (BTC −39.5 % close-to-close)
crash_2021_05_19   2021-05-18  2021-05-19  May 2021 deleveraging day
luna_2022_05       2022-05-04  2022-05-12  Terra/LUNA collapse, 8 sessions
ftx_2022_11        2022-11-06  2022-11-09  FTX collapse, 3 sessions
=================  ==========  ==========  =========================================

The moves are applied as instantaneous shocks (``horizon_days`` of the set,
default 0), not over the episode's length.

- **Coin not yet listed** (SOL before 2020-08-11): BTC's log move over the window
  × the coin's vol ratio, i.e. the coin's realised daily vol over its first 365
  days of history / BTC's realised vol over the same days.
- **Vol shocks** (relative): BTC DVOL over the window, v = DVOL_end/DVOL_start − 1,
  the same for every coin × ``vol_beta`` in log terms (default 1.0, as in
  historical.py). Before DVOL exists (2021-03-24) the proxy is each coin's 30-day
  realised vol at the window end over the one at the window start, − 1.
- **USDT** is an underlying of the set so a de-peg can be expressed; in the
  episodes it is unshocked (there is no USDT price history in the data).

Hypothetical shocks: ``crash_30`` (every coin −30 %), ``vol_spike_50`` (+50 %
relative vol), ``vol_spike_abs_25`` (+25 vol points, absolute mode) and
``usdt_depeg_10`` (USDT −10 %, nothing else).

Users add their own with ``stress_from_definition(dict)`` / ``stress_from_toml(path)``
(format in docs/data-format.md ("Scenario sets")) or a scenario file (``read_scenarios``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..book import STABLECOINS
from ..errors import ScenarioError
from ..fileio import read_toml
from ..marketdata import COINS, daily_closes, dvol
from ..pricing import VOL_ABSOLUTE, VOL_MODE_CODES, VOL_RELATIVE
from .scenario_set import ScenarioSet


@dataclass(frozen=True)
class Episode:
    """A historical stress window: close of ``start`` to close of ``end`` (UTC dates)."""

    id: str
    start: str
    end: str
    label: str


EPISODES = (
    Episode("covid_2020_03_12", "2020-03-11", "2020-03-12", "COVID crash, 2020-03-12"),
    Episode("crash_2021_05_19", "2021-05-18", "2021-05-19", "May 2021 crash, 2021-05-19"),
    Episode("luna_2022_05", "2022-05-04", "2022-05-12", "Terra/LUNA collapse, 2022-05-04..12"),
    Episode("ftx_2022_11", "2022-11-06", "2022-11-09", "FTX collapse, 2022-11-06..09"),
)

#: the stablecoin a de-peg shocks
DEPEG_COIN = "USDT"
#: days of early history used for a coin's proxy vol ratio
PROXY_RATIO_DAYS = 365
#: days of the realised-vol window of the pre-DVOL vol proxy
REALISED_VOL_DAYS = 30


def _log_returns(closes: pd.DataFrame) -> pd.DataFrame:
    return np.log(closes).diff()


def proxy_ratio(coin: str, closes: pd.DataFrame) -> float:
    """Realised daily vol of ``coin`` / BTC's over the coin's first PROXY_RATIO_DAYS days of history."""
    r = _log_returns(closes[["BTC", coin]])
    first = r[coin].first_valid_index()
    win = r.loc[first:].iloc[:PROXY_RATIO_DAYS]
    return float(win[coin].std() / win["BTC"].std())


def episode_moves(ep: Episode, coins=COINS, closes: pd.DataFrame | None = None, vol_beta: float = 1.0):
    """(price_shock [U], vol_shock [U], notes dict) of one episode for ``coins``."""
    closes = daily_closes(tuple(dict.fromkeys(("BTC",) + tuple(coins)))) if closes is None else closes
    a, b = pd.Timestamp(ep.start), pd.Timestamp(ep.end)
    for d in (a, b):
        if d not in closes.index or not np.isfinite(closes.loc[d, "BTC"]):
            raise ScenarioError(f"stress episode {ep.id}: no BTC close on {d.date()} in the data")
    logmove = np.log(closes.loc[b] / closes.loc[a])
    btc = float(logmove["BTC"])
    price, vol, proxied = [], [], []
    dv = dvol()
    have_dvol = a in dv.index and b in dv.index
    dlog = float(np.log(dv.loc[b] / dv.loc[a])) if have_dvol else math.nan
    r = _log_returns(closes)
    for c in coins:
        m = float(logmove[c]) if c in logmove.index else math.nan
        if not math.isfinite(m):
            m = btc * proxy_ratio(c, closes)
            proxied.append(c)
        price.append(math.expm1(m))
        if have_dvol:
            vol.append(math.expm1((1.0 if c == "BTC" else vol_beta) * dlog))
        else:
            src = c if c not in proxied else "BTC"
            rv_end = r[src].loc[:b].iloc[-REALISED_VOL_DAYS:].std()
            rv_start = r[src].loc[:a].iloc[-REALISED_VOL_DAYS:].std()
            vol.append(float(rv_end / rv_start - 1.0))
    notes = {"proxied": proxied, "vol_source": "dvol" if have_dvol else "realised-vol proxy"}
    return np.array(price), np.array(vol), notes


def _hypothetical(coins):
    """(id, label, price {coin: s}, vol {coin: v}, mode) of the built-in hypothetical shocks."""
    return (
        ("crash_30", "uniform crash: every coin -30 %", {c: -0.30 for c in coins}, {}, VOL_RELATIVE),
        ("vol_spike_50", "vol spike: +50 % relative", {}, {c: 0.50 for c in coins}, VOL_RELATIVE),
        ("vol_spike_abs_25", "vol spike: +25 vol points", {}, {c: 0.25 for c in coins}, VOL_ABSOLUTE),
        ("usdt_depeg_10", "stablecoin de-peg: USDT -10 %", {DEPEG_COIN: -0.10}, {}, VOL_RELATIVE),
    )


def named_stress(
    coins=COINS,
    episodes=EPISODES,
    hypothetical: bool = True,
    horizon_days: float = 0.0,
    vol_beta: float = 1.0,
    extra: list[dict] | None = None,
) -> ScenarioSet:
    """The named stress set over ``coins`` + USDT: measured episodes, then hypothetical shocks.

    ``extra``: more scenarios in the definition form of ``stress_from_definition``.
    """
    coins = tuple(str(c) for c in coins)
    bad = [c for c in coins if c not in COINS]
    if bad:
        raise ScenarioError(f"no daily history for {bad}; have {list(COINS)}")
    unders = coins + (DEPEG_COIN,)
    closes = daily_closes(tuple(dict.fromkeys(("BTC",) + coins)))
    P, V, modes, ids, labels, notes = [], [], [], [], [], {}
    for ep in episodes:
        p, v, n = episode_moves(ep, coins, closes, vol_beta)
        P.append(np.append(p, 0.0))
        V.append(np.append(v, 0.0))
        modes.append(VOL_RELATIVE)
        ids.append(ep.id)
        labels.append(f"{ep.label} (close {ep.start} -> close {ep.end})")
        notes[ep.id] = {"start": ep.start, "end": ep.end, **n}
    if hypothetical:
        for sid, lab, pd_, vd, mode in _hypothetical(coins):
            P.append(np.array([pd_.get(u, 0.0) for u in unders]))
            V.append(np.array([vd.get(u, 0.0) for u in unders]))
            modes.append(mode)
            ids.append(sid)
            labels.append(lab)
    S = len(P)
    base = ScenarioSet(
        underlyings=unders,
        price_shock=np.array(P).reshape(S, len(unders)),
        vol_shock=np.array(V).reshape(S, len(unders)),
        vol_mode=np.array(modes, np.int8),
        weight=np.ones(S),
        pnl_factor=np.ones(S),
        label=np.array(labels, dtype=object),
        scenario_id=np.array(ids, dtype=object),
        horizon_days=float(horizon_days),
        kind="stress",
        source=(
            "named stress: episodes measured close-to-close from datasets/market/daily "
            + "; ".join(f"{e.id} {e.start}..{e.end}" for e in episodes)
            + "; vol from datasets/options/deribit_btc_dvol_daily.csv (realised-vol proxy before 2021-03-24)"
            + ("; hypothetical crash_30, vol_spike_50, vol_spike_abs_25, usdt_depeg_10" if hypothetical else "")
        ),
        metadata={"episodes": notes},
    )
    if extra:
        named = _named_underlyings(extra)
        more = stress_from_definition(
            {"horizon_days": horizon_days, "scenario": list(extra)},
            underlyings=unders + tuple(u for u in STABLECOINS if u in named and u not in unders),
        )
        base = append_user(base, more)
    return base


def _named_underlyings(scen) -> set:
    return {u for sc in scen if isinstance(sc, dict) for col in ("price_shock", "vol_shock")
            if isinstance(sc.get(col), dict) for u in sc[col]}


def append_user(base: ScenarioSet, user: ScenarioSet) -> ScenarioSet:
    """Append user scenarios to ``base``; same horizon required.

    The result covers the union of the underlyings: a column only one side has is
    a zero shock on the other side's rows.
    """
    if float(user.horizon_days) != float(base.horizon_days):
        raise ScenarioError(
            f"user stress horizon {user.horizon_days:g}d differs from the set's {base.horizon_days:g}d"
        )
    unders = tuple(base.underlyings) + tuple(u for u in user.underlyings if u not in base.underlyings)

    def widen(sset: ScenarioSet) -> ScenarioSet:
        col = {u: i for i, u in enumerate(sset.underlyings)}
        S = sset.n_scenarios

        def pick(a):
            return np.column_stack([a[:, col[u]] if u in col else np.zeros(S) for u in unders])

        return ScenarioSet(
            underlyings=unders, price_shock=pick(sset.price_shock), vol_shock=pick(sset.vol_shock),
            vol_mode=sset.vol_mode, weight=sset.weight, pnl_factor=sset.pnl_factor, label=sset.label,
            scenario_id=sset.scenario_id, horizon_days=base.horizon_days, kind="stress", source=sset.source,
            term=base.term, metadata=sset.metadata,
        )

    return _stack(widen(base), widen(user))


def _stack(a: ScenarioSet, b: ScenarioSet) -> ScenarioSet:
    """Append b's rows to a (same underlyings, horizon, term); ids must stay unique."""
    dup = sorted(set(a.scenario_id.tolist()) & set(b.scenario_id.tolist()))
    if dup:
        raise ScenarioError(f"stress scenario id(s) {dup} defined twice")
    return ScenarioSet(
        underlyings=a.underlyings,
        price_shock=np.vstack([a.price_shock, b.price_shock]),
        vol_shock=np.vstack([a.vol_shock, b.vol_shock]),
        vol_mode=np.concatenate([a.vol_mode, b.vol_mode]).astype(np.int8),
        weight=np.concatenate([a.weight, b.weight]),
        pnl_factor=np.concatenate([a.pnl_factor, b.pnl_factor]),
        label=np.concatenate([a.label, b.label]).astype(object),
        scenario_id=np.concatenate([a.scenario_id, b.scenario_id]).astype(object),
        horizon_days=a.horizon_days,
        kind=a.kind,
        source=a.source + f"; plus {b.n_scenarios} user-defined scenario(s)",
        term=a.term,
        metadata=a.metadata,
    )


def _num(x, where) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ScenarioError(f"{where}: {x!r} is not a number") from None
    if not math.isfinite(v):
        raise ScenarioError(f"{where}: {x!r} is not a finite number")
    return v


def stress_from_definition(defn: dict, underlyings=None, where: str = "stress definition") -> ScenarioSet:
    """User stress scenarios from a dict (the parsed TOML form; see docs/data-format.md ("Scenario sets")).

    ``{"horizon_days": 0, "scenario": [{"id", "label", "price_shock": {coin: s, "*": s},
    "vol_shock": {...}, "vol_mode", "weight", "pnl_factor"}, ...]}``; ``"*"`` is the
    shock of every coin not named (stablecoins only move when named). Underlyings default to
    COINS + USDT + any other stablecoin the scenarios name.
    """
    from .io import KNOWN_UNDERLYINGS

    if not isinstance(defn, dict):
        raise ScenarioError(f"{where}: must be a table/dict")
    scen = defn.get("scenario", defn.get("scenarios"))
    if not isinstance(scen, list) or not scen:
        raise ScenarioError(f"{where}: needs a non-empty list 'scenario' ([[scenario]] tables in TOML)")
    if underlyings is None:  # the coins, USDT, and any other stablecoin a scenario names
        named = _named_underlyings(scen)
        underlyings = tuple(COINS) + (DEPEG_COIN,) + tuple(u for u in STABLECOINS if u in named and u != DEPEG_COIN)
    unders = tuple(underlyings)
    h = _num(defn.get("horizon_days", 0.0), f"{where}: horizon_days")
    if h < 0:
        raise ScenarioError(f"{where}: horizon_days must be >= 0")
    P, V, modes, w, f, ids, labels = [], [], [], [], [], [], []
    for k, sc in enumerate(scen, start=1):
        at = f"{where}: scenario {k}"
        if not isinstance(sc, dict):
            raise ScenarioError(f"{at}: must be a table/dict")
        sid = str(sc.get("id", "")).strip()
        if not sid:
            raise ScenarioError(f"{at}: missing 'id'")
        at = f"{where}: scenario {sid!r}"
        if sid in ids:
            raise ScenarioError(f"{at}: id defined twice")
        rows = []
        for col in ("price_shock", "vol_shock"):
            spec = sc.get(col, {})
            if isinstance(spec, (int, float)):
                spec = {"*": spec}
            if not isinstance(spec, dict):
                raise ScenarioError(f"{at}, {col}: must be a number or a table {{coin = shock}}")
            unknown = [c for c in spec if c != "*" and c not in KNOWN_UNDERLYINGS]
            if unknown:
                raise ScenarioError(f"{at}, {col}: unknown underlying(s) {unknown}; known {list(KNOWN_UNDERLYINGS)}")
            outside = [c for c in spec if c != "*" and c not in unders]
            if outside:
                raise ScenarioError(f"{at}, {col}: underlying(s) {outside} not in this set {list(unders)}")
            default = _num(spec.get("*", 0.0), f"{at}, {col}['*']")
            rows.append(np.array([_num(spec.get(u, 0.0 if u in STABLECOINS else default), f"{at}, {col}[{u!r}]")
                                  for u in unders]))
        if (rows[0] <= -1.0).any():
            u = unders[int(np.argmax(rows[0] <= -1.0))]
            raise ScenarioError(f"{at}, price_shock[{u!r}]: a move of -100 % or worse; must be > -1")
        mode = str(sc.get("vol_mode", "relative")).lower()
        if mode not in VOL_MODE_CODES:
            raise ScenarioError(f"{at}, vol_mode: unknown {mode!r}; use one of {sorted(VOL_MODE_CODES)}")
        wt = _num(sc.get("weight", 1.0), f"{at}, weight")
        if wt < 0:
            raise ScenarioError(f"{at}, weight: must be >= 0")
        P.append(rows[0])
        V.append(rows[1])
        modes.append(VOL_MODE_CODES[mode])
        w.append(wt)
        f.append(_num(sc.get("pnl_factor", 1.0), f"{at}, pnl_factor"))
        ids.append(sid)
        labels.append(str(sc.get("label", sid)))
    return ScenarioSet(
        underlyings=unders,
        price_shock=np.array(P),
        vol_shock=np.array(V),
        vol_mode=np.array(modes, np.int8),
        weight=np.array(w),
        pnl_factor=np.array(f),
        label=np.array(labels, dtype=object),
        scenario_id=np.array(ids, dtype=object),
        horizon_days=h,
        kind="stress",
        source=str(defn.get("source", f"user-defined stress ({where})")),
    )


def read_stress_definition(path) -> dict:
    """The parsed TOML stress definition at ``path`` (a dict with a ``scenario`` list)."""
    path = Path(path)
    defn = read_toml(path, "stress definition", ScenarioError)
    defn.setdefault("source", f"user-defined stress from {path.name}")
    return defn


def stress_from_toml(path) -> ScenarioSet:
    """User stress scenarios from a TOML file (``[[scenario]]`` tables)."""
    return stress_from_definition(read_stress_definition(path), where=str(path))


__all__ = ["Episode", "EPISODES", "named_stress", "append_user", "episode_moves", "proxy_ratio", "stress_from_definition",
           "stress_from_toml", "read_stress_definition", "DEPEG_COIN"]
