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
