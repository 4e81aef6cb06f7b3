"""A stress run: every account under every stress scenario, member groups, Cover-1/Cover-2, totals, reverse
stress and the house IM's sensitivity, as tables (``StressResult``) written into one folder.

``run_stress(book, sets, params, house_params, backend)``:

1. the house IM and equity (collateral after haircuts) of every account (``gpurisk.margin.house``);
2. per scenario set (one per family or file): P [K, S] on the engine, then each account's loss block by
   block (``losses.account_losses``), its loss over margin ``max(0, loss − equity)``, and the sums per member
   group (``book.account_groups()``: the optional accounts table; each account its own group without it);
3. Cover-1 / Cover-2 per scenario and overall, against ``default_fund_usd`` with the threshold alerts;
4. totals by venue, underlying and account kind (from net quantities: ``losses.aggregate_losses``);
5. reverse stress (``reverse.py``) and sensitivity (``sensitivity.py``) when asked.

Tables (USD; docs/methodologies.md, "Stress testing"): ``account_losses``, ``group_losses`` (ranked per
scenario), ``groups``, ``cover``, ``totals``, ``scenarios``, and ``reverse`` / ``sensitivity``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from .. import margin as _margin
from ..book import Book
from ..errors import GpuriskError, ScenarioError
from ..margin.components import book_coins
from ..margin.output import write_result
from ..margin.plan import MarginResult
from ..scenarios import ScenarioSet
from ..scenarios.stress import family_of, family_set
from .cover import cover, group_sum, rank_groups, threshold_alerts, uncovered, utilisation
from .losses import Exposure, account_losses, aggregate_losses
from .params import StressParams
from .reverse import Evaluator, reverse_stress
from .sensitivity import sensitivity

log = logging.getLogger("gpurisk.stress")

#: the model name written into the tables' metadata
NAME = "stress"
#: the family of scenarios read from a file
FILE_FAMILY = "file"

ASSUMPTIONS = (
    "Losses are full revaluations of every position and of the collateral (coins at the scenario price, "
    "stablecoins at par unless a de-peg moves them); positive = loss, USD.",
    "Loss over margin of an account = max(0, loss − equity), equity = its collateral after the house haircuts; "
    "a group's is the sum over its accounts (accounts are segregated).",
    "Cover-1 = the largest group loss over margin in a scenario, Cover-2 = the sum of the two largest; the "
    "overall figure is the worst scenario.",
    "Scenarios are instant moves (horizon as stated): options do not decay and are revalued at shocked vols.",
    "A scenario's P&L factor of a venue methodology is not applied: a stress loss is the whole loss.",
    "Reverse stress moves prices only (vols unchanged), one coin or every coin together.",
)


class StressError(GpuriskError):
    """A stress run cannot go on; the message names the cause."""


@dataclass
class StressResult:
    """A stress run's tables, its JSON-able summary and the units of the tables' numeric columns."""

    tables: dict[str, pd.DataFrame]
    summary: dict
    units: dict[str, dict[str, str]] = field(default_factory=dict)


def file_set(sset: ScenarioSet, stem: str) -> ScenarioSet:
    """A scenario set read from a file, its ids prefixed ``file:<stem>/`` (family ``file``)."""
    ids = np.asarray([f"{FILE_FAMILY}:{stem}/{i}" for i in sset.scenario_id], dtype=object)
    return replace(sset, scenario_id=ids, pnl_factor=np.ones(sset.n_scenarios))


def build_sets(book: Book, params: StressParams, files=(), market=None) -> list[ScenarioSet]:
    """The scenario sets of a run: one per family of ``params.families`` over the book's coins, measured on the
    history of ``market`` known at the book's as-of (no later episode, squeeze or wick), then each file."""
    from ..scenarios.io import read_scenarios

    coins = book_coins(book)
    as_of = str(np.datetime_as_string(book.as_of, unit="s")) + "Z"
    sets = [family_set(f, coins, params.horizon_days, market, as_of) for f in params.families]
    for f in files:
        sets.append(file_set(read_scenarios(str(f)), Path(f).stem))
    if not sets:
        raise StressError("no scenarios: name at least one family or scenario file")
    ids = np.concatenate([s.scenario_id for s in sets])
    dup = pd.Series(ids).duplicated()
    if dup.any():
        raise ScenarioError(f"scenario id {ids[int(np.argmax(dup.to_numpy()))]!r} appears twice in the stress run")
    return sets


def _cat(values, categories=None) -> pd.Categorical:
    return pd.Categorical(np.asarray(values, dtype=object), categories=categories)


def _scenario_table(sets: list[ScenarioSet]) -> pd.DataFrame:
    from ..pricing import VOL_MODE_NAMES

    parts = []
    for s in sets:
        S, U = s.price_shock.shape
        parts.append(pd.DataFrame({
            "scenario_id": np.repeat(np.asarray(s.scenario_id, dtype=object), U),
            "family": np.repeat(family_of(s.scenario_id), U),
            "label": np.repeat(np.asarray(s.label, dtype=object), U),
            "underlying": np.tile(np.asarray(s.underlyings, dtype=object), S),
            "price_shock": s.price_shock.ravel(),
            "vol_shock": s.vol_shock.ravel(),
            "vol_mode": np.repeat(np.asarray([VOL_MODE_NAMES[int(m)] for m in s.vol_mode], dtype=object), U),
            "horizon_days": float(s.horizon_days),
        }))
    return pd.concat(parts, ignore_index=True)


def run_stress(book: Book, sets: list[ScenarioSet], params: StressParams | None = None, house_params=None,
               backend="auto", market=None) -> StressResult:
    """Run the stress tables of ``book`` under ``sets`` (see the module docstring); ``backend``: a name or an Engine;
    ``market``: the history the house IM and the sensitivity read (a store, a folder, or None for the default)."""
    from ..backends import BackendUnavailable, Engine

    params = params or StressParams()
    if isinstance(backend, Engine):
        engine = backend
    else:
        try:
            engine = Engine(backend)
        except (BackendUnavailable, ValueError) as exc:
            raise StressError(str(exc)) from None
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    # ---- house IM and equity per account
    hp = house_params if house_params is not None else _margin.get_model("house").load_params(None)
    # the account-level IM only: the standalone account × venue legs do not change it (house.finalize)
    hp = replace(hp, cross_venue=False) if getattr(hp, "cross_venue", False) else hp
    house = _margin.compute(book, model="house", params=hp, backend=engine, market=market)
    m = house.margin
    if not np.array_equal(m["account_id"].to_numpy(dtype=object), np.asarray(book.accounts, dtype=object)):
        raise StressError("house margin rows are not in the book's account order")  # the model's contract
    im = m["im_usd"].to_numpy(dtype=np.float64)
    eq = m["equity_usd"].to_numpy(dtype=np.float64)
    timings["house_im"] = time.perf_counter() - t0

    # ---- groups
    A = book.n_accounts
    ag = book.account_groups()
    gcode, gids = pd.factorize(pd.Series(ag.group_id, dtype=object), sort=True)
    gids = np.asarray(gids, dtype=object)
    G = len(gids)
    g_im = np.bincount(gcode, weights=im, minlength=G)
    g_eq = np.bincount(gcode, weights=eq, minlength=G)
    g_n = np.bincount(gcode, minlength=G)
    kinds = np.asarray(ag.kind, dtype=object)

    # ---- losses per scenario set
    t = time.perf_counter()
    ex = Exposure.of(book)
    losses, totals = [], []
    ports, vports = ex.portfolios, ex.by_venue
    entry_acct = np.repeat(np.arange(len(ports)), np.diff(ports.indptr))
    k_code, k_names = pd.factorize(pd.Series(kinds[ports.account_idx[entry_acct]], dtype=object), sort=True)
    v_entry = np.repeat(np.arange(len(vports)), np.diff(vports.indptr))
    v_code, v_names = pd.factorize(pd.Series(np.asarray(vports.key["venue"], dtype=object)[v_entry], dtype=object),
                                   sort=True)
    u_code, u_names = pd.factorize(pd.Series(ex.underlying[ports.instrument_idx], dtype=object), sort=True)
    dims = (("venue", v_names, v_code, vports), ("underlying", u_names, u_code, ports), ("kind", k_names, k_code, ports))
    for sset in sets:  # a handful of families
        P = ex.pnl(sset, engine)
        losses.append(account_losses(ex, P, params.chunk_elements))
        for dim, names, code, pp in dims:
            tl = aggregate_losses(pp.quantity, code, pp.instrument_idx, len(names), P)  # [D, S]
            totals.append(pd.DataFrame({
                "scenario_id": np.tile(np.asarray(sset.scenario_id, dtype=object), len(names)),
                "dimension": dim,
                "key": np.repeat(np.asarray(names, dtype=object), sset.n_scenarios),
                "loss_usd": tl.ravel(),
            }))
    L = np.vstack(losses) if losses else np.zeros((0, A))  # [S, A]: the account_losses column, scenario-major
    del losses
    timings["losses"] = time.perf_counter() - t

    t = time.perf_counter()
    sid = np.concatenate([np.asarray(s.scenario_id, dtype=object) for s in sets])
    label = np.concatenate([np.asarray(s.label, dtype=object) for s in sets])
    fam = family_of(sid)
    S = len(sid)
    U = uncovered(L, eq)
    g_loss = group_sum(L, gcode, G)
    g_unc = group_sum(U, gcode, G)
    order = rank_groups(g_unc)  # group ids are sorted, so the column order breaks ties by id
    cov = cover(g_unc, order)
    rank = np.empty((S, G), dtype=np.int64)
    if G:
        np.put_along_axis(rank, order, np.arange(1, G + 1)[None, :].repeat(S, axis=0), axis=1)

    # ---- tables
    acct_cat = _cat(book.accounts)
    sid_cat = pd.Categorical(sid, categories=pd.unique(sid))
    fam_cat = pd.Categorical(fam)
    account_tab = pd.DataFrame({
        "account_id": pd.Categorical.from_codes(np.tile(acct_cat.codes, S), acct_cat.categories),
        "group_id": pd.Categorical.from_codes(np.tile(gcode, S), pd.Index(gids)),
        "scenario_id": pd.Categorical.from_codes(np.repeat(sid_cat.codes, A), sid_cat.categories),
        "family": pd.Categorical.from_codes(np.repeat(fam_cat.codes, A), fam_cat.categories),
        "loss_usd": L.ravel(),
        "im_usd": np.tile(im, S),
        "equity_usd": np.tile(eq, S),
        "uncovered_usd": U.ravel(),
    })
    flat = (np.arange(S)[:, None] * G + order).ravel()  # rows of the [S, G] arrays, ranked per scenario
    gcol = order.ravel()
    group_tab = pd.DataFrame({
        "group_id": pd.Categorical.from_codes(gcol, pd.Index(gids)) if G else _cat([]),
        "scenario_id": pd.Categorical.from_codes(np.repeat(sid_cat.codes, G), sid_cat.categories),
        "family": pd.Categorical.from_codes(np.repeat(fam_cat.codes, G), fam_cat.categories),
        "rank": rank.ravel()[flat],
        "loss_usd": g_loss.ravel()[flat],
        "im_usd": g_im[gcol],
        "equity_usd": g_eq[gcol],
        "uncovered_usd": g_unc.ravel()[flat],
        "accounts": g_n[gcol].astype(np.int64),
    })
    worst_s = np.argmax(g_unc, axis=0) if S else np.zeros(G, dtype=np.int64)  # [G] first worst scenario
    g_worst = g_unc[worst_s, np.arange(G)] if S else np.zeros(G)
    g_rank_order = np.lexsort((np.arange(G), -g_worst))
    g_rank = np.empty(G, dtype=np.int64)
    g_rank[g_rank_order] = np.arange(1, G + 1)
    kind_of_group = pd.Series(kinds).groupby(gcode).agg(lambda k: k.iloc[0] if k.nunique() == 1 else "mixed")
    groups_tab = pd.DataFrame({
        "group_id": gids,
        "kind": kind_of_group.reindex(range(G)).to_numpy(dtype=object),
        "accounts": g_n.astype(np.int64),
        "im_usd": g_im,
        "equity_usd": g_eq,
        "worst_uncovered_usd": g_worst,
        "worst_scenario_id": sid[worst_s] if S else np.empty(G, dtype=object),
        "rank": g_rank,
    }).sort_values(["rank"], kind="stable").reset_index(drop=True)
    res_usd = params.default_fund_usd
    gname = np.append(gids, "")  # index −1 -> ""
    total_loss = L.sum(axis=1) if A else np.zeros(S)
    cover_tab = pd.DataFrame({
        "scenario_id": sid, "family": fam, "label": label,
        "cover1_usd": cov.cover1, "cover1_group": gname[cov.first],
        "cover2_usd": cov.cover2, "cover2_group_1": gname[cov.first], "cover2_group_2": gname[cov.second],
        "total_loss_usd": total_loss, "total_uncovered_usd": U.sum(axis=1) if A else np.zeros(S),
        "accounts_uncovered": (U > 0).sum(axis=1).astype(np.int64),
        "resources_usd": np.nan if res_usd is None else float(res_usd),
    })
    cover_tab["cover1_pct"] = np.nan if res_usd is None else 100.0 * cover_tab["cover1_usd"] / res_usd
    cover_tab["cover2_pct"] = np.nan if res_usd is None else 100.0 * cover_tab["cover2_usd"] / res_usd
    totals_tab = pd.concat(totals, ignore_index=True) if totals else pd.DataFrame(
        columns=["scenario_id", "dimension", "key", "loss_usd"])
    totals_tab.insert(1, "family", family_of(totals_tab["scenario_id"]))
    unc_kind = group_sum(U, pd.factorize(pd.Series(kinds, dtype=object), sort=True)[0], len(k_names)) if A else None
    totals_tab["uncovered_usd"] = np.nan
    if unc_kind is not None and len(k_names):
        kmask = (totals_tab["dimension"] == "kind").to_numpy()
        key_pos = pd.Index(k_names).get_indexer(totals_tab.loc[kmask, "key"])
        s_pos = pd.Index(sid).get_indexer(totals_tab.loc[kmask, "scenario_id"])
        totals_tab.loc[kmask, "uncovered_usd"] = unc_kind[s_pos, key_pos]
    timings["cover"] = time.perf_counter() - t
    tables = {"account_losses": account_tab, "group_losses": group_tab, "groups": groups_tab, "cover": cover_tab,
              "totals": totals_tab, "scenarios": _scenario_table(sets)}

    # ---- overall cover and alerts
    i1, i2 = (cov.worst(1), cov.worst(2)) if S else (0, 0)
    c1 = {"usd": float(cov.cover1[i1]) if S else 0.0, "scenario_id": str(sid[i1]) if S else "",
          "groups": [str(gname[cov.first[i1]])] if S and cov.first[i1] >= 0 else []}
    c2 = {"usd": float(cov.cover2[i2]) if S else 0.0, "scenario_id": str(sid[i2]) if S else "",
          "groups": [str(gname[x]) for x in (cov.first[i2], cov.second[i2]) if x >= 0] if S else []}
    c1["pct_of_resources"] = utilisation(c1["usd"], res_usd)
    c2["pct_of_resources"] = utilisation(c2["usd"], res_usd)
    alerts = threshold_alerts(gids, g_worst, c1["usd"], c2["usd"], c1["groups"], c2["groups"], res_usd,
                              params.early_warning_pct, params.group_call_pct, params.two_largest_pct)

    # ---- reverse stress and sensitivity
    notes = []
    if params.reverse:
        t = time.perf_counter()
        coins = tuple(book_coins(book))
        n_follow = min(params.reverse_groups, G)
        followed = np.lexsort((np.arange(G), -g_im))[:n_follow]
        ev = Evaluator(ex, engine, coins, eq, gcode, G, np.arange(G), followed, params.horizon_days,
                       params.chunk_elements)
        rev = reverse_stress(ev, res_usd, gids[followed], g_im[followed], g_eq[followed],
                             max_down=params.reverse_max_down, max_up=params.reverse_max_up,
                             scan_points=params.reverse_scan_points, tolerance=params.reverse_tolerance)
        tables["reverse"] = rev
        if res_usd is None:
            notes.append("reverse stress (a) skipped: no default resources configured (default_fund_usd)")
        timings["reverse"] = time.perf_counter() - t
        timings["reverse_evaluations"] = float(ev.evaluations)
    if params.sensitivity:
        t = time.perf_counter()
        tables["sensitivity"] = sensitivity(book, hp, engine, params.sensitivity_levels,
                                            params.sensitivity_mpor_days, params.sensitivity_lookback_years,
                                            market=market)
        timings["sensitivity"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    families = {}
    for f in pd.unique(fam):  # a handful of families
        rows = np.flatnonzero(fam == f)
        wl = rows[int(np.argmax(total_loss[rows]))]
        wc = rows[int(np.argmax(cov.cover2[rows]))]
        families[str(f)] = {"scenarios": int(len(rows)), "worst_loss_usd": float(total_loss[wl]),
                            "worst_loss_scenario": str(sid[wl]), "cover2_usd": float(cov.cover2[wc]),
                            "cover2_scenario": str(sid[wc])}
    summary = {
        "kind": NAME,
        "as_of": str(np.datetime_as_string(book.as_of, unit="s")) + "Z",
        "accounts": int(A), "groups": int(G), "scenarios": int(S), "groups_from_accounts_table": book.groups is not None,
        "cover1": c1, "cover2": c2,
        "resources": {"default_fund_usd": res_usd, "early_warning_pct": params.early_warning_pct,
                      "group_call_pct": params.group_call_pct, "two_largest_pct": params.two_largest_pct},
        "alerts": alerts,
        "families": families,
        "house": {"total_im_usd": float(im.sum()), "total_equity_usd": float(eq.sum()),
                  "confidence": hp.confidence, "mpor_days": hp.horizon_days, "lookback_days": hp.lookback_days,
                  "summary": {k: v for k, v in house.summary.items() if k in ("components", "history_date", "apc",
                                                                              "stress_factor", "calls")}},
        "params": asdict(params),
        "sets": [{"family": str(s.metadata.get("family", FILE_FAMILY)),
                  **{k: v for k, v in s.describe().items() if k not in ("metadata", "term")}} for s in sets],
        "backend": engine.name, "backends_used": sorted(set(engine.used)), "gpu_fallbacks": engine.fallbacks,
        "timings": timings,
        "assumptions": list(ASSUMPTIONS),
        "notes": notes,
        "tables": sorted(tables),
    }
    units = {
        "account_losses": {c: "USD" for c in ("loss_usd", "im_usd", "equity_usd", "uncovered_usd")},
        "group_losses": {c: "USD" for c in ("loss_usd", "im_usd", "equity_usd", "uncovered_usd")},
        "groups": {c: "USD" for c in ("im_usd", "equity_usd", "worst_uncovered_usd")},
        "cover": {**{c: "USD" for c in ("cover1_usd", "cover2_usd", "total_loss_usd", "total_uncovered_usd",
                                        "resources_usd")}, "cover1_pct": "%", "cover2_pct": "%"},
        "totals": {"loss_usd": "USD", "uncovered_usd": "USD"},
        "scenarios": {"price_shock": "1", "vol_shock": "1", "horizon_days": "days"},
        "reverse": {"move": "1", "move_safe": "1", "threshold_usd": "USD", "value_usd": "USD", "value_safe_usd": "USD",
                    "tolerance": "1"},
        "sensitivity": {"total_im_usd": "USD", "change_pct": "%", "confidence": "1", "mpor_days": "days",
                        "lookback_days": "days", "lookback_days_used": "days"},
    }
    return StressResult(tables, summary, {k: v for k, v in units.items() if k in tables})


def write_stress(result: StressResult, folder, provenance: dict | None = None) -> dict[str, str]:
    """Write every table as ``folder/<table>.parquet`` (units and provenance in the metadata) and
    ``folder/summary.json`` last; {file name: sha256}."""
    from ..fileio import sha256_file, write_json

    folder = Path(folder)
    written = write_result(MarginResult(NAME, result.tables, result.summary, result.units), folder, provenance)
    summary = dict(result.summary)
    summary["outputs"] = written
    path = write_json(summary, folder / "summary.json")
    written["summary.json"] = sha256_file(path)
    return written




def format_summary(summary: dict, out_dir=None) -> str:
    """The end-of-run text: loss per scenario family, Cover-1/Cover-2 against the resources, alerts."""
    fams = summary.get("families", {})
    res = summary.get("resources", {}).get("default_fund_usd")
    lines = [f"  accounts {summary.get('accounts', 0):,}   groups {summary.get('groups', 0):,}   "
             f"scenarios {summary.get('scenarios', 0):,}   backend {summary.get('backend', '')}"]
    if out_dir is not None:
        lines.insert(0, f"  output    {out_dir}")
    lines.append(f"  {'family':<13}{'scenarios':>10}  {'worst loss (USD)':>18}  {'Cover-2 (USD)':>16}  worst scenario")
    for name, f in fams.items():
        lines.append(f"  {name:<13}{f['scenarios']:>10,}  {f['worst_loss_usd']:>18,.0f}  {f['cover2_usd']:>16,.0f}  "
                     f"{f['worst_loss_scenario']}")
    for key, title in (("cover1", "Cover-1"), ("cover2", "Cover-2")):
        c = summary.get(key, {})
        pct = c.get("pct_of_resources")
        lines.append(f"  {title}  {c.get('usd', 0.0):,.0f} USD in {c.get('scenario_id', '')} "
                     f"(groups {', '.join(c.get('groups', [])) or 'none'})"
                     + (f", {pct:.1f} % of the default resources ({res:,.0f} USD)" if pct is not None else
                        ", default resources not configured"))
    for a in summary.get("alerts", []):
        lines.append(f"  alert {a['level']}: {a['message']}")
    return "\n".join(lines)


__all__ = ["NAME", "ASSUMPTIONS", "StressError", "StressResult", "build_sets", "file_set", "run_stress",
           "write_stress", "format_summary"]
