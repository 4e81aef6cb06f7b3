"""Batch throughput: a job end to end on 1 vs 2 local Dask worker processes, and the whole command.

For each worker count the job runs on a fresh embedded cluster, whose start-up is timed and
reported separately. One warm-up run (sample-book cache, Numba's cache loaded on the workers),
then ``--repeat`` timed runs of which the fastest is reported (the machine may be shared); a run
is timed from submission (``run_job``) to its written outputs. The speed-up is the throughput
of N workers over that of 1. The baseline is the same models run in-process with
``gpurisk.margin.compute`` (no Dask, no chunking, no files), in the same session. Dask's own
overhead per task is the round trip of ``--empty-tasks`` empty tasks.

Each timed run also records its CPU seconds (user + system): the client process's (with the embedded
cluster, the scheduler and the nannies run there too) and the workers' sum. Their total over the
machine's cores is a floor no scheduling can beat on this machine; ``speedup_bound_vs_1`` is the
1-worker time over the N-worker floor (``docs/benchmarks.md``, "Why 2 workers do not reach 1.7×").

``--cli`` also times the whole ``gpurisk run JOB`` command (a new process: imports, cluster
start, the run, the summary) with warm caches, the fastest of ``--repeat`` after one warm-up.

    python benchmarks/batch.py [--job jobs/intraday_margin.toml] [--accounts 100000] [--workers 1 2] [--cli]

Prints a JSON document and a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import resource
import subprocess
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


def cpu_seconds() -> float:
    """User + system CPU seconds of the calling process so far (run on the client and on every worker)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed_run(job, opts, client):
    """(RunReport, {client_cpu_s, workers_cpu_s}) of one run on ``client``: its report and the CPU it used."""
    from gpurisk.batch import run_job

    c0, w0 = cpu_seconds(), client.run(cpu_seconds)
    rep = run_job(job, opts, client=client)
    c1, w1 = cpu_seconds(), client.run(cpu_seconds)
    return rep, {"client_cpu_s": c1 - c0, "workers_cpu_s": sum(v - w0.get(k, 0.0) for k, v in w1.items())}


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


def time_cli(job_path: Path, out: Path, workers: int, repeat: int) -> dict:
    """Wall seconds of the whole ``gpurisk run`` command (a fresh process each time), warm caches."""
    cmd = [sys.executable, "-m", "gpurisk.cli", "run", str(job_path), "--out", str(out), "--workers", str(workers),
           "--quiet"]
    subprocess.run(cmd, check=True, capture_output=True)  # warm-up: caches filled
    walls = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        walls.append(time.perf_counter() - t)
    return {"command": " ".join(["gpurisk"] + cmd[3:]), "workers": workers, "wall_s": min(walls), "walls_s": walls}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", default=str(REPO / "jobs" / "intraday_margin.toml"))
    ap.add_argument("--accounts", type=int, default=None, help="override the sample book size")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--backend", default=None)
    ap.add_argument("--empty-tasks", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per worker count; the fastest is reported")
    ap.add_argument("--cli", action="store_true", help="also time the whole `gpurisk run` command")
    ap.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    args = ap.parse_args(argv)

    from gpurisk.batch import RunOptions, run_job
    from gpurisk.batch.cluster import open_client
    from gpurisk.config import load_job

    job_path = Path(args.job).resolve()
    job = load_job(job_path)
    if args.accounts and job.book.sample is not None:
        job = dataclasses.replace(job, book=dataclasses.replace(
            job.book, sample=dataclasses.replace(job.book.sample, accounts=args.accounts)))
    backend = args.backend or job.backend
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gpurisk-bench-"))
    rows = []
    for n in args.workers:
        t = time.perf_counter()
        with open_client(workers=n) as client:
            start_s = time.perf_counter() - t
            opts = RunOptions(out=out, backend=backend, progress=False)
            run_job(job, opts, client=client)  # warm-up (sample cache, Numba's cache loaded on the workers)
            rep, cpu = min((timed_run(job, opts, client) for _ in range(args.repeat)),
                           key=lambda r: r[0].duration_s)
            per_empty = empty_task_overhead(client, args.empty_tasks)
        c = rep.counts
        rows.append({
            "workers": n,
            "accounts": c["accounts"],
            "chunks": c.get("chunks_computed", 0),
            "pnl_matrices": c.get("pnl_matrices", 0),
            "cluster_start_s": start_s,
            "end_to_end_s": rep.duration_s,
            "accounts_per_s": c["accounts"] / rep.duration_s,
            "compute_wall_s": rep.timings.get("compute", 0.0),
            "revalue_s": c.get("revalue_s", 0.0),
            "task_compute_s": c.get("task_compute_s", 0.0),
            "empty_task_s": per_empty,
            **cpu,
            "cpu_floor_s": (cpu["client_cpu_s"] + cpu["workers_cpu_s"]) / (os.cpu_count() or 1),
            "stages": rep.timings,
            "backend": rep.backend,
        })
    one = next((r for r in rows if r["workers"] == 1), None)
    for r in rows:
        r["speedup_vs_1"] = (r["accounts_per_s"] / one["accounts_per_s"]) if one else None
        r["speedup_bound_vs_1"] = (one["end_to_end_s"] / r["cpu_floor_s"]) if one else None
    base = min((baseline(job, out, backend) for _ in range(args.repeat)), key=lambda b: b["wall_s"])
    parallel = {n: machine_parallelism(n) for n in args.workers if n > 1}
    cli = None
    if args.cli:
        jp = job_path
        if args.accounts and job.book.sample is not None:  # the command reads a job file: write one with the size
            text = job_path.read_text(encoding="utf-8")
            jp = out / "bench_job.toml"
            text = re.sub(r"accounts\s*=\s*\d+", f"accounts = {args.accounts}", text, count=1)
            text = re.sub(r'params_file\s*=\s*"([^"]+)"',
                          lambda m: f'params_file = "{(job_path.parent / m.group(1)).resolve()}"', text)
            jp.write_text(text, encoding="utf-8")
        cli = time_cli(jp, out, max(args.workers), args.repeat)
    doc = {
        "machine_parallel_speedup": parallel,
        "job": job_path.name,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(), "load_avg": os.getloadavg()},
        "command": "python benchmarks/batch.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "in_process_baseline": base,
        "runs": rows,
        "cli": cli,
    }
    print(json.dumps(doc, indent=2))
    print()
    print("| workers | accounts | tasks | cluster start s | submission to outputs s | accounts/s | speed-up vs 1 "
          "| compute wall s | Σ revalue s | Σ tail-task s | empty task ms | client CPU s | workers CPU s "
          "| CPU floor s | speed-up bound |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        sp = "-" if r["speedup_vs_1"] is None else f"{r['speedup_vs_1']:.2f}x"
        print(f"| {r['workers']} | {r['accounts']:,} | {r['chunks'] + r['pnl_matrices']} | {r['cluster_start_s']:.2f} "
              f"| {r['end_to_end_s']:.2f} | {r['accounts_per_s']:,.0f} | {sp} | {r['compute_wall_s']:.2f} "
              f"| {r['revalue_s']:.2f} | {r['task_compute_s']:.2f} | {1e3 * r['empty_task_s']:.2f} "
              f"| {r['client_cpu_s']:.2f} | {r['workers_cpu_s']:.2f} | {r['cpu_floor_s']:.2f} "
              f"| {'-' if r['speedup_bound_vs_1'] is None else format(r['speedup_bound_vs_1'], '.2f') + 'x'} |")
    print(f"| in-process (no Dask) | {base['accounts']:,} | - | - | {base['wall_s']:.2f} (compute only) | "
          f"{base['accounts'] / base['wall_s']:,.0f} | - | - | - | - | - | - | - | - | - |")
    for n, sp in parallel.items():
        print(f"\nmachine check: {n} CPU-bound processes run {sp:.2f}x as fast as one (ideal {n}x)")
    if cli:
        print(f"\nwhole command, {cli['workers']} workers, warm caches: {cli['wall_s']:.2f} s (fastest of "
              f"{', '.join(f'{w:.2f}' for w in cli['walls_s'])})")
    print("\nstages (s): " + "; ".join(
        f"{r['workers']} worker(s): " + ", ".join(f"{k} {v:.2f}" for k, v in r["stages"].items()) for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
