"""Margin models and the public API.

``MODELS`` maps a model name to its module (imported lazily). Every model module
exposes ``Params``, ``load_params(path)``, ``plan(book, params, scenarios) -> Plan``
and ``finalize(plan, stats) -> MarginResult`` (see ``gpurisk.margin.plan``).

``compute(book, model="house", ...)`` runs plan -> execute -> finalize. The module
itself is callable: ``gpurisk.margin(book, model="measures", ...)`` is ``compute``.
"""

from __future__ import annotations

import importlib
import sys
import types

from ..errors import ConfigError

#: model name -> module path
MODELS = {
    "measures": "gpurisk.margin.measures",
    "house": "gpurisk.margin.house",
    "deribit": "gpurisk.margin.deribit",
    "okx": "gpurisk.margin.okx",
    "venue": "gpurisk.margin.venue",
}


def get_model(name: str):
    """The model module called ``name``; ConfigError if unknown or not installed."""
    if name not in MODELS:
        raise ConfigError(f"unknown margin model {name!r}; choose one of {', '.join(MODELS)}")
    try:
        return importlib.import_module(MODELS[name])
    except ModuleNotFoundError as exc:
        if exc.name == MODELS[name]:
            raise ConfigError(f"margin model {name!r} is not available in this build") from None
        raise


def compute(book, model: str = "house", params=None, scenarios=None, backend="auto"):
    """MarginResult of ``model`` on ``book``.

    params: the model's Params, a TOML path, or None for defaults.
    scenarios: a ScenarioSet replacing the model's own, or None.
    backend: a name (``reference``, ``cpu``, ``gpu``, ``auto``) or an ``Engine``.
    The summary gains ``backend``, ``gpu_fallbacks`` and timings.
    """
    from ..backends import BackendUnavailable, Engine
    from .plan import execute

    mod = get_model(model)
    if params is None or isinstance(params, (str, bytes)) or hasattr(params, "__fspath__"):
        params = mod.load_params(None if params is None else str(params))
    if not isinstance(backend, Engine):
        try:
            backend = Engine(backend)
        except (BackendUnavailable, ValueError) as exc:
            raise ConfigError(str(exc)) from None
    p = mod.plan(book, params, scenarios)
    stats, metrics = execute(p, backend)
    result = mod.finalize(p, stats)
    result.summary.update(metrics)
    return result


class _CallableModule(types.ModuleType):
    def __call__(self, book, model: str = "house", params=None, scenarios=None, backend="auto"):
        return compute(book, model=model, params=params, scenarios=scenarios, backend=backend)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["MODELS", "get_model", "compute"]
