"""``gpurisk market``: the market history store (docs/data-format.md, "Market history").

    gpurisk market import FILES... --into DIR [--symbol BTC/USDT --timeframe 1d] [--on-conflict error|keep|replace]
    gpurisk market fetch --exchange binance --symbols BTC/USDT,ETH/USDT --into DIR [--timeframe 1d] [--since DATE]
    gpurisk market init DIR [--from DIR]
    gpurisk market info [--market-data DIR] [--as-of TIME] [--coins BTC,ETH]

``import`` appends rows from CSV files of the shipped format or CCXT OHLCV JSON; ``fetch`` gets them
through ccxt's ``fetch_ohlcv`` (the optional extra ``connect``). Both follow one policy
(``gpurisk.market.importer``): duplicates are skipped, a conflicting row stops the import (nothing
written) unless ``--on-conflict keep|replace``, gaps are reported, each table is written atomically.
Exit status: 0 when every row read was added or a duplicate (conflicts resolved as asked), 1 when some
rows were rejected (the rest were imported; the rejects are listed), 2 on an error (nothing written).
``init`` copies a history folder (default: the shipped one) to start your own. ``info`` prints a
folder's series, their dates and, with ``--as-of``, the history end a model would use and its age.

This module also holds the market options the commands that margin share (``add_market_options``):
``--market-data DIR``, ``--max-history-age-days N`` and ``--allow-stale-history``.
"""

from __future__ import annotations

import json

from ..errors import ConfigError


def add_market_options(p, policy: bool = True) -> None:
    """``--market-data DIR`` (and, with ``policy``, ``--max-history-age-days N``, ``--allow-stale-history``)."""
    p.add_argument("--market-data", dest="market_data", metavar="DIR", default=None,
                   help="market history folder (default: a job's [market] history, else $GPURISK_MARKET_DATA, "
                        "else the shipped history)")
    if policy:
        p.add_argument("--max-history-age-days", dest="max_history_age_days", type=int, default=None, metavar="N",
                       help="refuse history that ends more than N days before the book's as-of (default 3)")
        p.add_argument("--allow-stale-history", dest="allow_stale_history", action="store_true", default=None,
                       help="run on history older than that anyway, and mark every output stale")


def market_settings(args):
    """The command line's ``MarketSettings`` (None for what was not given)."""
    from ..market import MarketSettings

    age = getattr(args, "max_history_age_days", None)
    if age is not None and age < 0:
        raise ConfigError(f"--max-history-age-days must be ≥ 0; got {age}")
    return MarketSettings(history=getattr(args, "market_data", None), max_history_age_days=age,
                          allow_stale_history=getattr(args, "allow_stale_history", None))


def store_from_args(args, job=None):
    """The run's ``MarketStore``: command line > job ``[market]`` > ``GPURISK_MARKET_DATA`` > shipped."""
    from ..market import resolve_store

    return resolve_store(market_settings(args), job)


def add_parser(subparsers):
    p = subparsers.add_parser("market", help="market history: import, fetch, init, info",
                              description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    imp = sub.add_parser("import", help="append rows from CSV (shipped format) or CCXT OHLCV JSON files",
                         description="Append rows from CSV files of the shipped format or CCXT OHLCV JSON "
                                     "([[ms, open, high, low, close, volume], ...]) to a history folder.")
    imp.add_argument("files", nargs="+", help="input files (.csv or .json)")
    _target_options(imp)
    imp.add_argument("--symbol", help="the bars' symbol when a file's name does not say it (BTC/USDT)")
    imp.add_argument("--timeframe", help="the bars' timeframe when a file's name does not say it (1d, 4h)")
    imp.set_defaults(func=run_import)

    fet = sub.add_parser("fetch", help="fetch bars through ccxt fetch_ohlcv (extra 'connect')",
                         description="Fetch the bars after the folder's last one (or from --since) from an exchange "
                                     "through ccxt, and append them with the import policy.")
    fet.add_argument("--exchange", required=True, help="ccxt exchange id, e.g. binance")
    fet.add_argument("--symbols", required=True, help="comma-separated symbols, e.g. BTC/USDT,ETH/USDT")
    _target_options(fet)
    fet.add_argument("--timeframe", default="1d", help="bar timeframe (default 1d)")
    fet.add_argument("--since", help="first bar to fetch, UTC (default: the bar after the folder's last one)")
    fet.set_defaults(func=run_fetch)

    ini = sub.add_parser("init", help="copy a history folder (default: the shipped one) to start your own")
    ini.add_argument("dir", help="new history folder (missing or empty; its parent must exist)")
    ini.add_argument("--from", dest="source", default=None, help="history folder to copy (default: the shipped one)")
    ini.set_defaults(func=run_init)

    inf = sub.add_parser("info", help="a history folder's series and dates; the history end at --as-of")
    add_market_options(inf)
    inf.add_argument("--as-of", dest="as_of", default=None, help="UTC time: the history end and age a model would see")
    inf.add_argument("--coins", default=None, help="coins the model needs (default: BTC,ETH,SOL of the sample book)")
    inf.set_defaults(func=run_info)
    return p


def _target_options(p) -> None:
    p.add_argument("--into", required=True, help="history folder to write (created if missing; its parent must exist)")
    p.add_argument("--on-conflict", dest="on_conflict", choices=("error", "keep", "replace"), default="error",
                   help="a row whose time is there with other values: error (default; nothing written), keep the "
                        "row there, or replace it")
    p.add_argument("--report", default=None, help="also write the full report (every reject, gap, conflict) as JSON")


def _finish(report, args) -> int:
    from ..fileio import write_json

    for line in report.lines():
        print(line)
    c = report.counts
    print(f"{c['read']} rows read: {c['added']} added, {c['duplicates']} duplicate, {c['conflicts']} conflicting "
          f"({args.on_conflict}), {c['rejected']} rejected -> {report.into}")
    if args.report:
        write_json(report.as_dict(), args.report)
    return 1 if c["rejected"] else 0


def _into(args):
    from ..market import MarketDataError
    from .outpath import out_folder

    return out_folder(args.into, MarketDataError, "--into")


def run_import(args) -> int:
    from ..market.importer import import_files

    report = import_files(args.files, _into(args), symbol=args.symbol, timeframe=args.timeframe,
                          on_conflict=args.on_conflict)
    return _finish(report, args)


def run_fetch(args) -> int:
    from ..market.fetch import fetch_history

    report = fetch_history(args.exchange, args.symbols, _into(args), timeframe=args.timeframe, since=args.since,
                           on_conflict=args.on_conflict)
    return _finish(report, args)


def run_init(args) -> int:
    from ..fileio import write_bytes
    from ..market import MarketDataError, open_store, shipped_dir
    from .outpath import out_folder

    src = open_store(args.source or shipped_dir(), what="--from")
    out = out_folder(args.dir, MarketDataError, "DIR")
    if out.exists() and any(out.iterdir()):
        raise MarketDataError(f"{out}: folder is not empty; init writes a new history folder")
    files = sorted(p for p in src.root.rglob("*.csv")
                   if not any(x.startswith(".") for x in p.relative_to(src.root).parts))
    for f in files:
        write_bytes(f.read_bytes(), out / f.relative_to(src.root))
    print(f"copied {len(files)} tables from {src.name} -> {out}")
    return 0


def run_info(args) -> int:
    from ..market import history_state

    store = store_from_args(args)
    print(f"market history: {store.name} (source: {store.source})")
    for c in store.coins():
        bars = store.daily_bars(c)
        span = f"{bars.index[0].date()}..{bars.index[-1].date()}" if len(bars) else "empty"
        print(f"  {c:<6} daily {span} ({len(bars):,} bars)")
    for t in store.series():
        if not (t.kind == "ohlcv" and t.timeframe == "1d"):
            df = store.table(t)
            span = f"{df.index[0]}..{df.index[-1]}" if len(df) else "empty"
            print(f"  {t.label}: {span} ({len(df):,} rows)")
    if args.as_of:
        from ..io import parse_as_of

        coins = [c.strip().upper() for c in (args.coins or "BTC,ETH,SOL").split(",") if c.strip()]
        st = history_state(store, coins, parse_as_of(args.as_of, where="--as-of"))
        print(json.dumps({"as_of": args.as_of, **st.summary()}))
    return 0
