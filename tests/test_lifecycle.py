"""The margin-call lifecycle across runs: ids, states, ages, due times, history, re-runs and escalation alerts.

Expected states are written out by hand for each step of a small changing book; the batch test runs
three consecutive jobs of a changing book and reads the run store (``calls.parquet``) back.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from gpurisk.actions import lifecycle as lc
from gpurisk.margin.plan import standard_frame


def margin(rows):
    """A margin table from (account, im, equity) rows (MM = 0.8·IM, venue ALL)."""
    acct = [r[0] for r in rows]
    im = np.array([r[1] for r in rows], dtype=float)
    eq = np.array([r[2] for r in rows], dtype=float)
    return standard_frame(acct, "ALL", "house", "USD", im, 0.8 * im, eq)


def by_id(t):
    return t.set_index("account_id")


T0 = pd.Timestamp("2026-03-02T08:00:00Z")


def test_a_call_is_issued_increased_then_met_and_others_follow_their_amounts():
    p = lc.LifecycleParams(due_hours=4.0)
    m1 = margin([("A", 1000, 900), ("B", 1000, 950), ("C", 1000, 2000)])
    t1 = lc.update(m1, None, "house", T0, p)
    assert list(t1["call_id"]) == ["house:A:ALL", "house:B:ALL"]
    assert list(t1["lifecycle"]) == ["new", "new"]
    assert by_id(t1).loc["A", "call_amount_usd"] == 100.0 and by_id(t1).loc["A", "issued_at"] == "2026-03-02T08:00:00Z"
    assert by_id(t1).loc["A", "due_at"] == "2026-03-02T12:00:00Z" and by_id(t1).loc["A", "age_hours"] == 0.0

    m2 = margin([("A", 1000, 890), ("B", 1000, 950), ("C", 1000, 990)])  # call band: 880 <= equity < 1000
    t2 = by_id(lc.update(m2, t1, "house", T0 + pd.Timedelta(hours=1), p))
    assert t2.loc["A", "lifecycle"] == "increased" and t2.loc["A", "change_usd"] == pytest.approx(10.0)
    assert t2.loc["A", "previous_amount_usd"] == 100.0 and t2.loc["A", "age_hours"] == 1.0
    assert t2.loc["B", "lifecycle"] == "outstanding" and t2.loc["C", "lifecycle"] == "new"

    m3 = margin([("A", 1000, 1200), ("B", 1000, 980), ("C", 1000, 850)])  # C falls below 1.10·MM = 880
    t3 = by_id(lc.update(m3, t2.reset_index(), "house", T0 + pd.Timedelta(hours=2), p))
    assert t3.loc["A", "lifecycle"] == "met" and t3.loc["A", "call_amount_usd"] == 0.0 and t3.loc["A", "status"] == "ok"
    assert t3.loc["B", "lifecycle"] == "reduced" and t3.loc["B", "change_usd"] == -30.0
    assert t3.loc["C", "status"] == "reduce_only" and t3.loc["C", "lifecycle"] == "escalated"
    assert t3.loc["C", "escalation"] == "moved to a more severe band"
    hist = json.loads(t3.loc["A", "history"])
    assert [h["lifecycle"] for h in hist] == ["new", "increased", "met"]
    assert [h["amount_usd"] for h in hist] == pytest.approx([100.0, 110.0, 0.0])
    assert [h["as_of"] for h in hist] == ["2026-03-02T08:00:00Z", "2026-03-02T09:00:00Z", "2026-03-02T10:00:00Z"]

    # the next run: the met call is closed; B past its due time is escalated
    m4 = margin([("A", 1000, 1200), ("B", 1000, 980), ("C", 1000, 850)])
    t4 = by_id(lc.update(m4, t3.reset_index(), "house", T0 + pd.Timedelta(hours=4), p))
    assert "A" not in t4.index
    assert t4.loc["B", "lifecycle"] == "escalated" and bool(t4.loc["B", "overdue"])
    assert t4.loc["B", "escalation"].startswith("past due")
    assert t4.loc["C", "lifecycle"] == "outstanding"  # same band and amount, not yet due (issued 09:00)
    s = lc.summarise(t4.reset_index())
    assert s["counts"]["escalated"] == 1 and s["open"] == 2 and s["overdue"] == 1
    assert s["open_amount_usd"] == pytest.approx(20.0 + 150.0)


def test_a_rerun_of_the_same_snapshot_replaces_its_step():
    p = lc.LifecycleParams()
    m1 = margin([("A", 1000, 900), ("B", 1000, 950)])
    t1 = lc.update(m1, None, "house", T0, p)
    m2 = margin([("A", 1000, 800), ("C", 1000, 10)])
    t2 = lc.update(m2, t1, "house", T0 + pd.Timedelta(hours=1), p)
    again = lc.update(m2, t2, "house", T0 + pd.Timedelta(hours=1), p, rerun=True)
    pd.testing.assert_frame_equal(again, t2)
    # and a re-run of the first snapshot from nothing is the first table
    pd.testing.assert_frame_equal(lc.update(m1, t1, "house", T0, p, rerun=True), t1)


def test_call_ids_are_stable_and_per_label_and_venue():
    ids = lc.call_ids("venue", ["A", "A"], ["deribit", "okx"])
    assert list(ids) == ["venue:A:deribit", "venue:A:okx"]


def test_escalation_alerts_name_the_calls():
    p = lc.LifecycleParams(due_hours=1.0)
    t1 = lc.update(margin([("A", 1000, 0)]), None, "house", T0, p)
    t2 = lc.update(margin([("A", 1000, 0)]), t1, "house", T0 + pd.Timedelta(hours=2), p)
    alerts = lc.escalation_alerts(t2, "house", {"job": "j", "run_id": "r", "time": "t"})
    assert len(alerts) == 1 and alerts[0]["alert"] == "call_escalated" and alerts[0]["value"] == 1
    assert alerts[0]["examples"][0]["call_id"] == "house:A:ALL"
    assert lc.escalation_alerts(t1, "house", {}) == []


def test_no_calls_at_all_gives_an_empty_table_with_every_column():
    t = lc.update(margin([("A", 1000, 5000)]), None, "house", T0)
    assert t.empty and list(t.columns) == lc.COLUMNS
    t2 = lc.update(margin([("A", 1000, 5000)]), t, "house", T0 + pd.Timedelta(hours=1))
    assert t2.empty and lc.summarise(t2)["open"] == 0


def test_bad_due_hours_is_refused():
    with pytest.raises(ValueError):
        lc.LifecycleParams(due_hours=0.0)


# ----------------------------------------------------------------------------- three runs of a changing book


@pytest.mark.slow
def test_three_runs_of_a_changing_book_read_correctly_in_calls_parquet(tmp_path):
    from gpurisk.batch import RunOptions, run_job
    from gpurisk.batch.cluster import open_client
    from gpurisk.config import load_job
    from test_batch_fixtures import get_model, load_book, write_book_folder, write_job

    book = write_book_folder(tmp_path / "book", 30)
    job = load_job(write_job(tmp_path, n_scenarios=300, extra=""))
    bal = pd.read_parquet(book / "balances.parquet")
    reports = []
    # A00001: equity cut to 1 (a call), then to 0.5 (increased), then 10 M (met); one hour apart
    with open_client(workers=1) as client:
        for hour, amount in ((8, 1.0), (9, 0.5), (10, 1e7)):
            b = bal.copy()
            b.loc[b["account_id"] == "A00001", "amount"] = amount
            b.to_parquet(book / "balances.parquet", index=False)
            (book / "book.toml").write_text(f'as_of = "2026-03-02T{hour:02d}:00:00Z"\n')
            rep = run_job(job, RunOptions(progress=False), client=client, get_model=get_model, book_loader=load_book)
            assert rep.status == "succeeded"
            reports.append(rep)
    tables = [pd.read_parquet(r.run_dir / "calls.parquet") for r in reports]
    rows = [t.set_index("call_id").loc["house:A00001:ALL"] for t in tables]
    assert [r["lifecycle"] for r in rows] == ["new", "increased", "met"]
    assert rows[0]["call_amount_usd"] > 0 and rows[1]["call_amount_usd"] == pytest.approx(rows[0]["call_amount_usd"] + 0.5)
    assert rows[2]["call_amount_usd"] == 0.0 and rows[2]["status"] == "ok"
    assert [r["age_hours"] for r in rows] == [0.0, 1.0, 2.0]
    assert all(r["issued_at"] == "2026-03-02T08:00:00Z" for r in rows)
    assert [h["lifecycle"] for h in json.loads(rows[2]["history"])] == ["new", "increased", "met"]
    # every other call of the first run is still open in the second (only A00001's balance changed; the others'
    # IM moves a little with the as-of) and its state follows its amount
    t1, t2 = tables[0].set_index("call_id"), tables[1].set_index("call_id")
    others = t1.index.drop("house:A00001:ALL")
    assert len(others) and set(t2.loc[others, "lifecycle"]) <= {"outstanding", "increased", "reduced"}
    d = t2.loc[others, "call_amount_usd"] - t1.loc[others, "call_amount_usd"]
    np.testing.assert_allclose(t2.loc[others, "change_usd"], d, rtol=1e-12, atol=1e-9)
    tol = np.maximum(1e-6 * t1.loc[others, "call_amount_usd"].abs(), 0.01)  # LifecycleParams' defaults
    want = np.select([d > tol, d < -tol], ["increased", "reduced"], default="outstanding")
    assert list(t2.loc[others, "lifecycle"]) == list(want)
    # the summary shows the lifecycle
    summ = json.loads((reports[1].run_dir / "summary.json").read_text())
    counts = tables[1]["lifecycle"].value_counts().to_dict()
    assert summ["models"]["house"]["call_lifecycle"]["counts"] == {k: counts.get(k, 0) for k in lc.LIFECYCLE}
    man = json.loads((reports[2].run_dir / "manifest.json").read_text())
    assert "calls.parquet" in man["outputs"]
