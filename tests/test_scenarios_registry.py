"""The one registry of scenario generators: options checked, defaults filled, same sets as the generators."""

from __future__ import annotations

import numpy as np
import pytest

from gpurisk.errors import ScenarioError
from gpurisk.scenarios import grid, historical, registry, stress


def test_every_generator_is_registered_once_with_distinct_option_names():
    assert list(registry.GENERATORS) == ["grid", "span", "historical", "montecarlo", "stress"]
    for g in registry.GENERATORS.values():
        names = [o.name for o in g.options]
        assert len(names) == len(set(names)) and all(n.isidentifier() for n in names)
        for o in g.options:
            assert o.flag == "--" + o.name.replace("_", "-") and o.help


def test_registry_sets_equal_the_generators_own():
    a = registry.generate("grid", {"underlyings": ["BTC"], "price_range": 0.2})
    b = grid.exchange_grid(("BTC",), price_range=0.2)
    np.testing.assert_array_equal(a.price_shock, b.price_shock)
    np.testing.assert_array_equal(a.vol_shock, b.vol_shock)
    h = registry.generate("historical", {"as_of": "2024-06-01", "underlyings": "btc,eth", "horizon_days": 2,
                                         "lookback_days": 400})
    d = historical.historical_scenarios("2024-06-01", ("BTC", "ETH"), horizon_days=2, lookback_days=400)
    np.testing.assert_array_equal(h.price_shock, d.price_shock)
    s = registry.generate("stress", {"underlyings": ["BTC"], "hypothetical": False})
    np.testing.assert_array_equal(s.price_shock, stress.named_stress(("BTC",), hypothetical=False).price_shock)


@pytest.mark.parametrize("kind,opts,match", [
    ("grid", {"lambda": 0.9}, "lambda: not an option of the grid generator"),
    ("grid", {"buckets": 2.5}, "buckets: expected an integer"),
    ("grid", {"extended": "yes"}, "extended: expected true or false"),
    ("span", {"vol_mode": "log"}, "vol_mode: must be one of relative, absolute, term"),
    ("historical", {}, "as_of: the historical generator needs it"),
    ("historical", {"as_of": "not a date"}, "as_of: expected an ISO-8601"),
    ("historical", {"as_of": "2024-06-01", "horizon_days": 1.5}, "whole number"),
    ("montecarlo", {"as_of": "2024-06-01", "underlyings": []}, "underlyings: expected at least one coin"),
    ("magic", {}, "unknown scenario generator 'magic'"),
    ("stress", {"only_definition": True}, "needs a definition file"),
])
def test_bad_options_are_one_line_errors(kind, opts, match):
    with pytest.raises(ScenarioError, match=match) as e:
        registry.generate(kind, opts, where="job.toml: models[0].scenarios[0].")
    assert "\n" not in str(e.value)


def test_unknown_coin_is_a_clean_error():
    with pytest.raises(ScenarioError, match="DOT"):
        registry.generate("historical", {"as_of": "2024-06-01", "underlyings": ["DOT"]})


def test_docs_list_every_option():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "data-format.md").read_text(encoding="utf-8")
    for g in registry.GENERATORS.values():
        for o in g.options:
            assert f"| `{g.name}` | `{o.name}` (`{o.flag}`) |" in text, f"docs/data-format.md lacks {g.name}.{o.name}"
