"""``gpurisk scenarios KIND [options] --out FILE``: generate a scenario set and write it.

KIND is ``grid`` (Deribit-style risk matrix), ``span`` (CME SPAN 16), ``historical``
(filtered historical simulation), ``montecarlo`` or ``stress``. FILE ends in
``.parquet`` or ``.csv`` (docs/data-format.md ("Scenario sets")). Prints one JSON line that
describes the set.
"""

from __future__ import annotations

import json

from ..errors import ScenarioError
from ..marketdata import COINS

KINDS = ("grid", "span", "historical", "montecarlo", "stress")


def _coins(text: str | None, default) -> tuple[str, ...]:
    if not text:
        return tuple(default)
    out = tuple(t.strip().upper() for t in text.split(",") if t.strip())
    if not out:
        raise ScenarioError("--underlyings is empty")
    return out


def add_parser(subparsers):
    p = subparsers.add_parser("scenarios", help="generate a scenario set (grid, span, historical, montecarlo, stress)",
                              description=__doc__)
    p.add_argument("kind", choices=KINDS, help="generator")
    p.add_argument("--out", required=True,
                   help="output file, .parquet or .csv (CSV gets FILE.meta.json); its folder must exist")
    p.add_argument("--underlyings", help="comma-separated coins (default: BTC,ETH for grids, all coins otherwise)")
    p.add_argument("--as-of", help="UTC time; required for historical and montecarlo")
    p.add_argument("--horizon-days", type=float, help="P&L horizon in days (default 0 grids/stress, 1 otherwise)")
    p.add_argument("--per-underlying", action="store_true", help="grid/span: shock each underlying alone")
    g = p.add_argument_group("grid / span")
    g.add_argument("--price-range", type=float, default=0.16, help="price range (scan range) as a fraction")
    g.add_argument("--buckets", type=int, default=4, help="grid: price buckets per side")
    g.add_argument("--vol-up", type=float, default=0.50, help="grid: vol up shock (term-scaled)")
    g.add_argument("--vol-down", type=float, default=0.25, help="grid: vol down shock (term-scaled)")
    g.add_argument("--min-vol-up", type=float, default=0.5, help="grid: floor of an up-shocked vol")
    g.add_argument("--no-extended", action="store_true", help="grid: leave out the extended table")
    g.add_argument("--vol-range", type=float, default=0.25, help="span: vol scan range")
    g.add_argument("--vol-mode", default="relative", help="span: relative|absolute|term")
    g.add_argument("--extreme-multiple", type=float, default=3.0, help="span: extreme move in scan ranges")
    g.add_argument("--extreme-factor", type=float, default=0.33, help="span: share of the extreme P&L counted")
    h = p.add_argument_group("historical / montecarlo")
    h.add_argument("--lookback-days", type=int, help="history window (default 1000 historical, 365 montecarlo)")
    h.add_argument("--lambda", dest="ewma_lambda", type=float, default=0.94, help="EWMA decay")
    h.add_argument("--no-filter", action="store_true", help="historical: raw returns (no EWMA rescaling)")
    h.add_argument("--horizon-method", default="overlapping", help="historical: overlapping|sqrt")
    h.add_argument("--no-stress-periods", action="store_true", help="historical: do not pin 2020-03, 2022-05..11")
    h.add_argument("--n", type=int, default=10_000, help="montecarlo: number of scenarios")
    h.add_argument("--seed", type=int, default=0, help="montecarlo: random seed")
    h.add_argument("--distribution", default="gaussian", help="montecarlo: gaussian|student_t")
    h.add_argument("--dof", type=float, default=5.0, help="montecarlo: Student-t degrees of freedom")
    h.add_argument("--estimator", default="ewma", help="montecarlo: ewma|sample")
    h.add_argument("--vol-beta", type=float, default=1.0, help="vol shock of non-BTC coins per BTC DVOL log change")
    s = p.add_argument_group("stress")
    s.add_argument("--definition", help="stress: TOML file of user scenarios to append")
    s.add_argument("--only-definition", action="store_true", help="stress: only the user scenarios")
    s.add_argument("--no-hypothetical", action="store_true", help="stress: leave out crash/vol-spike/de-peg")
    p.set_defaults(func=run)
    return p


def build(args):
    """The ScenarioSet the arguments ask for."""
    from ..pricing import VolTerm
    from ..scenarios import grid, historical, montecarlo, stress

    k = args.kind
    if k in ("historical", "montecarlo") and not args.as_of:
        raise ScenarioError(f"{k} scenarios need --as-of")
    if args.as_of:
        import pandas as pd

        try:
            pd.Timestamp(args.as_of)
        except (ValueError, TypeError):
            raise ScenarioError(f"--as-of {args.as_of!r} is not a date/time") from None
    if k == "grid":
        return grid.exchange_grid(
            _coins(args.underlyings, ("BTC", "ETH")), price_range=args.price_range, buckets=args.buckets,
            vol_up=args.vol_up, vol_down=args.vol_down,
            term=VolTerm(ref_days=30.0, power_short=0.30, power_long=0.13, min_vol_up=args.min_vol_up),
            extended_moves=() if args.no_extended else grid.DERIBIT_EXTENDED_MOVES,
            per_underlying=args.per_underlying, horizon_days=args.horizon_days or 0.0,
        )
    if k == "span":
        return grid.span_grid(
            _coins(args.underlyings, ("BTC", "ETH")), price_scan_range=args.price_range, vol_scan_range=args.vol_range,
            vol_mode=args.vol_mode, extreme_multiple=args.extreme_multiple, extreme_factor=args.extreme_factor,
            per_underlying=args.per_underlying, horizon_days=args.horizon_days or 0.0,
        )
    if k == "historical":
        h = args.horizon_days if args.horizon_days is not None else 1
        if h != int(h):
            raise ScenarioError(f"--horizon-days must be a whole number for historical scenarios, got {h:g}")
        return historical.historical_scenarios(
            args.as_of, _coins(args.underlyings, COINS), horizon_days=int(h),
            lookback_days=args.lookback_days or 1000, ewma_lambda=args.ewma_lambda, filtered=not args.no_filter,
            horizon_method=args.horizon_method,
            include_periods=() if args.no_stress_periods else historical.DEFAULT_STRESS_PERIODS,
            vol_beta=args.vol_beta,
        )
    if k == "montecarlo":
        return montecarlo.monte_carlo_scenarios(
            args.as_of, n_scenarios=args.n, seed=args.seed, coins=_coins(args.underlyings, COINS),
            horizon_days=args.horizon_days if args.horizon_days is not None else 1.0,
            distribution=args.distribution, dof=args.dof, estimator=args.estimator, ewma_lambda=args.ewma_lambda,
            lookback_days=args.lookback_days or 365, vol_beta=args.vol_beta,
        )
    # stress
    if args.only_definition:
        if not args.definition:
            raise ScenarioError("--only-definition needs --definition FILE.toml")
        return stress.stress_from_toml(args.definition)
    extra, horizon = None, args.horizon_days or 0.0
    if args.definition:
        defn = stress.read_stress_definition(args.definition)
        extra = defn.get("scenario")
        if not isinstance(extra, list) or not extra:
            raise ScenarioError(f"{args.definition}: needs [[scenario]] tables")
        if args.horizon_days is None:
            horizon = float(defn.get("horizon_days", 0.0))
    return stress.named_stress(_coins(args.underlyings, COINS), hypothetical=not args.no_hypothetical,
                               horizon_days=horizon, vol_beta=args.vol_beta, extra=extra)


def run(args) -> int:
    from ..scenarios.io import write_scenarios
    from .outpath import out_file

    out_file(args.out, ScenarioError)  # the file may be created; its parent folder must exist
    sset = build(args)
    try:
        path = write_scenarios(sset, args.out)
    except OSError as exc:
        raise ScenarioError(f"{args.out}: cannot write the scenario file ({exc.strerror or exc})") from None
    d = sset.describe()
    d.pop("metadata", None)
    d["out"] = str(path)
    print(json.dumps(d, default=str))
    return 0
