"""Batch runs on a real ``distributed.LocalCluster`` (2 worker processes) with the toy model.

Independent source: the same plan run in-process on the NumPy reference backend
without any chunking (``gpurisk.margin.plan.execute``).
"""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pandas as pd
import pytest

from gpurisk.backends import TailStats
from gpurisk.batch import JobError, RunOptions, format_summary, run_job
from gpurisk.batch.cluster import open_client
from gpurisk.config import load_job
from gpurisk.margin.plan import execute

from test_batch_fixtures import (LoadedBook, get_model, load_book, read_outputs, toy_finalize, toy_plan,
                                 write_book_folder, write_job)

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


def test_matches_in_process_reference(job, client2):
    rep = _run(job, client2)
    assert rep.status == "succeeded"
    book = load_book(job.book.path).book
    n_venue = len(book.portfolios("account_venue"))
    assert rep.counts["chunks_total"] == int(np.ceil(N_ACCOUNTS / 11)) + int(np.ceil(n_venue / 11))
    plan = toy_plan(book, get_model("house").Params(n_scenarios=300))
    stats, _ = execute(plan, "reference")
    want = toy_finalize(plan, stats).tables
    for name, df in want.items():
        got = pd.read_parquet(rep.run_dir / "house" / f"{name}.parquet")
        pd.testing.assert_frame_equal(got, df.reset_index(drop=True), check_dtype=False, rtol=0, atol=0)
    man = json.loads((rep.run_dir / "manifest.json").read_text())
    assert man["status"] == "succeeded" and man["input_hash"] and man["code"]["version"]
    assert {c["backend"] for c in man["chunks"]} == {"reference"}
    assert len(man["chunks"]) == rep.counts["chunks_total"]
    assert set(man["inputs"]) >= {"job", "book/positions.parquet", "book/book.toml"}
    assert man["counts"]["balanced"] and man["counts"]["accounts"] == N_ACCOUNTS
    assert (rep.run_dir / "metrics.prom").is_file() and (job.output / "gpurisk_toy.prom").is_file()
    # every account of the book has a margin row, recorded per model
    cov = man["coverage"]["house"]
    assert cov == rep.coverage["house"]
    assert (cov["expected"], cov["covered"], cov["missing"], cov["complete"]) == (N_ACCOUNTS, N_ACCOUNTS, 0, True)
    assert f"coverage house: {N_ACCOUNTS}/{N_ACCOUNTS} account_id" in format_summary(rep)


def test_second_run_is_byte_identical(job, client2):
    a = _run(job, client2)
    b = _run(job, client2, chunk_size=37)  # other chunking, same inputs
    assert a.run_id != b.run_id
    oa, ob = read_outputs(a.run_dir), read_outputs(b.run_dir)
    assert oa and oa == ob


def test_one_and_two_workers_identical(job, client2):
    two = _run(job, client2, chunk_size="auto")
    with open_client(workers=1) as c1:
        one = _run(job, c1, chunk_size=7)
    assert one.workers == 1 and two.workers == 2
    assert read_outputs(one.run_dir) == read_outputs(two.run_dir)


def test_killed_worker_gives_same_result(tmp_path, client2):
    write_book_folder(tmp_path / "book", N_ACCOUNTS)
    job = load_job(write_job(tmp_path, chunk_size=4, n_scenarios=3000))
    base = _run(job, client2)
    with open_client(workers=2) as c:
        pids = c.run(os.getpid)
        victim = sorted(pids.values())[0]
        killed = []

        def kill_one(done, total):
            if not killed:
                assert done < total  # tasks are still in flight
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)

        rep = _run(job, c, on_chunk=kill_one)
        assert killed
        with pytest.raises(ProcessLookupError):
            os.kill(victim, 0)
        assert read_outputs(rep.run_dir) == read_outputs(base.run_dir)


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
    saved = list((failed / "chunks").rglob("*.npz"))
    assert len(saved) >= 5
    alerts = [json.loads(x) for x in (job.output / "alerts.jsonl").read_text().splitlines()]
    assert any(a["alert"] == "job_failure" and a["run_id"] == failed.name for a in alerts)

    rep = _run(job, client2, resume=failed.name)
    assert rep.run_id == failed.name and rep.counts["chunks_resumed"] >= 5
    assert rep.counts["chunks_resumed"] + rep.counts["chunks_computed"] == rep.counts["chunks_total"]
    assert read_outputs(rep.run_dir) == read_outputs(full.run_dir)
    assert json.loads((failed / "manifest.json").read_text())["status"] == "succeeded"


def test_resume_with_changed_inputs_is_refused(job, client2):
    rep = _run(job, client2)
    pos = job.book.path / "positions.parquet"
    df = pd.read_parquet(pos)
    df.loc[0, "quantity"] += 1.0
    df.to_parquet(pos, index=False)
    with pytest.raises(JobError, match="inputs differ"):
        _run(job, client2, resume=rep.run_id)


def test_failing_task_fails_run_with_one_line(job, client2, monkeypatch):
    bad = get_model("house")

    def bad_finalize(plan, stats):
        raise ValueError("model exploded\nsecond line")

    monkeypatch.setattr(bad, "finalize", bad_finalize)
    with pytest.raises(JobError) as err:
        _run(job, client2)
    assert "ValueError: model exploded second line" in str(err.value) and "\n" not in str(err.value)
    prom = (job.output / "gpurisk_toy.prom").read_text()
    assert 'gpurisk_run_success{job="toy"} 0' in prom


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
    assert "\n" not in msg and f"model house covers {N_ACCOUNTS - 1:,} of {N_ACCOUNTS:,} account_id" in msg
    assert "1 missing, e.g. A00003" in msg
    run_dir = next(p for p in job.output.iterdir() if (p / "manifest.json").is_file())
    man = json.loads((run_dir / "manifest.json").read_text())
    assert man["status"] == "failed" and man["coverage"]["house"]["missing_examples"] == ["A00003"]
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


def test_gpu_tasks_carry_the_resource_and_fall_back_on_cpu_workers(job):
    """Workers that declare GPU=1 but have no usable GPU: tasks still run, on the CPU, and count fallbacks."""
    from gpurisk.backends import BackendUnavailable, get

    try:
        get("gpu")
        pytest.skip("a usable GPU is present: no fallback to observe")
    except BackendUnavailable:
        pass
    with open_client(workers=1, gpu=True) as c:
        from gpurisk.batch.cluster import gpu_workers

        assert gpu_workers(c) == 1
        rep = _run(job, c, backend="gpu")
    assert rep.counts["gpu_fallbacks"] >= rep.counts["chunks_computed"] > 0
    man = json.loads((rep.run_dir / "manifest.json").read_text())
    assert {ch["backend"] for ch in man["chunks"]} == {"cpu"}
    book = load_book(job.book.path).book
    plan = toy_plan(book, get_model("house").Params(n_scenarios=300))
    stats, _ = execute(plan, "reference")
    want = toy_finalize(plan, stats).tables["margin"]
    got = pd.read_parquet(rep.run_dir / "house" / "margin.parquet")
    np.testing.assert_allclose(got["im_usd"], want["im_usd"], rtol=1e-9, atol=1e-6)
    assert (got["worst_scenario"] == want["worst_scenario"]).all()


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
    from gpurisk.batch import cluster

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 2.0)
    with pytest.raises(JobError, match="cannot reach the Dask scheduler"):
        run_job(job, RunOptions(scheduler="tcp://127.0.0.1:1", progress=False), get_model=get_model,
                book_loader=load_book)
