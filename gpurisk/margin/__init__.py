"""Margin models and the public API.

``MODELS`` maps a model name to its ``ModelSpec`` (module imported lazily). Every model
module exposes ``NAME``, ``Params``, ``load_params(path)``, ``plan(book, params,
scenarios) -> Plan``, ``finalize(plan, stats) -> MarginResult`` and ``coverage(plan)`` (the
key rows its ``margin`` table must hold); see ``gpurisk.margin.plan`` for the contract.

``compute(book, model="house", ...)`` runs plan -> execute -> finalize. The module
itself is callable: ``gpurisk.margin(book, model="measures", ...)`` is ``compute``.
"""

from __future__ import annotations

import importlib
import sys
import types
from dataclasses import dataclass

from ..errors import ConfigError

@dataclass(frozen=True)
class ModelSpec:
    """A registered margin model: its module, whether it takes a caller's scenario set, one line about it,
    and whether it reads market history (its ``plan`` then takes ``market=``, a ``gpurisk.market`` store)."""

    module: str
    takes_scenarios: bool
    summary: str
    reads_history: bool = False


#: the one registry of margin models (the CLI, job files and the batch read it)
MODELS: dict[str, ModelSpec] = {
    "measures": ModelSpec("gpurisk.margin.measures", True, "worst loss, VaR and ES per account over a scenario set",
                          reads_history=True),
    "house": ModelSpec("gpurisk.margin.house", True,
                       "house risk-based margin: ES over FHS, Monte Carlo and stress, add-ons, APC buffer",
                       reads_history=True),
    "deribit": ModelSpec("gpurisk.margin.deribit", False, "Deribit portfolio margin (S:PM) replica"),
    "okx": ModelSpec("gpurisk.margin.okx", False, "OKX portfolio margin replica"),
    "venue": ModelSpec("gpurisk.margin.venue", False, "each venue's own methodology, one row per account × venue"),
}


def get_model(name: str):
    """The model module called ``name``; ConfigError if unknown or not installed."""
    if name not in MODELS:
        raise ConfigError(f"unknown margin model {name!r}; choose one of {', '.join(MODELS)}")
    path = MODELS[name].module
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError as exc:
        if exc.name == path:
            raise ConfigError(f"margin model {name!r} is not available in this build") from None
        raise


def check_scenarios(model: str, scenarios) -> None:
    """ConfigError when ``model`` is given a caller's scenarios it cannot use (its grids are its methodology)."""
    if scenarios is not None and not MODELS[model].takes_scenarios:
        takes = ", ".join(k for k, v in MODELS.items() if v.takes_scenarios)
        raise ConfigError(f"model {model!r} uses its venue's own scenario grid and cannot take a scenario set; "
                          f"scenario sets apply to: {takes}")


def _as_book(book):
    """A ``Book`` from a Book, a ``LoadedBook`` (``io.load_book``'s result) or a book folder path."""
    from ..book import Book

    if isinstance(book, Book):
        return book
    inner = getattr(book, "book", None)
    if isinstance(inner, Book):
        return inner
    if isinstance(book, (str, bytes)) or hasattr(book, "__fspath__"):
        from ..io import load_book

        return load_book(book).book
    raise ConfigError(f"gpurisk.margin needs a Book, a LoadedBook or a book folder path, got {type(book).__name__}")


def plan_model(mod, name: str, book, params, scenarios=None, market=None):
    """``mod.plan(book, params, scenarios)``, with ``market=market`` for the models that read history."""
    if MODELS[name].reads_history:
        return mod.plan(book, params, scenarios, market=market)
    return mod.plan(book, params, scenarios)


def compute(book, model: str = "house", params=None, scenarios=None, backend="auto", market=None):
    """MarginResult of ``model`` on ``book``, checked against the output contract.

    book: a ``Book`` (validated: built by ``gpurisk.io.load_book`` or ``Book.from_frames``), a
    ``LoadedBook`` or a book folder path (loaded and validated; bad rows are rejected).
    params: the model's Params, a TOML path, or None for defaults.
    scenarios: a ScenarioSet for the models that take one (``MODELS[name].takes_scenarios``), or None.
    backend: a name (``reference``, ``cpu``, ``gpu``, ``auto``) or an ``Engine``.
    market: the market history for the models that read it (``MODELS[name].reads_history``): a
    ``gpurisk.market.MarketStore`` (with its staleness policy), a history folder, or None for the default
    store (``GPURISK_MARKET_DATA``, else the shipped history).
    The summary gains ``backend``, ``gpu_fallbacks`` and timings.
    """
    from .plan import execute, finish

    mod, p, engine = prepare(book, model, params, scenarios, backend, market)
    stats, metrics = execute(p, engine)
    result = finish(mod, p, stats)
    result.summary.update(metrics)
    return result


def prepare(book, model: str, params, scenarios, backend, market):
    """(model module, its ``Plan``, ``Engine``) for ``compute``'s arguments (see there): the scenarios checked
    against the model, the book loaded, the parameters read, the backend resolved."""
    from ..backends import BackendUnavailable, Engine

    mod = get_model(model)
    check_scenarios(model, scenarios)
    book = _as_book(book)
    if params is None or isinstance(params, (str, bytes)) or hasattr(params, "__fspath__"):
        params = mod.load_params(None if params is None else str(params))
    if not isinstance(backend, Engine):
        try:
            backend = Engine(backend)
        except (BackendUnavailable, ValueError) as exc:
            raise ConfigError(str(exc)) from None
    return mod, plan_model(mod, model, book, params, scenarios, market), backend


class _CallableModule(types.ModuleType):
    def __call__(self, book, model: str = "house", params=None, scenarios=None, backend="auto", market=None):
        return compute(book, model=model, params=params, scenarios=scenarios, backend=backend, market=market)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["MODELS", "ModelSpec", "get_model", "check_scenarios", "plan_model", "prepare", "compute"]
