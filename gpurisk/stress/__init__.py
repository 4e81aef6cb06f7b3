"""Stress runs: losses per account and scenario, member groups, Cover-1/Cover-2, reverse stress, sensitivity.

``run_stress(book, build_sets(book, params), params)`` -> ``StressResult``; ``write_stress(result, DIR)``.
docs/methodologies.md ("Stress testing") states the definitions; ``gpurisk stress`` is the command.
"""

from .params import StressParams
from .run import ASSUMPTIONS, StressError, StressResult, build_sets, format_summary, run_stress, write_stress

__all__ = ["StressParams", "StressError", "StressResult", "ASSUMPTIONS", "build_sets", "run_stress", "write_stress",
           "format_summary"]
