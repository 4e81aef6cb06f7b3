"""Batch runs on a real ``distributed.LocalCluster`` (2 worker processes) with the toy model.

Independent source: the same plan run in-process on the NumPy reference backend
without any chunking (``gpurisk.margin.plan.execute``). Lost workers are real: the
worker process gets SIGKILL.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gpurisk.backends import TailStats
from gpurisk.batch import JobError, ResumeError, RunOptions, format_summary, run_job
from gpurisk.batch import cluster, pnl
from gpurisk.batch.cluster import open_client
from gpurisk.config import load_job
from gpurisk.margin.output import read_metadata
from gpurisk.margin.plan import execute

from test_batch_fixtures import (KillAfter, KillAtStart, LoadedBook, get_model, load_book, plain, read_frame,
                                 read_outputs, toy_finalize, toy_plan, worker_pids, write_book_folder, write_job)

N_ACCOUNTS = 240


@pytest.fixture(scope="module")
def client2():
    with open_client(workers=2) as c:
        yield c


@pytest.fixture()
def job(tmp_path):
    write_book_folder(tmp_path / "book", N_ACCOUNTS)
    return load_job(write_job(tmp_path, chunk_size=11, n_scenarios=300))


def _run(job, client, **kw):
    on_chunk = kw.pop("on_chunk", None)
    return run_job(job, RunOptions(progress=False, **kw), client=client, get_model=get_model, book_loader=load_book,
                   on_chunk=on_chunk)


def _reference(job, n_scenarios=300):
    book = load_book(job.book.path).book
    plan = toy_plan(book, get_model("house").Params(n_scenarios=n_scenarios))
    stats, _ = execute(plan, "reference")
    return toy_finalize(plan, stats)


def _gpu_usable() -> bool:
    from gpurisk.backends import BackendUnavailable, get

    try:
        get("gpu")
        return True
    except BackendUnavailable:
        return False


def test_matches_in_process_reference(job, client2):
    rep = _run(job, client2)
    assert rep.status == "succeeded"
    book = load_book(job.book.path).book
    n_venue = len(book.portfolios("account_venue"))
    assert rep.counts["chunks_total"] == int(np.ceil(N_ACCOUNTS / 11)) + int(np.ceil(n_venue / 11))
    want = _reference(job)
    for name, df in want.tables.items():
        got = read_frame(rep.run_dir / "house" / f"{name}.parquet")
        pd.testing.assert_frame_equal(got, plain(df), check_dtype=False, rtol=0, atol=0)
    man = json.loads((rep.run_dir / "manifest.json").read_text())
    assert man["status"] == "succeeded" and man["input_hash"] and man["code"]["version"]
    assert {c["backend"] for c in man["chunks"]} == {"reference"}
    assert len(man["chunks"]) == rep.counts["chunks_total"]
    assert len({c["worker"] for c in man["chunks"]}) == 2  # the chunks spread over both workers (round robin)
    assert set(man["inputs"]) >= {"job", "book/positions.parquet", "book/book.toml"}
    assert man["counts"]["balanced"] and man["counts"]["accounts"] == N_ACCOUNTS
    assert man["as_of"] == "2026-03-02T08:00:00Z" == rep.as_of
    # one revaluation for the two legs (they share pricing and scenarios), on a worker, shared through a file
    (name, p), = man["pnl"]["matrices"].items()
    assert p["shape"] == [7, 300] and p["backend"] == "reference" and p["where"] in ("shm", "disk")
    assert p["worker"].split(":")[1] != str(os.getpid())
    assert rep.counts["pnl_matrices"] == 1
    assert (rep.run_dir / "metrics.prom").is_file() and (job.output / "gpurisk_toy.prom").is_file()
    # every account of the book has a margin row, recorded per model
    cov = man["coverage"]["house"]
    assert cov == rep.coverage["house"]
    assert (cov["expected"], cov["covered"], cov["missing"], cov["complete"]) == (N_ACCOUNTS, N_ACCOUNTS, 0, True)
    text = format_summary(rep)
    assert f"coverage house: {N_ACCOUNTS}/{N_ACCOUNTS} account_id×venue" in text
    assert "as of 2026-03-02T08:00:00Z" in text
    # run-level figures from the standard columns, checked against the reference result
    m = want.tables["margin"]
    fig = rep.figures["house"]
    assert fig["total_im_usd"] == pytest.approx(m["im_usd"].sum(), rel=1e-12)
    assert fig["total_equity_usd"] == pytest.approx(m["equity_usd"].sum(), rel=1e-12)
    assert fig["total_call_amount_usd"] == pytest.approx(m["call_amount_usd"].sum(), rel=1e-12)
    short = m[m["excess_usd"] < 0]
    assert (fig["deficits"], fig["total_deficit_usd"]) == (len(short), pytest.approx(-short["excess_usd"].sum()))
    top = m.sort_values("im_usd", ascending=False, kind="stable").head(5)
    assert [a["account_id"] for a in fig["largest_accounts"]] == list(top["account_id"])
    run_summary = json.loads((rep.run_dir / "summary.json").read_text())
    assert run_summary["as_of"] == rep.as_of and run_summary["models"]["house"]["total_im_usd"] == fig["total_im_usd"]
    # every Parquet file states the run, the as-of, the parameters and its units
    meta = read_metadata(rep.run_dir / "house" / "margin.parquet")
    assert meta["run_id"] == rep.run_id and meta["as_of"] == rep.as_of and meta["job"] == "toy"
    assert meta["parameters"]["params"]["n_scenarios"] == 300 and meta["units"]["im_usd"] == "USD"
    assert pd.read_parquet(rep.run_dir / "house" / "margin.parquet")["status"].dtype == "category"
    # checkpoints are pruned after a successful run; the scratch P is gone
    assert not (rep.run_dir / "chunks").exists() and man["checkpoints"]["pruned_bytes"] > 0
    assert not (rep.run_dir / "scratch").exists()
    assert not any(p.name.startswith(f"gpurisk-{os.getpid()}-{rep.run_id}") for p in Path(pnl.SHM_ROOT).glob("*"))


def test_second_run_is_identical_and_reports_the_change(job, client2):
    a = _run(job, client2)
    b = _run(job, client2, chunk_size=37)  # other chunking, same inputs
    assert a.run_id != b.run_id
    oa, ob = read_outputs(a.run_dir), read_outputs(b.run_dir)
    assert oa and oa == ob
    ch = b.changes["house"]
    assert ch["previous_run"] == a.run_id and ch["change_usd"] == 0.0 and ch["change_pct"] == 0.0
    assert f"vs run {a.run_id}" in format_summary(b)


def test_embedded_scheduler_has_no_queue(client2):
    """Every task goes to a worker when ready and each worker runs its tasks by the run's priorities; Dask's
    default queue holds only root-ish tasks, so a worker's order depended on submission timing."""
    sat = client2.run_on_scheduler(lambda dask_scheduler: dask_scheduler.WORKER_SATURATION)
    assert sat == float("inf") and cluster.WORKER_SATURATION == "inf"


def test_run_level_tables_follow_the_job_order_not_the_finish_order(tmp_path):
    """Models are finished as their chunks complete (the venue replicas may finish before the house model or
    after): ``calls.parquet`` and the report's per-model tables are in the job's model order either way."""
    from types import SimpleNamespace

    from gpurisk.actions.lifecycle import COLUMNS
    from gpurisk.batch.runner import RunReport, _in_job_order, _Stages, _write_calls

    def calls(label):
        return pd.DataFrame({c: [f"{label}-{c}"] for c in COLUMNS})

    run = SimpleNamespace(calls={1: calls("venue"), 0: calls("house")}, run_dir=tmp_path, stage=_Stages(),
                          report=SimpleNamespace(outputs={}))
    _write_calls(run)
    assert pd.read_parquet(tmp_path / "calls.parquet")["label"].tolist() == ["house-label", "venue-label"]
    report = RunReport(job="j", run_id="r", run_dir=tmp_path, status="running", started="")
    for label in ("venue", "house"):  # finish order
        report.figures[label] = report.total_im[label] = report.calls[label] = report.coverage[label] = {}
    _in_job_order(report, ["house", "venue"])
    assert list(report.figures) == list(report.total_im) == list(report.calls) == list(report.coverage) == [
        "house", "venue"]


def test_one_and_two_workers_identical(job, client2):
    two = _run(job, client2, chunk_size="auto")
    with open_client(workers=1) as c1:
        one = _run(job, c1, chunk_size=7)
    assert one.workers == 1 and two.workers == 2
    assert read_outputs(one.run_dir) == read_outputs(two.run_dir)


def test_keep_checkpoints_keeps_them(job, client2):
    rep = _run(job, client2, keep_checkpoints=True)
    saved = list((rep.run_dir / "chunks").rglob("*.npz"))
    assert len(saved) == rep.counts["chunks_total"]
    assert json.loads((rep.run_dir / "manifest.json").read_text())["checkpoints"] == "kept"


# ----------------------------------------------------------------------------- lost workers


@pytest.fixture()
def slow_job(tmp_path):
    write_book_folder(tmp_path / "book", N_ACCOUNTS)
    return load_job(write_job(tmp_path, chunk_size=10, n_scenarios=3000))


@pytest.mark.slow
def test_worker_killed_at_start_and_at_the_first_checkpoint(slow_job, client2):
    """The acceptance case: one worker SIGKILLed while the embedded cluster starts, another just after the
    first chunk is checkpointed; same outputs as an undisturbed run, and the run succeeds."""
    base = _run(slow_job, client2)
    at_start = KillAtStart()
    killed = []

    def at_checkpoint(done, total):
        if not killed:
            assert done < total  # tasks are still in flight
            pids = worker_pids(at_start.before)
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    at_start.start()
    try:
        rep = run_job(slow_job, RunOptions(workers=2), get_model=get_model, book_loader=load_book,
                      on_chunk=at_checkpoint)
    finally:
        at_start.stop.set()
        at_start.join()
    assert at_start.killed and killed and rep.status == "succeeded"
    for pid in at_start.killed + killed:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert read_outputs(rep.run_dir) == read_outputs(base.run_dir)


def _random_kill_run(job, base, seed: int):
    rng = random.Random(seed)
    with open_client(workers=2) as c:
        existing = set(worker_pids()) - set(c.run(os.getpid).values())
        killer = KillAfter(rng.uniform(0.0, 1.5), rng, exclude=existing)
        killer.start()
        rep = _run(job, c)
        killer.join()
    assert rep.status == "succeeded"
    assert read_outputs(rep.run_dir) == read_outputs(base.run_dir)
    return killer.killed


@pytest.mark.slow
def test_worker_killed_at_a_random_moment(slow_job, client2):
    base = _run(slow_job, client2)
    _random_kill_run(slow_job, base, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2, 8))
def test_worker_killed_at_random_moments(slow_job, client2, seed):
    base = _run(slow_job, client2)
    _random_kill_run(slow_job, base, seed)


def test_cluster_start_is_retried_when_a_worker_dies(monkeypatch):
    """A start that fails (here: the first attempt raises as a dead nanny does) is retried, logged, then succeeds."""
    calls = []
    real = cluster._local_cluster

    def flaky(*a, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("Nanny failed to start.")
        return real(*a, **kw)

    monkeypatch.setattr(cluster, "_local_cluster", flaky)
    with open_client(workers=1) as c:
        assert cluster.n_workers(c) == 1
    assert len(calls) == 2
    monkeypatch.setattr(cluster, "_local_cluster", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("no")))
    with pytest.raises(cluster.ClusterError, match=f"after {cluster.START_ATTEMPTS} attempts: RuntimeError: no"):
        with open_client(workers=1):
            pass


# ----------------------------------------------------------------------------- resume and failures


def test_resume_after_failure(job, client2):
    full = _run(job, client2)

    def fail_after(done, total):
        if done >= 5:
            raise RuntimeError("injected failure after 5 chunks")

    with pytest.raises(JobError, match="injected failure after 5 chunks") as err:
        _run(job, client2, on_chunk=fail_after)
    assert "\n" not in str(err.value)
    runs = sorted(p for p in job.output.iterdir() if p.is_dir() and not p.name.startswith(".") and p != full.run_dir)
    failed = runs[-1]
    man = json.loads((failed / "manifest.json").read_text())
    assert man["status"] == "failed" and "injected failure" in man["error"]
    saved = list((failed / "chunks").rglob("*.npz"))  # a failed run keeps its checkpoints
    assert len(saved) >= 5
    alerts = [json.loads(x) for x in (job.output / "alerts.jsonl").read_text().splitlines()]
    assert any(a["alert"] == "job_failure" and a["run_id"] == failed.name for a in alerts)

    rep = _run(job, client2, resume=failed.name)
    assert rep.run_id == failed.name and rep.counts["chunks_resumed"] >= 5
    assert rep.counts["chunks_resumed"] + rep.counts["chunks_computed"] == rep.counts["chunks_total"]
    assert read_outputs(rep.run_dir) == read_outputs(full.run_dir)
    assert json.loads((failed / "manifest.json").read_text())["status"] == "succeeded"
    assert not (failed / "chunks").exists()


def test_resume_with_changed_inputs_is_refused(job, client2):
    rep = _run(job, client2)
    pos = job.book.path / "positions.parquet"
    df = pd.read_parquet(pos)
    df.loc[0, "quantity"] += 1.0
    df.to_parquet(pos, index=False)
    with pytest.raises(ResumeError, match="inputs differ"):
        _run(job, client2, resume=rep.run_id)


def test_failing_finalize_fails_run_with_one_line(job, client2, monkeypatch):
    bad = get_model("house")

    def bad_finalize(plan, stats):
        raise ValueError("model exploded\nsecond line")

    monkeypatch.setattr(bad, "finalize", bad_finalize)
    with pytest.raises(JobError) as err:
        _run(job, client2)
    assert "ValueError: model exploded second line" in str(err.value) and "\n" not in str(err.value)
    prom = (job.output / "gpurisk_toy.prom").read_text()
    assert 'gpurisk_run_success{job="toy"} 0' in prom


def test_model_that_breaks_the_output_contract_fails_the_run(job, client2, monkeypatch):
    model = get_model("house")

    def inf_finalize(plan, stats):
        res = toy_finalize(plan, stats)
        res.tables["margin"].loc[2, "im_usd"] = np.inf
        return res

    monkeypatch.setattr(model, "finalize", inf_finalize)
    with pytest.raises(JobError, match=r"account A\d+ \(venue ALL\) has im_usd = inf, which cannot be right"):
        _run(job, client2)


def test_model_that_drops_an_account_fails_the_run(job, client2, monkeypatch):
    model = get_model("house")

    def dropping_finalize(plan, stats):
        res = toy_finalize(plan, stats)
        m = res.tables["margin"]
        res.tables["margin"] = m[m["account_id"] != m["account_id"].iloc[3]].reset_index(drop=True)
        return res

    monkeypatch.setattr(model, "finalize", dropping_finalize)
    with pytest.raises(JobError) as err:
        _run(job, client2)
    msg = str(err.value)
    assert "\n" not in msg and f"model house covers {N_ACCOUNTS - 1:,} of {N_ACCOUNTS:,} account_id×venue" in msg
    assert "1 missing, e.g. A00003/ALL" in msg
    run_dir = next(p for p in job.output.iterdir() if (p / "manifest.json").is_file())
    man = json.loads((run_dir / "manifest.json").read_text())
    assert man["status"] == "failed" and man["coverage"]["house"]["missing_examples"] == ["A00003/ALL"]
    assert not (job.output / "last_run-toy.json").exists()


def test_rejects_that_disagree_with_the_loader_counts_fail_the_run(job, client2):
    def lying_loader(path):
        lb = load_book(path)
        n = len(lb.book.positions.quantity)
        # the loader claims one rejected position but its rejects table is empty
        return LoadedBook(lb.book, lb.rejects, {"positions": {"input": n + 1, "accepted": n, "rejected": 1}})

    with pytest.raises(JobError, match="row counts do not balance.*0 in the rejects table"):
        run_job(job, RunOptions(progress=False), client=client2, get_model=get_model, book_loader=lying_loader)


def test_output_paths_are_normalised(job, client2):
    out = job.output.parent / "jobs" / ".." / "runs2"
    rep = _run(job, client2, out=out)
    assert rep.status == "succeeded"
    assert rep.run_dir == job.output.parent / "runs2" / rep.run_id and ".." not in rep.run_dir.parts
    assert f"output    {job.output.parent / 'runs2' / rep.run_id}\n" in format_summary(rep)
    man = json.loads((rep.run_dir / "manifest.json").read_text())
    assert all(".." not in v["path"].split(os.sep) for v in man["inputs"].values()) and ".." not in man["book"]


def test_empty_chunks_concat_in_order():
    """TailStats.concat of per-chunk results equals the unchunked result (the runner's merge rule)."""
    from gpurisk.backends import MeasureSpec, reference
    from gpurisk.batch.chunks import plan_chunks
    from gpurisk.book import Portfolios

    rng = np.random.default_rng(0)
    P = rng.normal(size=(5, 50))
    counts = rng.integers(0, 4, 30)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    ports = Portfolios(indptr, rng.integers(0, 5, indptr[-1]).astype(np.int32), rng.normal(size=indptr[-1]),
                       np.arange(30, dtype=np.int32))
    spec = MeasureSpec(levels=(0.9, 0.95))
    whole = reference.tail_stats(ports, P, spec)
    parts = [reference.tail_stats(ports.slice(a, b), P, spec) for a, b in plan_chunks(indptr, 50, 7)]
    got = TailStats.concat(parts)
    for f in ("worst", "worst_scenario", "var", "es"):
        np.testing.assert_array_equal(getattr(got, f), getattr(whole, f))


# ----------------------------------------------------------------------------- the backend, resolved once


def test_explicit_gpu_without_a_gpu_is_a_one_line_error(job):
    if _gpu_usable():
        pytest.skip("a usable GPU is present")
    t = time.perf_counter()
    with pytest.raises(JobError, match="backend 'gpu' is not usable here.*use --backend auto") as err:
        run_job(job, RunOptions(backend="gpu"), get_model=get_model, book_loader=load_book)
    assert "\n" not in str(err.value) and time.perf_counter() - t < 60


def test_gpu_on_a_cluster_without_gpu_workers_fails_fast(job, client2):
    """An explicit gpu on a scheduler whose workers declare no GPU: one line, never a wait for resources."""
    with pytest.raises(JobError, match=r"none of the 2 worker\(s\) of the Dask scheduler declares a GPU"):
        _run(job, client2, backend="gpu")


def test_gpu_cluster_has_one_worker_per_device(job):
    """One worker per device (its own CUDA_VISIBLE_DEVICES, GPU=1); where those devices cannot run the GPU
    backend, an explicit ``gpu`` is refused before any work."""
    if _gpu_usable():
        pytest.skip("a usable GPU is present")
    with open_client(gpu=True, devices=["0", "1"]) as c:
        env = c.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
        assert sorted(env.values()) == ["0", "1"] and cluster.gpu_workers(c) == 2 == cluster.n_workers(c)
        with pytest.raises(JobError, match="backend 'gpu' is not usable here"):
            _run(job, c, backend="gpu")


@pytest.mark.slow
def test_auto_falls_back_on_gpu_workers_without_a_usable_device(job):
    """``auto`` on workers that declare a GPU they cannot use: tasks run there, on the CPU, counted."""
    if _gpu_usable():
        pytest.skip("a usable GPU is present: no fallback to observe")
    with open_client(gpu=True, devices=["0"]) as c:
        rep = _run(job, c, backend="auto")
    assert rep.counts["gpu_fallbacks"] >= rep.counts["chunks_computed"] > 0
    assert rep.backend == "auto->cpu"
    man = json.loads((rep.run_dir / "manifest.json").read_text())
    assert {ch["backend"] for ch in man["chunks"]} == {"cpu"} and man["backend"]["resources"] == {"GPU": 1}
    want = _reference(job).tables["margin"]
    got = read_frame(rep.run_dir / "house" / "margin.parquet")
    np.testing.assert_allclose(got["im_usd"], want["im_usd"], rtol=1e-9, atol=1e-6)
    assert (got["worst_scenario"] == want["worst_scenario"]).all()


def test_choose_backend_rules():
    W = cluster.Workers
    assert cluster.choose_backend("cpu", W(2, 0, True)).name == "cpu"
    assert cluster.choose_backend("reference", W(2, 0, False)).name == "reference"
    remote_gpu = cluster.choose_backend("gpu", W(3, 2, False))
    assert (remote_gpu.name, remote_gpu.resources) == ("gpu", {"GPU": 1})
    assert cluster.choose_backend("auto", W(3, 1, False)).name == "gpu"
    assert cluster.choose_backend("auto", W(3, 0, False)).name == "cpu"
    with pytest.raises(cluster.BackendError, match="none of the 3 worker"):
        cluster.choose_backend("gpu", W(3, 0, False))
    emb = cluster.choose_backend("auto")
    assert emb.name == ("gpu" if _gpu_usable() else "cpu") and emb.gpu_cluster == (emb.name == "gpu")


# ----------------------------------------------------------------------------- memory


def test_p_above_the_memory_budget_is_revalued_in_blocks_on_disk(slow_job, client2):
    base = _run(slow_job, client2)
    rep = _run(slow_job, client2, memory_budget_mb=0.01)  # 10 KiB: P (7 × 3000 × 8 bytes) is 16 times larger
    assert read_outputs(rep.run_dir) == read_outputs(base.run_dir)
    (p,) = json.loads((rep.run_dir / "manifest.json").read_text())["pnl"]["matrices"].values()
    assert p["where"] == "disk" and p["blocks"] == int(np.ceil(3000 / p["block_scenarios"])) > 10
    assert not (rep.run_dir / "scratch").exists()


def test_p_that_fits_nowhere_is_a_one_line_error_naming_its_size(job, client2, monkeypatch):
    monkeypatch.setattr(pnl, "free_bytes", lambda folder: 1000)
    with pytest.raises(JobError, match=r"needs 16,800 bytes .* more than the 1,000 bytes .* free") as err:
        _run(job, client2, memory_budget_mb=0.001)
    assert "\n" not in str(err.value)


def test_multi_host_cluster_keeps_p_in_worker_memory(job, client2, monkeypatch):
    base = _run(job, client2)
    monkeypatch.setattr(cluster, "workers_of", lambda c: cluster.Workers(2, 0, False))
    rep = _run(job, client2)
    assert read_outputs(rep.run_dir) == read_outputs(base.run_dir)
    (p,) = json.loads((rep.run_dir / "manifest.json").read_text())["pnl"]["matrices"].values()
    assert p["where"] == "memory"
    with pytest.raises(JobError, match=r"needs 16,800 bytes .* above the memory budget .* several hosts"):
        _run(job, client2, memory_budget_mb=0.001)


# ----------------------------------------------------------------------------- sources and clusters


def test_snapshots_source_takes_the_latest_and_records_params(tmp_path, client2):
    snaps = tmp_path / "snaps"
    write_book_folder(snaps / "2026-11-21T0800Z", 30, seed=1)
    write_book_folder(snaps / "2026-11-21T1200Z", 50, seed=2)
    (snaps / "2026-11-21T1600Z.tmp").mkdir()  # a snapshot still being written is ignored
    p = write_job(tmp_path, n_scenarios=100)
    p.write_text(p.read_text().replace('path = "book"', 'snapshots = "snaps"'))
    rep = _run(load_job(p), client2)
    assert rep.counts["accounts"] == 50
    man = json.loads((rep.run_dir / "manifest.json").read_text())
    assert man["book"].endswith("2026-11-21T1200Z")
    assert man["models"]["house"]["params"]["n_scenarios"] == 100
    assert man["models"]["house"]["scenarios"]["account"]["n_scenarios"] == 100


def test_scheduler_address_submits_to_a_running_cluster(job, client2, monkeypatch):
    """``--scheduler ADDRESS``: the run connects to that cluster (no embedded one) with the same result."""
    addr = client2.scheduler.address
    via_addr = run_job(job, RunOptions(scheduler=addr, progress=False), get_model=get_model, book_loader=load_book)
    assert via_addr.workers == 2 and "cluster" in via_addr.timings
    direct = _run(job, client2)
    assert read_outputs(via_addr.run_dir) == read_outputs(direct.run_dir)
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 2.0)
    with pytest.raises(JobError, match="cannot reach the Dask scheduler"):
        run_job(job, RunOptions(scheduler="tcp://127.0.0.1:1", progress=False), get_model=get_model,
                book_loader=load_book)


def test_a_run_whose_every_worker_is_gone_fails_instead_of_waiting(tmp_path):
    """Every worker and its nanny lost (a remote cluster gone, a whole node killed): the run fails with one
    line after ``lost_workers_timeout_s`` instead of waiting forever for a worker that never comes."""
    import dataclasses

    from distributed import Client, LocalCluster

    write_book_folder(tmp_path / "book", N_ACCOUNTS)
    job = dataclasses.replace(load_job(write_job(tmp_path, chunk_size=3, n_scenarios=300)), lost_workers_timeout_s=3.0)
    cluster_ = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                            host="127.0.0.1")
    client = Client(cluster_)
    fired = []

    def on_chunk(done, total):
        if not fired:
            fired.append(done)
            cluster_.scale(0)  # the worker and its nanny go away for good
            time.sleep(0.5)

    t0 = time.monotonic()
    try:
        with pytest.raises(JobError, match="no Dask worker left for 3 s") as err:
            _run(job, client, on_chunk=on_chunk)
    finally:
        client.close()
        cluster_.close()
    assert "\n" not in str(err.value) and time.monotonic() - t0 < 120
    run_dir = next(p for p in (tmp_path / "runs").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "failed"


class _TailDependencies:
    """A scheduler plugin that records, for each tail-statistics task as it starts, the keys it depends on."""

    name = "gpurisk-test-tail-dependencies"

    def __init__(self):
        self.seen = {}

    def start(self, scheduler):
        self.scheduler = scheduler

    def transition(self, key, start, finish, *args, **kwargs):
        if finish == "processing" and str(key).startswith("tail_stats-"):
            self.seen[str(key)] = sorted(str(d.key) for d in self.scheduler.tasks[key].dependencies)


def _tail_dependencies(job, client, monkeypatch=None, multi_host=False):
    from distributed.diagnostics.plugin import SchedulerPlugin

    plugin = type("TailDependencies", (_TailDependencies, SchedulerPlugin), {})()
    client.register_plugin(plugin)
    try:
        if multi_host:
            monkeypatch.setattr(cluster, "workers_of", lambda c: cluster.Workers(2, 0, False))
        rep = _run(job, client)
        seen = client.run_on_scheduler(lambda dask_scheduler: dict(dask_scheduler.plugins[_TailDependencies.name].seen))
        return rep, seen
    finally:
        client.unregister_scheduler_plugin(_TailDependencies.name)


def test_on_one_host_chunks_depend_on_no_task_and_across_hosts_on_their_p(job, client2, monkeypatch):
    """One host: a leg's chunks are submitted once its P is in its file, as tasks without dependencies (Dask's
    queue hands each to the first free worker; as dependents Dask would keep them beside the revaluing worker).
    Across hosts P travels with Dask, so every chunk depends on its revaluation. Same outputs either way."""
    local, seen = _tail_dependencies(job, client2)
    assert len(seen) == local.counts["chunks_computed"] > 10
    assert all(deps == [] for deps in seen.values())
    far, seen_far = _tail_dependencies(job, client2, monkeypatch, multi_host=True)
    assert len(seen_far) == far.counts["chunks_computed"]
    assert all(len(deps) == 1 and deps[0].startswith("revalue-") for deps in seen_far.values())
    assert read_outputs(far.run_dir) == read_outputs(local.run_dir)


def test_chunk_priorities_put_the_smaller_model_and_the_larger_chunks_first():
    """The model with less work runs first (its tables are finished while the other computes); within a model
    the largest chunk first; every chunk below every revaluation (priority 1000 and above)."""
    from types import SimpleNamespace

    from gpurisk.batch.chunks import chunk_work
    from gpurisk.batch.runner import _chunk_priority

    def model(label, sizes, n_scenarios):  # one leg, one portfolio per chunk, work as _plan_chunks estimates it
        return SimpleNamespace(label=label, work={("leg", j): float(chunk_work(np.array([0, k]), n_scenarios).sum())
                                                  for j, k in enumerate(sizes)})

    big, small = model("big", [5, 50, 20], 1000), model("small", [1, 3], 10)
    pr = _chunk_priority([big, small])
    assert min(pr[("small", "leg", j)] for j in range(2)) > max(pr[("big", "leg", j)] for j in range(3))
    assert pr[("big", "leg", 1)] > pr[("big", "leg", 2)] > pr[("big", "leg", 0)]
    assert pr[("small", "leg", 1)] > pr[("small", "leg", 0)]
    assert max(pr.values()) < 1000


def test_new_run_dir_never_reuses_a_folder(tmp_path, monkeypatch):
    """Runs of the same inputs started in the same millisecond get -2, -3, ... folders, each made once."""
    import datetime as dt

    from gpurisk.batch import manifest

    monkeypatch.setattr(manifest, "utc_now", lambda: dt.datetime(2026, 11, 29, 8, 0, 0, tzinfo=dt.timezone.utc))
    made = [manifest.new_run_dir(tmp_path, "ab" * 32) for _ in range(3)]
    base = "20261129T080000.000Z-abababab"
    assert [r for r, _ in made] == [base, f"{base}-2", f"{base}-3"]
    assert [d for _, d in made] == [tmp_path / base, tmp_path / f"{base}-2", tmp_path / f"{base}-3"]
    assert all(d.is_dir() for _, d in made)


def test_run_ids_sort_by_start_time_within_a_second():
    """Two runs of one second with different inputs: the later one sorts last, whatever the hashes
    (the latest run is found by name)."""
    import datetime as dt

    from gpurisk.batch import manifest

    t0 = dt.datetime(2026, 11, 29, 19, 21, 53, 100_000, tzinfo=dt.timezone.utc)
    first = manifest.new_run_id("ff" * 32, t0)
    second = manifest.new_run_id("00" * 32, t0 + dt.timedelta(milliseconds=5))
    assert first == "20261129T192153.100Z-ffffffff"
    assert sorted([second, first]) == [first, second]
