"""Pre-trade what-if latency: in process and over HTTP on 127.0.0.1, with a full recomputation as the baseline.

On a generated sample book (default 100,000 accounts) with the house model (FHS, Monte Carlo and
stress legs, add-ons, APC buffer) and the venue replicas:

- in process (``gpurisk.whatif``): p50 / p99 / p99.9 of the wall time (and of the thread's CPU time,
  which a shared machine does not inflate) of a one-trade what-if on a listed instrument the account holds, on a new instrument (a first sight, revalued on the fly, and a cached one), and
  of a 20-trade basket; house only and house + venues;
- baseline, same run: the same one-trade question answered by a full recomputation of the account
  (``gpurisk.margin.compute`` on a book of that account after the trade, with the session's scenario
  sets, same backend), and the session load (every account, every model) for scale;
- over HTTP (``gpurisk serve`` in a subprocess, ``httpx`` client over TCP on 127.0.0.1, keep-alive):
  the same latency percentiles with one client, and throughput with 1, 8 and 32 concurrent clients.

    python benchmarks/whatif.py [--accounts 100000] [--iterations 2000] [--backend auto] [--json out.json]

Prints a JSON document and markdown tables. Timings depend on the machine and its load: state both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def pct(xs) -> dict:
    a = np.asarray(xs, dtype=np.float64) * 1e6
    return {"n": int(len(a)), "p50_us": float(np.percentile(a, 50)), "p99_us": float(np.percentile(a, 99)),
            "p99_9_us": float(np.percentile(a, 99.9)), "mean_us": float(a.mean()), "max_us": float(a.max())}


def make_book(folder: Path, accounts: int, seed: int) -> Path:
    from gpurisk.generate import generate_book
    from gpurisk.io import TABLES, write_book

    if not (folder / "positions.parquet").is_file():
        g = generate_book(accounts, seed)
        write_book(folder, {k: g[k] for k in TABLES}, g["meta"])
    return folder


def write_job(path: Path, book: Path, backend: str) -> Path:
    path.write_text(f"""[job]
name = "whatif_bench"
kind = "margin"
backend = "{backend}"
output = "out"

[book]
path = "{book}"

[[models]]
name = "house"

[[models]]
name = "venue"
""")
    return path


class Cases:
    """Random what-if questions on the session's book (deterministic from a seed)."""

    def __init__(self, session, seed: int = 0):
        self.s = session
        self.rng = np.random.default_rng(seed)
        b = session.book
        self.book = b
        self.held = np.flatnonzero(np.diff(session._pos_ptr) > 0)
        self.ids = np.asarray(b.instruments.instrument_id, dtype=object)
        idx = dict(zip(map(str, b.market.underlyings), b.market.index_price))
        self.btc = float(idx["BTC"])
        self.n_new = 0

    def account(self) -> tuple[int, str]:
        a = int(self.rng.choice(self.held))
        return a, str(self.book.accounts[a])

    def existing(self):
        a, acc = self.account()
        pos = self.s.positions_of(a)
        ref, q = pos[int(self.rng.integers(len(pos)))]
        return acc, [{"instrument_id": ref.key, "quantity": float(np.sign(q) or 1.0) * max(abs(q) * 0.1, 0.1)}]

    def new_def(self, fresh: bool) -> dict:
        if fresh:
            self.n_new += 1
        k = self.n_new if fresh else 0
        strike = round(self.btc * (0.7 + 0.001 * (k % 600)), -1)
        return {"instrument_id": f"BENCH-BTC-{k}-C", "quantity": -1.0, "instrument": {
            "venue": "deribit", "underlying": "BTC", "kind": "option", "settlement": "inverse", "contract_size": 1,
            "expiry": "2025-03-28T08:00:00Z", "strike": strike, "option_type": "call",
            "underlying_price": self.btc * 1.004, "implied_vol": 0.6}}

    def new(self, fresh: bool):
        return self.account()[1], [self.new_def(fresh)]

    def basket(self, n: int = 20):
        acc = self.account()[1]
        pick = self.rng.integers(0, len(self.ids), n)
        return acc, [{"instrument_id": str(self.ids[i]), "quantity": float(self.rng.choice([-5.0, -1.0, 1.0, 5.0]))}
                     for i in pick]


def in_process(session, iterations: int, seed: int) -> dict:
    import gpurisk

    out = {}
    for models, tag in ((["house"], "house"), (None, "house+venues")):
        c = Cases(session, seed)
        for name, make, n in (("one trade, held instrument", c.existing, iterations),
                              ("one trade, new instrument (first sight)", lambda: c.new(True), min(iterations, 200)),
                              ("one trade, new instrument (cached)", lambda: c.new(False), iterations),
                              ("20-trade basket", c.basket, iterations)):
            qs = [make() for _ in range(n)]
            gpurisk.whatif(session, *qs[0], models=models)  # warm this path
            ts, cpu = [], []
            for acc, trades in qs:
                c0 = time.thread_time()
                t = time.perf_counter()
                gpurisk.whatif(session, acc, trades, models=models)
                ts.append(time.perf_counter() - t)
                cpu.append(time.thread_time() - c0)
            out[f"{tag}: {name}"] = {**pct(ts), "cpu": pct(cpu)}
    return out


def baseline(session, n: int, seed: int) -> dict:
    """The one-trade question answered by full recomputation: a book of the account after the trade,
    margined from scratch with the session's scenario sets (house) and the venue model, same backend."""
    from gpurisk.margin import compute
    from gpurisk.whatif.session import apply_trades

    c = Cases(session, seed)
    house = session.models["house"]
    comps = {k: leg.scenarios for k, leg in house.plan.legs.items() if k.startswith("account/")}
    comps = {k.split("/", 1)[1]: v for k, v in comps.items()}
    ts_h, ts_all = [], []
    for _ in range(n):
        acc, trades = c.existing()
        a = session.accounts[acc]
        after = apply_trades(session.positions_of(a), session.resolve_trades(trades))
        t = time.perf_counter()
        mini = session.mini_book(acc, after, session.balances_of(a))
        compute(mini, "house", params=house.params, scenarios=comps, backend=session.engine)
        t1 = time.perf_counter()
        compute(mini, "venue", params=session.models["venue"].params, backend=session.engine)
        t2 = time.perf_counter()
        ts_h.append(t1 - t)
        ts_all.append(t2 - t)
    return {"house: full recomputation of the account": pct(ts_h),
            "house+venues: full recomputation of the account": pct(ts_all)}


# ------------------------------------------------------------------ HTTP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(job: Path, backend: str, key: str, log: Path):
    port = free_port()
    env = {**os.environ, "GPURISK_API_KEYS": f"bench:{key}"}
    proc = subprocess.Popen([sys.executable, "-m", "gpurisk.cli", "serve", "--job", str(job), "--port", str(port),
                             "--backend", backend, "--rate-limit", "0", "--quiet"],
                            cwd=job.parent, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(url: str, proc, timeout: float) -> float:
    import httpx

    t = time.perf_counter()
    while time.perf_counter() - t < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return time.perf_counter() - t
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server not ready after {timeout} s")


def http_latency(url: str, key: str, session, iterations: int, seed: int) -> dict:
    import httpx

    out = {}
    h = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=h, timeout=60) as client:
        for models, tag in ((["house"], "house"), (None, "house+venues")):
            c = Cases(session, seed + 1)
            for name, make in (("one trade, held instrument", c.existing),
                               ("one trade, new instrument (cached)", lambda: c.new(False)),
                               ("20-trade basket", c.basket)):
                qs = [make() for _ in range(iterations)]
                for acc, trades in qs[:20]:  # warm the connection and this path
                    client.post("/v1/whatif", json={"account_id": acc, "trades": trades, **({"models": models}
                                                                                            if models else {})})
                ts = []
                for acc, trades in qs:
                    body = {"account_id": acc, "trades": trades, **({"models": models} if models else {})}
                    t = time.perf_counter()
                    r = client.post("/v1/whatif", json=body)
                    ts.append(time.perf_counter() - t)
                    if r.status_code != 200:
                        raise SystemExit(f"HTTP {r.status_code}: {r.text[:300]}")
                out[f"{tag}: {name}"] = pct(ts)
    return out


def http_throughput(url: str, key: str, session, clients: int, seconds: float, seed: int, models) -> dict:
    import httpx

    h = {"Authorization": f"Bearer {key}"}
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start = threading.Barrier(clients + 1)

    def worker(j):
        c = Cases(session, seed + 100 + j)
        qs = [c.existing() for _ in range(4000)]
        with httpx.Client(base_url=url, headers=h, timeout=60) as client:
            client.get("/healthz")
            start.wait()
            end = time.perf_counter() + seconds
            i = 0
            while time.perf_counter() < end and i < len(qs):
                acc, trades = qs[i]
                i += 1
                t = time.perf_counter()
                r = client.post("/v1/whatif", json={"account_id": acc, "trades": trades, **({"models": models}
                                                                                            if models else {})})
                lat[j].append(time.perf_counter() - t)
                errors[j] += r.status_code != 200

    threads = [threading.Thread(target=worker, args=(j,)) for j in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    all_lat = [x for xs in lat for x in xs]
    return {"clients": clients, "requests": len(all_lat), "errors": int(sum(errors)), "seconds": wall,
            "requests_per_s": len(all_lat) / wall, **pct(all_lat)}


def machine() -> dict:
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_avg_1m_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def table(rows: dict, title: str) -> str:
    cpu = any("cpu" in v for v in rows.values())
    lines = [f"| {title} | n | p50 µs | p99 µs | p99.9 µs |" + (" CPU p50 µs | CPU p99 µs |" if cpu else ""),
             "|---|---:|---:|---:|---:|" + ("---:|---:|" if cpu else "")]
    for k, v in rows.items():
        line = f"| {k} | {v['n']} | {v['p50_us']:,.0f} | {v['p99_us']:,.0f} | {v['p99_9_us']:,.0f} |"
        if cpu:
            line += f" {v['cpu']['p50_us']:,.0f} | {v['cpu']['p99_us']:,.0f} |" if "cpu" in v else " | |"
        lines.append(line)
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--baseline", type=int, default=30, help="full recomputations timed (slow)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--http-seconds", type=float, default=10.0)
    ap.add_argument("--no-http", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None, help="where the sample book and job go (default: temp)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from gpurisk.service.loader import session_from_job

    work = args.workdir or Path(tempfile.mkdtemp(prefix="gpurisk-whatif-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    book = make_book(work / f"book-a{args.accounts}-s{args.seed}", args.accounts, args.seed)
    job = write_job(work / "job.toml", book, args.backend)
    report = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "machine": machine(),
              "command": "python benchmarks/whatif.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "accounts": args.accounts}
    t = time.perf_counter()
    session = session_from_job(job, args.backend)
    report["session_load_s"] = time.perf_counter() - t
    report["session"] = session.describe()
    report["session"]["model_seconds"] = session.timings
    report["house_scenarios"] = {k.split("/", 1)[1]: leg.scenarios.n_scenarios
                                 for k, leg in session.models["house"].plan.legs.items() if k.startswith("account/")}
    print(f"session: {args.accounts:,} accounts in {report['session_load_s']:.1f} s, backend {session.engine.name}",
          file=sys.stderr)
    report["in_process"] = in_process(session, args.iterations, args.seed)
    report["baseline"] = baseline(session, args.baseline, args.seed)
    b = report["baseline"]["house: full recomputation of the account"]["p50_us"]
    w = report["in_process"]["house: one trade, held instrument"]["p50_us"]
    report["baseline_ratio_house_p50"] = b / w
    if not args.no_http:
        key = secrets.token_hex(16)
        proc, url = start_server(job, args.backend, key, work / "serve.log")
        try:
            report["http_server_ready_s"] = wait_ready(url, proc, 3600)
            report["http_one_client"] = http_latency(url, key, session, min(args.iterations, 1000), args.seed)
            report["http_throughput_house"] = [http_throughput(url, key, session, n, args.http_seconds, args.seed,
                                                               ["house"]) for n in args.clients]
        finally:
            proc.terminate()
            proc.wait(120)
    report["machine"]["load_avg_1m_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(json.dumps(report, indent=2, default=str))
    md = [table(report["in_process"], "in process"), "", table(report["baseline"], "baseline (same run)")]
    if "http_one_client" in report:
        md += ["", table(report["http_one_client"], "HTTP, one client"), "",
               "| clients | requests/s | p50 µs | p99 µs | errors |", "|---:|---:|---:|---:|---:|"]
        md += [f"| {r['clients']} | {r['requests_per_s']:,.0f} | {r['p50_us']:,.0f} | {r['p99_us']:,.0f} | "
               f"{r['errors']} |" for r in report["http_throughput_house"]]
    print("\n".join(md))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
