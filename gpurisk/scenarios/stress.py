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
from ..market import COINS, market_store
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


def episode_moves(ep: Episode, coins=COINS, closes: pd.DataFrame | None = None, vol_beta: float = 1.0,
                  market=None):
    """(price_shock [U], vol_shock [U], notes dict) of one episode for ``coins``; closes and DVOL from
    ``market`` (a ``gpurisk.market`` store, a folder, or None for the default store) unless ``closes`` is given."""
    store = market_store(market)
    closes = store.daily_closes(tuple(dict.fromkeys(("BTC",) + tuple(coins)))) if closes is None else closes
    a, b = pd.Timestamp(ep.start), pd.Timestamp(ep.end)
    for d in (a, b):
        if d not in closes.index or not np.isfinite(closes.loc[d, "BTC"]):
            raise ScenarioError(f"stress episode {ep.id}: no BTC close on {d.date()} in the data")
    logmove = np.log(closes.loc[b] / closes.loc[a])
    btc = float(logmove["BTC"])
    price, vol, proxied = [], [], []
    dv = store.dvol()
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
    market=None,
    as_of=None,
) -> ScenarioSet:
    """The named stress set over ``coins`` + USDT: measured episodes, then hypothetical shocks.

    ``extra``: more scenarios in the definition form of ``stress_from_definition``. History comes from
    ``market`` (a ``gpurisk.market`` store, a folder, or None for the default store) as known at ``as_of``
    (all of it when None): an episode that is not in that history (not yet happened at ``as_of``, or outside
    the folder's dates) is left out and named in ``metadata["episodes_left_out"]``.
    """
    coins = tuple(str(c) for c in coins)
    store = market_store(market)
    bad = [c for c in coins if not store.has_daily(c)]
    if bad:
        raise ScenarioError(f"no daily history for {bad} in {store.name}; have {list(store.coins())}")
    unders = coins + (DEPEG_COIN,)
    closes = store.daily_closes(tuple(dict.fromkeys(("BTC",) + coins)), as_of=as_of)
    btc_known = closes["BTC"].dropna().index
    left_out = {ep.id: "not in the history known at the as-of time" for ep in episodes
                if not (pd.Timestamp(ep.start) in btc_known and pd.Timestamp(ep.end) in btc_known)}
    episodes = tuple(ep for ep in episodes if ep.id not in left_out)
    P, V, modes, ids, labels, notes = [], [], [], [], [], {}
    for ep in episodes:
        p, v, n = episode_moves(ep, coins, closes, vol_beta, store)
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
            f"named stress: episodes measured close-to-close from the daily closes of {store.name} "
            + ("; ".join(f"{e.id} {e.start}..{e.end}" for e in episodes) or "(none in the history)")
            + "; vol from BTC DVOL (realised-vol proxy before 2021-03-24)"
            + ("; hypothetical crash_30, vol_spike_50, vol_spike_abs_25, usdt_depeg_10" if hypothetical else "")
        ),
        metadata={"episodes": notes, "episodes_left_out": left_out},
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


# --------------------------------------------------------------------------- stress families
#
# The families of a stress run (``gpurisk stress --scenarios FAMILY``), each a ScenarioSet whose
# scenario ids start with ``<family>:``. Every family covers the requested coins plus both
# stablecoins (USDT, USDC), so one book maps onto every family. Sources: docs/methodologies.md
# ("Stress testing").

#: the stress families, in report order
FAMILIES = ("historical", "hypothetical", "squeeze", "flash", "depeg", "grid")
#: the stablecoins a de-peg shocks
DEPEG_COINS = ("USDT", "USDC")
#: de-peg sizes (relative moves)
DEPEG_MOVES = (-0.05, -0.10, -0.20)
#: hypothetical uniform moves, per coin and all coins together
HYPOTHETICAL_MOVES = (-0.50, -0.30, -0.20, -0.10, 0.10, 0.20, 0.30, 0.50)
#: hypothetical vol shocks (relative): up, down
HYPOTHETICAL_VOL = (("vol_up_50", 0.50), ("vol_down_30", -0.30))
#: measured squeezes: the largest close-to-close rise over these windows (days), per coin
SQUEEZE_WINDOWS = (1, 2)
#: hypothetical squeezes: (id, label, move of BTC/ETH, move of the other coins, relative vol shock)
SQUEEZE_HYPOTHETICAL = (
    ("alt_squeeze_100", "alt squeeze: alt coins +100 %, BTC/ETH +25 %, vol +50 %", 0.25, 1.00, 0.50),
    ("all_up_100", "every coin +100 %, vol +50 %", 1.00, 1.00, 0.50),
)
#: measured flash crashes: the largest high-to-low ranges of single 4-hour bars, per coin with 4-hour history
FLASH_TOP = 5
#: coins with 4-hour history (datasets/market/4h)
FLASH_COINS = ("BTC", "ETH")
#: hypothetical intraday wicks: (id, move of BTC/ETH, move of the other coins)
FLASH_HYPOTHETICAL = (("wick_alt_50", -0.10, -0.50), ("wick_alt_60", -0.15, -0.60), ("wick_alt_70", -0.20, -0.70))
#: the major coins of the hypothetical alt-coin moves
MAJORS = ("BTC", "ETH")


def _family_coins(coins) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(coins without stablecoins, underlyings = coins + USDT + USDC)."""
    cs = tuple(dict.fromkeys(str(c) for c in coins if str(c) not in STABLECOINS))
    if not cs:
        cs = ("BTC",)
    return cs, cs + DEPEG_COINS


def fallback_ratio(closes: pd.DataFrame) -> float:
    """Log-move multiple for a coin without shipped history: the median ``proxy_ratio`` of the shipped alt coins."""
    alts = [c for c in closes.columns if c != "BTC"]
    return float(np.median([proxy_ratio(c, closes) for c in alts])) if alts else 1.0


def _all_closes(market=None, as_of=None) -> pd.DataFrame:
    """Daily closes of every coin the history holds, as known at ``as_of`` (the fallback ratio is measured on all
    the alt coins)."""
    store = market_store(market)
    return store.daily_closes(tuple(c for c in COINS if store.has_daily(c)), as_of=as_of)


def _joint_moves(coins, logmove_of: dict, btc_log: float, closes: pd.DataFrame, market=None,
                 as_of=None) -> tuple[np.ndarray, list]:
    """[len(coins)] relative moves: a coin's own log move where known, else BTC's × its proxy ratio."""
    out, proxied = [], []
    fb = None
    for c in coins:  # a handful of coins
        m = logmove_of.get(c, math.nan)
        if not math.isfinite(m):
            if c in closes.columns and closes[c].notna().any():
                m = btc_log * proxy_ratio(c, closes)
            else:
                fb = fallback_ratio(_all_closes(market, as_of)) if fb is None else fb
                m = btc_log * fb
            proxied.append(c)
        out.append(math.expm1(m))
    return np.array(out), proxied


def _family_set(family: str, unders, P, V, modes, ids, labels, horizon_days, source, metadata=None,
                term=None) -> ScenarioSet:
    S = len(ids)
    kw = {} if term is None else {"term": term}
    return ScenarioSet(
        underlyings=tuple(unders),
        price_shock=np.asarray(P, dtype=np.float64).reshape(S, len(unders)),
        vol_shock=np.asarray(V, dtype=np.float64).reshape(S, len(unders)),
        vol_mode=np.asarray(modes, np.int8),
        weight=np.ones(S),
        pnl_factor=np.ones(S),
        label=np.asarray(labels, dtype=object),
        scenario_id=np.asarray([f"{family}:{i}" for i in ids], dtype=object),
        horizon_days=float(horizon_days),
        kind="stress",
        source=source,
        metadata={"family": family, **(metadata or {})},
        **kw,
    )


def _history_closes(coins, market=None, as_of=None) -> pd.DataFrame:
    """Daily closes of BTC and the ``coins`` the history holds, as known at ``as_of`` (all of it when None)."""
    store = market_store(market)
    known = tuple(c for c in coins if store.has_daily(c))
    return store.daily_closes(tuple(dict.fromkeys(("BTC",) + known)), as_of=as_of)


def historical_family(coins, horizon_days: float = 0.0, vol_beta: float = 1.0, market=None,
                      as_of=None) -> ScenarioSet:
    """The named episodes (``EPISODES``), measured close-to-close from the daily history known at ``as_of``;
    an episode not yet in that history is left out (``metadata["episodes_left_out"]``)."""
    cs, unders = _family_coins(coins)
    closes = _history_closes(cs, market, as_of)
    known = tuple(c for c in cs if c in COINS)
    btc_known = closes["BTC"].dropna().index
    left_out = {ep.id: "not in the history known at the as-of time" for ep in EPISODES
                if not (pd.Timestamp(ep.start) in btc_known and pd.Timestamp(ep.end) in btc_known)}
    P, V, ids, labels, notes = [], [], [], [], {}
    for ep in EPISODES:
        if ep.id in left_out:
            continue
        p, v, n = episode_moves(ep, ("BTC",) + known, closes, vol_beta, market)
        lm = {c: math.log1p(x) for c, x in zip(("BTC",) + known, p)}
        moves, proxied = _joint_moves(cs, lm, lm["BTC"], closes, market, as_of)
        vol_of = dict(zip(("BTC",) + known, v))
        vols = np.array([vol_of.get(c, vol_of["BTC"]) for c in cs])
        P.append(np.concatenate([moves, np.zeros(len(DEPEG_COINS))]))
        V.append(np.concatenate([vols, np.zeros(len(DEPEG_COINS))]))
        ids.append(ep.id)
        labels.append(f"{ep.label} (close {ep.start} -> close {ep.end})")
        notes[ep.id] = {"start": ep.start, "end": ep.end, **n, "proxied": sorted(set(n["proxied"]) | set(proxied))}
    return _family_set("historical", unders, P, V, [VOL_RELATIVE] * len(ids), ids, labels, horizon_days,
                       "historical episodes measured close-to-close from datasets/market/daily; vol from "
                       "datasets/options/deribit_btc_dvol_daily.csv (realised-vol proxy before 2021-03-24)",
                       {"episodes": notes, "episodes_left_out": left_out})


def hypothetical_family(coins, horizon_days: float = 0.0, market=None, as_of=None) -> ScenarioSet:
    """Uniform moves of ±10/20/30/50 % per coin and all coins together, and vol up / down."""
    cs, unders = _family_coins(coins)
    U = len(unders)
    P, V, modes, ids, labels = [], [], [], [], []
    for target in cs + ("all",):
        for m in HYPOTHETICAL_MOVES:
            row = np.zeros(U)
            if target == "all":
                row[: len(cs)] = m
            else:
                row[cs.index(target)] = m
            P.append(row)
            V.append(np.zeros(U))
            modes.append(VOL_RELATIVE)
            ids.append(f"{target}_{m:+.0%}")
            labels.append(f"{'every coin' if target == 'all' else target} {m:+.0%}")
    for sid, v in HYPOTHETICAL_VOL:
        P.append(np.zeros(U))
        row = np.zeros(U)
        row[: len(cs)] = v
        V.append(row)
        modes.append(VOL_RELATIVE)
        ids.append(sid)
        labels.append(f"implied vols {v:+.0%} (relative), every coin")
    return _family_set("hypothetical", unders, P, V, modes, ids, labels, horizon_days,
                       "hypothetical uniform moves ±10/20/30/50 % per coin and all together; vol +50 % / −30 %")


def _largest_rise_windows(closes: pd.DataFrame, coin: str, days: int) -> tuple[pd.Timestamp, pd.Timestamp, float]:
    """(start, end, log rise) of ``coin``'s largest close-to-close rise over ``days`` days."""
    lr = np.log(closes[coin]).diff(days)
    end = lr.idxmax()
    return end - pd.Timedelta(days=days), end, float(lr.loc[end])


def squeeze_family(coins, horizon_days: float = 0.0, vol_beta: float = 1.0, market=None, as_of=None) -> ScenarioSet:
    """Upward moves that stress shorts: each coin's largest 1- and 2-day rise in the daily history known at
    ``as_of`` (every coin's move over the same window, jointly), plus hypothetical squeezes (``SQUEEZE_HYPOTHETICAL``)."""
    cs, unders = _family_coins(coins)
    closes = _history_closes(cs, market, as_of)
    known = tuple(c for c in cs if c in COINS)
    U = len(unders)
    P, V, modes, ids, labels, notes, seen = [], [], [], [], [], {}, set()
    for c in known:
        for days in SQUEEZE_WINDOWS:
            a, b, rise = _largest_rise_windows(closes, c, days)
            if (a, b) in seen:
                continue
            seen.add((a, b))
            ep = Episode(f"{c}_{days}d_{b.date()}", str(a.date()), str(b.date()), "")
            p, v, n = episode_moves(ep, ("BTC",) + known, closes, vol_beta, market)
            lm = {k: math.log1p(x) for k, x in zip(("BTC",) + known, p)}
            moves, proxied = _joint_moves(cs, lm, lm["BTC"], closes, market, as_of)
            vol_of = dict(zip(("BTC",) + known, v))
            P.append(np.concatenate([moves, np.zeros(len(DEPEG_COINS))]))
            V.append(np.concatenate([np.array([vol_of.get(k, vol_of["BTC"]) for k in cs]), np.zeros(len(DEPEG_COINS))]))
            modes.append(VOL_RELATIVE)
            ids.append(ep.id)
            labels.append(f"{c} largest {days}-day rise ({math.expm1(rise):+.1%}), close {ep.start} -> close {ep.end}")
            notes[ep.id] = {"coin": c, "days": days, "start": ep.start, "end": ep.end, "rise": math.expm1(rise),
                            **n, "proxied": sorted(set(n["proxied"]) | set(proxied))}
    for sid, lab, major, alt, v in SQUEEZE_HYPOTHETICAL:
        row = np.zeros(U)
        for j, c in enumerate(cs):
            row[j] = major if c in MAJORS else alt
        P.append(row)
        vrow = np.zeros(U)
        vrow[: len(cs)] = v
        V.append(vrow)
        modes.append(VOL_RELATIVE)
        ids.append(sid)
        labels.append(lab)
    return _family_set("squeeze", unders, P, V, modes, ids, labels, horizon_days,
                       "squeezes: each coin's largest 1- and 2-day close-to-close rise in datasets/market/daily "
                       "(joint moves of every coin over the same window), plus hypothetical squeezes",
                       {"squeezes": notes})


def _bars_4h(coin: str, market=None, as_of=None) -> pd.DataFrame:
    return market_store(market).intraday_bars(coin, "4h", as_of=as_of)


def flash_wicks(top: int = FLASH_TOP, market=None, as_of=None) -> pd.DataFrame:
    """The largest single-bar high-to-low ranges of the 4-hour history: columns ``bar, coin, wick`` (low/high − 1),
    ``top`` per coin of ``FLASH_COINS``, at most one per coin and calendar day, largest first."""
    rows = []
    for c in FLASH_COINS:
        b = _bars_4h(c, market, as_of)
        wick = (b["low"] / b["high"] - 1.0).rename("wick")
        w = wick.to_frame().assign(day=wick.index.normalize()).sort_values("wick", kind="stable")
        w = w.drop_duplicates("day").head(top)
        rows.append(pd.DataFrame({"bar": w.index, "coin": c, "wick": w["wick"].to_numpy()}))
    return pd.concat(rows, ignore_index=True)


def flash_family(coins, horizon_days: float = 0.0, market=None, as_of=None) -> ScenarioSet:
    """Intraday wicks as instant moves: the largest 4-hour high-to-low ranges of BTC and ETH (every coin with
    4-hour history at its own range in that bar, the others at BTC's log move × their proxy ratio), plus
    hypothetical alt-coin wicks of −50/−60/−70 % with BTC/ETH at −10/−15/−20 %. Vols unchanged."""
    cs, unders = _family_coins(coins)
    closes = _history_closes(cs, market, as_of)
    U = len(unders)
    wicks = flash_wicks(market=market, as_of=as_of)
    bars = {c: _bars_4h(c, market, as_of) for c in FLASH_COINS}
    P, V, modes, ids, labels, notes = [], [], [], [], [], {}
    for t in pd.unique(wicks["bar"]):  # at most FLASH_TOP × 2 bars
        t = pd.Timestamp(t)
        lm = {}
        for c in FLASH_COINS:
            b = bars[c]
            if t in b.index:
                lm[c] = math.log(float(b.loc[t, "low"]) / float(b.loc[t, "high"]))
        btc = lm.get("BTC", math.nan)
        if not math.isfinite(btc):
            continue
        moves, proxied = _joint_moves(cs, lm, btc, closes)
        sid = f"{t:%Y-%m-%dT%H}"
        P.append(np.concatenate([moves, np.zeros(len(DEPEG_COINS))]))
        V.append(np.zeros(U))
        modes.append(VOL_RELATIVE)
        ids.append(sid)
        labels.append(f"4-hour wick {t:%Y-%m-%d %H:%M} UTC: BTC {math.expm1(btc):+.1%}"
                      + (f", ETH {math.expm1(lm['ETH']):+.1%}" if "ETH" in lm else ""))
        notes[sid] = {"bar": str(t), **{c: math.expm1(v) for c, v in lm.items()}, "proxied": proxied}
    for sid, major, alt in FLASH_HYPOTHETICAL:
        row = np.zeros(U)
        for j, c in enumerate(cs):
            row[j] = major if c in MAJORS else alt
        P.append(row)
        V.append(np.zeros(U))
        modes.append(VOL_RELATIVE)
        ids.append(sid)
        labels.append(f"hypothetical wick: alt coins {alt:+.0%}, BTC/ETH {major:+.0%}")
    return _family_set("flash", unders, P, V, modes, ids, labels, horizon_days,
                       f"flash crashes: the {FLASH_TOP} largest high-to-low ranges of single bars per coin in "
                       "datasets/market/4h (one per day), plus hypothetical alt-coin wicks", {"wicks": notes})


def depeg_family(coins, horizon_days: float = 0.0, market=None, as_of=None) -> ScenarioSet:
    """Stablecoin de-pegs: USDT and USDC each −5/−10/−20 %, nothing else moves."""
    cs, unders = _family_coins(coins)
    U = len(unders)
    P, ids, labels = [], [], []
    for c in DEPEG_COINS:
        for m in DEPEG_MOVES:
            row = np.zeros(U)
            row[unders.index(c)] = m
            P.append(row)
            ids.append(f"{c}_{m:+.0%}")
            labels.append(f"{c} de-peg {m:+.0%}")
    return _family_set("depeg", unders, P, np.zeros((len(ids), U)), [VOL_RELATIVE] * len(ids), ids, labels,
                       horizon_days, "hypothetical stablecoin de-pegs: USDT and USDC -5/-10/-20 %")


def grid_family(coins, horizon_days: float = 0.0, market=None, as_of=None) -> ScenarioSet:
    """The venue grid: the Deribit-style risk matrix (±16 % in 9 steps × vol up/same/down, plus the extended moves
    −66 % to +500 % with vol up), every coin together and then each coin alone. Full P&L counts (no extended-table
    factor: a stress loss is the whole loss)."""
    from . import grid as _grid

    cs, unders = _family_coins(coins)
    joint = _grid.exchange_grid(cs, extended_moves=_grid.DERIBIT_EXTENDED_MOVES, term=_grid.DERIBIT_TERM,
                                horizon_days=horizon_days)
    alone = _grid.exchange_grid(cs, extended_moves=_grid.DERIBIT_EXTENDED_MOVES, term=_grid.DERIBIT_TERM,
                                per_underlying=True, horizon_days=horizon_days) if len(cs) > 1 else None
    parts = [(joint, "all")] + ([(alone, None)] if alone is not None else [])
    P, V, modes, ids, labels = [], [], [], [], []
    U = len(unders)
    for sset, tag in parts:
        S = sset.n_scenarios
        p = np.zeros((S, U))
        v = np.zeros((S, U))
        p[:, : len(cs)] = sset.price_shock
        v[:, : len(cs)] = sset.vol_shock
        P.append(p)
        V.append(v)
        modes.append(sset.vol_mode)
        if tag is not None:
            ids += [f"{tag}/{i}" for i in sset.scenario_id]
            labels += [f"every coin: {lab}" for lab in sset.label]
        else:  # ids and labels already name the coin shocked alone ("BTC:-0.1600/up")
            ids += [str(i).replace(":", "/", 1) for i in sset.scenario_id]
            labels += [f"alone: {lab}" for lab in sset.label]
    return _family_set("grid", unders, np.vstack(P), np.vstack(V), np.concatenate(modes), ids, labels, horizon_days,
                       "venue grid: Deribit-style risk matrix with the extended table, all coins together and each "
                       "alone", term=joint.term)


_BUILDERS = {
    "historical": historical_family,
    "hypothetical": hypothetical_family,
    "squeeze": squeeze_family,
    "flash": flash_family,
    "depeg": depeg_family,
    "grid": grid_family,
}


def family_set(name: str, coins, horizon_days: float = 0.0, market=None, as_of=None) -> ScenarioSet:
    """The ScenarioSet of stress family ``name`` over ``coins`` (+ USDT, USDC); ids ``<family>:<id>``.

    The measured families read ``market`` (a store, a folder, or None for the default) as known at ``as_of``
    (all of it when None): no episode, squeeze or wick after ``as_of`` is used."""
    if name not in _BUILDERS:
        raise ScenarioError(f"unknown stress family {name!r}; choose from {', '.join(FAMILIES)}")
    if float(horizon_days) < 0:
        raise ScenarioError(f"horizon_days must be >= 0, got {horizon_days}")
    try:
        return _BUILDERS[name](coins, horizon_days=float(horizon_days), market=market, as_of=as_of)
    except (KeyError, ValueError) as exc:
        raise ScenarioError(f"stress family {name}: {exc}") from None


def family_of(scenario_ids) -> np.ndarray:
    """[S] the family of each scenario id (the text before the first ``:``; ``file`` when there is none)."""
    ids = pd.Series(np.asarray(scenario_ids, dtype=object)).astype("str")
    fam = ids.str.split(":", n=1).str[0]
    return np.where(ids.str.contains(":", regex=False), fam, "file").astype(object)


def stress_families(names, coins, horizon_days: float = 0.0, market=None, as_of=None) -> ScenarioSet:
    """Several families stacked into one set (the house model's stress component can take it).

    The ``grid`` family carries its venue's vol-term parameters, so it cannot share a set with the others:
    a ScenarioError says so (run it as a set of its own).
    """
    names = tuple(dict.fromkeys(names))
    if not names:
        raise ScenarioError("no stress family named")
    sets = [family_set(n, coins, horizon_days, market, as_of) for n in names]
    if len({s.term for s in sets}) > 1:
        raise ScenarioError("the grid family uses the venue's vol-term parameters and cannot be stacked with "
                            "the other families; build it on its own (family_set('grid', ...))")
    out = sets[0]
    for nxt in sets[1:]:
        out = _stack(out, nxt)
    return replace_source(out, "stress families " + ", ".join(names), {"families": list(names)})


def replace_source(sset: ScenarioSet, source: str, metadata: dict) -> ScenarioSet:
    from dataclasses import replace as _replace

    return _replace(sset, source=source, metadata=metadata)


__all__ = ["Episode", "EPISODES", "named_stress", "append_user", "episode_moves", "proxy_ratio", "stress_from_definition",
           "stress_from_toml", "read_stress_definition", "DEPEG_COIN", "FAMILIES",
           "family_set", "family_of", "stress_families", "flash_wicks", "fallback_ratio"]
