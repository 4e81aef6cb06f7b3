"""The margin-call lifecycle across intraday runs, kept in the run folders (no server).

A call is a margined row that needs action (status ``call``, ``reduce_only`` or ``liquidation``: the
standard columns of any model's ``margin`` table, so the house's account calls and the venue model's
venue-predicted calls alike). Its id is stable across runs: ``<model label>:<account_id>:<venue>``.
A run writes one ``calls.parquet`` in its folder for all its model labels; the next run reads the
previous successful run's (the run store is the output folder) and classifies every call:

- ``new``: open now, not open in the previous run;
- ``outstanding``: open in both, amount unchanged (within ``amount_rtol`` / ``amount_atol_usd``);
- ``increased`` / ``reduced``: open in both, the amount rose / fell;
- ``met``: open in the previous run, not now (equity restored, or the account left the book); a met
  call appears in this run's table once, with amount 0, and is closed after it;
- ``escalated``: open and either past its due time (``issued_at + due_hours``, measured on the books'
  as-of times) or moved to a more severe band (call → reduce-only → liquidation). An escalation is
  raised as an alert (``escalation_alerts``).

A run of the same book as-of as the previous run is a re-run of that snapshot: it replaces the
previous run's step (the state before it is recovered from its table) instead of ageing the calls,
so running a snapshot twice gives the same table. The table holds no run id (the file's metadata
does): the history is keyed by the books' as-of times.

Columns: ``call_id, label, account_id, venue, model, status`` (the row's margin status now),
``lifecycle, call_amount_usd, previous_amount_usd, previous_status, change_usd, reason, im_usd, mm_usd,
equity_usd, issued_at, due_at`` (ISO 8601 UTC), ``age_hours, overdue, escalation, history`` (JSON: one
entry per run while the call was open: as-of, status, amount, lifecycle). Everything is vectorised
over calls (merges and string columns), never a loop over accounts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..margin.calls import REASONS, STATUSES

LIFECYCLE = ("new", "outstanding", "increased", "reduced", "met", "escalated")
#: the open statuses, least to most severe
OPEN = STATUSES[1:]
SEVERITY = {s: i for i, s in enumerate(STATUSES)}
COLUMNS = ["call_id", "label", "account_id", "venue", "model", "status", "lifecycle", "call_amount_usd",
           "previous_amount_usd", "previous_status", "change_usd", "reason", "im_usd", "mm_usd", "equity_usd",
           "issued_at", "due_at", "age_hours", "overdue", "escalation", "history"]
#: what opens a history entry (``_undo`` finds the last one by it)
ENTRY = '{"as_of": '

UNITS = {"call_amount_usd": "USD", "previous_amount_usd": "USD", "change_usd": "USD", "im_usd": "USD",
         "mm_usd": "USD", "equity_usd": "USD", "age_hours": "hours"}
#: alerts name at most this many calls
ALERT_EXAMPLES = 10


@dataclass(frozen=True)
class LifecycleParams:
    """due_hours: a call is due this long after it is first issued (book as-of time); amount_rtol and
    amount_atol_usd: an amount change within max(rtol·amount, atol) counts as unchanged."""

    due_hours: float = 4.0
    amount_rtol: float = 1e-6
    amount_atol_usd: float = 0.01

    def __post_init__(self):
        if not (self.due_hours > 0.0 and np.isfinite(self.due_hours)):
            raise ValueError(f"due_hours must be a positive number of hours, got {self.due_hours}")
        if self.amount_rtol < 0 or self.amount_atol_usd < 0:
            raise ValueError("amount_rtol and amount_atol_usd must be >= 0")


def call_ids(label: str, account_id, venue) -> np.ndarray:
    """[n] ``<label>:<account_id>:<venue>`` (vectorised)."""
    a = pd.Series(np.asarray(account_id, dtype=object)).astype(str)
    v = pd.Series(np.asarray(venue, dtype=object)).astype(str)
    return (f"{label}:" + a + ":" + v).to_numpy(dtype=object)


def _iso(t: pd.Timestamp) -> str:
    return t.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ") if t.tzinfo else t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _ts(values) -> pd.Series:
    return pd.to_datetime(pd.Series(values, dtype=object), utc=True)


def read_previous(run_dir) -> pd.DataFrame | None:
    """The lifecycle ``calls.parquet`` of a previous run's folder, or None (absent, unreadable, or without
    the lifecycle columns: its calls then start as new)."""
    path = Path(run_dir) / "calls.parquet"
    if not path.is_file():
        return None
    try:
        df = pd.read_parquet(path)
    except Exception:  # noqa: BLE001 - an unreadable previous table starts the lifecycle afresh
        return None
    if not set(COLUMNS) <= set(df.columns):
        return None
    for c in ("call_id", "label", "account_id", "venue", "model", "status", "previous_status", "lifecycle",
              "history", "issued_at"):
        df[c] = df[c].astype(object)
    return df


def _undo(previous: pd.DataFrame) -> pd.DataFrame:
    """The open calls *before* the run that wrote ``previous`` (a re-run of its snapshot replaces its step):
    every call that was not new then, at its previous amount and status, without the last history entry."""
    base = previous[previous["lifecycle"] != "new"].copy()
    base["call_amount_usd"] = base["previous_amount_usd"].to_numpy(dtype=np.float64)
    base["status"] = base["previous_status"].to_numpy(dtype=object)
    base["lifecycle"] = "outstanding"
    parts = base["history"].astype(str).str.rsplit(", " + ENTRY, n=1)  # [before the last entry, the last entry]
    base["history"] = np.where(parts.str.len().to_numpy() > 1, parts.str[0] + "]", "[]").astype(object)
    return base


def update(margin: pd.DataFrame, previous: pd.DataFrame | None, label: str, as_of,
           params: LifecycleParams | None = None, rerun: bool = False) -> pd.DataFrame:
    """This run's calls of model ``label`` (module docstring) from its ``margin`` table and the previous run's
    calls of that label; ``rerun``: this run has the previous run's as-of (it replaces that run's step)."""
    params = params or LifecycleParams()
    if previous is not None and rerun:
        previous = _undo(previous)
    now = pd.Timestamp(as_of)
    now = now.tz_localize("UTC") if now.tzinfo is None else now.tz_convert("UTC")
    now_iso = _iso(now)
    cur = margin[margin["status"].isin(OPEN)]
    cur = pd.DataFrame({
        "call_id": call_ids(label, cur["account_id"], cur["venue"]),
        "account_id": cur["account_id"].astype(object).to_numpy(), "venue": cur["venue"].astype(object).to_numpy(),
        "model": cur["model"].astype(object).to_numpy(), "status": cur["status"].astype(object).to_numpy(),
        "call_amount_usd": cur["call_amount_usd"].to_numpy(np.float64), "im_usd": cur["im_usd"].to_numpy(np.float64),
        "mm_usd": cur["mm_usd"].to_numpy(np.float64), "equity_usd": cur["equity_usd"].to_numpy(np.float64),
    })
    prev = previous if previous is not None else pd.DataFrame(columns=COLUMNS)
    prev = prev[prev["lifecycle"] != "met"]  # met calls closed in the run that met them
    prev = prev[["call_id", "account_id", "venue", "model", "status", "call_amount_usd", "issued_at",
                 "history"]].rename(columns={"status": "prev_status", "call_amount_usd": "previous_amount_usd",
                                             "account_id": "prev_account", "venue": "prev_venue", "model": "prev_model"})
    df = cur.merge(prev, on="call_id", how="outer", indicator=True, sort=True)
    is_new = (df["_merge"] == "left_only").to_numpy()
    is_met = (df["_merge"] == "right_only").to_numpy()
    both = (df["_merge"] == "both").to_numpy()
    # rows only in the previous run: the call was met; the margin row now (if any) gives the figures
    for c, pc in (("account_id", "prev_account"), ("venue", "prev_venue"), ("model", "prev_model")):
        df[c] = np.where(is_met, df[pc].to_numpy(dtype=object), df[c].to_numpy(dtype=object))
    now_rows = margin.assign(call_id=call_ids(label, margin["account_id"], margin["venue"]))
    now_rows = now_rows.drop_duplicates("call_id").set_index("call_id")
    met_ids = df.loc[is_met, "call_id"]
    for c in ("im_usd", "mm_usd", "equity_usd"):
        vals = df[c].to_numpy(dtype=np.float64).copy()
        vals[is_met] = now_rows[c].reindex(met_ids).to_numpy(dtype=np.float64)
        df[c] = vals
    status_now = df["status"].to_numpy(dtype=object).copy()
    status_now[is_met] = now_rows["status"].reindex(met_ids).fillna("ok").astype(object).to_numpy()
    df["status"] = status_now
    amount = np.where(is_met, 0.0, df["call_amount_usd"].to_numpy(dtype=np.float64))
    prev_amt = df["previous_amount_usd"].to_numpy(dtype=np.float64)
    prev_amt = np.where(is_new, np.nan, prev_amt)
    change = np.where(is_new, amount, amount - np.nan_to_num(prev_amt))
    tol = np.maximum(params.amount_rtol * np.abs(np.nan_to_num(prev_amt)), params.amount_atol_usd)
    life = np.select([is_new, is_met, both & (change > tol), both & (change < -tol)],
                     ["new", "met", "increased", "reduced"], default="outstanding").astype(object)
    issued = np.where(is_new, now_iso, df["issued_at"].astype(object).to_numpy())
    issued_ts = _ts(issued)
    due_ts = issued_ts + pd.Timedelta(hours=params.due_hours)
    age_h = ((now - issued_ts).dt.total_seconds() / 3600.0).to_numpy()
    open_now = ~is_met
    overdue = open_now & (due_ts <= now).to_numpy()
    sev_now = pd.Series(status_now).map(SEVERITY).fillna(0).to_numpy()
    sev_prev = pd.Series(df["prev_status"].to_numpy(dtype=object)).map(SEVERITY).fillna(0).to_numpy()
    worse = both & (sev_now > sev_prev)
    escalation = np.select([overdue & worse, overdue, worse],
                           [f"past due ({params.due_hours:g} h) and moved to a more severe band",
                            f"past due ({params.due_hours:g} h after issue)", "moved to a more severe band"],
                           default="").astype(object)
    life = np.where(open_now & (overdue | worse), "escalated", life).astype(object)
    entry = (ENTRY + '"' + now_iso + '", "status": "' + pd.Series(status_now, dtype=object).astype(str) + '", "amount_usd": '
             + pd.Series(amount, dtype=np.float64).map(repr).astype(str) + ', "lifecycle": "'
             + pd.Series(life, dtype=object).astype(str) + '"}')
    old = pd.Series(df["history"].to_numpy(dtype=object)).fillna("[]").astype(str)
    history = np.where(old.to_numpy() == "[]", "[" + entry, old.str.slice(0, -1) + ", " + entry) + "]"
    reason = pd.Series(status_now).map(REASONS).fillna("equity restored (call met)").to_numpy(dtype=object)
    out = pd.DataFrame({
        "call_id": df["call_id"].to_numpy(dtype=object), "label": label,
        "account_id": df["account_id"].to_numpy(dtype=object),
        "venue": df["venue"].to_numpy(dtype=object), "model": df["model"].to_numpy(dtype=object),
        "status": status_now, "lifecycle": life, "call_amount_usd": amount, "previous_amount_usd": prev_amt,
        "previous_status": df["prev_status"].to_numpy(dtype=object), "change_usd": change, "reason": reason, "im_usd": df["im_usd"].to_numpy(np.float64),
        "mm_usd": df["mm_usd"].to_numpy(np.float64), "equity_usd": df["equity_usd"].to_numpy(np.float64),
        "issued_at": issued.astype(object),
        "due_at": due_ts.dt.strftime("%Y-%m-%dT%H:%M:%SZ").to_numpy(dtype=object),
        "age_hours": age_h, "overdue": overdue, "escalation": escalation, "history": history.astype(object),
    })
    return out[COLUMNS].sort_values(["account_id", "venue"], kind="stable").reset_index(drop=True)


def summarise(calls: pd.DataFrame) -> dict:
    """{lifecycle: count}, the open amount (USD), and the escalated and overdue counts."""
    counts = calls["lifecycle"].value_counts()
    open_ = calls["lifecycle"] != "met"
    return {"counts": {k: int(counts.get(k, 0)) for k in LIFECYCLE},
            "open": int(open_.sum()), "open_amount_usd": float(calls.loc[open_, "call_amount_usd"].sum()),
            "overdue": int(calls["overdue"].sum()), "escalated": int((calls["lifecycle"] == "escalated").sum())}


def escalation_alerts(calls: pd.DataFrame, label: str, base: dict) -> list[dict]:
    """One ``call_escalated`` alert per model label with escalated calls (count, amount, the first examples),
    for ``batch.monitoring.raise_alerts``."""
    esc = calls[calls["lifecycle"] == "escalated"]
    if esc.empty:
        return []
    ex = esc.nlargest(ALERT_EXAMPLES, "call_amount_usd")
    examples = [{"call_id": r.call_id, "status": r.status, "amount_usd": float(r.call_amount_usd),
                 "age_hours": float(r.age_hours), "why": r.escalation} for r in ex.itertuples()]
    amount = float(esc["call_amount_usd"].sum())
    return [{**base, "alert": "call_escalated", "severity": "critical", "model": label, "value": int(len(esc)),
             "amount_usd": amount, "examples": examples,
             "message": f"{label}: {len(esc)} margin call(s) escalated ({amount:,.0f} USD open), "
                        f"e.g. {examples[0]['call_id']} ({examples[0]['why']})"}]


__all__ = ["LIFECYCLE", "COLUMNS", "UNITS", "LifecycleParams", "call_ids", "read_previous", "update", "summarise",
           "escalation_alerts"]
