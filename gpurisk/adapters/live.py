"""Live fetching through ``ccxt`` (the optional extra ``connect``): the only network code of gpurisk.

``fetch_structures(exchange)`` asks a ccxt exchange object for what a book needs, with ccxt's
unified calls: ``load_markets``, ``fetch_positions``, ``fetch_balance``, ``fetch_ticker`` for
every held future or perpetual (``fetch_mark_price`` where the venue has it), ``fetch_ticker`` of
the ``COIN/USDT`` spot pair of every held coin (its index where the venue's tickers give none) and
``fetch_greeks`` for every held option. The result
goes through ``gpurisk.adapters.ccxt`` like structures read from files, so the live path stays thin.

Credentials come only from the environment (``PREFIX_API_KEY``, ``PREFIX_SECRET`` and, for
venues that need one, ``PREFIX_PASSWORD``) or from a TOML file (``api_key``, ``secret``,
``password``) that only its owner may read (mode ``0600`` or stricter; anything looser is
refused). They are never logged, never written into a book, a summary or a manifest, and any
error message that quotes one has it masked.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from ..errors import ConfigError
from ..fileio import read_toml
from ..redact import MASK, redact
from .base import AdapterError, Mapped
from .ccxt import BALANCE_META, from_ccxt

log = logging.getLogger("gpurisk.adapters")

#: credential fields: environment suffix -> ccxt attribute
ENV_FIELDS = {"API_KEY": "apiKey", "SECRET": "secret", "PASSWORD": "password"}
FILE_FIELDS = {"api_key": "apiKey", "secret": "secret", "password": "password"}


def _ccxt():
    try:
        import ccxt
    except ModuleNotFoundError:
        raise ConfigError("live fetching needs the optional extra 'connect' (pip install 'gpurisk[connect]', "
                          "which installs ccxt)") from None
    return ccxt


def load_credentials(env_prefix: str | None = None, file=None, environ=None) -> dict:
    """``{apiKey, secret[, password]}`` from ``PREFIX_*`` variables or an owner-only TOML file.

    ConfigError (naming the variable or file, never a value) when a required one is missing or the
    file may be read by others.
    """
    environ = os.environ if environ is None else environ
    if (env_prefix is None) == (file is None):
        raise ConfigError("credentials: give exactly one of --credentials-env PREFIX or --credentials-file FILE")
    creds = {}
    if env_prefix is not None:
        prefix = str(env_prefix).rstrip("_")
        for suffix, key in ENV_FIELDS.items():
            v = environ.get(f"{prefix}_{suffix}")
            if v:
                creds[key] = v
        for suffix in ("API_KEY", "SECRET"):
            if ENV_FIELDS[suffix] not in creds:
                raise ConfigError(f"credentials: environment variable {prefix}_{suffix} is not set")
        return creds
    p = Path(file)
    try:
        st = p.stat()
    except OSError:
        raise ConfigError(f"{p}: credentials file not found") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{p}: credentials file is not a regular file")
    if st.st_mode & 0o077:
        raise ConfigError(f"{p}: credentials file may be read by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                          "allow its owner alone (chmod 600)")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise ConfigError(f"{p}: credentials file belongs to another user")
    data = read_toml(p, "credentials file")
    unknown = sorted(set(data) - set(FILE_FIELDS))
    if unknown:
        raise ConfigError(f"{p}: unknown key {unknown[0]!r} in the credentials file (allowed: "
                          f"{', '.join(FILE_FIELDS)})")
    for k, attr in FILE_FIELDS.items():
        if isinstance(data.get(k), str) and data[k]:
            creds[attr] = data[k]
    for k in ("api_key", "secret"):
        if FILE_FIELDS[k] not in creds:
            raise ConfigError(f"{p}: credentials file lacks {k}")
    return creds


def mask(text: str, creds: dict) -> str:
    """``text`` with every credential value replaced by ``***`` and every URL redacted."""
    out = str(text)
    for v in sorted((v for v in (creds or {}).values() if v), key=len, reverse=True):
        out = out.replace(v, MASK)
    return redact(out)


def make_exchange(exchange_id: str, creds: dict | None = None, options: dict | None = None):
    """A ccxt exchange object of class ``exchange_id`` with ``creds``; ConfigError for an unknown exchange."""
    ccxt = _ccxt()
    cls = getattr(ccxt, str(exchange_id), None)
    if cls is None or not isinstance(cls, type) or str(exchange_id) not in getattr(ccxt, "exchanges", []):
        raise ConfigError(f"unknown ccxt exchange {exchange_id!r}")
    return cls({**(creds or {}), "enableRateLimit": True, **(options or {})})


def fetch_structures(exchange, creds: dict | None = None) -> dict:
    """``{positions, balance, tickers, greeks, markets}`` from a ccxt exchange object (see the module doc).

    A ccxt error is an AdapterError naming the exchange and the call, with credentials masked.
    """
    ccxt = _ccxt()
    name = getattr(exchange, "id", type(exchange).__name__)
    call = "load_markets"
    try:
        exchange.load_markets()
        call = "fetch_positions"
        positions = exchange.fetch_positions()
        call = "fetch_balance"
        balance = exchange.fetch_balance()
        held = sorted({p.get("symbol") for p in positions if isinstance(p, dict) and p.get("symbol")
                       and p.get("contracts")})  # a closed position (0 contracts) needs no price
        markets = exchange.markets or {}
        options = [s for s in held if (markets.get(s) or {}).get("option")]
        tickers = {}
        mark = "fetch_mark_price" if exchange.has.get("fetchMarkPrice") else "fetch_ticker"
        for s in held:
            if s not in options:
                call = f"{mark}({s})"
                tickers[s] = getattr(exchange, mark)(s)
        # a spot pair against USDT prices each held coin's index where the venue's tickers do not, and
        # prices a spot wallet's coins (which a venue may hold as balances: Binance)
        coins = {k for k, v in (balance or {}).items() if isinstance(v, dict) and k not in BALANCE_META
                 and v.get("total")}
        bases = sorted(({(markets.get(s) or {}).get("base") for s in held} | coins) - {None})
        for b in bases:
            spot = f"{b}/USDT"
            if spot in markets and spot not in tickers:
                call = f"fetch_ticker({spot})"
                tickers[spot] = exchange.fetch_ticker(spot)
        greeks = []
        for s in options:
            call = f"fetch_greeks({s})"
            greeks.append(exchange.fetch_greeks(s))
    except ccxt.BaseError as exc:
        raise AdapterError(f"{name}: {call} failed: {type(exc).__name__}: {mask(exc, creds)}") from None
    markets = [markets[s] for s in held if s in markets]
    log.info("%s: fetched %d position(s), %d ticker(s), %d greeks", name, len(positions), len(tickers), len(greeks))
    return {"positions": positions, "balance": balance, "tickers": tickers, "greeks": greeks, "markets": markets}


def fetch(exchange_id: str, account: str, *, venue: str | None = None, env_prefix: str | None = None,
          credentials_file=None, exchange=None) -> Mapped:
    """Fetch one account's positions, balances and marks from ``exchange_id`` and map them (``adapters.ccxt``).

    ``exchange``: an already built ccxt exchange object (tests pass one with a recorded transport);
    otherwise one is built from the credentials.
    """
    creds = {}
    if exchange is None:
        creds = load_credentials(env_prefix, credentials_file)
        exchange = make_exchange(exchange_id, creds)
    structures = fetch_structures(exchange, creds)
    return from_ccxt(**structures, venue=venue or exchange_id, account=account, source=f"{exchange_id} (live)")


__all__ = ["ENV_FIELDS", "FILE_FIELDS", "load_credentials", "mask", "make_exchange", "fetch_structures", "fetch"]
