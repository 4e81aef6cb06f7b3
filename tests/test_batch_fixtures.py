"""Small books, a toy margin model and job files for the batch tests.

The toy model is a minimal implementation of the margin-model contract
(``Params``/``load_params``/``plan``/``finalize``/``coverage``, the standard columns of
``gpurisk.margin.plan``) with two legs (by account and
by account × venue) over a seeded scenario set, so the batch machinery is tested
independently of the real models. Its expected numbers come from the NumPy
reference backend run in-process (``gpurisk.margin.plan.execute``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import threading
import time
import tomllib
import types
from pathlib import Path

import numpy as np
import pandas as pd

from gpurisk.backends import MeasureSpec
from gpurisk.book import Book
from gpurisk.margin.calls import CallParams, calls_table
from gpurisk.margin.plan import ALL_VENUES, Leg, MarginResult, Plan, standard_frame
from gpurisk.pricing import pricing_inputs
from gpurisk.scenarios.scenario_set import make_scenario_set

AS_OF = "2026-03-02T08:00:00Z"


def book_tables(n_accounts: int = 60, seed: int = 1) -> dict[str, pd.DataFrame]:
    """Tables of a small random book: BTC/ETH futures, perpetuals and options on two venues."""
    rng = np.random.default_rng(seed)
    ins = pd.DataFrame({
        "instrument_id": ["BTC-PERP", "ETH-PERP", "BTC-FUT", "BTC-C-60000", "BTC-P-50000", "ETH-C-3000", "BTC-SPOT"],
        "venue": ["deribit", "okx", "deribit", "deribit", "deribit", "okx", "binance"],
        "underlying": ["BTC", "ETH", "BTC", "BTC", "BTC", "ETH", "BTC"],
        "kind": ["perpetual", "perpetual", "future", "option", "option", "option", "spot"],
        "settlement": ["inverse", "linear", "inverse", "inverse", "inverse", "linear", "linear"],
        "contract_size": [10.0, 0.1, 10.0, 1.0, 1.0, 0.1, 1.0],
        "expiry": [None, None, "2026-06-26T08:00:00Z", "2026-03-27T08:00:00Z", "2026-03-27T08:00:00Z",
                   "2026-04-24T08:00:00Z", None],
        "strike": [np.nan, np.nan, np.nan, 60000.0, 50000.0, 3000.0, np.nan],
        "option_type": [None, None, None, "call", "put", "call", None],
    })
    market = pd.DataFrame({
        "instrument_id": ins["instrument_id"],
        "underlying_price": [55000.0, 2800.0, 55500.0, 55200.0, 55200.0, 2810.0, 55000.0],
        "implied_vol": [np.nan, np.nan, np.nan, 0.55, 0.6, 0.7, np.nan],
    })
    index = pd.DataFrame({"underlying": ["BTC", "ETH"], "price": [55000.0, 2800.0]})
    n_pos = n_accounts * 4
    acct = rng.integers(0, n_accounts, n_pos)
    positions = pd.DataFrame({
        "account_id": [f"A{a:05d}" for a in acct],
        "instrument_id": ins["instrument_id"].to_numpy()[rng.integers(0, len(ins), n_pos)],
        "quantity": np.round(rng.normal(0, 20, n_pos), 1),
    })
    balances = pd.DataFrame({
        "account_id": [f"A{a:05d}" for a in range(n_accounts)],
        "venue": "deribit",
        "asset": "USDT",
        "amount": rng.uniform(1e4, 1e6, n_accounts).round(2),
    })
    return {"instruments": ins, "market": market, "index": index, "positions": positions, "balances": balances}


def write_book_folder(folder: Path, n_accounts: int = 60, seed: int = 1) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, df in book_tables(n_accounts, seed).items():
        df.to_parquet(folder / f"{name}.parquet", index=False)
    (folder / "book.toml").write_text(f'as_of = "{AS_OF}"\n')
    return folder


@dataclasses.dataclass(frozen=True)
class LoadedBook:
    book: Book
    rejects: pd.DataFrame
    summary: dict


def load_book(path) -> LoadedBook:
    """A plain loader for the folders above (no validation: every row is clean)."""
    path = Path(path)
    tables = {n: pd.read_parquet(path / f"{n}.parquet") for n in
              ("instruments", "market", "index", "positions", "balances")}
    as_of = tomllib.loads((path / "book.toml").read_text())["as_of"]
    n_rows = int(len(tables["positions"]) + len(tables["balances"]))
    rejects = pd.DataFrame({"table": pd.Series([], dtype=str), "row": pd.Series([], dtype="int64"),
                            "reason": pd.Series([], dtype=str)})
    return LoadedBook(Book.from_frames(as_of, **tables), rejects, {"input_rows": n_rows})


# ----------------------------------------------------------------------------- toy model


@dataclasses.dataclass(frozen=True)
class ToyParams:
    n_scenarios: int = 200
    seed: int = 7
    level: float = 0.99


def toy_scenarios(book: Book, p: ToyParams):
    rng = np.random.default_rng(p.seed)
    U = len(book.market.underlyings)
    shocks = rng.standard_t(4, size=(p.n_scenarios, U)) * 0.05
    vols = rng.normal(0, 0.1, size=(p.n_scenarios, U))
    return make_scenario_set(book.market.underlyings, shocks, vols, horizon_days=1.0, kind="toy", seed=p.seed)


def toy_plan(book: Book, params: ToyParams | None = None, scenarios=None) -> Plan:
    p = params or ToyParams()
    sset = scenarios if scenarios is not None else toy_scenarios(book, p)
    idx, sset = sset.columns_for(book.instruments.underlying)
    pi = pricing_inputs(book, idx)
    spec = MeasureSpec(levels=(p.level, 0.975))
    legs = {
        "account": Leg("account", pi, sset, "usd", book.portfolios("account"), spec),
        "venue": Leg("venue", pi, sset, "usd", book.portfolios("account_venue"), spec),
    }
    return Plan("toy", legs, {"params": p, "book": book})


def toy_coverage(plan: Plan) -> pd.DataFrame:
    """Every account of the book, cross-venue (the toy's ``margin`` rows)."""
    return pd.DataFrame({"account_id": np.asarray(plan.context["book"].accounts, dtype=object), "venue": ALL_VENUES})


def toy_finalize(plan: Plan, stats) -> MarginResult:
    """The standard columns (IM = max(ES99, 0), MM = 0.8·IM, equity = the account's balances at 1 USD each),
    plus the toy's own measures, a ``by_venue`` table and the ``calls`` table."""
    book = plan.context["book"]
    acc, ven = plan.legs["account"].portfolios, plan.legs["venue"].portfolios
    im = np.maximum(stats["account"].es[:, 0], 0.0)
    equity = np.bincount(book.balances.account_idx, weights=book.balances.amount, minlength=book.n_accounts)
    margin = standard_frame(acc.key["account_id"], ALL_VENUES, "toy", "USD", im, 0.8 * im,
                            equity[acc.account_idx], call_params=CallParams())
    margin["var_usd"] = stats["account"].var[:, 0]
    margin["worst_usd"] = stats["account"].worst
    margin["worst_scenario"] = stats["account"].worst_scenario
    by_venue = pd.DataFrame({
        "account_id": ven.key["account_id"],
        "venue": ven.key["venue"],
        "im_usd": np.maximum(stats["venue"].es[:, 0], 0.0),
        "es975_usd": stats["venue"].es[:, 1],
    })
    units = {"margin": {"var_usd": "USD", "worst_usd": "USD"}, "by_venue": {"im_usd": "USD", "es975_usd": "USD"}}
    return MarginResult("toy", {"margin": margin, "by_venue": by_venue, "calls": calls_table(margin)},
                        {"accounts": int(len(margin)), "total_im_usd": float(margin["im_usd"].sum())}, units)


def toy_load_params(path=None) -> ToyParams:
    if path is None:
        return ToyParams()
    data = tomllib.loads(Path(path).read_text())
    return ToyParams(**data)


TOY = types.SimpleNamespace(Params=ToyParams, load_params=toy_load_params, plan=toy_plan, finalize=toy_finalize,
                            coverage=toy_coverage)


def get_model(name: str):
    """Every model name maps to the toy model in these tests."""
    return TOY


def write_job(folder: Path, book: str = "book", chunk_size="auto", extra: str = "", models: str | None = None,
              n_scenarios: int = 200) -> Path:
    folder = Path(folder)
    chunk = f'"{chunk_size}"' if isinstance(chunk_size, str) else str(chunk_size)
    models = models or f'[[models]]\nname = "house"\nparams = {{n_scenarios = {n_scenarios}}}\n'
    text = (
        f'[job]\nname = "toy"\nbackend = "reference"\nchunk_size = {chunk}\noutput = "runs"\n\n'
        f'[book]\npath = "{book}"\n\n{models}\n{extra}'
    )
    path = folder / "job.toml"
    path.write_text(text)
    return path


def read_outputs(run_dir: Path) -> dict:
    """{relative path: Arrow table} of every Parquet result of a run, without the file metadata (which
    names the run): two runs with equal outputs compare equal."""
    import pyarrow.parquet as pq

    run_dir = Path(run_dir)
    return {p.relative_to(run_dir).as_posix(): pq.read_table(p).replace_schema_metadata(None)
            for p in sorted(run_dir.rglob("*.parquet")) if "chunks" not in p.parts}


def plain(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a fresh index and its string and categorical columns as object (comparable across writers)."""
    df = df.reset_index(drop=True).copy()
    for c in df.columns:
        if isinstance(df[c].dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(df[c].dtype):
            df[c] = df[c].astype(object)
    return df


def read_frame(path) -> pd.DataFrame:
    """A Parquet table as pandas, its dictionary-encoded labels as plain strings."""
    return plain(pd.read_parquet(path))


# ----------------------------------------------------------------------------- killing workers for real


def worker_pids(exclude=()) -> list[int]:
    """Dask worker processes (multiprocessing spawn children) of this test process, oldest first."""
    import psutil

    out = []
    for ch in psutil.Process().children(recursive=True):
        try:
            if "spawn_main" in " ".join(ch.cmdline()) and ch.pid not in exclude:
                out.append((ch.create_time(), ch.pid))
        except psutil.Error:
            continue
    return [pid for _, pid in sorted(out)]


class KillAtStart(threading.Thread):
    """SIGKILLs the first worker process that appears (while the cluster is starting)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.before = set(worker_pids())
        self.killed = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set() and not self.killed:
            for pid in worker_pids(self.before):
                try:
                    os.kill(pid, signal.SIGKILL)
                    self.killed.append(pid)
                except ProcessLookupError:
                    continue
                break
            time.sleep(0.002)


class KillAfter(threading.Thread):
    """SIGKILLs a random worker process of the cluster ``seconds`` after it is started."""

    def __init__(self, seconds: float, rng: random.Random, exclude=()):
        super().__init__(daemon=True)
        self.seconds, self.rng, self.exclude = seconds, rng, set(exclude)
        self.killed = []

    def run(self):
        time.sleep(self.seconds)
        pids = worker_pids(self.exclude)
        if pids:
            victim = self.rng.choice(pids)
            os.kill(victim, signal.SIGKILL)
            self.killed.append(victim)


def test_toy_model_matches_in_process_reference(tmp_path):
    """The toy model's margin is the reference ES of each account's P&L (checked independently here)."""
    from gpurisk.backends import reference
    from gpurisk.margin.plan import execute

    book = load_book(write_book_folder(tmp_path / "b", 20)).book
    plan = toy_plan(book)
    stats, _ = execute(plan, "reference")
    res = toy_finalize(plan, stats)
    # independent: dense P&L per account, sort, mean of the worst ceil(1%·S) losses
    leg = plan.legs["account"]
    P = reference.revalue(leg.pricing, leg.scenarios, "usd")
    L = reference.portfolio_pnl(leg.portfolios, P)
    k = int(np.ceil(0.01 * L.shape[1]))
    es = np.sort(-L, axis=1)[:, ::-1][:, :k].mean(axis=1)
    np.testing.assert_allclose(res.tables["margin"]["im_usd"], np.maximum(es, 0), rtol=1e-12, atol=1e-9)
    assert json.dumps(res.summary)
