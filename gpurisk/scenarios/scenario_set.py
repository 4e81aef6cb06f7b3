"""The scenario set: a first-class object with its provenance.

Shapes: S scenarios, U underlyings. The underlying axis is shared by every
scenario (not copied per scenario).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..book import STABLECOINS
from ..pricing import VOL_MODE_NAMES, VolTerm


@dataclass(frozen=True)
class ScenarioSet:
    """S joint scenarios over U underlyings.

    price_shock [S, U]: relative move of each underlying (−0.1 = −10 %), > −1.
    vol_shock [S, U]: vol shock, read according to ``vol_mode`` [S] (pricing.VOL_*):
      relative σ·(1+v), absolute σ+v (vol points as decimals), or term-scaled
      σ·(1 + v·(30/DTE)^p) with ``term`` floors.
    weight [S]: probability weight (ES/VaR); equal weights mean the plain definition.
    pnl_factor [S]: the share of a scenario's P&L that counts (e.g. SPAN extreme
      moves at 0.33, Deribit extended table); 1 for ordinary scenarios.
    horizon_days: the P&L horizon (options decay by it).
    """

    underlyings: tuple[str, ...]
    price_shock: np.ndarray
    vol_shock: np.ndarray
    vol_mode: np.ndarray
    weight: np.ndarray
    pnl_factor: np.ndarray
    label: np.ndarray  # [S] str
    scenario_id: np.ndarray  # [S] str, unique
    horizon_days: float = 0.0
    kind: str = "custom"
    seed: int | None = None
    source: str = ""
    term: VolTerm = field(default_factory=VolTerm)
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        S, U = np.shape(self.price_shock)
        if U != len(self.underlyings):
            raise ValueError(f"price_shock has {U} columns but {len(self.underlyings)} underlyings")
        for name in ("vol_shock",):
            if np.shape(getattr(self, name)) != (S, U):
                raise ValueError(f"{name} must have shape {(S, U)}")
        for name in ("vol_mode", "weight", "pnl_factor", "label", "scenario_id"):
            if len(getattr(self, name)) != S:
                raise ValueError(f"{name} must have length {S}")

    @property
    def n_scenarios(self) -> int:
        return int(np.shape(self.price_shock)[0])

    def __len__(self) -> int:
        return self.n_scenarios

    @property
    def horizon_years(self) -> float:
        return float(self.horizon_days) / 365.0

    def columns_for(self, names) -> tuple[np.ndarray, "ScenarioSet"]:
        """Map underlying ``names`` [n] to columns; returns (idx [n] int32, set).

        A stablecoin the set does not name gets a zero-shock column appended (it counts
        as USD unless a de-peg scenario says otherwise); any other unknown name is a
        ValueError that lists the names.
        """
        names = [str(n) for n in names]
        cols = {u: i for i, u in enumerate(self.underlyings)}
        missing = sorted({n for n in names if n not in cols})
        bad = [n for n in missing if n not in STABLECOINS]
        if bad:
            raise ValueError(
                f"scenario set ({self.kind}, {self.source or 'no source'}) has no shocks for underlying(s) {bad}; "
                f"it covers {list(self.underlyings)}"
            )
        sset = self
        if missing:
            S = self.n_scenarios
            z = np.zeros((S, len(missing)))
            sset = replace(
                self,
                underlyings=tuple(self.underlyings) + tuple(missing),
                price_shock=np.hstack([self.price_shock, z]),
                vol_shock=np.hstack([self.vol_shock, z]),
            )
            cols = {u: i for i, u in enumerate(sset.underlyings)}
        return np.array([cols[n] for n in names], dtype=np.int32), sset

    def subset(self, rows) -> "ScenarioSet":
        rows = np.asarray(rows)
        return replace(
            self,
            price_shock=self.price_shock[rows],
            vol_shock=self.vol_shock[rows],
            vol_mode=self.vol_mode[rows],
            weight=self.weight[rows],
            pnl_factor=self.pnl_factor[rows],
            label=self.label[rows],
            scenario_id=self.scenario_id[rows],
        )

    def describe(self) -> dict:
        """Set-level metadata (provenance) as plain JSON-able values."""
        return {
            "kind": self.kind,
            "n_scenarios": self.n_scenarios,
            "underlyings": list(self.underlyings),
            "horizon_days": float(self.horizon_days),
            "seed": self.seed,
            "source": self.source,
            "vol_modes": sorted({VOL_MODE_NAMES[int(m)] for m in np.unique(self.vol_mode)}),
            "term": self.term.__dict__,
            **({"metadata": self.metadata} if self.metadata else {}),
        }

    @staticmethod
    def concat(sets: list["ScenarioSet"], kind: str = "combined", source: str = "") -> "ScenarioSet":
        """Stack sets over the union of their underlyings.

        A set that lacks an underlying contributes zero shock for it. All sets must
        share the horizon and the vol-term parameters; scenario ids are prefixed by
        each set's kind so they stay unique.
        """
        if not sets:
            raise ValueError("concat needs at least one scenario set")
        h = {float(s.horizon_days) for s in sets}
        if len(h) != 1:
            raise ValueError(f"cannot combine scenario sets with different horizons {sorted(h)} days")
        terms = {s.term for s in sets}
        if len(terms) != 1:
            raise ValueError("cannot combine scenario sets with different vol-term parameters")
        unders = sorted(set().union(*[s.underlyings for s in sets]))
        col = {u: i for i, u in enumerate(unders)}
        ps, vs = [], []
        for s in sets:
            p = np.zeros((s.n_scenarios, len(unders)))
            v = np.zeros_like(p)
            idx = [col[u] for u in s.underlyings]
            p[:, idx] = s.price_shock
            v[:, idx] = s.vol_shock
            ps.append(p)
            vs.append(v)
        return ScenarioSet(
            underlyings=tuple(unders),
            price_shock=np.vstack(ps),
            vol_shock=np.vstack(vs),
            vol_mode=np.concatenate([s.vol_mode for s in sets]).astype(np.int8),
            weight=np.concatenate([s.weight for s in sets]).astype(np.float64),
            pnl_factor=np.concatenate([s.pnl_factor for s in sets]).astype(np.float64),
            label=np.concatenate([s.label for s in sets]).astype(object),
            scenario_id=np.concatenate([np.char.add(f"{s.kind}:", s.scenario_id.astype(str)) for s in sets]).astype(object),
            horizon_days=sets[0].horizon_days,
            kind=kind,
            seed=None,
            source=source or " + ".join(f"{s.kind}({s.n_scenarios})" for s in sets),
            term=sets[0].term,
            metadata={"parts": [s.describe() for s in sets]},
        )


def make_scenario_set(underlyings, price_shock, vol_shock=None, *, vol_mode="relative", weight=None,
                      pnl_factor=None, label=None, scenario_id=None, **meta) -> ScenarioSet:
    """Convenience constructor with defaults: zero vol shocks, equal weights, full P&L."""
    from ..pricing import VOL_MODE_CODES

    price_shock = np.atleast_2d(np.asarray(price_shock, dtype=np.float64))
    S, U = price_shock.shape
    vol_shock = np.zeros((S, U)) if vol_shock is None else np.asarray(vol_shock, dtype=np.float64).reshape(S, U)
    if isinstance(vol_mode, str):
        vol_mode = np.full(S, VOL_MODE_CODES[vol_mode], dtype=np.int8)
    return ScenarioSet(
        underlyings=tuple(str(u) for u in underlyings),
        price_shock=price_shock,
        vol_shock=vol_shock,
        vol_mode=np.asarray(vol_mode, dtype=np.int8),
        weight=np.ones(S) if weight is None else np.asarray(weight, dtype=np.float64),
        pnl_factor=np.ones(S) if pnl_factor is None else np.asarray(pnl_factor, dtype=np.float64),
        label=np.array([f"s{i}" for i in range(S)], dtype=object) if label is None else np.asarray(label, dtype=object),
        scenario_id=np.array([str(i) for i in range(S)], dtype=object) if scenario_id is None
        else np.asarray(scenario_id, dtype=object),
        **meta,
    )
