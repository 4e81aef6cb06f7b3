"""FIXML out: a margin result as Margin Requirement Reports (``MgnReqmtRpt``) and Collateral Reports (``CollRpt``).

For every row of a margin table (one account × venue; the standard columns of
``gpurisk.margin.plan.STANDARD_COLUMNS``), ``margin_reports`` writes one ``MgnReqmtRpt``
(``RptTyp="0"``, summary) and one ``CollRpt``; ``write_margin_reports`` writes them as one FIXML
batch per account, ``FOLDER/<account>.xml``. The mapping (docs/interfaces.md, "FIXML out"):

- parties: the account as position account (``Pty R="38"``), the venue as exchange (``R="22"``; none
  for a cross-venue ``ALL`` row), the house as clearing organization (``R="21"``);
- ``MgnAmt`` entries (``Typ`` = MarginAmtType, 1644), in the row's ``currency`` and, when it is not
  USD, again in USD: ``11`` initial margin (``im``), ``15`` excess (``excess`` ≥ 0) or ``14``
  deficit (−``excess``), ``13`` margin call (``call_amount_usd``, USD); maintenance margin (``mm``)
  has no MarginAmtType in FIX: it is written with the user-defined value ``MAINTENANCE_TYPE`` (4000);
- ``CollRpt``: ``TotNetValu`` = ``equity``, ``MgnExcess`` = ``excess``, ``CshOutstanding`` =
  the call amount, ``Ccy`` the currency; ``Stat="3"``;
- ``BizDt`` / ``TxnTm`` the book's as-of; ``Txt`` the model and the call status.

``read_margin_reports`` reads such files back into the standard columns (tests and downstream checks).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..fileio import check_name, path_name, write_text
from ..margin.plan import ALL_VENUES, STANDARD_COLUMNS, MarginResult
from .fixml import ROLE_ACCOUNT, ROLE_EXCHANGE, _iso, messages, parse_xml

INITIAL, MARGIN_CALL, DEFICIT, EXCESS = "11", "13", "14", "15"
#: FIX has no MarginAmtType for maintenance margin: gpurisk's user-defined value
MAINTENANCE_TYPE = "4000"
COLLATERAL_ASSIGNED = "3"


def margin_table(result) -> pd.DataFrame:
    """The margin table of a ``MarginResult``, a DataFrame, or a run folder's ``margin.parquet`` (path); its
    standard columns checked (ConfigError naming the missing ones)."""
    if isinstance(result, MarginResult):
        df = result.margin
    elif isinstance(result, pd.DataFrame):
        df = result
    else:
        p = Path(result)
        p = p / "margin.parquet" if p.is_dir() else p
        if not p.is_file():
            raise ConfigError(f"{p}: no margin table (margin.parquet) to report")
        df = pd.read_parquet(p)
    missing = [c for c in STANDARD_COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(f"margin table lacks the standard column(s) {', '.join(missing)}")
    return df


def _num(x) -> str:
    return repr(float(x))


def _amounts(el, row) -> None:
    ccy = str(row["currency"])
    sets = [(ccy, row["im"], row["mm"], row["excess"])]
    if ccy != "USD":
        sets.append(("USD", row["im_usd"], row["mm_usd"], row["excess_usd"]))
    for c, im, mm, excess in sets:
        ET.SubElement(el, "MgnAmt", {"Typ": INITIAL, "Amt": _num(im), "Ccy": c})
        ET.SubElement(el, "MgnAmt", {"Typ": MAINTENANCE_TYPE, "Amt": _num(mm), "Ccy": c})
        if excess >= 0:
            ET.SubElement(el, "MgnAmt", {"Typ": EXCESS, "Amt": _num(excess), "Ccy": c})
        else:
            ET.SubElement(el, "MgnAmt", {"Typ": DEFICIT, "Amt": _num(-excess), "Ccy": c})
    ET.SubElement(el, "MgnAmt", {"Typ": MARGIN_CALL, "Amt": _num(row["call_amount_usd"]), "Ccy": "USD"})


def _parties(el, row, house: str) -> None:
    ET.SubElement(el, "Pty", {"ID": house, "R": "21"})
    if str(row["venue"]) != ALL_VENUES:
        ET.SubElement(el, "Pty", {"ID": str(row["venue"]), "R": ROLE_EXCHANGE})
    ET.SubElement(el, "Pty", {"ID": str(row["account_id"]), "R": ROLE_ACCOUNT})


def margin_reports(result, *, as_of, run_id: str = "gpurisk", house: str = "GPURISK") -> dict[str, str]:
    """``{account_id: FIXML text}``: one batch per account of MgnReqmtRpt + CollRpt per margin row.

    Rows with status ``uncovered`` (no methodology; figures NaN) are left out.
    """
    df = margin_table(result)
    df = df[df["status"].astype(str) != "uncovered"].reset_index(drop=True)
    biz, txn = _iso(as_of)
    out: dict[str, str] = {}
    for account, rows in df.groupby(df["account_id"].astype(str), sort=True):
        root = ET.Element("FIXML", {"v": "FIX.5.0SP2"})
        batch = ET.SubElement(root, "Batch", {"TotMsg": str(2 * len(rows))})
        ET.SubElement(batch, "Hdr", {"Snt": txn, "SID": house})
        for i, row in enumerate(rows.to_dict("records"), start=1):
            rid = f"{run_id}-{account}-{i}"
            txt = f"model={row['model']} status={row['status']}"
            m = ET.SubElement(batch, "MgnReqmtRpt", {"RptID": rid, "RptTyp": "0", "BizDt": biz, "TxnTm": txn,
                                                     "Ccy": str(row["currency"]), "Txt": txt})
            _parties(m, row, house)
            _amounts(m, row)
            c = ET.SubElement(batch, "CollRpt", {"RptID": f"{rid}-C", "Stat": COLLATERAL_ASSIGNED, "BizDt": biz,
                                                 "TxnTm": txn, "Ccy": str(row["currency"]),
                                                 "TotNetValu": _num(row["equity"]), "MgnExcess": _num(row["excess"]),
                                                 "CshOutstanding": _num(row["call_amount_usd"]), "Txt": txt})
            _parties(c, row, house)
        out[account] = '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
    return out


def report_file_name(account: str) -> str:
    """``<account>.xml`` when the account id is a safe file name, else a deterministic safe form of it."""
    try:
        return check_name(f"{account}.xml", "FIXML report file")
    except ConfigError:
        return f"{path_name(account)}.xml"


def write_margin_reports(result, folder, *, as_of, run_id: str = "gpurisk", house: str = "GPURISK") -> list[Path]:
    """Write ``folder/<account>.xml`` for every account of ``result`` (atomically, each); their paths."""
    folder = Path(folder)
    paths = []
    for account, text in margin_reports(result, as_of=as_of, run_id=run_id, house=house).items():
        paths.append(write_text(text, folder / report_file_name(account)))
    return paths


def read_margin_reports(data: bytes, source=None) -> pd.DataFrame:
    """MgnReqmtRpt of a FIXML document back as columns ``account_id, venue, currency, im, mm, excess,
    im_usd, mm_usd, excess_usd, call_amount_usd, equity, status, model`` (with its CollRpt)."""
    root = parse_xml(data, source)
    rows = {}
    for el in messages(root, source):
        tag = el.tag.rsplit("}", 1)[-1]
        if tag not in ("MgnReqmtRpt", "CollRpt"):
            continue
        rid = el.get("RptID", "")
        key = rid[:-2] if tag == "CollRpt" and rid.endswith("-C") else rid
        r = rows.setdefault(key, {})
        for p in el:
            if p.tag.rsplit("}", 1)[-1] == "Pty":
                r["account_id" if p.get("R") == ROLE_ACCOUNT else "venue" if p.get("R") == ROLE_EXCHANGE
                  else "_house"] = p.get("ID")
        txt = dict(kv.split("=", 1) for kv in (el.get("Txt") or "").split() if "=" in kv)
        r.update(model=txt.get("model"), status=txt.get("status"))
        if tag == "CollRpt":
            r["equity"] = float(el.get("TotNetValu"))
            continue
        ccy = el.get("Ccy")
        r["currency"] = ccy
        for a in el:
            if a.tag.rsplit("}", 1)[-1] != "MgnAmt":
                continue
            typ, amt, c = a.get("Typ"), float(a.get("Amt")), a.get("Ccy")
            suffix = "" if c == ccy else "_usd"
            if typ == INITIAL:
                r["im" + suffix] = amt
            elif typ == MAINTENANCE_TYPE:
                r["mm" + suffix] = amt
            elif typ == EXCESS:
                r["excess" + suffix] = amt
            elif typ == DEFICIT:
                r["excess" + suffix] = -amt
            elif typ == MARGIN_CALL:
                r["call_amount_usd"] = amt
    df = pd.DataFrame(list(rows.values()))
    if len(df):
        df["venue"] = df.get("venue", pd.Series([None] * len(df))).fillna(ALL_VENUES)
        for c in ("im", "mm", "excess"):
            if f"{c}_usd" not in df.columns:
                df[f"{c}_usd"] = np.nan
            df[f"{c}_usd"] = df[f"{c}_usd"].where(df[f"{c}_usd"].notna(), df[c])
    return df.drop(columns=[c for c in ("_house",) if c in df.columns])


__all__ = ["MAINTENANCE_TYPE", "margin_table", "margin_reports", "report_file_name", "write_margin_reports",
           "read_margin_reports"]
