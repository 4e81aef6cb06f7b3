"""gpurisk: a GPU-accelerated batch risk engine for crypto-derivatives portfolio margin."""

__version__ = "0.1.0"
