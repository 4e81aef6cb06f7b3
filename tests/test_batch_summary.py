"""What a run reports (``gpurisk.batch.summary``) and how it reads (``gpurisk.batch.present``).

Independent source: figures worked out by hand for a five-row margin table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gpurisk.batch import RunReport, format_summary, summary
from gpurisk.margin.plan import MarginResult, standard_frame

#: IM, MM, equity per row (USD): ok, call (eq < IM, ≥ 1.1·MM... ), deficit rows, and one uncovered pair
IM = [100.0, 400.0, 50.0, 300.0, np.nan]
EQ = [150.0, 350.0, 10.0, 300.0, np.nan]


def _result(venue=("deribit", "deribit", "okx", "okx", "kraken"), extra_summary=None):
    m = standard_frame(["A", "B", "C", "D", "E"], np.array(venue, dtype=object), "venue", "USD", IM,
                       0.8 * np.asarray(IM), EQ)
    m.loc[4, "status"] = "uncovered"
    m.loc[4, ["equity", "excess", "equity_usd", "excess_usd", "call_amount_usd"]] = np.nan
    return MarginResult("venue", {"margin": m}, {"uncovered_venues": ["kraken"], **(extra_summary or {})})


def test_model_figures_by_hand():
    f = summary.model_figures(_result())
    assert f["total_im_usd"] == 850.0 and f["total_equity_usd"] == 810.0 and f["total_excess_usd"] == -40.0
    assert f["im_usd_by_venue"] == {"deribit": 500.0, "okx": 350.0}
    # B: 350 < 400 (deficit 50); C: 10 < 50 (deficit 40); D: equal, no deficit
    assert (f["deficits"], f["total_deficit_usd"]) == (2, 90.0)
    assert f["uncovered_pairs"] == 1 and f["uncovered_venues"] == ["kraken"]
    assert f["calls"] == 2 and f["total_call_amount_usd"] == 90.0  # call amount = IM − equity on B and C
    assert [a["account_id"] for a in f["largest_accounts"]] == ["B", "D", "A", "C"]
    assert f["rows_are"] == "account × venue pair" and f["cross_margin_benefit_usd"] is None
    house = summary.model_figures(_result(venue=["ALL"] * 5, extra_summary={"cross_margin_benefit": 12.5,
                                                                          "history_date": "2026-03-01"}))
    assert house["rows_are"] == "account" and house["cross_margin_benefit_usd"] == 12.5
    assert house["history_date"] == "2026-03-01"


def test_change_against_the_previous_run():
    figs = {"venue": {"total_im_usd": 850.0}, "new": {"total_im_usd": 1.0}}
    assert summary.change(figs, None) == {}
    ch = summary.change(figs, {"run_id": "r1", "total_im_usd": {"venue": 1000.0}})
    assert ch == {"venue": {"previous_run": "r1", "previous_total_im_usd": 1000.0, "change_usd": -150.0,
                            "change_pct": pytest.approx(-15.0)}}
    old = summary.change(figs, {"run_id": "r0", "total_im": {"venue": {"deribit": 500.0, "okx": 0.0}}})
    assert old["venue"]["change_pct"] == pytest.approx(70.0)  # an older last-run file: by venue, summed


def test_uncovered_alert_and_summary_text():
    f = summary.model_figures(_result())
    rep = RunReport(job="j", run_id="r2", run_dir=Path("runs/r2"), status="succeeded", started="t", as_of="2026-03-02T08:00:00Z",
                    workers=2, backend="cpu", figures={"venue": f}, total_im={"venue": f["im_usd_by_venue"]},
                    calls={"venue": f["status"]}, counts={"accounts": 5},
                    changes={"venue": {"previous_run": "r1", "change_usd": -150.0, "change_pct": -15.0}})
    (alert,) = summary.uncovered_alerts(rep.as_dict())
    assert alert["alert"] == "uncovered_venue" and alert["venues"] == ["kraken"] and alert["value"] == 1
    text = format_summary(rep)
    for want in ("as of 2026-03-02T08:00:00Z", "equity 810", "IM -150 (-15.0%) vs run r1",
                 "deficits venue: 2 account × venue pair(s) with equity below their requirement, 90 USD short",
                 "uncovered venue: 1 account × venue pair(s) at venue(s) kraken",
                 "largest venue: B@deribit IM 400 excess -50", "call amount 90 USD"):
        assert want in text, want
    assert not summary.uncovered_alerts({"figures": {"house": summary.model_figures(_result(venue=["ALL"] * 5))
                                                     | {"uncovered_venues": [], "uncovered_pairs": 0}}})
