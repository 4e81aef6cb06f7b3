"""The one registry of scenario generators: their names, options, defaults and how to call them.

``gpurisk scenarios KIND --option ...`` and a job file's ``{generator = "KIND", option = ...}``
read the same table: an option ``lookback_days`` is the job-file key ``lookback_days`` and the
CLI flag ``--lookback-days`` (booleans: ``--extended`` / ``--no-extended``). docs/data-format.md
("Scenario generators") lists them all.

``generate(kind, options, market=...)`` checks every option (unknown name, wrong type, bad choice) with
a one-line ``ScenarioError`` naming it, fills the defaults and calls the generator; the generators that
read history (``Generator.reads_history``) read it from ``market`` (a ``gpurisk.market`` store, a
folder, or None for the default store), which ``build`` finds as ``options["market"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd

from ..errors import ScenarioError
from ..market import COINS
from ..pricing import VolTerm
from .scenario_set import ScenarioSet

REQUIRED = object()


@dataclass(frozen=True)
class Option:
    """One generator option: its name (job key; CLI flag with ``-`` for ``_``), type, default and help.

    type: ``float``, ``int``, ``bool``, ``str``, ``coins`` (a list of coin names, or a comma-separated
    string), ``time`` (an ISO-8601 UTC time) or ``path``.
    """

    name: str
    type: str
    default: Any
    help: str
    choices: tuple = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Generator:
    """A named scenario generator."""

    name: str
    summary: str
    options: tuple[Option, ...]
    build: Callable[[dict], ScenarioSet]
    reads_history: bool = False  # its build reads options["market"] (gpurisk scenarios KIND --market-data DIR)

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)


def _underlyings(default):
    return Option("underlyings", "coins", tuple(default), "coins to shock (default: " + ",".join(default) + ")")


def _horizon(default):
    return Option("horizon_days", "float", default, "P&L horizon in days (time decay of options)")


def _grid(o: dict) -> ScenarioSet:
    from . import grid

    return grid.exchange_grid(
        o["underlyings"], price_range=o["price_range"], buckets=o["buckets"], vol_up=o["vol_up"],
        vol_down=o["vol_down"],
        term=VolTerm(ref_days=30.0, power_short=0.30, power_long=0.13, min_vol_up=o["min_vol_up"]),
        extended_moves=grid.DERIBIT_EXTENDED_MOVES if o["extended"] else (),
        per_underlying=o["per_underlying"], horizon_days=o["horizon_days"],
    )


def _span(o: dict) -> ScenarioSet:
    from . import grid

    return grid.span_grid(
        o["underlyings"], price_scan_range=o["price_range"], vol_scan_range=o["vol_range"], vol_mode=o["vol_mode"],
        extreme_multiple=o["extreme_multiple"], extreme_factor=o["extreme_factor"],
        per_underlying=o["per_underlying"], horizon_days=o["horizon_days"],
    )


def _historical(o: dict) -> ScenarioSet:
    from . import historical

    h = o["horizon_days"]
    if h != int(h) or h < 1:
        raise ScenarioError(f"horizon_days must be a whole number of days ≥ 1 for historical scenarios, got {h:g}")
    return historical.historical_scenarios(
        o["as_of"], o["underlyings"], horizon_days=int(h), lookback_days=o["lookback_days"],
        ewma_lambda=o["ewma_lambda"], filtered=o["filter"], horizon_method=o["horizon_method"],
        include_periods=historical.DEFAULT_STRESS_PERIODS if o["stress_periods"] else (), vol_beta=o["vol_beta"],
        market=o.get("market"),
    )


def _montecarlo(o: dict) -> ScenarioSet:
    from . import montecarlo  # JAX: imported only when drawn

    return montecarlo.monte_carlo_scenarios(
        o["as_of"], n_scenarios=o["n_scenarios"], seed=o["seed"], coins=o["underlyings"],
        horizon_days=o["horizon_days"], distribution=o["distribution"], dof=o["dof"], estimator=o["estimator"],
        ewma_lambda=o["ewma_lambda"], lookback_days=o["lookback_days"], vol_beta=o["vol_beta"],
        market=o.get("market"),
    )


def _stress(o: dict) -> ScenarioSet:
    from . import stress

    if o["families"]:
        names = tuple(f.strip().lower() for f in o["families"].split(",") if f.strip())
        base = stress.stress_families(names, o["underlyings"], o["horizon_days"], market=o.get("market"),
                                      as_of=o["as_of"] or None)
        if not o["definition"]:
            return base
        return stress.append_user(base, stress.stress_from_toml(o["definition"]))
    if o["only_definition"]:
        if not o["definition"]:
            raise ScenarioError("only_definition needs a definition file (--definition FILE.toml)")
        return stress.stress_from_toml(o["definition"])
    extra = None
    if o["definition"]:
        defn = stress.read_stress_definition(o["definition"])
        extra = defn.get("scenario")
        if not isinstance(extra, list) or not extra:
            raise ScenarioError(f"{o['definition']}: needs [[scenario]] tables")
    return stress.named_stress(o["underlyings"], hypothetical=o["hypothetical"], horizon_days=o["horizon_days"],
                               vol_beta=o["vol_beta"], extra=extra, market=o.get("market"), as_of=o["as_of"] or None)


_PER_UNDERLYING = Option("per_underlying", "bool", False, "shock each underlying alone")
_VOL_BETA = Option("vol_beta", "float", 1.0, "vol shock of non-BTC coins per BTC DVOL log change")
_AS_OF = Option("as_of", "time", REQUIRED, "UTC as-of time; only history known then is used")
_LAMBDA = Option("ewma_lambda", "float", 0.94, "EWMA decay of the volatility estimate")

#: the one table of scenario generators
GENERATORS: dict[str, Generator] = {g.name: g for g in (
    Generator("grid", "Deribit-style risk matrix: price moves × vol up/same/down, plus the extended table", (
        _underlyings(("BTC", "ETH")), _horizon(0.0), _PER_UNDERLYING,
        Option("price_range", "float", 0.16, "largest standard price move, as a fraction"),
        Option("buckets", "int", 4, "price moves per side"),
        Option("vol_up", "float", 0.50, "relative vol up shock at 30 days (term-scaled)"),
        Option("vol_down", "float", 0.25, "relative vol down shock at 30 days (term-scaled)"),
        Option("min_vol_up", "float", 0.50, "floor of an up-shocked vol (decimal)"),
        Option("extended", "bool", True, "include the extended table (moves of −66 % to +500 %)"),
    ), _grid),
    Generator("span", "CME SPAN 16 scenarios: price and vol scan ranges, extremes at a multiple counted in part", (
        _underlyings(("BTC", "ETH")), _horizon(0.0), _PER_UNDERLYING,
        Option("price_range", "float", 0.16, "price scan range, as a fraction"),
        Option("vol_range", "float", 0.25, "vol scan range"),
        Option("vol_mode", "str", "relative", "how the vol range applies", ("relative", "absolute", "term")),
        Option("extreme_multiple", "float", 3.0, "extreme move in price scan ranges"),
        Option("extreme_factor", "float", 0.33, "share of the extreme scenarios' P&L counted"),
    ), _span),
    Generator("historical", "filtered historical simulation: EWMA-rescaled joint moves of the coins", (
        _AS_OF, _underlyings(COINS), _horizon(1.0),
        Option("lookback_days", "int", 1000, "history window in days"), _LAMBDA,
        Option("filter", "bool", True, "rescale returns by the EWMA volatility ratio (false: raw returns)"),
        Option("horizon_method", "str", "overlapping", "h-day moves", ("overlapping", "sqrt")),
        Option("stress_periods", "bool", True, "pin the 2020-03 and 2022-05..11 stress windows"), _VOL_BETA,
    ), _historical, reads_history=True),
    Generator("montecarlo", "correlated Gaussian or Student-t draws calibrated on the history", (
        _AS_OF, _underlyings(COINS), _horizon(1.0),
        Option("n_scenarios", "int", 10_000, "number of scenarios"),
        Option("seed", "int", 0, "random seed"),
        Option("distribution", "str", "gaussian", "copula", ("gaussian", "student_t")),
        Option("dof", "float", 5.0, "Student-t degrees of freedom"),
        Option("estimator", "str", "ewma", "volatility and correlation estimator", ("ewma", "sample")),
        _LAMBDA, Option("lookback_days", "int", 365, "estimation window in days"), _VOL_BETA,
    ), _montecarlo, reads_history=True),
    Generator("stress", "named historical episodes and hypothetical shocks (crash, vol spikes, de-peg)", (
        Option("as_of", "time", "", "UTC as-of time: only episodes in the history known then (default: all; a job "
                                    "gives the book's)"),
        _underlyings(COINS), _horizon(0.0),
        Option("hypothetical", "bool", True, "include the hypothetical shocks"), _VOL_BETA,
        Option("definition", "path", "", "TOML file of user scenarios to append"),
        Option("only_definition", "bool", False, "only the user scenarios of the definition file"),
        Option("families", "str", "", "comma-separated stress families (historical, hypothetical, squeeze, flash, "
                                      "depeg) instead of the named set; empty: the named set"),
    ), _stress, reads_history=True),
)}


@dataclass(frozen=True)
class Family:
    """A stress family: its name (``gpurisk stress --scenarios NAME``), one line about it and its source."""

    name: str
    summary: str
    source: str


#: the one table of stress families (``gpurisk.scenarios.stress.family_set`` builds them)
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("historical", "named episodes: COVID 2020, May 2021, LUNA 2022, FTX 2022",
           "close-to-close moves in datasets/market/daily; vol from the BTC DVOL history"),
    Family("hypothetical", "uniform moves of ±10/20/30/50 % per coin and all together; vol +50 % / −30 %",
           "hypothetical"),
    Family("squeeze", "upward moves that stress shorts: each coin's largest 1- and 2-day rise, alt squeezes",
           "largest rises in datasets/market/daily; hypothetical +25 %/+100 % squeezes"),
    Family("flash", "intraday wicks as instant moves: largest 4-hour high-to-low ranges; alt wicks −50..−70 %",
           "largest single-bar ranges in datasets/market/4h; hypothetical alt-coin wicks"),
    Family("depeg", "stablecoin de-pegs: USDT and USDC −5/−10/−20 %", "hypothetical"),
    Family("grid", "venue grid: Deribit-style risk matrix with the extended table, all coins and each alone",
           "Deribit portfolio-margin parameters (docs/methodologies.md, section 3.1)"),
)}


def family(name: str) -> Family:
    """The stress family called ``name``; ScenarioError naming the known ones otherwise."""
    if name not in FAMILIES:
        raise ScenarioError(f"unknown stress family {name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def get(kind: str) -> Generator:
    """The generator called ``kind``; ScenarioError naming the known ones otherwise."""
    if kind not in GENERATORS:
        raise ScenarioError(f"unknown scenario generator {kind!r}; choose one of {', '.join(GENERATORS)}")
    return GENERATORS[kind]


def _value(opt: Option, v, where: str):
    """``v`` checked and converted to ``opt``'s type; ScenarioError naming ``where``."""
    def bad(what):
        return ScenarioError(f"{where}{opt.name}: expected {what}, got {v!r}")

    t = opt.type
    if t == "bool":
        if not isinstance(v, bool):
            raise bad("true or false")
        return v
    if t == "int":
        if isinstance(v, bool) or not isinstance(v, int):
            raise bad("an integer")
        return v
    if t == "float":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise bad("a number")
        return float(v)
    if t == "coins":
        items = v.split(",") if isinstance(v, str) else v
        if not isinstance(items, (list, tuple)) or not all(isinstance(c, str) for c in items):
            raise bad("a list of coin names")
        coins = tuple(c.strip().upper() for c in items if c.strip())
        if not coins:
            raise bad("at least one coin")
        return coins
    if t == "time":
        if not isinstance(v, str):
            v = str(v)
        try:
            ts = pd.Timestamp(v)
        except (ValueError, TypeError):
            raise bad("an ISO-8601 date/time") from None
        if ts is pd.NaT:
            raise bad("an ISO-8601 date/time")
        return v
    if not isinstance(v, str):
        raise bad("a string")
    if opt.choices and v not in opt.choices:
        raise ScenarioError(f"{where}{opt.name}: must be one of {', '.join(opt.choices)}; got {v!r}")
    return v


def resolve(kind: str, options: dict, where: str = "") -> dict:
    """Every option of generator ``kind``: the given ones checked, the rest at their defaults.

    ``where`` prefixes messages (e.g. ``jobs/x.toml: models[0].scenarios[1].``).
    """
    gen = get(kind)
    unknown = sorted(set(options) - {o.name for o in gen.options})
    if unknown:
        raise ScenarioError(f"{where}{unknown[0]}: not an option of the {kind} generator "
                            f"(options: {', '.join(o.name for o in gen.options)})")
    out = {}
    for opt in gen.options:
        if opt.name in options and options[opt.name] is not None:
            out[opt.name] = _value(opt, options[opt.name], where)
        elif opt.default is REQUIRED:
            raise ScenarioError(f"{where}{opt.name}: the {kind} generator needs it ({opt.flag})")
        else:
            out[opt.name] = opt.default
    return out


def generate(kind: str, options: dict, where: str = "", market=None) -> ScenarioSet:
    """The ScenarioSet of generator ``kind`` with ``options`` (checked; defaults for the rest); history from
    ``market`` (a ``gpurisk.market`` store, a folder, or None for the default store)."""
    resolved = resolve(kind, options, where)
    try:
        return get(kind).build({**resolved, "market": market})
    except (KeyError, ValueError) as exc:
        raise ScenarioError(f"{where}{kind} scenarios: {exc}") from None


__all__ = ["Option", "Generator", "GENERATORS", "REQUIRED", "get", "resolve", "generate", "Family", "FAMILIES",
           "family"]
