"""Scenario sets and their generators (grid, historical, montecarlo, stress)."""

from .scenario_set import ScenarioSet, make_scenario_set

__all__ = ["ScenarioSet", "make_scenario_set"]
