"""Malformed inputs, at least ten per adapter: each gives reject rows (input = mapped + rejected) or a one-line
error with a non-zero exit, never a traceback."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest

from gpurisk.adapters import ingest as ing
from gpurisk.adapters.base import AdapterError
from gpurisk.cli import main

DATA = Path(__file__).parent / "data" / "adapters"


def _read(name):
    return json.loads((DATA / name).read_text())


def _fails_in_one_line(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def _rejected(result, reason, column=None):
    r = result.rejects
    hit = r[r["reason"] == reason]
    assert len(hit), f"no {reason} reject in {r[['table', 'column', 'reason']].to_dict('records')}"
    if column is not None:
        assert column in set(hit["column"]), hit
    assert all(len(str(m).splitlines()) == 1 for m in hit["message"])
    for kind, c in result.summary["records"].items():
        assert c["input"] == c["mapped"] + c["rejected"], kind


# ----------------------------------------------------------------------------- CCXT

CCXT_OK = {"symbol": "BTC/USD:BTC", "contracts": 50, "contractSize": 10, "side": "long", "markPrice": 36560.02,
           "timestamp": 1699578548021}


@pytest.mark.parametrize("record, reason, column", [
    ({**CCXT_OK, "contracts": "ten"}, "wrong_type", "contracts"),
    ({k: v for k, v in CCXT_OK.items() if k != "contracts"}, "missing_value", "contracts"),
    ({**CCXT_OK, "symbol": "BTCPERP"}, "unknown_symbol", "symbol"),
    ({**CCXT_OK, "side": "sideways"}, "wrong_type", "side"),
    ({**CCXT_OK, "contracts": -50, "side": "long"}, "side_conflict", "side"),
    ({**CCXT_OK, "symbol": None}, "missing_value", "symbol"),
    ({**CCXT_OK, "contractSize": -10}, "non_positive", "contractSize"),
    ({**CCXT_OK, "symbol": "BTC/USDT"}, "unsupported_instrument", "symbol"),
    ("not a position", "wrong_type", "symbol"),
])
def test_ccxt_bad_position_records_are_rejected(tmp_path, record, reason, column):
    positions = [CCXT_OK, record]
    f = tmp_path / "positions.json"
    f.write_text(json.dumps(positions))
    result = ing.ingest([f], fmt="ccxt", venue="deribit", account="A")
    _rejected(result, reason, column)
    assert result.summary["records"]["ccxt.positions"]["input"] == 2


def test_ccxt_bad_balance_and_greeks_are_rejected(tmp_path):
    (tmp_path / "b.json").write_text(json.dumps({"BTC": {"total": [1]}, "USDC": {"total": 10}, "info": {}}))
    (tmp_path / "g.json").write_text(json.dumps([{"symbol": "BTC/USD:BTC-240927-40000-C", "delta": 0.5,
                                                 "vega": 1, "underlyingPrice": 38992.71}]))
    result = ing.ingest([tmp_path / "b.json", tmp_path / "g.json"], fmt="ccxt", venue="deribit", account="A",
                        as_of="2023-11-10T00:00:00Z")
    _rejected(result, "wrong_type", "total")
    _rejected(result, "missing_value", "markImpliedVolatility")


@pytest.mark.parametrize("content, needle", [
    ('[{"symbol": "BTC/USD:BTC", "contracts": 5', "truncated JSON"),
    ('{"foo": 1}', "not a CCXT"),
    ('', "empty file"),
])
def test_ccxt_unreadable_files_fail_in_one_line(tmp_path, capsys, content, needle):
    f = tmp_path / "x.json"
    f.write_text(content)
    _fails_in_one_line(capsys, ["ingest", str(f), "--format", "ccxt", "--venue", "deribit", "--account", "A",
                                "--out", str(tmp_path / "out")], needle)
    assert not (tmp_path / "out").exists()


def test_ccxt_without_venue_or_account_fails_in_one_line(tmp_path, capsys):
    f = tmp_path / "p.json"
    f.write_text(json.dumps([CCXT_OK]))
    _fails_in_one_line(capsys, ["ingest", str(f), "--format", "ccxt", "--account", "A", "--out",
                                str(tmp_path / "o")], "--venue")
    _fails_in_one_line(capsys, ["ingest", str(f), "--format", "ccxt", "--venue", "deribit", "--out",
                                str(tmp_path / "o")], "--account")


# ----------------------------------------------------------------------------- Deribit


def _deribit_files(tmp_path, positions=None, summaries=None, tickers=None, instruments=True):
    pos = _read("deribit/positions.json")
    if positions is not None:
        pos["result"] = positions(copy.deepcopy(pos["result"]))
    acc = _read("deribit/account_summaries.json")
    if summaries is not None:
        acc["result"]["summaries"] = summaries(copy.deepcopy(acc["result"]["summaries"]))
    t = _read("deribit/ticker_option.json")
    if tickers is not None:
        t["result"] = tickers(copy.deepcopy(t["result"]))
    files = {"positions.json": pos, "summaries.json": acc, "ticker.json": t,
             "ticker_perp.json": _read("deribit/ticker_perpetual.json")}
    if instruments:
        files["instruments.json"] = _read("deribit/instruments.json")
    for name, doc in files.items():
        (tmp_path / name).write_text(json.dumps(doc))
    return [tmp_path / n for n in files]


@pytest.mark.parametrize("change, reason, column", [
    (dict(positions=lambda p: [dict(p[0], size="abc")] + p[1:]), "wrong_type", "size"),
    (dict(positions=lambda p: [dict(p[0], instrument_name=None)] + p[1:]), "missing_value", "instrument_name"),
    (dict(positions=lambda p: [dict(p[0], instrument_name="BTC-31FOO25")] + p[1:]), "unknown_symbol",
     "instrument_name"),
    (dict(positions=lambda p: [dict(p[0], direction="up")] + p[1:]), "wrong_type", "direction"),
    (dict(positions=lambda p: [dict(p[0], size=-50)] + p[1:]), "side_conflict", "direction"),
    (dict(positions=lambda p: p + [dict(p[0], instrument_name="BTC_USDC-PERPETUAL")]), "unknown_contract_size",
     "instrument_name"),
    (dict(positions=lambda p: p + ["oops"]), "wrong_type", "instrument_name"),
    (dict(summaries=lambda s: [dict(s[0], equity="nan")] + s[1:]), "non_finite", "equity"),
    (dict(summaries=lambda s: [dict(s[0], currency=7)] + s[1:]), "wrong_type", "currency"),
    (dict(tickers=lambda t: {k: v for k, v in t.items() if k != "mark_iv"}), "missing_value", "mark_iv"),
])
def test_deribit_bad_records_are_rejected(tmp_path, change, reason, column):
    result = ing.ingest(_deribit_files(tmp_path, **change), account="D1")
    _rejected(result, reason, column)


@pytest.mark.parametrize("doc, needle", [
    ({"jsonrpc": "2.0", "error": {"code": 13009, "message": "unauthorized"}}, "unauthorized"),
    ({"jsonrpc": "2.0", "result": [1, 2, 3]}, "not a Deribit"),
    ({"jsonrpc": "2.0", "id": 3}, "without a result"),
])
def test_deribit_unreadable_documents_fail_in_one_line(tmp_path, capsys, doc, needle):
    f = tmp_path / "x.json"
    f.write_text(json.dumps(doc))
    _fails_in_one_line(capsys, ["ingest", str(f), "--format", "deribit", "--account", "D1", "--out",
                                str(tmp_path / "out")], needle)


def test_deribit_positions_without_an_account_fail_in_one_line(tmp_path, capsys):
    files = _deribit_files(tmp_path)
    _fails_in_one_line(capsys, ["ingest", *map(str, files), "--out", str(tmp_path / "out")], "account")


# ----------------------------------------------------------------------------- OKX


def _okx_files(tmp_path, positions=None, balance=None, summary=None, instruments=True):
    pos = _read("okx/positions_net.json")
    if positions is not None:
        pos["data"] = positions(copy.deepcopy(pos["data"]))
    bal = _read("okx/balance.json")
    if balance is not None:
        bal["data"][0]["details"] = balance(copy.deepcopy(bal["data"][0]["details"]))
    opt = _read("okx/opt_summary.json")
    if summary is not None:
        opt["data"] = summary(copy.deepcopy(opt["data"]))
    files = {"positions.json": pos, "balance.json": bal, "opt.json": opt, "mark.json": _read("okx/mark_price.json"),
             "index.json": _read("okx/index_tickers.json")}
    if instruments:
        files["instruments.json"] = _read("okx/instruments.json")
    for name, doc in files.items():
        (tmp_path / name).write_text(json.dumps(doc))
    return [tmp_path / n for n in files]


@pytest.mark.parametrize("change, reason, column", [
    (dict(positions=lambda p: [dict(p[0], pos="x")] + p[1:]), "wrong_type", "pos"),
    (dict(positions=lambda p: [{k: v for k, v in p[0].items() if k != "instId"}] + p[1:]), "missing_value", "instId"),
    (dict(positions=lambda p: [dict(p[0], instId="GARBAGE")] + p[1:]), "unknown_symbol", "instId"),
    (dict(positions=lambda p: [dict(p[0], posSide="up")] + p[1:]), "wrong_type", "posSide"),
    (dict(positions=lambda p: [dict(p[0], instType="MARGIN", instId="BTC-USDT")] + p[1:]), "unsupported_instrument",
     "instType"),
    (dict(positions=lambda p: [dict(p[0], pos="-5", posSide="long")] + p[1:]), "side_conflict", "posSide"),
    (dict(positions=lambda p: p + [dict(p[0], instId="SOL-USDT-SWAP")]), "unknown_contract_size", "instId"),
    (dict(positions=lambda p: [dict(p[0], pos="0")] + p[1:]), "flat_position", "pos"),
    (dict(balance=lambda d: [dict(d[0], eq="")] + d[1:]), "missing_value", "eq"),
    (dict(summary=lambda s: [dict(s[0], fwdPx="-1")]), "non_positive", "fwdPx"),
])
def test_okx_bad_records_are_rejected(tmp_path, change, reason, column):
    result = ing.ingest(_okx_files(tmp_path, **change), account="O1")
    _rejected(result, reason, column)


@pytest.mark.parametrize("doc, needle", [
    ({"code": "50111", "msg": "Invalid OK-ACCESS-KEY", "data": []}, "50111"),
    ({"code": "0", "msg": "", "data": [{"foo": 1}]}, "not an OKX"),
])
def test_okx_unreadable_documents_fail_in_one_line(tmp_path, capsys, doc, needle):
    f = tmp_path / "x.json"
    f.write_text(json.dumps(doc))
    _fails_in_one_line(capsys, ["ingest", str(f), "--format", "okx", "--account", "O1", "--out",
                                str(tmp_path / "out")], needle)


def test_okx_truncated_json_fails_in_one_line(tmp_path, capsys):
    f = tmp_path / "x.json"
    f.write_text((DATA / "okx/positions_net.json").read_text()[:200])
    _fails_in_one_line(capsys, ["ingest", str(f), "--account", "O1", "--out", str(tmp_path / "out")], "JSON")


# ----------------------------------------------------------------------------- FIXML

BOMB = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
<!ENTITY lol9 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">]>
<FIXML><PosRpt RptID="&lol9;"/></FIXML>"""
EXTERNAL = """<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<FIXML><PosRpt RptID="&xxe;"/></FIXML>"""
POS = ('<PosRpt RptID="{rid}" BizDt="2025-01-12" SetPx="94580"{actn}>{pty}'
       '<Instrmt Sym="{sym}" SecTyp="{sec}" MatDt="2025-01-31" Mult="5"{extra}/>{qty}</PosRpt>')
GOOD = dict(rid="1", actn="", pty='<Pty ID="A" R="38"/>', sym="BTC", sec="FUT", extra="",
            qty='<Qty Typ="FIN" Long="3" Short="1"/>')


def _fixml(*messages):
    return '<?xml version="1.0"?><FIXML><Batch>' + "".join(messages) + "</Batch></FIXML>"


@pytest.mark.parametrize("bad, reason, column", [
    (dict(GOOD, rid="2", pty=""), "missing_value", "Pty[R=38]"),
    (dict(GOOD, rid="2", sym="DOGE"), "unknown_symbol", "Instrmt@Sym"),
    (dict(GOOD, rid="2", sym="MBT", qty='<Qty Typ="FIN" Long="abc"/>'), "wrong_type", "Qty[FIN]@Long"),
    (dict(GOOD, rid="2", sym="MBT", qty='<Qty Typ="SOD" Long="3"/>'), "missing_value", "Qty[FIN]"),
    (dict(GOOD, rid="2", sym="MBT", sec="OPT", extra=' PutCall="1"'), "missing_value", "Instrmt@StrkPx"),
    (dict(GOOD, rid="2", sym="MBT", actn=' Actn="9"'), "wrong_type", "@Actn"),
    (dict(GOOD, rid="2", sym="MBT", sec="XYZ"), "unknown_kind", "Instrmt@SecTyp"),
    (dict(GOOD, rid="2", sym="MBT", sec="OPT", extra=' StrkPx="abc" PutCall="0"'), "wrong_type", "Instrmt@StrkPx"),
])
def test_fixml_bad_reports_are_rejected(tmp_path, bad, reason, column):
    f = tmp_path / "p.xml"
    coll = '<CollRpt RptID="C" Ccy="USD" Qty="100"><Pty ID="A" R="38"/></CollRpt>'
    f.write_text(_fixml(POS.format(**GOOD), POS.format(**bad), coll))
    result = ing.ingest([f], mapping="cme")
    _rejected(result, reason, column)


def test_fixml_other_messages_and_bad_collateral_are_rejected(tmp_path):
    f = tmp_path / "p.xml"
    f.write_text(_fixml(POS.format(**GOOD), '<ExecRpt ID="1"/>', '<CollRpt RptID="C" Ccy="USD"><Pty ID="A" R="38"/>'
                        '</CollRpt>', '<CollRpt RptID="D" Ccy="USD" Qty="5"><Pty ID="A" R="38"/></CollRpt>'))
    result = ing.ingest([f], mapping="cme")
    _rejected(result, "unsupported_message", "message")
    _rejected(result, "missing_value", "@Qty")


@pytest.mark.parametrize("text, needle", [
    (BOMB, "refused unsafe XML"),
    (EXTERNAL, "refused unsafe XML"),
    ('<?xml version="1.0"?><FIXML><Batch><PosRpt RptID="1">', "not well-formed"),
    ('<?xml version="1.0"?><Positions/>', "not a FIXML document"),
])
def test_fixml_unsafe_or_broken_xml_fails_in_one_line(tmp_path, capsys, text, needle):
    f = tmp_path / "x.xml"
    f.write_text(text)
    _fails_in_one_line(capsys, ["ingest", str(f), "--mapping", "cme", "--out", str(tmp_path / "out")], needle)


def test_fixml_without_a_mapping_fails_in_one_line(tmp_path, capsys):
    f = tmp_path / "x.xml"
    f.write_text(_fixml(POS.format(**GOOD)))
    _fails_in_one_line(capsys, ["ingest", str(f), "--out", str(tmp_path / "out")], "--mapping")


def test_xml_bomb_is_refused_before_expansion():
    from gpurisk.adapters.fixml import parse_xml

    with pytest.raises(AdapterError, match="refused unsafe XML"):
        parse_xml(BOMB.encode(), "bomb.xml")


def test_a_book_missing_a_table_is_a_one_line_error(tmp_path, capsys):
    """Sources that give no balance (or no position) rows cannot make a book: nothing is written."""
    f = tmp_path / "p.xml"
    f.write_text(_fixml(POS.format(**GOOD)))
    _fails_in_one_line(capsys, ["ingest", str(f), "--mapping", "cme", "--out", str(tmp_path / "out")], "balances")
    assert not (tmp_path / "out").exists()


def test_strict_refuses_rejected_records(tmp_path, capsys):
    f = tmp_path / "p.xml"
    coll = '<CollRpt RptID="C" Ccy="USD" Qty="100"><Pty ID="A" R="38"/></CollRpt>'
    f.write_text(_fixml(POS.format(**GOOD), POS.format(**dict(GOOD, rid="2", sym="DOGE")), coll))
    code = main(["ingest", str(f), "--mapping", "cme", "--strict", "--out", str(tmp_path / "out"),
                 "--as-of", "2025-01-12T00:00:00Z"])
    assert code == 3 and not (tmp_path / "out").exists()
    assert main(["ingest", str(f), "--mapping", "cme", "--out", str(tmp_path / "out")]) == 0
    rej = pd.read_parquet(tmp_path / "out" / "ingest_rejects.parquet")
    assert rej["reason"].tolist() == ["unknown_symbol"]
