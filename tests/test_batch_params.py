"""Inline model parameters in a job file are checked like a parameter file's values."""

from types import MappingProxyType

import pytest

from gpurisk.batch.sources import model_params
from gpurisk.config import ModelJob
from gpurisk.errors import ConfigError
from gpurisk.margin import deribit, house


def _job(name, params, params_file=None):
    return ModelJob(name=name, label=name, params_file=params_file, params=MappingProxyType(params), scenarios=())


def test_inline_override_replaces_only_the_named_field():
    p = model_params(house, _job("house", {"mc_scenarios": 500, "stress_factor": 1}), "job.toml: models[0]")
    assert p.mc_scenarios == 500 and p.stress_factor == 1.0 and isinstance(p.stress_factor, float)
    assert p.horizon_days == house.Params().horizon_days  # untouched fields keep their defaults


@pytest.mark.parametrize(
    "params, message",
    [
        ({"mc_scenarios": 2.5}, "'mc_scenarios' must be an integer"),
        ({"stress_factor": "high"}, "'stress_factor' must be a number"),
        ({"no_such_knob": 1}, "unknown parameter 'no_such_knob'"),
    ],
)
def test_bad_inline_parameters_are_one_line_errors(params, message):
    with pytest.raises(ConfigError, match=message) as info:
        model_params(house, _job("house", params), "job.toml: models[0]")
    assert "\n" not in str(info.value) and "job.toml: models[0].params" in str(info.value)


def test_nested_tables_are_typed_too():
    with pytest.raises(ConfigError, match="must be a table"):
        model_params(deribit, _job("deribit", {"pairs": 3}), "job.toml: models[1]")
