"""Running a job on Dask, one stage function after another.

``run_job(job, RunOptions(...)) -> RunReport``; the stages, in order:

1. ``_open``: resolve the book, hash every input, open (or resume) the run folder and its manifest.
2. ``_start``: resolve the backend once, on the client, before any work (``cluster.choose_backend``:
   an explicit ``gpu`` that cannot run is a one-line error, ``auto`` falls back with a warning and a
   counted fallback) and start the embedded cluster in the background (or connect to a scheduler).
3. ``_load_book`` and ``_plan_models``: the book, then each model's ``Plan`` (while the cluster starts).
4. ``_plan_chunks``: each leg's portfolios in chunks (``chunks.plan_chunks``); chunks checkpointed by an
   earlier attempt of the run are reused.
5. ``_compute``: one revaluation task per distinct P&L matrix still needed (``tasks.revalue_pnl``, on a
   worker with the workers' hardware; where P lives is ``pnl.place``'s decision), one tail-statistics
   task per chunk reading it. Each finished chunk is checkpointed; when a model's last chunk is in,
   ``_finish_model`` turns it into tables (``margin.plan.finish``: finalize + the output contract),
   writes them (``margin.output.write_result``, with the run's provenance), and takes its coverage
   (``module.coverage(plan)``) and figures (``MarginResult.totals()``), while the other models' tasks run.
6. ``_check``: every model covers what it must and the row counts balance, else the run fails.
7. ``_close``: manifest, the run's ``summary.json``, metrics, alerts, the last-run pointer; chunk
   checkpoints are pruned after a successful run unless the job keeps them.

A lost worker changes nothing: its nanny restarts it, and what it held (a P, a chunk's result) is the
result of a task that Dask runs again. Nothing here loops over accounts: the unit of work is a chunk.
Presentation (progress, the summary text) is the caller's: ``on_chunk`` and ``present.format_summary``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import JobConfig, ModelJob, to_dict
from ..errors import ConfigError, GpuriskError
from ..fileio import check_name, path_name, sha256_file, write_json, write_parquet
from ..margin.output import write_result
from ..margin.plan import Plan, finish
from ..tail import TailStats
from . import chunks, cluster, manifest, monitoring, pnl, sources, summary, tasks
from .present import format_summary
from .summary import model_coverage

log = logging.getLogger("gpurisk.batch")


class JobError(GpuriskError):
    """A batch job failed; the message is the one-line cause."""


class ResumeError(ConfigError):
    """``--resume`` names no run of the output folder, or one whose inputs differ: the caller's error (no alert)."""


@dataclass
class RunOptions:
    """Command-line overrides of a job file (None keeps the job's value)."""

    out: Path | None = None
    workers: int | None = None
    scheduler: str | None = None
    backend: str | None = None
    resume: str | None = None
    chunk_size: int | str | None = None
    progress: bool | None = None  # how the caller shows progress (through on_chunk); the runner draws nothing
    keep_checkpoints: bool | None = None
    memory_budget_mb: float | None = None
    attribution: bool | None = None  # Euler attribution of the ES models (``actions.attribution``)
    call_due_hours: float | None = None  # the call lifecycle's due time (``actions.lifecycle``; None: its default)
    transfer_costs: Any = None  # with a venue model: plan collateral transfers at the end of the run
    #   (``actions.transfers``; True for the defaults, or a costs file); None: no plan
    market: Any = None  # ``gpurisk.market.MarketSettings`` of the command line (None: the job's, env, shipped)


@dataclass
class RunReport:
    """What a run did: where its outputs are, its counts, figures, timings and alerts (amounts in USD)."""

    job: str
    run_id: str
    run_dir: Path
    status: str
    started: str
    finished: str = ""
    finished_unix: float = 0.0
    duration_s: float = 0.0
    error: str | None = None
    backend: str = ""
    workers: int = 0
    as_of: str = ""  # the book's as-of, ISO 8601 UTC
    timings: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    total_im: dict = field(default_factory=dict)  # {model label: {venue: USD}}
    calls: dict = field(default_factory=dict)  # {model label: {status: n}}
    figures: dict = field(default_factory=dict)  # {model label: summary.model_figures}
    changes: dict = field(default_factory=dict)  # {model label: IM change against the previous run}
    coverage: dict = field(default_factory=dict)  # {model label: {key, expected, covered, missing, ...}}
    outputs: dict = field(default_factory=dict)  # {relative path: sha256}
    alerts: list = field(default_factory=list)
    results: dict = field(default_factory=dict, repr=False)  # {label: MarginResult}

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("results",)}
        d["run_dir"] = str(self.run_dir)
        return d


class _Stages:
    """Wall time per named stage (seconds, summed over repeats)."""

    def __init__(self):
        self.t: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.t[name] = self.t.get(name, 0.0) + time.perf_counter() - t0


@dataclass
class _Run:
    """One run in progress: the job, its folder and manifest, its report and the clock."""

    job: JobConfig
    opts: RunOptions
    out: Path
    requested: str
    chunk_size: Any
    stage: _Stages
    t_start: float
    report: RunReport
    run_dir: Path | None = None
    man: dict = field(default_factory=dict)
    input_hash: str = ""
    book_path: Path | None = None
    previous: dict | None = None
    backend: cluster.RunBackend | None = None
    workers: cluster.Workers | None = None
    market: Any = None  # the run's ``gpurisk.market.MarketStore``, resolved once in ``_open``
    action_alerts: list = field(default_factory=list)  # escalated calls (``actions.lifecycle``), raised at close
    reconcile_alerts: list = field(default_factory=list)  # the pre-run reconciliation's (``gpurisk.reconcile``)
    calls: dict = field(default_factory=dict)  # model index -> its lifecycle calls, written as ``calls.parquet``
    previous_calls: Any = None  # the previous successful run's ``calls.parquet`` (read once), or None


@dataclass
class _Model:
    """One model of the job: its plan, chunks, the statistics in so far and its result."""

    index: int
    label: str
    job: ModelJob
    module: Any
    params: Any
    plan: Plan
    bounds: dict = field(default_factory=dict)  # leg -> [(start, stop)]
    stats: dict = field(default_factory=dict)  # (leg, j) -> TailStats
    todo: list = field(default_factory=list)  # [(leg, j, start, stop)] still to compute
    meta: dict = field(default_factory=dict)  # (leg, j) -> chunk metadata
    work: dict = field(default_factory=dict)  # (leg, j) -> estimated work of a chunk to compute (chunks.chunk_work)
    outstanding: int = 0
    result: Any = None
    attributed: frozenset = frozenset()  # legs whose chunks also return the Euler marginals


# --------------------------------------------------------------------------- 1. open


def _fingerprint(job: JobConfig, backend: str, market=None) -> dict:
    """The result-changing settings of a job other than file contents (which are hashed separately),
    the market history's content fingerprint included (a resume refuses changed history)."""
    models = []
    for m in job.models:
        d = to_dict(m)
        d.pop("params_file", None)
        d["scenarios"] = [{k: v for k, v in s.items() if k != "file"} for s in d["scenarios"]]
        models.append(d)
    book = to_dict(job.book)
    return {"kind": job.kind, "backend": backend, "models": models, "book": {"kind": job.book.kind, "sample": book["sample"]},
            "market": None if market is None else {**market.describe(), "fingerprint": market.fingerprint()}}


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, GpuriskError):
        msg = str(exc)
    else:
        msg = f"{type(exc).__name__}: {exc}"
    return " ".join(msg.split())[:500]


def _open_run(out: Path, resume: str | None, input_hash: str):
    """(run_id, run_dir, manifest dict): a new run folder, or the one to resume after checking its inputs."""
    if resume is not None:
        try:
            run_dir = out / check_name(resume, f"--resume takes a run id (a folder name in {out})")
        except ConfigError as exc:
            raise ResumeError(str(exc)) from None
        old = manifest.read_manifest(run_dir)
        if old is None:
            raise ResumeError(f"cannot resume run {resume}: no manifest.json in {run_dir}")
        if old.get("input_hash") != input_hash:
            raise ResumeError(
                f"cannot resume run {resume}: its inputs differ (input hash {str(old.get('input_hash'))[:12]} "
                f"recorded, {input_hash[:12]} now); start a new run without --resume"
            )
        return resume, run_dir, {"chunk_plan": old.get("chunk_plan", {}), "previous_status": old.get("status")}
    run_id, run_dir = manifest.new_run_dir(out, input_hash)
    return run_id, run_dir, {}


def _last_run_path(run: _Run) -> Path:
    return run.out / f"last_run-{check_name(run.job.name, 'job name')}.json"


def _read_previous(run: _Run) -> dict | None:
    """The job's last successful run (``last_run-<job>.json``), or None."""
    path = _last_run_path(run)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _open(job: JobConfig, opts: RunOptions) -> _Run:
    """The run's folder and manifest (status ``running``); a failure before there is a folder is
    recorded at the output level (alert, metrics) and raised as a JobError."""
    out = Path(os.path.normpath(opts.out or job.output))  # "jobs/../runs" prints and records as "runs"
    out.mkdir(parents=True, exist_ok=True)
    requested = opts.backend or job.backend
    started = manifest.utc_now()
    stage = _Stages()
    run = _Run(job, opts, out, requested, opts.chunk_size or job.chunk_size, stage, time.perf_counter(),
               RunReport(job=job.name, run_id="", run_dir=out, status="running", started=started.isoformat(),
                         backend=requested))
    try:
        with stage("inputs"):
            from ..market import resolve_store

            run.market = resolve_store(opts.market, job.market)
            run.book_path = Path(os.path.normpath(sources.book_folder(job, out, run.market)))
            files = sources.input_files(job, run.book_path)
            hashes, run.input_hash = manifest.hash_inputs(files, _fingerprint(job, requested, run.market))
        run_id, run.run_dir, run.man = _open_run(out, opts.resume, run.input_hash)
    except ResumeError:
        raise  # a bad --resume is the caller's mistake, not a failed job: no alert, no metrics
    except Exception as exc:  # noqa: BLE001 - no run folder yet: alert and metrics at the output level only
        run.report.status, run.report.error = "failed", _one_line(exc)
        _close(run)
        raise JobError(f"job {job.name} failed before it started: {run.report.error}") from exc
    run.report.run_id, run.report.run_dir = run_id, run.run_dir
    run.previous = _read_previous(run)
    run.man.update({
        "run_id": run_id, "job": job.name, "status": "running", "started": started.isoformat(),
        "input_hash": run.input_hash,
        "inputs": {role: {"path": os.path.normpath(p), "sha256": hashes[role]} for role, p in files.items()},
        "book": str(run.book_path), "parameters": {"job": to_dict(job), "options": to_dict(opts)},
        "code": manifest.code_version(), "resumed_from": opts.resume,
        "market": {**run.market.describe(), "fingerprint": run.market.fingerprint()},
    })
    run.man.setdefault("chunk_plan", {})
    manifest.write_manifest(run.run_dir, run.man)
    log.info("run %s: job %s, book %s, output %s", run_id, job.name, run.book_path, run.run_dir)
    return run


# --------------------------------------------------------------------------- 2. backend and cluster


def _start(run: _Run, stack: contextlib.ExitStack, client):
    """Resolve the backend and bring up the cluster; returns a callable giving the Client.

    The embedded cluster starts in the background (the book is loaded and the models planned
    meanwhile); its backend is resolved on this host before it starts. With a running cluster
    (``client`` or ``--scheduler``) the backend is resolved against its workers.
    """
    opts, job = run.opts, run.job
    with run.stage("backend"):
        if client is None and not opts.scheduler:
            run.backend = cluster.choose_backend(run.requested)
            start = stack.enter_context(cluster.Starting(opts.workers or job.workers, gpu=run.backend.gpu_cluster))
            return start.client
        if client is None:
            with run.stage("cluster"):
                client = stack.enter_context(cluster.Starting(scheduler=opts.scheduler, background=False)).client()
        run.workers = cluster.workers_of(client)
        run.backend = cluster.choose_backend(run.requested, run.workers)
    return lambda: client


def _cluster_ready(run: _Run, pending):
    """Wait for the cluster (the part of its start not hidden behind planning counts as ``cluster``)."""
    with run.stage("cluster"):
        client = pending()
    if run.workers is None:
        run.workers = cluster.workers_of(client)
    b = run.backend
    run.report.workers = run.workers.count
    run.man["backend"] = {"requested": b.requested, "resolved": b.name, "gpu_workers": run.workers.gpu,
                          "resources": b.resources, "fallbacks": b.fallbacks}
    run.man["cluster"] = {"workers": run.workers.count, "gpu_workers": run.workers.gpu,
                          "one_host": run.workers.local, "scheduler": client.scheduler.address}
    return client


# --------------------------------------------------------------------------- 3. book and plans


def _load_book(run: _Run, book_loader):
    with run.stage("load_book"):
        loaded = sources.load_book(run.book_path, book_loader)
    run.report.as_of = str(np.datetime_as_string(loaded.book.as_of, unit="s")) + "Z"
    run.man["as_of"] = run.report.as_of
    return loaded


def _use_jax_cache(out: Path) -> None:
    """Keep JAX's compiled programs (Monte Carlo scenarios) in ``OUTPUT/.cache/jax`` between runs, like the
    sample book, unless the environment already says where (``JAX_COMPILATION_CACHE_DIR``)."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ or "jax" in sys.modules:
        return
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(out / ".cache" / "jax")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def _plan_models(run: _Run, book, get_model) -> list[_Model]:
    """Each model's parameters, scenarios and Plan, recorded in the manifest."""
    _use_jax_cache(run.out)
    models = []
    for i, mj in enumerate(run.job.models):
        where = f"{run.job.path.name}: models[{i}] ({mj.label})"
        module = get_model(mj.name)
        with run.stage("params"):
            params = sources.model_params(module, mj, where)
        with run.stage("scenarios"):
            scen = sources.model_scenarios(mj, book.as_of, where, run.market)
        with run.stage("plan"):
            plan = _plan(module, mj.name, book, params, scen, run.market)
        models.append(_Model(i, mj.label, mj, module, params, plan))
        if run.opts.attribution:  # opt-in: only the ES models' attributed legs carry the marginals
            from ..actions.attribution import attribution_legs

            models[-1].attributed = attribution_legs(mj.name, plan)
        run.man.setdefault("models", {})[mj.label] = {
            "name": mj.name,
            "params": dataclasses.asdict(params) if dataclasses.is_dataclass(params) else repr(params),
            "scenarios": {leg_name: {k: v for k, v in leg.scenarios.describe().items() if k != "metadata"}
                          for leg_name, leg in plan.legs.items()},
        }
    return models


def _plan(module, name: str, book, params, scenarios, market):
    """The model's Plan, with the run's market history for a model that reads it (its ``plan`` takes ``market``)."""
    import inspect

    if "market" in inspect.signature(module.plan).parameters:
        return module.plan(book, params, scenarios, market=market)
    return module.plan(book, params, scenarios)


def _reconcile(run: _Run) -> None:
    """The job's ``[reconcile]`` check of the book before any margin work (``gpurisk.reconcile.pre_run_check``):
    breaks and summary into ``RUN/reconcile/``, an alert either way, and a JobError when the job says ``stop``."""
    from ..reconcile import pre_run_check, write_outputs

    with run.stage("reconcile"):
        rec = pre_run_check(run.job, run.book_path)
        if rec is None:
            return
        for name, path in write_outputs(rec, run.run_dir / "reconcile").items():
            run.report.outputs[f"reconcile/{Path(path).name}"] = sha256_file(path)
    run.man["reconcile"] = {k: v for k, v in rec.summary.items() if not str(k).startswith("_")}
    run.reconcile_alerts = rec.alerts({"job": run.job.name, "run_id": run.report.run_id,
                                       "time": manifest.utc_now().isoformat()})
    if rec.failed and run.job.reconcile.on_break == "stop":
        raise JobError(f"reconciliation before the run: {rec.n_breaks} break(s), above the threshold "
                       f"{rec.summary.get('max_breaks')}; see {run.run_dir / 'reconcile'}")


# --------------------------------------------------------------------------- 4. chunks


def _stored_bounds(stored, n: int):
    """A stored chunk plan if it covers [0, n) in order, else None."""
    if not stored:
        return None
    b = [tuple(map(int, x)) for x in stored]
    ok = b[0][0] == 0 and b[-1][1] == n and all(x[1] == y[0] for x, y in zip(b, b[1:])) and all(a < c for a, c in b)
    return b if ok else None


def _ckpt(run: _Run, m: _Model, leg: str, a: int, b: int) -> Path:
    return chunks.checkpoint_path(run.run_dir / "chunks", m.label, leg, a, b)


def _plan_chunks(run: _Run, models: list[_Model]) -> int:
    """Each leg's chunks (a resumed run keeps its stored plan); checkpointed chunks are loaded. Returns the total."""
    total = 0
    for m in models:
        stored = run.man["chunk_plan"].setdefault(m.label, {})
        for leg_name, leg in m.plan.legs.items():
            n = len(leg.portfolios)
            bounds = _stored_bounds(stored.get(leg_name), n) or chunks.plan_chunks(
                leg.portfolios.indptr, leg.scenarios.n_scenarios, run.chunk_size, run.workers.count,
                n_instruments=len(leg.pricing))
            stored[leg_name] = [list(x) for x in bounds]
            m.bounds[leg_name] = bounds
            for j, (a, b) in enumerate(bounds):
                saved = chunks.load_chunk(_ckpt(run, m, leg_name, a, b))
                if (saved is not None and saved[1].get("input_hash") == run.input_hash and len(saved[0]) == b - a
                        and (leg_name not in m.attributed or saved[0].attributed)):
                    m.stats[(leg_name, j)] = saved[0]
                    m.meta[(leg_name, j)] = {**saved[1], "resumed": True}
                else:
                    m.todo.append((leg_name, j, a, b))
                    m.work[(leg_name, j)] = float(
                        chunks.chunk_work(leg.portfolios.indptr[a:b + 1], leg.scenarios.n_scenarios).sum())
            total += len(bounds)
        m.outstanding = len(m.todo)
    manifest.write_manifest(run.run_dir, run.man)
    return total


# --------------------------------------------------------------------------- 5. compute


def _pnl_targets(run: _Run, models: list[_Model]) -> tuple[dict, dict]:
    """({P key: (name, first leg)}, {P key: pnl.Target}) for every P a chunk still needs."""
    first: dict = {}
    for m in models:
        for leg_name, *_ in m.todo:
            leg = m.plan.legs[leg_name]
            first.setdefault((m.label,) + leg.pnl_key(), (f"{m.label}/{leg_name}", leg))
    mb = run.opts.memory_budget_mb or run.job.memory_budget_mb
    budget = max(int(mb * 2**20), 1) if mb else pnl.default_budget(run.workers.count)
    shm = pnl.shm_folder(run.report.run_id) if run.workers.local else None
    sizes = {name: (len(leg.pricing), leg.scenarios.n_scenarios) for name, leg in first.values()}
    by_name = pnl.place(sizes, shared=run.workers.local, budget=budget, scratch=run.run_dir / "scratch", shm=shm)
    run.man["pnl"] = {"budget_bytes": budget, "one_host": run.workers.local,
                      "matrices": {name: {"shape": list(sizes[name]), "bytes": pnl.nbytes(*sizes[name]),
                                          "where": t.where or "memory", "block_scenarios": t.block}
                                   for name, t in by_name.items()}}
    return first, {k: by_name[name] for k, (name, _) in first.items()}


def _bare(portfolios):
    """The CSR a tail task needs, without the label columns (smaller to send)."""
    return dataclasses.replace(portfolios, key={})


def _chunk_priority(models: list[_Model]) -> dict:
    """Dask priority of each chunk to compute ({(label, leg, j): number}; higher runs first).

    The model with the least work first: the last model to complete is finished (finalize, write) after the
    compute, the others while it runs. Within a model, the largest chunks first (longest-first list scheduling:
    the last chunks to run are the short ones, so the workers finish together). Every chunk ranks below every
    revaluation (priority 1000 and above), which unblocks chunks.
    """
    rank = {m.label: r for r, m in enumerate(sorted(models, key=lambda m: sum(m.work.values()), reverse=True))}
    out = {}
    for m in models:
        top = max(m.work.values(), default=0.0) + 1.0
        out.update({(m.label,) + k: rank[m.label] + w / top for k, w in m.work.items()})
    return out


def _compute(run: _Run, client, models: list[_Model], total: int, on_chunk, book) -> None:
    """Submit the revaluations and chunks, collect and checkpoint the chunks, finish each model when complete.

    On one host a leg's chunks are submitted once its P is revalued, with the revaluation's result (the file
    every worker maps) as a plain argument: the chunks then depend on no task, so Dask gives each to the least
    busy worker, each worker runs its tasks by priority (``_chunk_priority``: revaluations, then the smaller
    model, the largest chunks first) and work stealing evens the workers out. (As dependents of the
    revaluation, Dask would run them beside the worker that revalued P, its locality rule, which here buys
    nothing and left one of two workers idle for seconds.) Across hosts P travels with Dask: the chunks depend
    on the revaluation's future.

    A complete model is finished (``_finish_model``: finalize, write, coverage) on one background thread, in
    the order the models complete, so that this thread goes on handing out chunks meanwhile (a leg whose P
    arrives during a finish would otherwise wait for it); the run waits for every finish before it returns.
    """
    from concurrent.futures import ThreadPoolExecutor

    from distributed import as_completed

    tb = run.backend.task_backend()
    res = run.backend.resources
    attempt = uuid.uuid4().hex[:8]  # fresh task keys per attempt (a resumed run reuses its run id)
    shared = run.workers.local
    scratch = [run.run_dir / "scratch"] + ([pnl.shm_folder(run.report.run_id)] if shared else [])
    for folder in scratch:
        pnl.remove(folder)  # what an earlier attempt of this run left
    if shared:
        pnl.sweep()
    p_futures, futures = {}, {}
    p_pending: dict = {}  # one host: revaluation future -> P key, until its chunks are submitted
    left: dict = {}  # P key -> chunks still to read it
    watch = cluster.WorkerWatch(client, run.job.lost_workers_timeout_s,
                                lambda: client.cancel(list(futures) + list(p_futures.values())))
    priority = _chunk_priority(models)
    needs: dict = {}  # P key -> [(model, leg, j, start, stop)] in submission order
    for m in models:
        for leg_name, j, a, b in m.todo:
            needs.setdefault((m.label,) + m.plan.legs[leg_name].pnl_key(), []).append((m, leg_name, j, a, b))
    done = sum(len(m.stats) for m in models)
    finishing = ThreadPoolExecutor(1, thread_name_prefix="gpurisk-finish")
    finishes: list = []

    def finish(m: _Model) -> None:
        finishes.append(finishing.submit(_finish_model, run, m, book))

    def submit_chunks(pkey, p) -> list:
        """The chunks reading P ``p`` (the revaluation's future, or its result on one host)."""
        new = []
        for m, leg_name, j, a, b in needs[pkey]:
            leg = m.plan.legs[leg_name]
            fut = client.submit(
                tasks.tail_stats_chunk, _bare(leg.portfolios.slice(a, b)), p, leg.spec, tb, leg_name in m.attributed,
                key=f"tail_stats-{run.report.run_id}-{attempt}-{m.label}-{path_name(leg_name)}-{a}-{b}",
                pure=False, retries=run.job.retries, resources=res, priority=priority[(m.label, leg_name, j)])
            futures[fut] = (m, leg_name, j, a, b, pkey)
            new.append(fut)
        left[pkey] = len(needs[pkey])
        return new

    try:
        with run.stage("submit"):
            first, targets = _pnl_targets(run, models)
            # the largest P first among the revaluations (they unblock the chunks), by priority and in submission
            # order: the first ones go to idle workers as they arrive
            by_size = sorted(first, key=lambda k: len(first[k][1].pricing) * first[k][1].scenarios.n_scenarios,
                             reverse=True)
            for i, pkey in enumerate(by_size):
                name, leg = first[pkey]
                p_futures[pkey] = client.submit(
                    tasks.revalue_pnl, leg.pricing, leg.scenarios, leg.numeraire, tb, targets[pkey],
                    key=f"revalue-{run.report.run_id}-{attempt}-{i}", pure=False, retries=run.job.retries,
                    resources=res, priority=1000 + len(by_size) - i)
            if shared:
                p_pending = {f: k for k, f in p_futures.items()}
                pending = list(p_pending)
            else:
                pending = [f for pkey in by_size for f in submit_chunks(pkey, p_futures[pkey])]
        log.info("%d chunks (%d from checkpoints), %d P&L matrices, on %d worker(s), backend %s",
                 total, done, len(p_futures), run.workers.count, run.backend.name)
        for m in models:
            if m.outstanding == 0:
                finish(m)
        with run.stage("compute"), watch:
            arrived = as_completed(pending, with_results=True)
            for fut, out in arrived:
                if fut.status != "finished":  # cancelled under us: raise its own error, not use it as a result
                    fut.result()
                if fut in p_pending:  # one host: P is in its file; its chunks go to whichever worker is free
                    pkey = p_pending.pop(fut)
                    arrived.update(submit_chunks(pkey, out))
                    p_futures.pop(pkey).release()
                    continue
                m, leg_name, j, a, b, pkey = futures.pop(fut)
                fut.release()
                meta = {"input_hash": run.input_hash, "backend": out["backend"], "fallbacks": out["fallbacks"],
                        "seconds": out["seconds"], "worker": out["worker"]}
                chunks.save_chunk(_ckpt(run, m, leg_name, a, b), out["stats"], meta)
                m.stats[(leg_name, j)] = out["stats"]
                m.meta[(leg_name, j)] = {**meta, "resumed": False}
                run.man["pnl"]["matrices"][first[pkey][0]].update(out["revalue"])
                left[pkey] -= 1
                if left[pkey] == 0 and pkey in p_futures:
                    p_futures.pop(pkey).release()
                done += 1
                if on_chunk is not None:
                    on_chunk(done, total)
                m.outstanding -= 1
                if m.outstanding == 0:
                    finish(m)
                for f in finishes:
                    if f.done():
                        f.result()  # a failed finish fails the run now, not after the other models' compute
        for f in finishes:
            f.result()
        _in_job_order(run.report, [m.label for m in models])
    except BaseException:
        client.cancel(list(futures) + list(p_futures.values()))
        if watch.fired:  # the futures were cancelled because no worker was left: say that, not "cancelled"
            raise JobError(watch.message()) from None
        raise
    finally:
        finishing.shutdown(wait=True, cancel_futures=True)  # no finish writes after the run is closed
        futures.clear()
        for f in p_futures.values():
            f.release()
        with contextlib.suppress(Exception):
            client.run(tasks.forget_pnl, on_error="return")
        for folder in scratch:
            pnl.remove(folder)


def _in_job_order(report: RunReport, labels: list[str]) -> None:
    """The report's per-model tables in the job's model order (models finish in whichever order their chunks
    complete; the summary, the manifest and ``calls.parquet`` must not depend on it)."""
    for name in ("figures", "total_im", "calls", "coverage", "results"):
        d = getattr(report, name)
        setattr(report, name, {k: d[k] for k in labels if k in d} | {k: v for k, v in d.items() if k not in labels})


def _stats(m: _Model, leg_name: str) -> TailStats:
    leg = m.plan.legs[leg_name]
    parts = [m.stats[(leg_name, j)] for j in range(len(m.bounds[leg_name]))]
    if parts:
        return TailStats.concat(parts)
    z = np.zeros((0, len(leg.spec.levels)))
    return TailStats(np.zeros(0), np.zeros(0, np.int64), z, z.copy())


def _provenance(run: _Run, m: _Model, result) -> dict:
    """What every output file of a model records about the run (Parquet metadata)."""
    return {"run_id": run.report.run_id, "job": run.job.name, "as_of": run.report.as_of,
            "model_label": m.label, "model_name": m.job.name, "input_hash": run.input_hash,
            "parameters": run.man["models"][m.label], "history_date": (result.summary or {}).get("history_date"),
            "market_history": (result.summary or {}).get("market_history"),
            "code_version": run.man["code"].get("version"), "git_commit": run.man["code"].get("git_commit")}


def _finish_model(run: _Run, m: _Model, book) -> None:
    """Tables of a model whose chunks are all in: finish (finalize + contract), write, coverage, figures."""
    with run.stage("finalize"):
        stats = {leg: _stats(m, leg) for leg in m.plan.legs}
        res = finish(m.module, m.plan, stats)
    with run.stage("actions"):
        _actions(run, m, res, stats)
    folder = run.run_dir / check_name(m.label, "model label")
    with run.stage("write"):
        for name, sha in write_result(res, folder, _provenance(run, m, res)).items():
            run.report.outputs[f"{m.label}/{name}"] = sha
        write_json(res.summary, folder / "summary.json")
        if run.job.outputs.fixml:  # FIXML margin requirement and collateral reports per account (docs/interfaces.md)
            from ..adapters.fixml_margin import write_margin_reports

            for p in write_margin_reports(res, folder / "fixml", as_of=run.report.as_of, run_id=run.report.run_id):
                run.report.outputs[f"{m.label}/fixml/{p.name}"] = sha256_file(p)
    with run.stage("coverage"):
        run.report.coverage[m.label] = model_coverage(m.module, m.plan, book, res)
    fig = summary.model_figures(res)
    fig["call_lifecycle"] = res.summary.get("call_lifecycle")
    m.result = res
    run.report.results[m.label] = res
    run.report.figures[m.label] = fig
    run.report.total_im[m.label] = fig["im_usd_by_venue"]
    run.report.calls[m.label] = fig["status"]
    log.info("model %s: %s rows, total IM %s USD", m.label, f"{fig['rows']:,}", f"{fig['total_im_usd']:,.0f}")


def _actions(run: _Run, m: _Model, res, stats) -> None:
    """What a run adds to a model's result (``gpurisk.actions``): the ``attribution`` table when asked, and the
    call lifecycle of its label (carried on from the previous successful run's ``calls.parquet``; escalations
    become alerts at close)."""
    from ..actions import attribution, lifecycle

    if m.attributed:
        attribution.add_attribution(res, m.job.name, m.plan, stats)
    prev = run.previous_calls
    if prev is None and run.previous and run.previous.get("run_id"):
        prev = lifecycle.read_previous(run.out / check_name(str(run.previous["run_id"]), "previous run id"))
        run.previous_calls = prev if prev is not None else False
    prev = prev if isinstance(prev, pd.DataFrame) else None
    mine = prev[prev["label"] == m.label] if prev is not None else None
    rerun = bool(run.previous) and run.previous.get("as_of") == run.report.as_of
    due = run.opts.call_due_hours
    params = lifecycle.LifecycleParams(due_hours=due) if due is not None else lifecycle.LifecycleParams()
    calls = lifecycle.update(res.margin, mine, m.label, run.report.as_of, params, rerun=rerun)
    run.calls[m.index] = calls
    res.summary["call_lifecycle"] = lifecycle.summarise(calls)
    base = {"job": run.job.name, "run_id": run.report.run_id, "time": manifest.utc_now().isoformat()}
    run.action_alerts.extend(lifecycle.escalation_alerts(calls, m.label, base))


def _plan_transfers(run: _Run, models: list[_Model], book) -> None:
    """``transfers/`` in the run folder: the collateral transfer plan of the run's venue model (when asked)."""
    costs = run.opts.transfer_costs
    venue = next((m for m in models if m.job.name == "venue" and m.result is not None), None)
    if not costs or venue is None:
        return
    from ..actions import transfers

    house = next((m.result for m in models if m.job.name == "house" and m.result is not None), None)
    with run.stage("actions"):
        params = transfers.load_costs(None if costs is True else costs)
        plan = transfers.plan_for_results(book, venue.result, house, params, run.report.run_id)
    with run.stage("write"):
        for name in transfers.write_plan(plan, run.run_dir / "transfers",
                                         {"run_id": run.report.run_id, "as_of": run.report.as_of,
                                          "model": venue.label}):
            run.report.outputs[f"transfers/{name}"] = sha256_file(run.run_dir / "transfers" / name)
    run.man["transfers"] = {k: plan.summary[k] for k in ("transfers", "moved_usd", "cost_usd", "infeasible_accounts",
                                                          "venue_rows_fixed")}


def _write_calls(run: _Run) -> None:
    """The run's ``calls.parquet``: every model label's calls with their lifecycle (``actions.lifecycle``)."""
    from ..actions import lifecycle

    if not run.calls:
        return
    parts = [run.calls[i] for i in sorted(run.calls)]  # in the job's model order, whichever finished first
    table = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    with run.stage("write"):
        path = write_parquet(table[lifecycle.COLUMNS], run.run_dir / "calls.parquet")
        run.report.outputs["calls.parquet"] = sha256_file(path)


# --------------------------------------------------------------------------- 6. checks


def _row_counts(loaded, book) -> dict:
    """accounts, input rows, accepted rows and rejects, with the check inputs = results + rejects.

    Reads the loader's per-table summary ``{table: {input, accepted, rejected}}``
    (``gpurisk.validate``), else a flat ``input_rows``. ``rejects`` is the length of the
    rejects table itself when there is one, so ``balanced`` checks the loader's counts
    against the rows it actually rejected (with only a flat ``input_rows`` it cannot be
    checked and holds by construction).
    """
    rejects = getattr(loaded, "rejects", None)
    n_rej = int(len(rejects)) if rejects is not None else 0
    s = getattr(loaded, "summary", None) or {}
    per_table = {k: v for k, v in s.items() if isinstance(v, dict) and "input" in v and "accepted" in v}
    if per_table:
        n_in = sum(int(v["input"]) for v in per_table.values())
        n_ok = sum(int(v["accepted"]) for v in per_table.values())
        if rejects is None:
            n_rej = sum(int(v.get("rejected", int(v["input"]) - int(v["accepted"]))) for v in per_table.values())
    else:
        n_in = int(s.get("input_rows", n_rej))
        n_ok = n_in - n_rej
    return {"accounts": int(book.n_accounts), "positions": int(len(book.positions.quantity)),
            "input_rows": n_in, "result_rows": n_ok, "rejects": n_rej, "balanced": n_in == n_ok + n_rej}


def _check(run: _Run, loaded, models: list[_Model]) -> None:
    """The rejects table, the run's counts; JobError if a model dropped keys or the rows do not balance."""
    report = run.report
    rejects = getattr(loaded, "rejects", None)
    with run.stage("write"):
        if isinstance(rejects, pd.DataFrame):
            write_parquet(rejects.reset_index(drop=True), run.run_dir / "rejects.parquet")
            report.outputs["rejects.parquet"] = sha256_file(run.run_dir / "rejects.parquet")
    report.counts.update(_row_counts(loaded, loaded.book))
    run.man["coverage"] = report.coverage
    short = {k: v for k, v in report.coverage.items() if not v["complete"]}
    if short:
        what = "; ".join(
            f"model {k} covers {v['covered']:,} of {v['expected']:,} {'×'.join(v['key'])} "
            f"({v['missing']:,} missing, e.g. {', '.join(v['missing_examples'])})"
            if v.get("expected") is not None else f"model {k}: {v['error']}"
            for k, v in short.items())
        raise JobError(f"margin output incomplete: {what}")
    if not report.counts["balanced"]:
        c = report.counts
        raise JobError(f"row counts do not balance: {c['input_rows']:,} input rows, {c['result_rows']:,} accepted, "
                       f"{c['rejects']:,} in the rejects table")


def _count(run: _Run, models: list[_Model], total: int) -> None:
    """The run's chunk counts, backend and fallbacks, and the chunk list of the manifest."""
    metas = [(m, leg, j, meta) for m in models for (leg, j), meta in m.meta.items()]
    revals = [v for v in run.man.get("pnl", {}).get("matrices", {}).values() if "backend" in v]
    used = sorted({str(meta["backend"]) for *_, meta in metas if not meta["resumed"]}
                  | {str(v["backend"]) for v in revals}) or [run.backend.name]
    req = run.requested
    run.report.backend = used[0] if used == [req] else f"{req}->{','.join(used)}"
    run.report.counts.update(
        chunks_total=total,
        chunks_resumed=sum(1 for *_, meta in metas if meta["resumed"]),
        chunks_computed=sum(1 for *_, meta in metas if not meta["resumed"]),
        gpu_fallbacks=run.backend.fallbacks + sum(int(meta.get("fallbacks", 0)) for *_, meta in metas
                                                  if not meta["resumed"])
        + sum(int(v.get("fallbacks", 0)) for v in revals),
        task_compute_s=sum(float(meta.get("seconds", 0.0)) for *_, meta in metas if not meta["resumed"]),
        revalue_s=sum(float(v.get("seconds", 0.0)) for v in revals),
        pnl_matrices=len(revals),
    )
    run.man["chunks"] = [{"model": m.label, "leg": leg, "index": j, "start": m.bounds[leg][j][0],
                          "stop": m.bounds[leg][j][1], **meta}
                         for m, leg, j, meta in sorted(metas, key=lambda x: (x[0].index, x[1], x[2]))]


# --------------------------------------------------------------------------- the run


def run_job(job: JobConfig, options: RunOptions | None = None, *, client=None, get_model=None, book_loader=None,
            on_chunk=None) -> RunReport:
    """Run ``job`` and return its report; raise ``JobError`` (one line) if it fails.

    ``client``: an existing ``distributed.Client`` to use (else one is opened per
    ``options``). ``get_model``, ``book_loader``: replacements of
    ``gpurisk.margin.get_model`` and ``gpurisk.io.load_book``. ``on_chunk(done, total)`` is called after each chunk is
    checkpointed (progress and monitoring hooks; an exception there fails the run).
    """
    opts = options or RunOptions()
    if job.kind != "margin":  # stress: gpurisk.batch.stress_job; backtest, calibration: gpurisk.batch.research_job
        where = "stress_job" if job.kind == "stress" else "research_job"
        raise ConfigError(f"{job.path.name}: a {job.kind} job runs through gpurisk.batch.{where} "
                          "(gpurisk run does it), not run_job")
    if get_model is None:
        from ..margin import get_model
    run = _open(job, opts)
    models: list[_Model] = []
    total = 0
    try:
        with contextlib.ExitStack() as stack:
            pending = _start(run, stack, client)
            loaded = _load_book(run, book_loader)
            _reconcile(run)
            models = _plan_models(run, loaded.book, get_model)
            c = _cluster_ready(run, pending)
            total = _plan_chunks(run, models)
            _compute(run, c, models, total, on_chunk, loaded.book)
        _write_calls(run)
        _plan_transfers(run, models, loaded.book)
        _count(run, models, total)
        _check(run, loaded, models)
        run.report.status = "succeeded"
    except BaseException as exc:  # noqa: BLE001 - every failure is recorded, alerted, then re-raised in one line
        if run.backend is not None:
            _count(run, models, total)
        run.report.status = "failed"
        run.report.error = _one_line(exc)
        _close(run)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise JobError(f"run {run.report.run_id} failed: {run.report.error}") from exc
    _close(run)
    if job.outputs.report:
        _write_report(run)
    return run.report


def _write_report(run: _Run) -> None:
    """``report.html`` of the finished run (``[outputs] report``); a failure is logged, never the run's outcome."""
    try:
        from ..reports import write_report

        path = write_report(run.run_dir, run.run_dir / "report.html")
        log.info("report: %s", path)
    except Exception as exc:  # noqa: BLE001 - a report is an extra output: the run's tables stand
        log.error("the run succeeded but its report could not be written: %s", _one_line(exc))


# --------------------------------------------------------------------------- 7. close


def _run_summary(run: _Run) -> dict:
    """The run-level ``summary.json``: the book, every model's figures and change, coverage, timings."""
    r = run.report
    return {"run_id": r.run_id, "job": r.job, "status": r.status, "as_of": r.as_of, "book": str(run.book_path),
            "backend": r.backend, "workers": r.workers, "started": r.started, "finished": r.finished,
            "duration_s": r.duration_s, "error": r.error, "counts": r.counts,
            "models": {k: {**f, "change": r.changes.get(k)} for k, f in r.figures.items()},
            "coverage": r.coverage, "timings": r.timings, "alerts": [a.get("message") for a in r.alerts]}


def _close(run: _Run) -> None:
    """Manifest, run summary, metrics, alerts and the last-run pointer; checkpoints pruned after success.
    Never raises over the run's own outcome (an OS failure here is logged)."""
    report, job, out, run_dir, man = run.report, run.job, run.out, run.run_dir, run.man
    now = manifest.utc_now()
    report.finished = now.isoformat()
    report.finished_unix = now.timestamp()
    report.duration_s = time.perf_counter() - run.t_start
    report.timings = dict(run.stage.t)
    report.changes = summary.change(report.figures, run.previous)
    if report.status == "succeeded" and run_dir is not None:
        keep = run.opts.keep_checkpoints if run.opts.keep_checkpoints is not None else job.keep_checkpoints
        man["checkpoints"] = "kept" if keep else {"pruned_bytes": chunks.prune(run_dir / "chunks")}
    man.update({
        "status": report.status, "finished": report.finished, "error": report.error, "timings": report.timings,
        "counts": report.counts, "total_im": report.total_im, "calls": report.calls, "coverage": report.coverage,
        "figures": report.figures, "changes": report.changes, "outputs": report.outputs, "workers": report.workers,
        "as_of": report.as_of,
    })
    try:
        if run_dir is not None:
            manifest.write_manifest(run_dir, man)
        d = report.as_dict()
        alerts = monitoring.check_alerts(d, run.previous, job.alerts) + run.reconcile_alerts
        if report.status == "succeeded":
            alerts += summary.uncovered_alerts(d)
            alerts += summary.stale_history_alerts(d, report.results)
            alerts += run.action_alerts
        report.alerts = monitoring.raise_alerts(alerts, out, job.alerts)
        if report.alerts and run_dir is not None:  # the alerts raised, and any webhook delivery that failed
            man["alerts"] = report.alerts
            manifest.write_manifest(run_dir, man)
        if run_dir is not None and report.run_id:
            write_json(_run_summary(run), run_dir / "summary.json")
        monitoring.write_metrics(report.as_dict(), run_dir, out / f"gpurisk_{check_name(job.name, 'job name')}.prom")
        if report.status == "succeeded":
            last = {k: d[k] for k in ("job", "run_id", "finished", "as_of", "total_im", "calls", "counts")}
            last["total_im_usd"] = {k: f["total_im_usd"] for k, f in report.figures.items()}
            write_json(last, _last_run_path(run))
    except OSError as exc:
        log.error("could not write the run's manifest/metrics/alerts: %s", exc)


__all__ = ["run_job", "RunOptions", "RunReport", "JobError", "ResumeError", "format_summary", "model_coverage"]
