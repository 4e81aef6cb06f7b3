"""gpurisk: a GPU-accelerated batch risk engine for crypto-derivatives portfolio margin."""

import os

# JAX must not pre-allocate GPU memory that the CuPy kernels need (set before any jax import).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

__version__ = "0.1.0"


def __getattr__(name):
    """Lazy subpackages, so ``import gpurisk; gpurisk.margin(book)`` (or ``gpurisk.whatif(session, ...)``) works
    without importing everything up front."""
    if name in ("margin", "scenarios", "backends", "batch", "io", "book", "pricing", "whatif"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'gpurisk' has no attribute {name!r}")
