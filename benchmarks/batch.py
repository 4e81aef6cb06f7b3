"""Batch throughput: a job end to end on 1 vs 2 local Dask worker processes, plus Dask overhead.

For each worker count the job runs on a fresh embedded LocalCluster: one warm-up
run (sample-book cache, Numba compilation on the workers), then ``--repeat`` timed
runs of which the fastest is reported (the machine may be shared). The
baseline is the same models run in-process with ``gpurisk.margin.compute`` (no
Dask, no chunking), measured in the same session. Dask overhead per task is
measured two ways: the round trip of ``n`` empty tasks, and (tail-stats wall ×
workers − Σ task compute) / tasks in the real run.

    python benchmarks/batch.py [--job jobs/intraday_margin.toml] [--accounts 2000] [--workers 1 2]

Prints a JSON document and a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def empty_task_overhead(client, n: int = 500) -> float:
    """Seconds per empty task (submit + run + gather), with all tasks in flight at once."""
    from gpurisk.batch.tasks import noop

    client.gather(client.map(noop, range(20), pure=False))  # warm
    t = time.perf_counter()
    client.gather(client.map(noop, range(n), pure=False))
    return (time.perf_counter() - t) / n


def _spin(n: int = 5_000_000) -> float:
    t = time.perf_counter()
    x = 0
    for i in range(n):
        x += i
    return time.perf_counter() - t


def machine_parallelism(workers: int) -> float:
    """Speed-up of ``workers`` CPU-bound processes over one on this machine now (≤ workers; < when shared)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(workers) as pool:
        pool.map(_spin, [100_000] * workers)  # start-up
        one = min(pool.map(_spin, [5_000_000]))
        t = time.perf_counter()
        pool.map(_spin, [5_000_000] * workers)
        many = time.perf_counter() - t
    return workers * one / many


def baseline(job, out: Path, backend: str) -> dict:
    """In-process compute of every model of the job (no Dask): wall seconds."""
    from gpurisk.batch import sources
    from gpurisk.io import load_book
    from gpurisk.margin import compute, get_model

    book = load_book(sources.book_folder(job, out)).book
    t = time.perf_counter()
    for i, mj in enumerate(job.models):
        mod = get_model(mj.name)
        params = sources.model_params(mod, mj, f"models[{i}]")
        scen = sources.model_scenarios(mj, book.as_of, f"models[{i}]")
        compute(book, mj.name, params=params, scenarios=scen, backend=backend)
    return {"wall_s": time.perf_counter() - t, "accounts": int(book.n_accounts)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", default=str(REPO / "jobs" / "intraday_margin.toml"))
    ap.add_argument("--accounts", type=int, default=None, help="override the sample book size")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--backend", default=None)
    ap.add_argument("--empty-tasks", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per worker count; the fastest is reported")
    args = ap.parse_args(argv)

    from gpurisk.batch import RunOptions, run_job
    from gpurisk.batch.cluster import open_client
    from gpurisk.config import load_job

    job = load_job(args.job)
    if args.accounts and job.book.sample is not None:
        job = dataclasses.replace(job, book=dataclasses.replace(
            job.book, sample=dataclasses.replace(job.book.sample, accounts=args.accounts)))
    backend = args.backend or job.backend
    out = Path(tempfile.mkdtemp(prefix="gpurisk-bench-"))
    rows = []
    for n in args.workers:
        with open_client(workers=n) as client:
            opts = RunOptions(out=out, backend=backend, progress=False)
            run_job(job, opts, client=client)  # warm-up (sample cache, Numba compile on workers)
            rep = min((run_job(job, opts, client=client) for _ in range(args.repeat)), key=lambda r: r.duration_s)
            per_empty = empty_task_overhead(client, args.empty_tasks)
        t = rep.timings
        wall_tail = t.get("tail_stats", 0.0)
        tasks = rep.counts.get("chunks_computed", 0)
        compute_s = rep.counts.get("task_compute_s", 0.0)
        rows.append({
            "workers": n,
            "accounts": rep.counts["accounts"],
            "chunks": tasks,
            "end_to_end_s": rep.duration_s,
            "accounts_per_s": rep.counts["accounts"] / rep.duration_s,
            "tail_stats_wall_s": wall_tail,
            "task_compute_s": compute_s,
            "overhead_per_task_s": (wall_tail * n - compute_s) / tasks if tasks else None,
            "empty_task_s": per_empty,
            "stages": t,
            "backend": rep.backend,
        })
    base = min((baseline(job, out, backend) for _ in range(args.repeat)), key=lambda b: b["wall_s"])
    parallel = {n: machine_parallelism(n) for n in args.workers if n > 1}
    doc = {
        "machine_parallel_speedup": parallel,
        "job": Path(args.job).name,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine()},
        "command": "python benchmarks/batch.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "in_process_baseline": base,
        "runs": rows,
    }
    print(json.dumps(doc, indent=2))
    print()
    print("| workers | accounts | chunks | end-to-end s | accounts/s | tail-stats wall s | Σ task compute s "
          "| overhead/task ms (wall·N−compute) | empty task ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ov = "n/a" if r["overhead_per_task_s"] is None else f"{1e3 * r['overhead_per_task_s']:.1f}"
        print(f"| {r['workers']} | {r['accounts']:,} | {r['chunks']} | {r['end_to_end_s']:.2f} | "
              f"{r['accounts_per_s']:,.0f} | {r['tail_stats_wall_s']:.2f} | {r['task_compute_s']:.2f} | {ov} | "
              f"{1e3 * r['empty_task_s']:.2f} |")
    print(f"| in-process (no Dask) | {base['accounts']:,} | - | {base['wall_s']:.2f} (compute only) | "
          f"{base['accounts'] / base['wall_s']:,.0f} | - | - | - | - |")
    for n, sp in parallel.items():
        print(f"\nmachine check: {n} CPU-bound processes run {sp:.2f}x as fast as one (ideal {n}x)")
    print("\nstages (s): " + "; ".join(
        f"{r['workers']} worker(s): " + ", ".join(f"{k} {v:.2f}" for k, v in r["stages"].items()) for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
