"""Shared fixtures: a small generated sample book, and the ``gpu`` skip hook."""

from __future__ import annotations

import functools

import pytest

SAMPLE_ACCOUNTS = 200
SAMPLE_SEED = 7


@functools.lru_cache(maxsize=1)
def _cuda_device() -> tuple[bool, str]:
    """(usable, why not): CuPy imports and sees at least one CUDA device."""
    try:
        import cupy

        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # ImportError, CUDARuntimeError, driver errors
        return False, f"no usable CUDA device ({type(exc).__name__})"
    return (n > 0), "no CUDA device"


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``gpu`` unless CuPy imports and sees a device."""
    gpu_items = [it for it in items if it.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    ok, why = _cuda_device()
    if ok:
        return
    skip = pytest.mark.skip(reason=why)
    for it in gpu_items:
        it.add_marker(skip)


@pytest.fixture(scope="session")
def sample_book_dir(tmp_path_factory):
    """A generated sample book folder (200 accounts, seed 7, Parquet), written once per session."""
    from gpurisk.generate import generate_book
    from gpurisk.io import TABLES, write_book

    g = generate_book(SAMPLE_ACCOUNTS, SAMPLE_SEED)
    out = tmp_path_factory.mktemp("sample_book")
    write_book(out, {k: g[k] for k in TABLES}, g["meta"], fmt="parquet")
    return out


@pytest.fixture(scope="session")
def sample_book(sample_book_dir):
    """The validated ``Book`` of ``sample_book_dir``."""
    from gpurisk.io import load_book

    return load_book(sample_book_dir).book


#: a tiny hand-made book, every cell as text (as read from CSV); as of 2024-12-31T08:00:00Z
TINY_AS_OF = "2024-12-31T08:00:00Z"
_TINY = {
    "instruments": [
        ("instrument_id", "venue", "underlying", "kind", "settlement", "contract_size", "expiry", "strike", "option_type"),
        ("BTC-PERPETUAL", "deribit", "BTC", "perpetual", "inverse", "10", None, None, None),
        ("BTC-27JUN25", "deribit", "BTC", "future", "inverse", "10", "2025-06-27T08:00:00Z", None, None),
        ("BTC-27JUN25-100000-C", "deribit", "BTC", "option", "inverse", "1", "2025-06-27T08:00:00Z", "100000", "call"),
        ("BTC-USDT-SWAP", "okx", "BTC", "perpetual", "linear", "0.01", None, None, None),
        ("ETH-USDT-250627-4000-P", "okx", "ETH", "option", "linear", "0.1", "2025-06-27T08:00:00Z", "4000", "put"),
        ("BTCUSDT", "binance", "BTC", "spot", "linear", "1", None, None, None),
    ],
    "market": [
        ("instrument_id", "underlying_price", "implied_vol"),
        ("BTC-PERPETUAL", "93000", None),
        ("BTC-27JUN25", "97000", None),
        ("BTC-27JUN25-100000-C", "97000", "0.62"),
        ("BTC-USDT-SWAP", "93010", None),
        ("ETH-USDT-250627-4000-P", "3500", "0.75"),
        ("BTCUSDT", "93000", None),
    ],
    "index": [("underlying", "price"), ("BTC", "93000"), ("ETH", "3360"), ("USDT", "1"), ("USDC", "1")],
    "positions": [
        ("account_id", "instrument_id", "quantity"),
        ("A1", "BTC-PERPETUAL", "1000"),
        ("A1", "BTC-27JUN25-100000-C", "-2.5"),
        ("A2", "BTCUSDT", "0.5"),
        ("A2", "BTC-27JUN25", "-4650"),
        ("A3", "BTC-USDT-SWAP", "30"),
        ("A3", "ETH-USDT-250627-4000-P", "-12"),
    ],
    "balances": [
        ("account_id", "venue", "asset", "amount"),
        ("A1", "deribit", "BTC", "0.8"),
        ("A2", "binance", "USDT", "5000"),
        ("A3", "okx", "USDC", "-250.5"),
    ],
}


def tiny_tables():
    """A fresh dict of the tiny book's tables (string columns, None for empty cells)."""
    import pandas as pd

    out = {}
    for name, rows in _TINY.items():
        df = pd.DataFrame(rows[1:], columns=list(rows[0]), dtype=object)
        out[name] = df.astype("str").mask(df.isna())
    return out


@pytest.fixture()
def tiny():
    """The tiny hand-made book's tables (fresh copy per test)."""
    return tiny_tables()
