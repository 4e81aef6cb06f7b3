"""Scenario sets and their generators (grid, historical, montecarlo, stress).

The Monte Carlo generator imports JAX, so it is loaded on first use.
"""

from .grid import exchange_grid, span_grid
from .historical import historical_scenarios
from .io import read_scenarios, write_scenarios
from .scenario_set import ScenarioSet, make_scenario_set
from .stress import named_stress, stress_from_definition, stress_from_toml


def monte_carlo_scenarios(*args, **kwargs):
    """See ``gpurisk.scenarios.montecarlo.monte_carlo_scenarios`` (imports JAX on first use)."""
    from .montecarlo import monte_carlo_scenarios as _mc

    return _mc(*args, **kwargs)


__all__ = [
    "ScenarioSet",
    "make_scenario_set",
    "read_scenarios",
    "write_scenarios",
    "exchange_grid",
    "span_grid",
    "historical_scenarios",
    "monte_carlo_scenarios",
    "named_stress",
    "stress_from_definition",
    "stress_from_toml",
]
