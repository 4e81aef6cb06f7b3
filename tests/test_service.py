"""The what-if service as a real server process on 127.0.0.1, driven by a real HTTP client (httpx).

One server (a small book, the house model with FHS, Monte Carlo and stress legs, and the venue
replicas) serves most tests; the SIGTERM test runs its own. Every request loop is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
prom_parser = pytest.importorskip("prometheus_client.parser")

READ_KEY = "alice-0123456789abcdef"
ADMIN_KEY = "ops-fedcba9876543210xyz"
FLOOD_KEY = "flood-0123456789abcdef"
READY_TIMEOUT_S = 300
MAX_TRADES = 50
MAX_BODY = 65536


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_book(folder: Path, accounts: int, seed: int, bump: str | None = None) -> None:
    from gpurisk.generate import generate_book
    from gpurisk.io import TABLES, write_book

    g = generate_book(accounts, seed)
    if bump is not None:  # a later snapshot: one account's first position doubled
        pos = g["positions"]
        i = pos.index[pos["account_id"] == bump][0]
        pos.loc[i, "quantity"] = pos.loc[i, "quantity"] * 2
    write_book(folder, {k: g[k] for k in TABLES}, g["meta"])


def _workdir(root: Path, mc: int = 200) -> Path:
    (root / "snaps").mkdir(parents=True)
    _write_book(root / "snaps" / "2024-12-31T0800Z", 25, 5)
    (root / "job.toml").write_text(f"""
[job]
name = "svc"
kind = "margin"
backend = "reference"
output = "out"

[book]
snapshots = "snaps"

[[models]]
name = "house"
params = {{ mc_scenarios = {mc}, lookback_days = 365 }}

[[models]]
name = "venue"
""")
    keys = root / "keys"
    keys.write_text(f"# name:key[:admin]\nalice:{READ_KEY}\nops:{ADMIN_KEY}:admin\nflood:{FLOOD_KEY}\n")
    keys.chmod(0o600)
    return root


class Server:
    """``gpurisk serve --job`` in a subprocess; its log captured to a file."""

    def __init__(self, root: Path, *extra: str):
        self.root = root
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / f"serve-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if k != "GPURISK_API_KEYS"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gpurisk.cli", "serve", "--job", "job.toml", "--port", str(self.port),
             "--api-keys-file", "keys", "--max-trades", str(MAX_TRADES), "--max-body-bytes", str(MAX_BODY),
             "--rate-limit", "50", "--burst", "60", *extra],
            cwd=root, env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)

    def wait_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"server not ready in {READY_TIMEOUT_S} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def auth(key=READ_KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return _workdir(tmp_path_factory.mktemp("svc"))


@pytest.fixture(scope="module")
def server(root):
    s = Server(root)
    try:
        yield s.wait_ready()
    finally:
        s.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def _account(client) -> tuple[str, str]:
    """An account and one instrument it holds (from the session's book)."""
    from gpurisk.io import load_book

    info = client.get("/v1/session", headers=auth()).json()
    book = load_book(info["source"]["book"]).book
    a = int(book.positions.account_idx[0])
    return str(book.accounts[a]), str(book.instruments.instrument_id[book.positions.instrument_idx[0]])


# ------------------------------------------------------------------ routes


def test_health_checks_need_no_key(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["ready"] is True


@pytest.mark.parametrize("method, path", [("GET", "/metrics"), ("GET", "/v1/session"), ("POST", "/v1/whatif"),
                                          ("POST", "/v1/margin"), ("GET", "/v1/accounts/ACC0000001"),
                                          ("POST", "/v1/admin/reload")])
def test_every_other_route_refuses_without_a_valid_key(client, method, path):
    for headers in ({}, auth("wrong-key-0123456789abc"), {"Authorization": f"Basic {READ_KEY}"}):
        r = client.request(method, path, headers=headers, json={})
        assert r.status_code == 401, (path, headers, r.text)
        assert r.headers.get("www-authenticate") == "Bearer"
        assert r.json()["error"]["field"] == "authorization"


def test_reload_needs_an_admin_key(client):
    r = client.post("/v1/admin/reload", headers=auth())
    assert r.status_code == 403 and "admin" in r.json()["error"]["message"]


def test_whatif_answers_before_and_after(client):
    acc, iid = _account(client)
    r = client.post("/v1/whatif", headers=auth(), json={"account_id": acc, "trades": [
        {"instrument_id": iid, "quantity": 3}]})
    assert r.status_code == 200, r.text
    body = r.json()
    from gpurisk.whatif import BLOCK_KEYS

    assert body["account_id"] == acc and body["currency"] == "USD"
    assert set(BLOCK_KEYS) <= set(body["house"])
    assert body["venues"] and all(set(BLOCK_KEYS) <= set(v) for v in body["venues"].values())
    assert body["attribution"]["available"] is False
    assert body["elapsed_us"] > 0
    look = client.get(f"/v1/accounts/{acc}", headers=auth()).json()
    house_row = look["models"]["house"][0]
    assert house_row["im_usd"] == pytest.approx(body["house"]["im_before"], rel=1e-12)


def test_whatif_over_http_equals_a_full_recomputation(client, root):
    """The service's numbers are the library's: a full recomputation of the modified book agrees to 1e-9."""
    from gpurisk.batch import sources
    from gpurisk.config import load_job
    from gpurisk.margin import compute, get_model
    from gpurisk.validate import validate
    from gpurisk.book import Book
    from gpurisk.io import read_tables

    acc, iid = _account(client)
    new = {"venue": "deribit", "underlying": "BTC", "kind": "option", "settlement": "inverse", "contract_size": 1,
           "expiry": "2025-03-28T08:00:00Z", "strike": 100000, "option_type": "call", "underlying_price": 93500,
           "implied_vol": 0.6}
    body = client.post("/v1/whatif", headers=auth(), json={"account_id": acc, "trades": [
        {"instrument_id": iid, "quantity": -2.5}, {"instrument_id": "BTC-NEW-C", "quantity": -3, "instrument": new}]})
    assert body.status_code == 200, body.text
    body = body.json()
    job = load_job(root / "job.toml")
    info = client.get("/v1/session", headers=auth()).json()
    tables, meta = read_tables(info["source"]["book"])
    tables["instruments"] = tables["instruments"].astype(object)
    import pandas as pd

    tables["instruments"] = pd.concat([tables["instruments"], pd.DataFrame([{
        "instrument_id": "BTC-NEW-C", **{k: new[k] for k in ("venue", "underlying", "kind", "settlement",
                                                               "contract_size", "expiry", "strike", "option_type")}}])],
        ignore_index=True)
    tables["market"] = pd.concat([tables["market"].astype(object), pd.DataFrame([{
        "instrument_id": "BTC-NEW-C", "underlying_price": new["underlying_price"],
        "implied_vol": new["implied_vol"]}])], ignore_index=True)
    tables["positions"] = pd.concat([tables["positions"].astype(object), pd.DataFrame([
        {"account_id": acc, "instrument_id": iid, "quantity": -2.5},
        {"account_id": acc, "instrument_id": "BTC-NEW-C", "quantity": -3.0}])], ignore_index=True)
    clean, rejects, _ = validate(tables, meta["as_of"])
    assert rejects.empty, rejects.to_string()
    book2 = Book.from_frames(meta["as_of"], **clean)
    mj = job.models[0]
    params = sources.model_params(get_model("house"), mj, "house")
    h = compute(book2, "house", params=params, backend="reference").margin.set_index("account_id").loc[acc]
    assert body["house"]["im_after"] == pytest.approx(h["im_usd"], rel=1e-9)
    assert body["house"]["mm_after"] == pytest.approx(h["mm_usd"], rel=1e-9)
    assert body["house"]["status_after"] == h["status"]
    v = compute(book2, "venue", backend="reference").margin
    v = v[v["account_id"] == acc].set_index("venue")
    for venue, row in v.iterrows():
        assert body["venues"][venue]["im_after"] == pytest.approx(row["im_usd"], rel=1e-9, abs=1e-6)
        assert body["venues"][venue]["status_after"] == row["status"]


def test_adhoc_margin(client):
    r = client.post("/v1/margin", headers=auth(), json={
        "positions": [{"instrument_id": "BTC-PERPETUAL", "quantity": 1000}],
        "balances": [{"venue": "deribit", "asset": "BTC", "amount": 1.5}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["house"]["im"] > 0 and body["house"]["equity"] > 0
    assert body["venues"]["deribit"]["methodology"] == "deribit"


BAD = [
    # (what, method, path, headers, body (json-able or raw bytes), status, field)
    ("not JSON", "POST", "/v1/whatif", {"content-type": "application/json"}, b"{nope", 400, "body"),
    ("NaN literal", "POST", "/v1/whatif", {"content-type": "application/json"},
     b'{"account_id": "A", "trades": [{"instrument_id": "BTC-PERPETUAL", "quantity": NaN}]}', 400, "body"),
    ("wrong content type", "POST", "/v1/whatif", {"content-type": "text/plain"}, b"{}", 415, "content-type"),
    ("body not an object", "POST", "/v1/whatif", None, [1, 2], 422, "body"),
    ("unknown field", "POST", "/v1/whatif", None, {"account_id": "A", "trades": [], "colour": 1}, 422, "colour"),
    ("missing account", "POST", "/v1/whatif", None, {"trades": [{"instrument_id": "X", "quantity": 1}]}, 422,
     "account_id"),
    ("unknown account", "POST", "/v1/whatif", None,
     {"account_id": "NOBODY", "trades": [{"instrument_id": "BTC-PERPETUAL", "quantity": 1}]}, 404, "account_id"),
    ("empty trades", "POST", "/v1/whatif", None, {"account_id": "ACC", "trades": []}, 422, "trades"),
    ("too many trades", "POST", "/v1/whatif", None,
     {"account_id": "ACC", "trades": [{"instrument_id": "BTC-PERPETUAL", "quantity": 1}] * (MAX_TRADES + 1)}, 422,
     "trades"),
    ("quantity not a number", "POST", "/v1/whatif", None,
     {"account_id": "ACC", "trades": [{"instrument_id": "BTC-PERPETUAL", "quantity": "ten"}]}, 422,
     "trades[0].quantity"),
    ("zero quantity", "POST", "/v1/whatif", None,
     {"account_id": "ACC", "trades": [{"instrument_id": "BTC-PERPETUAL", "quantity": 0}]}, 422, "trades[0].quantity"),
    ("absurd quantity", "POST", "/v1/whatif", None,
     {"account_id": "ACC", "trades": [{"instrument_id": "BTC-PERPETUAL", "quantity": 1e15}]}, 422,
     "trades[0].quantity"),
    ("unknown instrument", "POST", "/v1/whatif", None,
     {"account_id": "ACC", "trades": [{"instrument_id": "NOPE-PERP", "quantity": 1}]}, 422, "trades[0].instrument_id"),
    ("unknown trade field", "POST", "/v1/whatif", None,
     {"account_id": "ACC", "trades": [{"instrument_id": "BTC-PERPETUAL", "quantity": 1, "px": 3}]}, 422,
     "trades[0].px"),
    ("bad instrument kind", "POST", "/v1/whatif", None,
     {"account_id": "ACC", "trades": [{"instrument_id": "NEW-1", "quantity": 1, "instrument": {
         "venue": "okx", "underlying": "BTC", "kind": "swap", "settlement": "linear", "contract_size": 0.01,
         "underlying_price": 93000}}]}, 422, "trades[0].instrument.kind"),
    ("coin without index", "POST", "/v1/whatif", None,
     {"account_id": "ACC", "trades": [{"instrument_id": "NEW-2", "quantity": 1, "instrument": {
         "venue": "okx", "underlying": "DOGE", "kind": "perpetual", "settlement": "linear", "contract_size": 1,
         "underlying_price": 0.3}}]}, 422, "trades[0].instrument.underlying"),
    ("unknown model", "POST", "/v1/whatif", None,
     {"account_id": "ACC", "trades": [{"instrument_id": "BTC-PERPETUAL", "quantity": 1}], "models": ["nope"]}, 422,
     "models[0]"),
    ("body too large", "POST", "/v1/whatif", None, {"account_id": "ACC", "pad": "x" * (MAX_BODY + 10)}, 413, "body"),
    ("bad balance asset", "POST", "/v1/margin", None,
     {"positions": [{"instrument_id": "BTC-PERPETUAL", "quantity": 1}],
      "balances": [{"venue": "deribit", "asset": "NOPE", "amount": 1}]}, 422, "balances[0].asset"),
    ("unknown route", "GET", "/v1/nothing", None, None, 404, ""),
    ("wrong method", "GET", "/v1/whatif", None, None, 405, ""),
]


@pytest.mark.parametrize("what, method, path, headers, body, status, field", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_4xx_naming_the_field(client, what, method, path, headers, body, status, field):
    acc, _ = _account(client)
    if isinstance(body, dict) and body.get("account_id") == "ACC":
        body = {**body, "account_id": acc}
    h = {**auth(), **(headers or {})}
    if isinstance(body, bytes):
        r = client.request(method, path, headers=h, content=body)
    elif body is None:
        r = client.request(method, path, headers=h)
    else:
        r = client.request(method, path, headers={"content-type": "application/json", **h},
                           content=json.dumps(body).encode())
    assert r.status_code == status, (what, r.status_code, r.text)
    err = r.json()["error"]
    assert err["status"] == status and err["field"] == field, (what, err)
    assert "\n" not in err["message"] and "Traceback" not in r.text


def test_rate_limit_per_key(client):
    codes = []
    for _ in range(150):  # bounded: a burst of 60 then 50/s, from one key
        r = client.get("/v1/session", headers=auth(FLOOD_KEY))
        codes.append(r.status_code)
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
    assert codes.count(200) >= 60 and codes.count(429) > 0
    assert client.get("/v1/session", headers=auth()).status_code == 200  # another key is not limited


def test_metrics_parse_with_the_prometheus_parser(client):
    client.post("/v1/whatif", headers=auth(), json={"account_id": "NOBODY", "trades": [
        {"instrument_id": "BTC-PERPETUAL", "quantity": 1}]})
    text = client.get("/metrics", headers=auth()).text
    fams = {f.name: f for f in prom_parser.text_string_to_metric_families(text)}
    for name in ("gpurisk_http_requests", "gpurisk_http_request_duration_seconds", "gpurisk_session_age_seconds",
                 "gpurisk_http_requests_in_flight", "gpurisk_session_ready", "gpurisk_whatif_seconds"):
        assert name in fams, sorted(fams)
    samples = [s for s in fams["gpurisk_http_requests"].samples if s.name == "gpurisk_http_requests_total"]
    assert any(s.labels == {"route": "/v1/whatif", "method": "POST", "status": "404"} for s in samples)
    assert all("NOBODY" not in s.labels.get("route", "") for s in samples)  # templates, not raw paths
    age = fams["gpurisk_session_age_seconds"].samples[0].value
    assert age >= 0


def test_reload_swaps_the_session_without_a_failed_request(client, root, server):
    acc, _ = _account(client)
    before = client.get(f"/v1/accounts/{acc}", headers=auth()).json()
    old = client.get("/v1/session", headers=auth()).json()
    _write_book(root / "snaps" / "2024-12-31T0900Z", 25, 5, bump=acc)  # a new snapshot lands
    failures, done, stop = [], [0], threading.Event()

    def load():
        with httpx.Client(base_url=server.url, timeout=60) as c:
            deadline = time.monotonic() + 240
            while not stop.is_set() and time.monotonic() < deadline:
                r = c.post("/v1/whatif", headers=auth(), json={"account_id": acc, "trades": [
                    {"instrument_id": "BTC-PERPETUAL", "quantity": 10}]})
                done[0] += 1
                if r.status_code != 200:
                    failures.append((r.status_code, r.text[:200]))
                time.sleep(0.02)

    t = threading.Thread(target=load)
    t.start()
    try:
        r = client.post("/v1/admin/reload", headers=auth(ADMIN_KEY), timeout=240)
    finally:
        time.sleep(0.3)
        stop.set()
        t.join(60)
    assert r.status_code == 200, r.text
    new = client.get("/v1/session", headers=auth()).json()
    assert new["loaded_at"] > old["loaded_at"] and new["source"]["book"].endswith("2024-12-31T0900Z")
    after = client.get(f"/v1/accounts/{acc}", headers=auth()).json()
    assert after["models"]["house"][0]["im_usd"] != before["models"]["house"][0]["im_usd"]
    assert done[0] > 0 and not failures, failures[:3]
    # SIGHUP reloads too (in the background)
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        cur = client.get("/v1/session", headers=auth()).json()
        if cur["loaded_at"] > new["loaded_at"]:
            break
        time.sleep(0.5)
    assert cur["loaded_at"] > new["loaded_at"], "SIGHUP did not reload the session"


def test_keys_never_reach_the_log(client, server):
    client.get("/v1/session", headers=auth())
    client.get("/v1/session", headers=auth("a-wrong-key-that-must-not-be-logged"))
    log = server.log.read_text()
    for k in (READ_KEY, ADMIN_KEY, FLOOD_KEY, "a-wrong-key-that-must-not-be-logged"):
        assert k not in log


# ------------------------------------------------------------------ shutdown and start-up


@pytest.mark.slow
def test_sigterm_answers_every_request_in_flight(tmp_path):
    root = _workdir(tmp_path, mc=0)
    srv = Server(root, "--grace-seconds", "120").wait_ready()
    try:
        K = 3
        results: list = [None] * K

        def slow(j):  # 40 instruments the book does not list: each is validated and revalued on the fly
            positions = [{"instrument_id": f"ETH-SLOW-{j}-{n}", "quantity": 1, "instrument": {
                "venue": "okx", "underlying": "ETH", "kind": "option", "settlement": "linear", "contract_size": 0.1,
                "expiry": "2025-06-27T08:00:00Z", "strike": 2000 + 50 * n + j, "option_type": "put",
                "underlying_price": 3400, "implied_vol": 0.7}} for n in range(40)]
            try:
                with httpx.Client(base_url=srv.url, timeout=300) as c:
                    r = c.post("/v1/margin", headers=auth(), json={"positions": positions})
                    results[j] = (r.status_code, r.json())
            except Exception as exc:  # noqa: BLE001 - recorded, asserted below
                results[j] = ("error", repr(exc))

        threads = [threading.Thread(target=slow, args=(j,)) for j in range(K)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            while time.monotonic() < deadline:  # wait until all K are being served (+1: this metrics request)
                fams = {f.name: f for f in prom_parser.text_string_to_metric_families(
                    c.get("/metrics", headers=auth()).text)}
                if fams["gpurisk_http_requests_in_flight"].samples[0].value >= K + 1:
                    break
                time.sleep(0.05)
        srv.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(300)
        assert all(r is not None and r[0] == 200 for r in results), results
        assert srv.proc.wait(300) == 0
        assert all(r[1]["house"]["im"] >= 0 for r in results)
        with pytest.raises(httpx.TransportError):
            httpx.get(srv.url + "/healthz", timeout=2)
    finally:
        srv.stop()


def _serve_exit(root: Path, *args, env=None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k != "GPURISK_API_KEYS"}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "gpurisk.cli", "serve", "--job", "job.toml", "--port",
                           str(_free_port()), *args], cwd=root, env=e, capture_output=True, text=True, timeout=120)


def test_a_keys_file_others_can_read_is_refused(tmp_path):
    root = _workdir(tmp_path, mc=0)
    (root / "keys").chmod(0o644)
    r = _serve_exit(root, "--api-keys-file", "keys")
    assert r.returncode == 2 and "chmod 600" in r.stderr and "Traceback" not in r.stderr
    assert READ_KEY not in r.stderr


def test_no_keys_is_refused(tmp_path):
    root = _workdir(tmp_path, mc=0)
    r = _serve_exit(root)
    assert r.returncode == 2 and "GPURISK_API_KEYS" in r.stderr and "Traceback" not in r.stderr
    r = _serve_exit(root, env={"GPURISK_API_KEYS": "short:abc"})
    assert r.returncode == 2 and "at least 16" in r.stderr and "abc" not in r.stderr.split("error:", 1)[1]


def test_a_session_that_cannot_load_stops_the_server(tmp_path):
    root = _workdir(tmp_path, mc=0)
    (root / "job.toml").write_text((root / "job.toml").read_text().replace('snapshots = "snaps"',
                                                                         'snapshots = "missing"'))
    r = _serve_exit(root, "--api-keys-file", "keys")
    assert r.returncode == 2 and "missing" in r.stderr and "Traceback" not in r.stderr
