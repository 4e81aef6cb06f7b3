"""Mapping a book onto a scenario set, shared by the models that revalue the book's instruments."""

from __future__ import annotations

import numpy as np

from ..book import Book
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


__all__ = ["map_scenarios", "book_pricing"]
