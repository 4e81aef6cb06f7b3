"""FIXML in: Position Reports (``PosRpt``) and Collateral Reports (``CollRpt``), parsed safely; and the
book written back as such reports (round trips).

**Safe XML.** Every file is parsed by ``defusedxml`` with DTDs, entities and external references
forbidden: an XML bomb or an external entity is refused at once with a one-line error, before
anything is expanded; files above ``MAX_XML_BYTES`` are refused unread.

**PosRpt** -> one position per report: the account is the party with role 38 (position account;
FIX 4.4's ``Acct`` attribute otherwise), the clearing firm role 4; the instrument is ``Instrmt``
(``Sym``, ``ID``, ``SecTyp``/``CFI``, ``MatDt``/``MMY``, ``MatTm``, ``StrkPx``, ``PutCall``,
``Mult``, ``Exch``); the quantity is the final one, ``Qty Typ="FIN"``: Long − Short contracts of
``Mult``, in the book's contract size (``contract_size`` of the symbol mapping, default ``Mult``).
Other quantity types (``SOD``, ``IAS``, ...) are kept as information (position columns
``qty_<TYP>``), never added. ``SetPx`` marks a future, perpetual or spot holding (settlement price).

Reports of one position (clearing firm, ``BizDt``, account, instrument) follow ``Actn``
(PosMaintAction): 1 new (replaces all earlier reports; quantity types it omits are 0), 2 change
(its quantity types replace those of the earlier reports), 3 cancel and 4 reverse (the position
is gone). Reports a later one replaces are ``superseded_report``; cancels ``cancelled_report``.

**CollRpt** -> a balance: ``Qty`` of currency ``Ccy`` for the position account, at the venue of
the party with role 22 (exchange) or the mapping's venue.

**Symbol mapping** (a TOML file per clearing house, ``gpurisk/adapters/mappings/``): venue,
underlying, settlement and contract size per ``Sym`` (and optionally ``Exch`` / ``SecTyp``),
expiry time of day and time zone; see docs/interfaces.md. A symbol it does not map is
``unknown_symbol``.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..fileio import read_bytes, read_toml
from .base import (PRIORITY_SPOT, AdapterError, Mapped, Rejector, check_number, number, source_name, text, utc)

#: a FIXML file larger than this is refused unread
MAX_XML_BYTES = 256 * 1024 * 1024
MAPPINGS_DIR = Path(__file__).parent / "mappings"
#: SecTyp -> kind (FIX SecurityType; PERP and SPOT are gpurisk's, FIX has none for them)
SEC_TYPES = {"FUT": "future", "OPT": "option", "OOF": "option", "PERP": "perpetual", "SPOT": "spot",
             "FXSPOT": "spot"}
#: role of a party: position account, clearing firm, exchange
ROLE_ACCOUNT, ROLE_CLEARING_FIRM, ROLE_EXCHANGE = "38", "4", "22"


# ----------------------------------------------------------------------------- mapping


@dataclass(frozen=True)
class Mapping:
    """A clearing house's symbol mapping: ``symbols`` one row per entry (``sym, exch, sec_type, venue,
    underlying, settlement, contract_size, kind, use_id``), defaults for the clearing house."""

    name: str
    venue: str
    expiry_time: str
    time_zone: str
    symbols: pd.DataFrame
    path: str


_ENTRY_KEYS = {"sym", "exch", "sec_type", "venue", "underlying", "settlement", "contract_size", "kind",
               "instrument_id"}


def load_mapping(path) -> Mapping:
    """Read a symbol mapping TOML file (a path, or the name of a shipped one: ``cme``); ConfigError naming
    the file and key on any fault."""
    p = Path(path)
    if not p.suffix and not p.exists():
        p = MAPPINGS_DIR / f"{path}.toml"
    data = read_toml(p, "symbol mapping file")
    where = str(p)
    ch = data.get("clearing_house", {})
    if not isinstance(ch, dict):
        raise ConfigError(f"{where}: clearing_house: expected a table")
    unknown = sorted(set(data) - {"clearing_house", "symbol"}) or sorted(
        set(ch) - {"name", "venue", "expiry_time", "time_zone"})
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}")
    name = str(ch.get("name", p.stem))
    venue = ch.get("venue", p.stem)
    exp_time = ch.get("expiry_time", "00:00")
    tz = ch.get("time_zone", "UTC")
    if not isinstance(exp_time, str) or not _valid_time(exp_time):
        raise ConfigError(f"{where}: clearing_house.expiry_time: expected \"HH:MM\", got {exp_time!r}")
    try:
        ZoneInfo(str(tz))
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{where}: clearing_house.time_zone: unknown time zone {tz!r}") from None
    entries = data.get("symbol", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: symbol: expected an array of tables ([[symbol]])")
    rows = []
    for i, e in enumerate(entries):
        key = f"{where}: symbol[{i}]"
        if not isinstance(e, dict):
            raise ConfigError(f"{key}: expected a table")
        bad = sorted(set(e) - _ENTRY_KEYS)
        if bad:
            raise ConfigError(f"{key}.{bad[0]}: unknown key (allowed: {', '.join(sorted(_ENTRY_KEYS))})")
        for k in ("sym", "underlying", "settlement"):
            if not isinstance(e.get(k), str) or not e[k].strip():
                raise ConfigError(f"{key}.{k}: required text")
        if e["settlement"] not in ("linear", "inverse"):
            raise ConfigError(f"{key}.settlement: must be linear or inverse, got {e['settlement']!r}")
        cs = e.get("contract_size")
        if cs is not None and (isinstance(cs, bool) or not isinstance(cs, (int, float)) or not cs > 0):
            raise ConfigError(f"{key}.contract_size: must be a number > 0, got {cs!r}")
        kind = e.get("kind")
        if kind is not None and kind not in ("spot", "future", "perpetual", "option"):
            raise ConfigError(f"{key}.kind: must be spot, future, perpetual or option, got {kind!r}")
        use = e.get("instrument_id", "symbol")
        if use not in ("symbol", "id"):
            raise ConfigError(f"{key}.instrument_id: must be \"symbol\" or \"id\", got {use!r}")
        rows.append({"sym": e["sym"], "exch": e.get("exch"), "sec_type": e.get("sec_type"),
                     "venue": e.get("venue", venue), "underlying": e["underlying"], "settlement": e["settlement"],
                     "map_size": float(cs) if cs is not None else np.nan, "map_kind": kind, "use_id": use == "id"})
    cols = ["sym", "exch", "sec_type", "venue", "underlying", "settlement", "map_size", "map_kind", "use_id"]
    return Mapping(name=name, venue=str(venue), expiry_time=exp_time, time_zone=str(tz),
                   symbols=pd.DataFrame(rows, columns=cols), path=where)


def _valid_time(s: str) -> bool:
    try:
        _dt.time.fromisoformat(s)
        return True
    except ValueError:
        return False


def shipped_mappings() -> list[str]:
    """Names of the symbol mappings shipped with gpurisk (``--mapping NAME``)."""
    return sorted(p.stem for p in MAPPINGS_DIR.glob("*.toml"))


# ----------------------------------------------------------------------------- safe XML


def parse_xml(data: bytes, source) -> "object":
    """The root element of FIXML bytes, parsed by defusedxml (no DTD, no entities, no external references)."""
    from xml.etree.ElementTree import ParseError

    try:
        from defusedxml import DefusedXmlException
        from defusedxml.ElementTree import fromstring
    except ModuleNotFoundError:
        raise ConfigError("reading FIXML needs defusedxml (pip install defusedxml)") from None
    src = source_name(source)
    if len(data) > MAX_XML_BYTES:
        raise AdapterError(f"{src}: {len(data):,} bytes is above the FIXML limit of {MAX_XML_BYTES:,}")
    try:
        return fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise AdapterError(f"{src}: refused unsafe XML ({type(exc).__name__}: a DTD, entity or external "
                           "reference; FIXML needs none)") from None
    except ParseError as exc:
        raise AdapterError(f"{src}: not well-formed XML ({exc})") from None


def read_xml(path):
    """The parsed FIXML document in file ``path`` (``parse_xml``); ``AdapterError`` naming the file if it cannot be read."""
    p = Path(path)
    return parse_xml(read_bytes(p, "FIXML file", AdapterError, MAX_XML_BYTES), p)


def _local(tag) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def messages(root, source) -> list:
    """The application messages of a FIXML document (inside ``Batch`` or directly under ``FIXML``)."""
    if _local(root.tag) != "FIXML":
        raise AdapterError(f"{source_name(source)}: not a FIXML document (root element <{_local(root.tag)}>)")
    out = []
    for child in root:
        if _local(child.tag) == "Batch":
            out.extend(c for c in child if _local(c.tag) != "Hdr")
        elif _local(child.tag) != "Hdr":
            out.append(child)
    return out


def _attrs(el) -> dict:
    return dict(el.attrib)


def _position_record(el) -> dict:
    """One PosRpt as a flat dict: its attributes, party ids by role, Instrmt attributes, quantities by type."""
    rec = {f"@{k}": v for k, v in el.attrib.items()}
    for child in el:
        tag = _local(child.tag)
        if tag == "Pty":
            role = child.get("R", child.get("Role"))
            if role is not None and f"pty{role}" not in rec:
                rec[f"pty{role}"] = child.get("ID")
        elif tag == "Instrmt":
            rec.update({f"i.{k}": v for k, v in child.attrib.items()})
        elif tag == "Qty":
            typ = child.get("Typ")
            if typ:
                rec[f"q.{typ}.L"] = child.get("Long")
                rec[f"q.{typ}.S"] = child.get("Short")
    return rec


# ----------------------------------------------------------------------------- in


_POS_COLS = ["@RptID", "@BizDt", "@TxnTm", "@Actn", "@Ccy", "@SetPx", "@Acct", "pty38", "pty4", "pty22",
             "i.Sym", "i.ID", "i.SecTyp", "i.CFI", "i.MMY", "i.MatDt", "i.Mat", "i.MatTm", "i.StrkPx", "i.Strk",
             "i.PutCall", "i.Mult", "i.Exch"]


def _expiry(dates: pd.Series, times: pd.Series, mapping: Mapping) -> pd.Series:
    """UTC expiries from maturity dates (``YYYY-MM-DD``, or ``YYYYMMDD`` of MMY) and an optional ``MatTm``
    (UTC when it ends in Z or names an offset); otherwise the mapping's time of day in its time zone."""
    d = pd.to_datetime(dates.astype(object).where(dates.notna(), None), errors="coerce", format="mixed")
    tz = ZoneInfo(mapping.time_zone)
    h, mi = (int(x) for x in mapping.expiry_time.split(":")[:2])
    local = (d.dt.normalize() + pd.Timedelta(hours=h, minutes=mi))
    default = local.dt.tz_localize(tz, ambiguous="NaT", nonexistent="NaT").dt.tz_convert("UTC")
    tm = times.astype(object).where(times.notna(), None)
    explicit = pd.to_datetime(d.dt.strftime("%Y-%m-%d").where(d.notna()) + "T" + tm.astype(str), utc=True,
                              errors="coerce", format="ISO8601")
    return explicit.where(tm.notna() & explicit.notna(), default).astype("datetime64[ns, UTC]")


def _positions(recs, source, mapping: Mapping, m: Mapped) -> None:
    df = pd.DataFrame(recs)
    for c in _POS_COLS:
        if c not in df.columns:
            df[c] = None
    df = df.astype(object).where(df.notna(), None).reset_index(drop=True)  # an absent attribute is None
    n = len(df)
    rj = Rejector("fixml.PosRpt", df, source, account=df["pty38"].where(df["pty38"].notna(), df["@Acct"]),
                  venue=df["i.Exch"].where(df["i.Exch"].notna(), mapping.venue))
    account = df["pty38"].where(df["pty38"].notna(), df["@Acct"])
    rj.flag(account.isna().to_numpy(), "Pty[R=38]", "missing_value", value=account)
    sym, smiss, _ = text(df["i.Sym"])
    rj.flag(smiss, "Instrmt@Sym", "missing_value", value=df["i.Sym"])
    # the mapping: first entry whose sym matches and whose exch / sec_type filters (when given) match
    mp = mapping.symbols
    cand = df[["i.Sym", "i.Exch", "i.SecTyp"]].assign(_r=np.arange(n)).merge(mp, left_on="i.Sym", right_on="sym",
                                                                              how="inner")
    fit = (cand["exch"].isna() | (cand["exch"] == cand["i.Exch"])) & (
        cand["sec_type"].isna() | (cand["sec_type"] == cand["i.SecTyp"]))
    hit = cand[fit].drop_duplicates("_r").set_index("_r").reindex(range(n))
    rj.context["venue"] = hit["venue"].where(hit["venue"].notna(), df["i.Exch"].where(df["i.Exch"].notna(),
                                                                                     mapping.venue)).to_numpy()
    rj.flag(hit["underlying"].isna().to_numpy(), "Instrmt@Sym", "unknown_symbol", value=df["i.Sym"])
    sectyp = df["i.SecTyp"].map(SEC_TYPES)
    cfi = df["i.CFI"].astype(object).str[:1].map({"F": "future", "O": "option", "E": "spot"})
    kind = hit["map_kind"].where(hit["map_kind"].notna(), sectyp.where(sectyp.notna(), cfi))
    rj.flag(kind.isna().to_numpy(), "Instrmt@SecTyp", "unknown_kind", value=df["i.SecTyp"])
    mult, mmiss, mwrong = number(df["i.Mult"])
    rj.flag(mwrong, "Instrmt@Mult", "wrong_type")
    rj.flag(np.isfinite(mult) & (mult <= 0), "Instrmt@Mult", "non_positive")
    map_size = hit["map_size"].to_numpy(dtype=float)
    rj.flag(~np.isfinite(mult) & ~np.isfinite(map_size), "Instrmt@Mult", "unknown_contract_size", value=df["i.Mult"])
    opt = (kind == "option").to_numpy()
    dated = kind.isin(["future", "option"]).to_numpy()
    mat = df["i.MatDt"].where(df["i.MatDt"].notna(), df["i.Mat"])
    mmy = df["i.MMY"].astype(object).where(df["i.MMY"].astype(str).str.fullmatch(r"\d{8}").fillna(False))
    mat = mat.where(mat.notna(), mmy)
    expiry = _expiry(mat, df["i.MatTm"], mapping)
    rj.flag(dated & expiry.isna().to_numpy(), "Instrmt@MatDt", "missing_value", value=mat)
    strike, kmiss, kwrong = number(df["i.StrkPx"].where(df["i.StrkPx"].notna(), df["i.Strk"]))
    check_number(rj, "Instrmt@StrkPx", np.where(opt, strike, 1.0), kmiss & opt, kwrong & opt, positive=True)
    cfi2 = df["i.CFI"].astype(object).str[1:2].map({"C": "call", "P": "put"})
    otype = df["i.PutCall"].map({"1": "call", "0": "put"})
    otype = otype.where(otype.notna(), cfi2)
    rj.flag(opt & otype.isna().to_numpy(), "Instrmt@PutCall", "missing_value", value=df["i.PutCall"])
    long_, lmiss, lwrong = number(df.get("q.FIN.L", pd.Series([None] * n, dtype=object)))
    short, smiss2, swrong = number(df.get("q.FIN.S", pd.Series([None] * n, dtype=object)))
    rj.flag(lwrong, "Qty[FIN]@Long", "wrong_type")
    rj.flag(swrong, "Qty[FIN]@Short", "wrong_type")
    actn = df["@Actn"].fillna("1").astype(str)
    cancel = actn.isin(["3", "4"]).to_numpy()
    rj.flag(~actn.isin(["1", "2", "3", "4"]).to_numpy(), "@Actn", "wrong_type", value=df["@Actn"])
    rj.flag(lmiss & smiss2 & ~cancel, "Qty[FIN]", "missing_value", value=pd.Series([""] * n))
    fin = np.nan_to_num(long_) - np.nan_to_num(short)
    has_fin = ~(lmiss & smiss2)

    # instrument id: Instrmt@ID (mapping instrument_id = "id"), else Sym-YYYYMMDD[-STRIKE-C|P] (or Sym-PERP / Sym)
    from .symbols import concat, strike_text

    sym_txt = df["i.Sym"].astype(object)
    date = utc(expiry).dt.strftime("%Y%m%d").astype(object)
    cp = otype.map({"call": "C", "put": "P"}).astype(object)
    composed = sym_txt.where(~pd.Series(dated), concat(sym_txt, "-", date))
    composed = composed.where(~pd.Series(opt), concat(composed, "-", strike_text(np.where(opt, strike, np.nan)),
                                                      "-", cp))
    composed = composed.where(kind != "perpetual", concat(sym_txt, "-PERP"))
    use_id = hit["use_id"].fillna(False).to_numpy(dtype=bool)
    rj.flag(use_id & df["i.ID"].isna().to_numpy(), "Instrmt@ID", "missing_value", value=df["i.ID"])
    iid = pd.Series(np.where(use_id, df["i.ID"].astype(object), composed), dtype=object)

    # Actn: the reports of one position, in file order; the last new/cancel starts the final state
    key = concat(df["pty4"].astype(object).fillna(""), "\x1f", df["@BizDt"].astype(object).fillna(""), "\x1f",
                 account.astype(object).fillna(""), "\x1f", iid.fillna(""))
    order = np.arange(n)
    valid = rj.ok.copy()
    g = pd.DataFrame({"key": key, "order": order, "reset": actn.isin(["1", "3", "4"]).to_numpy(), "valid": valid})
    g = g[g["valid"]]
    g["seg"] = g.groupby("key")["reset"].cumsum()
    last_seg = g.groupby("key")["seg"].transform("max")
    final = g[g["seg"] == last_seg]
    head = final.groupby("key")["order"].transform("min")
    head_cancel = pd.Series(cancel, index=range(n)).reindex(head.to_numpy()).to_numpy()
    last = final.groupby("key")["order"].transform("max")
    survivors = final[(final["order"] == last) & ~(head_cancel & (final["order"] == head))]
    superseded = np.zeros(n, bool)
    superseded[g["order"].to_numpy()] = True
    superseded[survivors["order"].to_numpy()] = False
    fin_final = pd.Series(np.where(has_fin, fin, np.nan), index=range(n))
    # the final FIN: the last report of the final segment that states one
    fin_by_key = (final.assign(fin=fin_final.reindex(final["order"]).to_numpy())
                  .dropna(subset=["fin"]).groupby("key")["fin"].last())
    rj.flag(superseded & cancel, "@Actn", "cancelled_report", value=df["@Actn"])
    rj.flag(superseded, "@RptID", "superseded_report", value=df["@RptID"])
    surv = np.zeros(n, bool)
    surv[survivors["order"].to_numpy()] = True
    q_contracts = key.map(fin_by_key).to_numpy(dtype=float)
    rj.flag(surv & cancel, "@Actn", "cancelled_report", value=df["@Actn"])
    rj.flag(surv & ~np.isfinite(q_contracts), "Qty[FIN]", "missing_value", value=pd.Series([""] * n))
    rj.flag(surv & (q_contracts == 0), "Qty[FIN]", "flat_position", value=pd.Series(["0"] * n))
    setpx, _, pwrong = number(df["@SetPx"])
    ok = m.settle(rj)
    times = pd.to_datetime(df["@TxnTm"].where(df["@TxnTm"].notna(), df["@BizDt"]), utc=True, errors="coerce",
                           format="mixed")
    m.seen(times[ok].dt.tz_localize(None).to_numpy(dtype="datetime64[s]"))

    idx = np.flatnonzero(ok)
    settle = hit["settlement"].to_numpy(dtype=object)[idx]
    book_size = np.where(np.isfinite(map_size[idx]), map_size[idx], mult[idx])
    mult_i = np.where(np.isfinite(mult[idx]), mult[idx], book_size)
    inv_opt = opt[idx] & (settle == "inverse")
    qty = q_contracts[idx] * (mult_i / np.where(inv_opt, 1.0, book_size))  # the ratio first: 1 exactly when equal
    ins = pd.DataFrame({"instrument_id": iid.to_numpy()[idx], "venue": hit["venue"].to_numpy(dtype=object)[idx],
                        "underlying": hit["underlying"].to_numpy(dtype=object)[idx], "kind": kind.to_numpy()[idx],
                        "settlement": settle, "contract_size": np.where(inv_opt, 1.0, book_size),
                        "expiry": utc(expiry.where(dated)).to_numpy()[idx],
                        "strike": np.where(opt, strike, np.nan)[idx],
                        "option_type": otype.where(opt, None).to_numpy(dtype=object)[idx]})
    ins["expiry"] = utc(ins["expiry"])
    m.add("instruments", ins)
    pos = pd.DataFrame({"account_id": account.to_numpy(dtype=object)[idx], "instrument_id": ins["instrument_id"],
                        "quantity": qty})
    for c in sorted(c for c in df.columns if c.startswith("q.") and c.endswith(".L") and c != "q.FIN.L"):
        typ = c[2:-2]
        lv, _, _ = number(df[c])
        sv, _, _ = number(df.get(f"q.{typ}.S", pd.Series([None] * n, dtype=object)))
        pos[f"qty_{typ}"] = (np.nan_to_num(lv) - np.nan_to_num(sv))[idx]
    m.add("positions", pos)
    px = np.where(~pwrong & np.isfinite(setpx) & (setpx > 0), setpx, np.nan)[idx]
    marked = np.isfinite(px) & ~opt[idx]
    m.add("market", pd.DataFrame({"instrument_id": ins["instrument_id"][marked], "underlying_price": px[marked],
                                  "implied_vol": np.nan, "priority": PRIORITY_SPOT}))


def _collateral(recs, source, mapping: Mapping, m: Mapped) -> None:
    df = pd.DataFrame(recs)
    for c in ("@RptID", "@Acct", "@Ccy", "@Qty", "@TxnTm", "@BizDt", "pty38", "pty22"):
        if c not in df.columns:
            df[c] = None
    df = df.astype(object).where(df.notna(), None).reset_index(drop=True)
    rj = Rejector("fixml.CollRpt", df, source, account=df["pty38"].where(df["pty38"].notna(), df["@Acct"]),
                  venue=df["pty22"].where(df["pty22"].notna(), mapping.venue))
    account = df["pty38"].where(df["pty38"].notna(), df["@Acct"])
    rj.flag(account.isna().to_numpy(), "Pty[R=38]", "missing_value", value=account)
    ccy, cmiss, _ = text(df["@Ccy"])
    rj.flag(cmiss, "@Ccy", "missing_value")
    qty, qmiss, qwrong = number(df["@Qty"])
    check_number(rj, "@Qty", qty, qmiss, qwrong)
    rj.flag(qty == 0, "@Qty", "zero_balance")
    ok = m.settle(rj)
    times = pd.to_datetime(df["@TxnTm"].where(df["@TxnTm"].notna(), df["@BizDt"]), utc=True, errors="coerce",
                           format="mixed")
    m.seen(times[ok].dt.tz_localize(None).to_numpy(dtype="datetime64[s]"))
    venue = df["pty22"].where(df["pty22"].notna(), mapping.venue)
    m.add("balances", pd.DataFrame({"account_id": account[ok].to_numpy(dtype=object), "venue": venue[ok].to_numpy(),
                                    "asset": ccy[ok], "amount": qty[ok]}))


def _collateral_record(el) -> dict:
    rec = {f"@{k}": v for k, v in el.attrib.items()}
    for child in el:
        if _local(child.tag) == "Pty":
            role = child.get("R", child.get("Role"))
            if role is not None and f"pty{role}" not in rec:
                rec[f"pty{role}"] = child.get("ID")
    return rec


def from_fixml(documents, mapping: Mapping) -> Mapped:
    """Map FIXML documents (``[(root_element, source)]``) with a symbol mapping to partial book tables."""
    m = Mapped()
    for root, source in documents:
        src = source_name(source)
        msgs = messages(root, source)
        pos = [_position_record(el) for el in msgs if _local(el.tag) == "PosRpt"]
        coll = [_collateral_record(el) for el in msgs if _local(el.tag) == "CollRpt"]
        other = [el for el in msgs if _local(el.tag) not in ("PosRpt", "CollRpt")]
        if pos:
            _positions(pos, src, mapping, m)
        if coll:
            _collateral(coll, src, mapping, m)
        if other:
            df = pd.DataFrame({"message": [_local(el.tag) for el in other]})
            rj = Rejector("fixml.other", df, src)
            rj.flag(np.ones(len(df), bool), "message", "unsupported_message")
            m.reject(rj.rejects())
            m.count("fixml.other", len(df), len(df))
        m.sources.append({"path": src, "format": "fixml", "mapping": mapping.path,
                          "messages": {"PosRpt": len(pos), "CollRpt": len(coll), "other": len(other)}})
    return m


# ----------------------------------------------------------------------------- out (round trips)


def _iso(as_of) -> tuple[str, str]:
    ts = pd.Timestamp(as_of)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.strftime("%Y-%m-%d"), ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def _num(x: float) -> str:
    return repr(float(x))


def position_reports(tables: dict, as_of, clearing_house: str = "GPURISK") -> tuple[str, str]:
    """A book's positions and balances as one FIXML batch of PosRpt and CollRpt, plus the symbol mapping
    (TOML text) that reads it back: ``(fixml_text, mapping_text)``.

    Each instrument is written with ``Instrmt@ID`` = its ``instrument_id`` (mapping ``instrument_id = "id"``),
    ``Sym`` = its underlying, ``Exch`` = its venue, ``SecTyp`` FUT / OPT / PERP / SPOT, ``Mult`` = its
    contract size, ``MatDt`` and ``MatTm`` (UTC) = its expiry; the quantity as ``Qty Typ="FIN"``.
    """
    import xml.etree.ElementTree as ET

    biz, txn = _iso(as_of)
    ins = tables["instruments"].drop_duplicates("instrument_id").set_index("instrument_id")
    mk = tables["market"].drop_duplicates("instrument_id").set_index("instrument_id")["underlying_price"]
    root = ET.Element("FIXML", {"v": "FIX.5.0SP2"})
    batch = ET.SubElement(root, "Batch")
    ET.SubElement(batch, "Hdr", {"Snt": txn, "SID": clearing_house})
    sec = {"future": "FUT", "option": "OPT", "perpetual": "PERP", "spot": "SPOT"}
    pos = tables["positions"]
    for i, (acct, iid, q) in enumerate(zip(pos["account_id"], pos["instrument_id"], pos["quantity"]), start=1):
        r = ins.loc[iid]
        ccy = r["underlying"] if r["settlement"] == "inverse" else "USD"
        attrs = {"RptID": str(i), "BizDt": biz, "TxnTm": txn, "ReqTyp": "0", "Ccy": ccy}
        if r["kind"] != "option" and iid in mk.index:
            attrs["SetPx"] = _num(mk.loc[iid])
        el = ET.SubElement(batch, "PosRpt", attrs)
        ET.SubElement(el, "Pty", {"ID": clearing_house, "R": "21"})
        ET.SubElement(el, "Pty", {"ID": str(r["venue"]), "R": ROLE_EXCHANGE})
        ET.SubElement(el, "Pty", {"ID": str(acct), "R": ROLE_ACCOUNT})
        ia = {"Sym": str(r["underlying"]), "ID": str(iid), "Src": "H", "SecTyp": sec[r["kind"]],
              "Exch": str(r["venue"]), "Mult": _num(r["contract_size"])}
        if r["kind"] in ("future", "option"):
            exp = pd.Timestamp(r["expiry"])
            exp = exp.tz_localize("UTC") if exp.tzinfo is None else exp.tz_convert("UTC")
            ia["MatDt"] = exp.strftime("%Y-%m-%d")
            ia["MatTm"] = exp.strftime("%H:%M:%SZ")
        if r["kind"] == "option":
            ia["StrkPx"] = _num(r["strike"])
            ia["PutCall"] = "1" if r["option_type"] == "call" else "0"
        ET.SubElement(el, "Instrmt", ia)
        ET.SubElement(el, "Qty", {"Typ": "FIN", "Long": _num(max(q, 0.0)), "Short": _num(max(-q, 0.0))})
    bal = tables["balances"]
    for i, (acct, venue, asset, amt) in enumerate(zip(bal["account_id"], bal["venue"], bal["asset"],
                                                      bal["amount"]), start=1):
        el = ET.SubElement(batch, "CollRpt", {"RptID": f"C{i}", "Stat": "3", "BizDt": biz, "TxnTm": txn,
                                              "Ccy": str(asset), "Qty": _num(amt)})
        ET.SubElement(el, "Pty", {"ID": str(venue), "R": ROLE_EXCHANGE})
        ET.SubElement(el, "Pty", {"ID": str(acct), "R": ROLE_ACCOUNT})
    batch.set("TotMsg", str(len(batch) - 1))
    xml = ET.tostring(root, encoding="unicode")
    groups = ins.reset_index()[["venue", "underlying", "kind", "settlement"]].drop_duplicates()
    lines = [f'[clearing_house]\nname = "{clearing_house}"\nvenue = "{clearing_house.lower()}"\n'
             'expiry_time = "08:00"\ntime_zone = "UTC"\n']
    for v, u, k, s in groups.itertuples(index=False):
        lines.append(f'[[symbol]]\nsym = "{u}"\nexch = "{v}"\nsec_type = "{sec[k]}"\nvenue = "{v}"\n'
                     f'underlying = "{u}"\nsettlement = "{s}"\ninstrument_id = "id"\n')
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + xml + "\n", "\n".join(lines)


__all__ = ["MAX_XML_BYTES", "MAPPINGS_DIR", "Mapping", "load_mapping", "shipped_mappings", "parse_xml", "read_xml",
           "messages", "from_fixml", "position_reports"]
