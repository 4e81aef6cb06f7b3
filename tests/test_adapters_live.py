"""Live fetching through ccxt (optional extra ``connect``), on recorded responses: credentials only from the
environment or an owner-only file, and never in logs, outputs or messages. No network is touched: ccxt's
exchange class answers from a recorded transport."""

from __future__ import annotations

import json
import logging
import os

import pytest

ccxt = pytest.importorskip("ccxt", reason="the live tests need the optional extra 'connect' (ccxt)")

from gpurisk.adapters import live  # noqa: E402
from gpurisk.cli import main  # noqa: E402
from gpurisk.errors import ConfigError  # noqa: E402

from test_adapters_ccxt import deribit_exchange  # noqa: E402

SECRET = "s3cr3t-Very-Long-Secret-Value-0123456789"
KEY = "apikey-ABCDEF-0123456789"


def test_credentials_from_the_environment():
    env = {"GPR_API_KEY": KEY, "GPR_SECRET": SECRET}
    assert live.load_credentials("GPR", environ=env) == {"apiKey": KEY, "secret": SECRET}
    with pytest.raises(ConfigError, match="GPR_SECRET is not set") as exc:
        live.load_credentials("GPR", environ={"GPR_API_KEY": KEY})
    assert KEY not in str(exc.value)
    with pytest.raises(ConfigError, match="exactly one"):
        live.load_credentials(environ=env)


def test_credentials_file_must_be_the_owners_alone(tmp_path):
    f = tmp_path / "creds.toml"
    f.write_text(f'api_key = "{KEY}"\nsecret = "{SECRET}"\npassword = "pw-123456"\n')
    os.chmod(f, 0o644)
    with pytest.raises(ConfigError, match="read by others") as exc:
        live.load_credentials(file=f)
    assert SECRET not in str(exc.value)
    os.chmod(f, 0o600)
    assert live.load_credentials(file=f) == {"apiKey": KEY, "secret": SECRET, "password": "pw-123456"}
    f.write_text(f'api_key = "{KEY}"\n')
    with pytest.raises(ConfigError, match="lacks secret"):
        live.load_credentials(file=f)
    f.write_text(f'api_key = "{KEY}"\nsecret = "{SECRET}"\ntoken = "x"\n')
    with pytest.raises(ConfigError, match="token"):
        live.load_credentials(file=f)


def test_mask_hides_credentials_and_urls():
    text = f"error 401 for https://www.deribit.com/api/v2/private/get_positions?key={KEY} with {SECRET}"
    masked = live.mask(text, {"apiKey": KEY, "secret": SECRET})
    assert KEY not in masked and SECRET not in masked and "www.deribit.com" in masked


@pytest.fixture()
def recorded_deribit(monkeypatch):
    """``make_exchange`` builds ccxt's Deribit class answering from recorded responses; remembers its credentials."""
    seen = {}

    def make(exchange_id, creds=None, options=None):
        ex = deribit_exchange()
        ex.apiKey, ex.secret = creds["apiKey"], creds["secret"]
        seen.update(creds)
        return ex

    monkeypatch.setattr(live, "make_exchange", make)
    return seen


def test_ingest_live_never_writes_or_logs_credentials(tmp_path, monkeypatch, recorded_deribit, caplog, capsys):
    monkeypatch.setenv("GPR_API_KEY", KEY)
    monkeypatch.setenv("GPR_SECRET", SECRET)
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "book"
    assert main(["ingest", "--exchange", "deribit", "--account", "D1", "--credentials-env", "GPR",
                 "--out", str(out)]) == 0
    assert recorded_deribit == {"apiKey": KEY, "secret": SECRET}
    summary = json.loads((out / "ingest.json").read_text())
    assert summary["records"]["ccxt.positions"] == {"input": 3, "mapped": 2, "rejected": 1}
    captured = capsys.readouterr()
    texts = [captured.out, captured.err, caplog.text]
    texts += [p.read_bytes().decode("utf-8", "replace") for p in out.rglob("*") if p.is_file()]
    for t in texts:
        assert SECRET not in t and KEY not in t


def test_a_ccxt_error_is_one_line_with_credentials_masked(tmp_path, monkeypatch, capsys):
    def make(exchange_id, creds=None, options=None):
        ex = deribit_exchange()

        def fetch(url, method="GET", headers=None, body=None):
            raise ccxt.AuthenticationError(f"deribit {{\"error\":\"invalid key {creds['apiKey']} / {creds['secret']}\"}}")

        ex.fetch = fetch
        return ex

    monkeypatch.setattr(live, "make_exchange", make)
    monkeypatch.setenv("GPR_API_KEY", KEY)
    monkeypatch.setenv("GPR_SECRET", SECRET)
    code = main(["ingest", "--exchange", "deribit", "--account", "D1", "--credentials-env", "GPR",
                 "--out", str(tmp_path / "book")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "load_markets failed: AuthenticationError" in err
    assert SECRET not in err and KEY not in err
    assert not (tmp_path / "book").exists()


def test_unknown_exchange_and_missing_credentials_are_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NOPE_API_KEY", raising=False)
    code = main(["ingest", "--exchange", "deribit", "--account", "D1", "--credentials-env", "NOPE",
                 "--out", str(tmp_path / "b")])
    assert code == 2 and "NOPE_API_KEY" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown ccxt exchange"):
        live.make_exchange("no-such-exchange", {})
