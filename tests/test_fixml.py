"""FIXML in (the FIXML 1.1 standard's Position Report example, a CME-style PosRpt with Actn, collateral) and out
(MgnReqmtRpt + CollRpt of a margin result, read back to the same figures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gpurisk.adapters import fixml, fixml_margin
from gpurisk.book import Book
from gpurisk.errors import ConfigError
from gpurisk.margin import compute
from gpurisk.validate import validate

from conftest import TINY_AS_OF, tiny_tables

DATA = Path(__file__).parent / "data" / "adapters" / "fixml"


def _map(path, mapping):
    return fixml.from_fixml([(fixml.read_xml(path), path.name)], fixml.load_mapping(mapping))


def test_fixml_11_standard_position_report_example():
    m = _map(DATA / "fixml11_posrpt_batch.xml", DATA / "occ_mapping.toml")
    pos = m.tables["positions"]
    # three reports of one position (account C, AOL 47.50 call): the last one stands; FIN = 20 long − 10 short
    assert pos[["account_id", "quantity"]].values.tolist() == [["C", 10.0]]
    # SOD and IAS are kept as information, never added
    assert pos.loc[0, "qty_SOD"] == 35.0 and pos.loc[0, "qty_IAS"] == 10.0
    ins = m.tables["instruments"].iloc[0]
    assert (ins["kind"], ins["option_type"], ins["strike"], ins["contract_size"]) == ("option", "call", 47.5, 100.0)
    assert str(ins["expiry"]) == "2003-11-22 21:00:00+00:00"  # 16:00 New York on MatDt (the test mapping)
    assert ins["venue"] == "occ" and ins["underlying"] == "AOL"
    assert m.rejects["reason"].tolist() == ["superseded_report", "superseded_report"]
    assert m.counts["fixml.PosRpt"] == {"input": 3, "mapped": 1, "rejected": 2}
    assert str(m.as_of) == "2003-09-10T00:00:00"


def test_cme_style_position_reports_follow_actn():
    m = _map(DATA / "cme_part17_posrpt.xml", "cme")
    pos = m.tables["positions"].set_index("instrument_id")
    # New (10/25) then New (5/25): the second replaces the first; its omitted EFPs are 0
    assert pos.loc["BTC-20250131", "quantity"] == -20.0 and pos.loc["BTC-20250131", "qty_EP"] == 0.0
    # New (8) then Change (12)
    assert pos.loc["MBT-20250228", "quantity"] == 12.0
    # New then Cancel: no position
    assert "ETH-20250328" not in pos.index
    ins = m.tables["instruments"].set_index("instrument_id")
    assert ins.loc["BTC-20250131", "contract_size"] == 5.0 and ins.loc["MBT-20250228", "contract_size"] == 0.1
    assert str(ins.loc["BTC-20250131", "expiry"]) == "2025-01-31 16:00:00+00:00"  # 4 p.m. London, winter
    assert set(ins["venue"]) == {"cme"}
    mk = m.tables["market"].set_index("instrument_id")["underlying_price"]
    assert mk["BTC-20250131"] == 94580.0
    assert m.tables["balances"][["account_id", "venue", "asset", "amount"]].values.tolist() == \
        [["a123b456", "cme", "USD", 1250000.0]]
    reasons = m.rejects.set_index("value")["reason"].to_dict()
    assert reasons == {"P1": "superseded_report", "P3": "superseded_report", "P5": "superseded_report",
                       "3": "cancelled_report"}
    c = m.counts["fixml.PosRpt"]
    assert c == {"input": 6, "mapped": 2, "rejected": 4}


def test_summer_expiry_is_london_time():
    """MatDt in British Summer Time: 16:00 London is 15:00 UTC."""
    xml = ('<FIXML><PosRpt RptID="1" BizDt="2025-05-01"><Pty ID="A" R="38"/>'
           '<Instrmt Sym="MBT" SecTyp="FUT" MatDt="2025-06-27" Mult="0.1"/><Qty Typ="FIN" Long="1"/></PosRpt></FIXML>')
    m = fixml.from_fixml([(fixml.parse_xml(xml.encode(), "x"), "x")], fixml.load_mapping("cme"))
    assert str(m.tables["instruments"]["expiry"].iloc[0]) == "2025-06-27 15:00:00+00:00"


def test_namespaced_fixml_reads_the_same():
    text = (DATA / "cme_part17_posrpt.xml").read_text().replace('<FIXML v="FIX.5.0SP2">',
                                                                  '<FIXML xmlns="http://www.fixprotocol.org/FIXML-5-0-SP2">')
    m = fixml.from_fixml([(fixml.parse_xml(text.encode(), "ns"), "ns")], fixml.load_mapping("cme"))
    assert sorted(m.tables["positions"]["quantity"]) == [-20.0, 12.0]


@pytest.mark.parametrize("text, match", [
    ('[clearing_house]\nexpiry_time = "25:00"\n', "expiry_time"),
    ('[clearing_house]\ntime_zone = "Mars/Olympus"\n', "time zone"),
    ('[[symbol]]\nsym = "BTC"\nunderlying = "BTC"\nsettlement = "both"\n', "settlement"),
    ('[[symbol]]\nsym = "BTC"\nunderlying = "BTC"\nsettlement = "linear"\ncontract_size = 0\n', "contract_size"),
    ('[[symbol]]\nsym = "BTC"\nsettlement = "linear"\n', "underlying"),
    ('[[symbol]]\nsym = "BTC"\nunderlying = "BTC"\nsettlement = "linear"\ncolour = "red"\n', "colour"),
])
def test_bad_symbol_mappings_are_one_line_errors(tmp_path, text, match):
    p = tmp_path / "m.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        fixml.load_mapping(p)


def test_shipped_mappings_load():
    assert "cme" in fixml.shipped_mappings()
    for name in fixml.shipped_mappings():
        mp = fixml.load_mapping(name)
        assert len(mp.symbols) and mp.symbols["underlying"].notna().all()


# ----------------------------------------------------------------------------- out


@pytest.fixture(scope="module")
def tiny_result():
    clean, _, _ = validate(tiny_tables(), TINY_AS_OF)
    return compute(Book.from_frames(TINY_AS_OF, **clean), model="venue", backend="reference")


def test_margin_reports_read_back_to_the_same_figures(tiny_result, tmp_path):
    paths = fixml_margin.write_margin_reports(tiny_result, tmp_path / "fixml", as_of=TINY_AS_OF, run_id="r1")
    assert sorted(p.name for p in paths) == ["A1.xml", "A2.xml", "A3.xml"]
    back = pd.concat([fixml_margin.read_margin_reports(p.read_bytes(), p) for p in paths], ignore_index=True)
    m = tiny_result.margin
    key = ["account_id", "venue"]
    a = m.assign(venue=m["venue"].astype(str)).sort_values(key).reset_index(drop=True)
    b = back.sort_values(key).reset_index(drop=True)
    assert a[key].astype(str).values.tolist() == b[key].values.tolist()
    for c in ("im", "mm", "excess", "equity", "im_usd", "mm_usd", "excess_usd", "call_amount_usd"):
        np.testing.assert_allclose(b[c].to_numpy(float), a[c].to_numpy(float), rtol=1e-12, atol=0, err_msg=c)
    assert b["status"].tolist() == a["status"].astype(str).tolist()


def test_margin_report_uses_the_standard_margin_amount_types(tiny_result):
    xml = fixml_margin.margin_reports(tiny_result, as_of=TINY_AS_OF)["A2"]
    root = fixml.parse_xml(xml.encode(), "A2")
    msgs = fixml.messages(root, "A2")
    rpts = [e for e in msgs if e.tag == "MgnReqmtRpt"]
    deribit = next(r for r in rpts if any(p.get("R") == "22" and p.get("ID") == "deribit" for p in r.iter("Pty")))
    types = {a.get("Typ"): float(a.get("Amt")) for a in deribit.iter("MgnAmt")}
    row = tiny_result.margin.set_index(["account_id", "venue"]).loc[("A2", "deribit")]
    assert types["11"] == row["im"] and types["4000"] == row["mm"]
    assert "15" not in types and types["14"] == -row["excess"]  # a deficit, as a positive amount
    assert types["13"] == row["call_amount_usd"] > 0
    assert deribit.get("RptTyp") == "0" and deribit.get("BizDt") == "2024-12-31"
    coll = [e for e in msgs if e.tag == "CollRpt"]
    assert len(coll) == len(rpts)


def test_margin_reports_from_a_run_folder(tiny_result, tmp_path):
    from gpurisk.margin.output import write_result

    write_result(tiny_result, tmp_path / "run" / "venue")
    out = fixml_margin.margin_reports(tmp_path / "run" / "venue", as_of=TINY_AS_OF)
    assert sorted(out) == ["A1", "A2", "A3"]
    with pytest.raises(ConfigError, match="margin.parquet"):
        fixml_margin.margin_reports(tmp_path / "nowhere", as_of=TINY_AS_OF)
    with pytest.raises(ConfigError, match="standard column"):
        fixml_margin.margin_reports(tiny_result.margin.drop(columns=["im"]), as_of=TINY_AS_OF)


def test_an_unsafe_account_id_becomes_a_safe_file_name(tiny_result, tmp_path):
    m = tiny_result.margin.copy()
    m["account_id"] = m["account_id"].astype(str).replace({"A1": "../etc/A1"})
    paths = fixml_margin.write_margin_reports(m, tmp_path / "fixml", as_of=TINY_AS_OF)
    assert all(p.parent == tmp_path / "fixml" for p in paths)
    assert any(p.name.startswith("___etc_A1-") for p in paths)


def test_outputs_fixml_job_key(tmp_path):
    from gpurisk.config import parse_job

    job = parse_job({"job": {"name": "j"}, "book": {"path": "b"}, "models": [{"name": "venue"}],
                     "outputs": {"fixml": True}}, tmp_path / "j.toml")
    assert job.outputs.fixml is True
    with pytest.raises(ConfigError, match="outputs"):
        parse_job({"job": {"name": "j"}, "book": {"path": "b"}, "models": [{"name": "venue"}],
                   "outputs": {"fixml": True, "xml": 1}}, tmp_path / "j.toml")


def test_ingest_of_fixml_through_the_command(tmp_path):
    from gpurisk.cli import main
    from gpurisk.io import load_book

    out = tmp_path / "book"
    code = main(["ingest", str(DATA / "cme_part17_posrpt.xml"), "--mapping", "cme", "--out", str(out),
                 "--as-of", "2025-01-12T21:00:00Z"])
    # the CME report carries no index price: the book is written, and validation says what a run will reject
    assert code == 0
    import json

    summary = json.loads((out / "ingest.json").read_text())
    assert summary["records"]["fixml.PosRpt"] == {"input": 6, "mapped": 2, "rejected": 4}
    assert summary["validation"]["rejects_by_reason"].get("unknown_underlying") == 2
    with pytest.raises(Exception):
        load_book(out, strict=True)
