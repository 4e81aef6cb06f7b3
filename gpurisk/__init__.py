"""gpurisk: a GPU-accelerated batch risk engine for crypto-derivatives portfolio margin."""

import os

# JAX must not pre-allocate GPU memory that the CuPy kernels need (set before any jax import).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

__version__ = "0.1.0"
