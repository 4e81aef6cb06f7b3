"""Mapping a book onto a scenario set, shared by the models that revalue the book's instruments."""

from __future__ import annotations

import numpy as np

from dataclasses import replace

from ..book import Book, Portfolios
from ..errors import ScenarioError
from ..pricing import PricingInputs, pricing_inputs
from ..scenarios import ScenarioSet


def map_scenarios(book: Book, scenarios: ScenarioSet, extra_underlyings=()) -> tuple[np.ndarray, ScenarioSet]:
    """(underlying column [I + len(extra)] int32, scenario set) for the book's instruments then ``extra``.

    A ScenarioError names the underlyings the set does not cover.
    """
    names = list(book.instruments.underlying) + list(extra_underlyings)
    try:
        return scenarios.columns_for(names)
    except ValueError as exc:
        raise ScenarioError(str(exc)) from None


def book_pricing(book: Book, scenarios: ScenarioSet) -> tuple[PricingInputs, ScenarioSet]:
    """The book's instruments as PricingInputs mapped onto the (possibly widened) scenario set."""
    idx, sset = map_scenarios(book, scenarios)
    return pricing_inputs(book, idx), sset


def compact(n_rows: int, portfolios: dict[str, Portfolios]) -> tuple[np.ndarray, dict[str, Portfolios]]:
    """(kept rows [K] sorted, portfolios re-indexed onto them) for instrument rows [n_rows] of which only
    those some portfolio holds are kept, so P [K, S] is sized to what is held, not to every instrument
    the book lists. The kept rows keep their order."""
    used = np.zeros(n_rows, dtype=bool)
    for p in portfolios.values():
        used[p.instrument_idx] = True
    keep = np.flatnonzero(used)
    remap = np.full(n_rows, -1, dtype=np.int32)
    remap[keep] = np.arange(len(keep), dtype=np.int32)
    return keep, {k: replace(p, instrument_idx=remap[p.instrument_idx]) for k, p in portfolios.items()}


__all__ = ["map_scenarios", "book_pricing", "compact"]
