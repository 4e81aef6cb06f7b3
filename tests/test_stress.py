"""Stress runs: losses against an independent revaluation, Cover-1/Cover-2 against an independent computation
(random books with groups, hypothesis), squeezes stress shorts, reverse stress reproduced as a plain scenario,
sensitivity, the CLI and the stress job."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TINY_AS_OF, tiny_tables
from gpurisk.backends import reference
from gpurisk.book import Book
from gpurisk.cli import main
from gpurisk.margin import house
from gpurisk.pricing import pricing_inputs
from gpurisk.scenarios import make_scenario_set
from gpurisk.scenarios.stress import family_set
from gpurisk.stress import StressParams, build_sets, run_stress
from gpurisk.stress.cover import threshold_alerts
from gpurisk.validate import validate

#: a quick house model: FHS over one year plus the named stress, no Monte Carlo
FAST_HOUSE = house.Params(mc_scenarios=0, lookback_days=365)
QUIET = dict(reverse=False, sensitivity=False)


def _book(tables, accounts=None):
    t = dict(tables)
    if accounts is not None:
        t["accounts"] = accounts
    clean, rejects, _ = validate(t, TINY_AS_OF)
    assert len(rejects) == 0
    return Book.from_frames(TINY_AS_OF, **clean)


def _random_book(n, seed, n_groups):
    from gpurisk.generate import generate_book

    g = generate_book(n, seed)
    tables = {k: g[k] for k in ("instruments", "market", "index", "positions", "balances")}
    accts = sorted(set(tables["positions"]["account_id"]) | set(tables["balances"]["account_id"]))
    rng = np.random.default_rng(seed)
    acc = pd.DataFrame({"account_id": accts, "group_id": [f"G{k}" for k in rng.integers(0, n_groups, len(accts))],
                        "kind": rng.choice(["house", "client", "fund"], len(accts))})
    clean, _, _ = validate({**tables, "accounts": acc}, g["meta"]["as_of"])
    return Book.from_frames(g["meta"]["as_of"], **clean)


def independent_cover(al: pd.DataFrame) -> pd.DataFrame:
    """Cover-1/Cover-2 per scenario from the per-account table alone (pandas, no gpurisk code)."""
    a = al.assign(unc=np.maximum(al["loss_usd"] - al["equity_usd"], 0.0))
    g = a.groupby(["scenario_id", "group_id"], observed=True)["unc"].sum().reset_index()
    g = g.sort_values(["scenario_id", "unc", "group_id"], ascending=[True, False, True])
    top = g.groupby("scenario_id", observed=True).head(2)
    c1 = top.groupby("scenario_id", observed=True)["unc"].max()
    c2 = top.groupby("scenario_id", observed=True)["unc"].sum()
    return pd.DataFrame({"cover1": c1, "cover2": c2})


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(3, 40), seed=st.integers(0, 10_000), n_groups=st.integers(1, 6))
def test_cover_equals_an_independent_computation_on_random_books_with_groups(n, seed, n_groups):
    book = _random_book(n, seed, n_groups)
    params = StressParams(families=("hypothetical", "depeg"), default_fund_usd=1e6, **QUIET)
    r = run_stress(book, build_sets(book, params), params, FAST_HOUSE, backend="reference")
    al = r.tables["account_losses"].astype({"scenario_id": str, "group_id": str})
    want = independent_cover(al)
    cov = r.tables["cover"].set_index("scenario_id")
    got = cov.loc[want.index]
    np.testing.assert_allclose(got["cover1_usd"], want["cover1"], rtol=1e-12, atol=1e-6)
    np.testing.assert_allclose(got["cover2_usd"], want["cover2"], rtol=1e-12, atol=1e-6)
    s = r.summary
    assert s["cover2"]["usd"] == pytest.approx(float(want["cover2"].max()), rel=1e-12, abs=1e-6)
    assert s["cover1"]["usd"] == pytest.approx(float(want["cover1"].max()), rel=1e-12, abs=1e-6)
    # the named groups are the ones with those losses over margin in that scenario
    g = al[al["scenario_id"] == s["cover2"]["scenario_id"]].assign(
        unc=lambda x: np.maximum(x["loss_usd"] - x["equity_usd"], 0.0)).groupby("group_id")["unc"].sum()
    assert sum(g[k] for k in s["cover2"]["groups"]) == pytest.approx(s["cover2"]["usd"], rel=1e-12, abs=1e-6)
    # every account in every scenario, and the group table sums its members
    assert len(al) == book.n_accounts * s["scenarios"]
    gl = r.tables["group_losses"].astype({"scenario_id": str, "group_id": str})
    sums = al.groupby(["scenario_id", "group_id"])["loss_usd"].sum()
    np.testing.assert_allclose(gl.set_index(["scenario_id", "group_id"])["loss_usd"].loc[sums.index], sums, rtol=1e-9,
                               atol=1e-6)
    assert gl.groupby("scenario_id")["rank"].apply(lambda x: sorted(x) == list(range(1, len(x) + 1))).all()


def test_account_losses_equal_an_independent_revaluation_with_collateral():
    book = _book(tiny_tables())
    sset = family_set("hypothetical", ["BTC", "ETH"])
    params = StressParams(families=("hypothetical",), **QUIET)
    r = run_stress(book, [sset], params, FAST_HOUSE, backend="reference")
    al = r.tables["account_losses"]
    # independently: positions by Book.portfolios and the reference backend, collateral = amount × price × shock
    idx, wide = sset.columns_for(list(book.instruments.underlying))
    P = reference.revalue(pricing_inputs(book, idx), wide)
    pos = reference.portfolio_pnl(book.portfolios("account"), P)  # [A, S]
    price = dict(zip(book.market.underlyings, book.market.index_price))
    col = {u: j for j, u in enumerate(wide.underlyings)}
    coll = np.zeros_like(pos)
    for a, asset, amt in zip(book.balances.account_idx, book.balances.asset, book.balances.amount):  # 3 rows
        shock = wide.price_shock[:, col[asset]] if asset in col else 0.0
        coll[a] += amt * price.get(asset, 1.0) * shock
    want = -(pos + coll).T.ravel()  # scenario-major, like the table
    np.testing.assert_allclose(al["loss_usd"].to_numpy(), want, rtol=1e-12, atol=1e-9)
    # closed form: A3 is long 30 BTC-USDT-SWAP contracts of 0.01 BTC at 93,010
    row = (al["account_id"].astype(str) == "A3") & (al["scenario_id"].astype(str) == "hypothetical:BTC_-10%")
    assert float(al.loc[row, "loss_usd"].iloc[0]) == pytest.approx(30 * 0.01 * 93010 * 0.10, rel=1e-12)


def test_chunking_and_account_order_change_nothing():
    book = _random_book(30, 5, 4)
    p1 = StressParams(families=("flash", "depeg"), **QUIET)
    p2 = StressParams(families=("flash", "depeg"), chunk_elements=1000, **QUIET)
    a = run_stress(book, build_sets(book, p1), p1, FAST_HOUSE, backend="reference")
    b = run_stress(book, build_sets(book, p2), p2, FAST_HOUSE, backend="reference")
    pd.testing.assert_frame_equal(a.tables["account_losses"], b.tables["account_losses"])
    pd.testing.assert_frame_equal(a.tables["cover"], b.tables["cover"])


def test_a_short_only_book_loses_in_the_squeezes():
    t = tiny_tables()
    pos = t["positions"]
    t["positions"] = pd.DataFrame({"account_id": ["S1", "S2"], "instrument_id": ["BTC-USDT-SWAP", "BTC-PERPETUAL"],
                                   "quantity": ["-50", "-2000"]}, dtype=object)
    t["balances"] = pd.DataFrame({"account_id": ["S1", "S2"], "venue": ["okx", "deribit"], "asset": ["USDT", "USDT"],
                                  "amount": ["20000", "30000"]}, dtype=object)
    assert len(pos)  # the tiny book had longs; this one is short only
    book = _book(t)
    params = StressParams(families=("historical", "squeeze"), **QUIET)
    r = run_stress(book, build_sets(book, params), params, FAST_HOUSE, backend="reference")
    al = r.tables["account_losses"]
    sq = al[al["family"].astype(str) == "squeeze"]
    assert (sq.groupby("account_id", observed=True)["loss_usd"].max() > 0).all()
    assert r.summary["families"]["squeeze"]["worst_loss_usd"] > 0
    # the crash episodes are gains for shorts
    hist = al[al["family"].astype(str) == "historical"]
    assert hist["loss_usd"].max() < 0


def test_groups_sum_their_members_and_a_surplus_does_not_cover_a_member():
    t = tiny_tables()
    acc = pd.DataFrame({"account_id": ["A1", "A2", "A3"], "group_id": ["G", "G", "H"],
                        "kind": ["house", "client", "fund"]}, dtype=object)
    book = _book(t, acc)
    params = StressParams(families=("hypothetical",), **QUIET)
    r = run_stress(book, build_sets(book, params), params, FAST_HOUSE, backend="reference")
    al = r.tables["account_losses"]
    gl = r.tables["group_losses"].astype({"group_id": str, "scenario_id": str}).set_index(["scenario_id", "group_id"])
    sid = "hypothetical:all_-50%"
    mine = al[(al["scenario_id"].astype(str) == sid) & al["account_id"].astype(str).isin(["A1", "A2"])]
    assert gl.loc[(sid, "G"), "uncovered_usd"] == pytest.approx(mine["uncovered_usd"].sum(), rel=1e-12)
    assert gl.loc[(sid, "G"), "accounts"] == 2
    kinds = r.tables["totals"]
    assert set(kinds.loc[kinds["dimension"] == "kind", "key"]) == {"house", "client", "fund"}


def test_totals_by_venue_and_underlying_add_up_to_the_book_loss():
    book = _random_book(25, 11, 3)
    params = StressParams(families=("hypothetical", "depeg"), **QUIET)
    r = run_stress(book, build_sets(book, params), params, FAST_HOUSE, backend="reference")
    cov = r.tables["cover"].set_index("scenario_id")["total_loss_usd"]
    tot = r.tables["totals"]
    for dim in ("venue", "underlying", "kind"):
        s = tot[tot["dimension"] == dim].groupby("scenario_id")["loss_usd"].sum()
        np.testing.assert_allclose(s.loc[cov.index], cov, rtol=1e-9, atol=1e-6)


def test_threshold_alerts_follow_the_40_45_90_rule():
    ids = np.array(["a", "b", "c"], dtype=object)
    worst = np.array([50.0, 46.0, 10.0])
    al = threshold_alerts(ids, worst, 50.0, 96.0, ["a"], ["a", "b"], 100.0, 40.0, 45.0, 90.0)
    codes = {a["code"]: a for a in al}
    assert codes["early_warning"]["groups"] == ["a", "b"]
    assert codes["supplementary_margin"]["groups"] == ["a", "b"]
    assert "cover2_breach" not in codes and "cover1_breach" not in codes
    al = threshold_alerts(ids, worst, 50.0, 89.0, ["a"], ["a", "b"], 100.0, 40.0, 45.0, 90.0)
    assert {a["code"] for a in al} == {"early_warning"}
    al = threshold_alerts(ids, np.array([120.0, 30.0, 0.0]), 120.0, 150.0, ["a"], ["a", "b"], 100.0, 40.0, 45.0, 90.0)
    assert {"cover1_breach", "cover2_breach"} <= {a["code"] for a in al}
    assert threshold_alerts(ids, worst, 50.0, 96.0, ["a"], ["a", "b"], None, 40.0, 45.0, 90.0) == []


def test_reverse_stress_moves_reproduce_their_thresholds_as_plain_scenarios():
    book = _random_book(40, 3, 5)
    params = StressParams(families=("hypothetical",), default_fund_usd=2e5, reverse=True, reverse_groups=3,
                          reverse_scan_points=40, sensitivity=False)
    r = run_stress(book, build_sets(book, params), params, FAST_HOUSE, backend="reference")
    rev = r.tables["reverse"]
    assert {"cover2", "im_exhausted", "collateral_exhausted"} <= set(rev["target"])
    found = rev[rev["found"] & (rev["move"] != 0.0)]
    assert len(found) > 0
    tol = params.reverse_tolerance
    coins = sorted(set(book.instruments.underlying) | set(book.balances.asset) - {"USDT", "USDC", "USD"})
    for row in found.head(6).itertuples():
        assert abs(row.move - row.move_safe) <= tol
        vals = []
        for mv in (row.move, row.move_safe):
            shock = np.array([[mv if (row.driver == "all" or c == row.driver) else 0.0 for c in coins]])
            sset = make_scenario_set(coins, shock, scenario_id=np.array(["plain"], dtype=object), kind="stress")
            p = StressParams(families=(), **QUIET)
            plain = run_stress(book, [sset], p, FAST_HOUSE, backend="reference")
            if row.target == "cover2":
                vals.append(float(plain.tables["cover"]["cover2_usd"].iloc[0]))
            else:
                gl = plain.tables["group_losses"]
                vals.append(float(gl.loc[gl["group_id"].astype(str) == row.group_id, "loss_usd"].iloc[0]))
        at, safe = vals
        assert at > row.threshold_usd >= safe  # the condition holds at the move and not a tolerance before it
        assert at == pytest.approx(row.value_usd, rel=1e-9, abs=1e-6)
        # the threshold is reproduced to the move tolerance times the slope over the bracket
        slope = abs(at - safe) / max(abs(row.move - row.move_safe), 1e-300)
        assert abs(at - row.threshold_usd) <= slope * tol * 1.0001 + 1e-6


def test_sensitivity_runs_the_house_model_and_says_what_the_history_allows():
    book = _book(tiny_tables())
    params = StressParams(families=("depeg",), reverse=False, sensitivity=True, sensitivity_levels=(0.99, 0.995),
                          sensitivity_mpor_days=(2.0,), sensitivity_lookback_years=(1, 10))
    r = run_stress(book, build_sets(book, params), params, FAST_HOUSE, backend="reference")
    s = r.tables["sensitivity"].set_index("parameter")
    assert s.loc["base", "total_im_usd"] == pytest.approx(r.summary["house"]["total_im_usd"], rel=1e-12)
    assert s.loc["confidence", "total_im_usd"] >= s.loc["base", "total_im_usd"]  # ES is monotone in the level
    ten = r.tables["sensitivity"].query("parameter == 'lookback_years' and value == '10'").iloc[0]
    assert ten["lookback_days_used"] < 3650 and "shipped history gives" in ten["note"]


def test_the_cli_writes_every_table_into_out_and_prints_the_families(tmp_path, capsys):
    from gpurisk.io import write_book

    t = tiny_tables()
    t["positions"].loc[0, "quantity"] = "lots"  # one bad row: a reject, not a crash
    write_book(tmp_path / "book", t, {"as_of": TINY_AS_OF}, fmt="csv")
    out = tmp_path / "out"
    params = tmp_path / "house.toml"
    params.write_text("mc_scenarios = 0\nlookback_days = 365\n", encoding="utf-8")
    rc = main(["stress", str(tmp_path / "book"), "--scenarios", "squeeze", "depeg", "--out", str(out), "--params",
               str(params), "--default-fund-usd", "1e6", "--no-sensitivity", "--backend", "reference"])
    text = capsys.readouterr().out
    assert rc == 0 and "squeeze" in text and "Cover-2" in text
    for name in ("account_losses", "group_losses", "groups", "cover", "totals", "scenarios", "reverse", "rejects"):
        assert (out / f"{name}.parquet").is_file(), name
    s = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert set(s["families"]) == {"squeeze", "depeg"} and s["rejects"] == 1
    assert {"usd", "scenario_id", "groups"} <= set(s["cover2"]) and {"usd", "scenario_id", "groups"} <= set(s["cover1"])
    # results + rejects = inputs: the rejected position is in rejects.parquet, the rest in the book
    rj = pd.read_parquet(out / "rejects.parquet")
    assert len(rj) == 1 and rj["reason"].iloc[0] == "wrong_type"
    from gpurisk.margin.output import read_metadata

    assert read_metadata(out / "account_losses.parquet")["units"]["loss_usd"] == "USD"


@pytest.mark.parametrize("args,match", [
    (["--scenarios", "nope"], "neither a stress family"),
    (["--default-fund-usd", "-5"], "default_fund_usd must be a positive"),
])
def test_cli_errors_are_one_line_and_non_zero(tmp_path, capsys, args, match):
    from gpurisk.io import write_book

    write_book(tmp_path / "book", tiny_tables(), {"as_of": TINY_AS_OF}, fmt="csv")
    rc = main(["stress", str(tmp_path / "book"), "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and match in err and err.count("\n") == 0 and "Traceback" not in err


def test_the_stress_job_writes_its_run_folder_summary_and_report(tmp_path):
    pytest.importorskip("jinja2")
    pytest.importorskip("matplotlib")
    from gpurisk.batch.stress_job import format_stress_summary, run_stress_job
    from gpurisk.config import load_job
    from gpurisk.io import write_book

    write_book(tmp_path / "book", tiny_tables(), {"as_of": TINY_AS_OF}, fmt="parquet")
    (tmp_path / "house.toml").write_text("mc_scenarios = 0\nlookback_days = 365\n", encoding="utf-8")
    (tmp_path / "job.toml").write_text(
        "[job]\nname = 'eod'\nkind = 'stress'\nbackend = 'reference'\noutput = 'runs'\n"
        "[book]\npath = 'book'\n"
        "[stress]\nhouse_params_file = 'house.toml'\nfamilies = ['historical', 'squeeze', 'depeg']\n"
        "default_fund_usd = 100000.0\nsensitivity = false\nreverse_groups = 2\n", encoding="utf-8")
    job = load_job(tmp_path / "job.toml")
    rep = run_stress_job(job)
    text = format_stress_summary(rep)
    for fam in ("historical", "squeeze", "depeg"):
        assert fam in text
    assert "Cover-2" in text and "report" in text
    assert (rep.run_dir / "report.html").is_file() and (rep.run_dir / "cover.parquet").is_file()
    man = json.loads((rep.run_dir / "manifest.json").read_text(encoding="utf-8"))
    assert man["status"] == "succeeded" and man["kind"] == "stress" and "report.html" in man["outputs"]
    assert math.isclose(rep.summary["cover2"]["usd"], float(pd.read_parquet(rep.run_dir / "cover.parquet")
                                                             ["cover2_usd"].max()), rel_tol=1e-12)


def test_the_stress_table_of_a_job_file_is_checked(tmp_path):
    from gpurisk.config import load_job
    from gpurisk.errors import ConfigError

    base = "[job]\nname = 'x'\nkind = '{kind}'\n[book]\npath = 'b'\n{models}[stress]\n{body}"
    p = tmp_path / "j.toml"
    p.write_text(base.format(kind="stress", models="", body="families = ['squeeze']\nreverse_groups = 3\n"))
    job = load_job(p)
    assert job.stress.params.families == ("squeeze",) and job.stress.params.reverse_groups == 3 and not job.models
    for body, match in (("colour = 'red'\n", "unknown key 'colour'"),
                        ("families = ['nope']\n", "unknown stress family 'nope'"),
                        ("reverse = 'yes'\n", "reverse"),
                        ("default_fund_usd = -1.0\n", "default_fund_usd must be a positive")):
        p.write_text(base.format(kind="stress", models="", body=body))
        with pytest.raises(ConfigError, match=match):
            load_job(p)
    p.write_text(base.format(kind="margin", models="[[models]]\nname = 'house'\n", body="reverse = false\n"))
    with pytest.raises(ConfigError, match="applies to jobs of kind stress"):
        load_job(p)
