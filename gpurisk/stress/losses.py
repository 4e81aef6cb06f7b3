"""Losses of every account under every scenario of a small stress set, with collateral revalued inside.

``Exposure`` holds what does not depend on the scenarios: the accounts' CSR over [held instruments, then
collateral pseudo-instruments] (``margin.collateral``), the same rows' pricing inputs and mapping. For one
scenario set, ``Exposure.pnl`` revalues the rows once (P [K, S], USD per contract, on the engine) and
``account_losses`` multiplies the CSR by P one block of accounts at a time (never more than
``chunk_elements`` accounts × scenarios at once), writing each block straight into the long table.

Losses are positive: loss = −(position P&L + collateral P&L), USD.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..book import Book, Portfolios
from ..margin import collateral as _coll
from ..margin.common import compact, map_scenarios
from ..pricing import PricingInputs, pricing_inputs
from ..scenarios import ScenarioSet


@dataclass(frozen=True)
class Exposure:
    """A book's accounts as CSR over K held rows (instruments, then collateral assets) ready to revalue.

    rows [K]: the kept rows among [I instruments, C collateral]; portfolios: by account ([A], CSR over K);
    by_venue: by account × venue (CSR over K, ``key['venue']``); underlying [K]: each row's coin.
    """

    book: Book
    collateral: _coll.CollateralInstruments
    rows: np.ndarray
    portfolios: Portfolios
    by_venue: Portfolios
    underlying: np.ndarray

    @staticmethod
    def of(book: Book) -> "Exposure":
        coll = _coll.collateral_instruments(book)
        ports = {g: _coll.portfolios_with_collateral(book, coll, g) for g in ("account", "account_venue")}
        keep, ports = compact(len(book.instruments) + len(coll), ports)
        names = np.concatenate([np.asarray(book.instruments.underlying, dtype=object),
                                np.asarray(coll.assets, dtype=object)])
        return Exposure(book, coll, keep, ports["account"], ports["account_venue"], names[keep])

    def pricing(self, scenarios: ScenarioSet) -> tuple[PricingInputs, ScenarioSet]:
        """The K rows' pricing inputs mapped onto ``scenarios`` (widened with zero-shock stablecoins if needed)."""
        n_ins = len(self.book.instruments)
        idx, sset = map_scenarios(self.book, scenarios, self.collateral.assets)
        pi = PricingInputs.concat([pricing_inputs(self.book, idx[:n_ins]), self.collateral.pricing(idx[n_ins:])])
        return pi.take(self.rows), sset

    def pnl(self, scenarios: ScenarioSet, engine) -> np.ndarray:
        """P [K, S]: USD P&L per contract of every held row under every scenario (full P&L: no pnl_factor)."""
        pi, sset = self.pricing(scenarios)
        return np.asarray(engine.revalue(pi, sset, "usd"))


def csr_matrix(portfolios: Portfolios, n_rows: int) -> sp.csr_matrix:
    """The portfolios as a sparse [P, K] quantity matrix."""
    return sp.csr_matrix((portfolios.quantity, portfolios.instrument_idx, portfolios.indptr),
                         shape=(len(portfolios), n_rows))


def account_losses(exposure: Exposure, P: np.ndarray, chunk_elements: int = 4_000_000) -> np.ndarray:
    """[S, A] loss of every account in every scenario (USD, positive = loss), one block of accounts at a time.

    The result is the long table's column laid out scenario-major (row s·A + a), so it is the table, not an
    extra copy; each block multiplies at most ``chunk_elements`` accounts × scenarios.
    """
    ports = exposure.portfolios
    A, S = len(ports), P.shape[1]
    out = np.empty((S, A))
    step = max(1, int(chunk_elements) // max(S, 1))
    for lo in range(0, A, step):  # blocks of accounts, not accounts
        hi = min(A, lo + step)
        block = csr_matrix(ports.slice(lo, hi), P.shape[0]) @ P  # [n, S]
        out[:, lo:hi] = -np.asarray(block).T
    return out


def aggregate_losses(quantity: np.ndarray, code: np.ndarray, instrument: np.ndarray, n_groups: int,
                     P: np.ndarray) -> np.ndarray:
    """[G, S] loss of groups of CSR entries (``code`` [nnz] group of each entry), summed exactly: −(Q @ P).

    Q [G, K] is the net quantity each group holds of each row, so a total never needs the accounts × scenarios
    matrix.
    """
    Q = sp.csr_matrix((quantity, (code, instrument)), shape=(n_groups, P.shape[0]))
    return -np.asarray(Q @ P)


__all__ = ["Exposure", "csr_matrix", "account_losses", "aggregate_losses"]
