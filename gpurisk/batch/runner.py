"""Running a job on Dask: plan → revalue once → scatter → chunked tail stats → finalize → write.

For each model of the job the runner builds the model's ``Plan`` on the client,
revalues each distinct leg P&L once (``Leg.pnl_key``) on the client, scatters the
P&L matrix P [I, S] and the measure spec to every worker once
(``client.scatter(..., broadcast=True)``), splits each leg's portfolios into
chunks (``chunks.plan_chunks``) and submits one ``tail_stats`` task per chunk
(with ``retries``; ``resources={"GPU": 1}`` when the GPU backend is asked for and
workers declare a GPU). Each finished chunk is checkpointed; the chunks are
concatenated in order, the model's ``finalize`` makes the tables, and every
output is written atomically into ``OUTPUT/<run_id>/<model label>/``.

Coverage: each model's ``margin`` table must hold every account of the loaded book
(or, for a model that defines ``coverage(plan)``, every key row it returns, such
as the account × venue pairs of the venue models). Coverage per model is recorded
in ``manifest.json`` and the run summary, and a model that drops accounts fails the
run, as does a rejects table that disagrees with the loader's row counts.

Nothing here loops over accounts: the unit of work is a chunk of portfolios.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..backends import TailStats
from ..config import JobConfig, to_dict
from ..errors import ConfigError, GpuriskError
from ..fileio import check_name, sha256_file, write_json, write_parquet
from . import chunks, cluster, manifest, monitoring, sources, tasks

log = logging.getLogger("gpurisk.batch")

#: margin-table columns read as the initial margin (USD), first match wins
IM_COLUMNS = ("im_usd", "im", "initial_margin_usd", "initial_margin")
#: columns read as the venue label of a margin row
VENUE_COLUMNS = ("venue", "label")
#: columns read as a call status
STATUS_COLUMNS = ("status", "call_status", "call")


class JobError(GpuriskError):
    """A batch job failed; the message is the one-line cause."""


@dataclass
class RunOptions:
    """Command-line overrides of a job file (None keeps the job's value)."""

    out: Path | None = None
    workers: int | None = None
    scheduler: str | None = None
    backend: str | None = None
    resume: str | None = None
    chunk_size: int | str | None = None
    progress: bool | None = None  # None: a bar on a terminal, log lines otherwise


@dataclass
class RunReport:
    """What a run did: where its outputs are, its counts, totals, timings and alerts."""

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
    timings: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    total_im: dict = field(default_factory=dict)  # {model label: {venue: USD}}
    calls: dict = field(default_factory=dict)  # {model label: {status: n}}
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


class _Progress:
    """A one-line bar on a terminal, else a log line every ~10 %."""

    def __init__(self, total: int, enabled: bool | None):
        self.total, self.done = total, 0
        self.tty = sys.stderr.isatty() if enabled is None else enabled
        self.next_log = 0.1
        self.t0 = time.perf_counter()

    def step(self, n: int = 1):
        self.done += n
        frac = self.done / self.total if self.total else 1.0
        if self.tty:
            bar = "#" * int(30 * frac)
            sys.stderr.write(f"\r  chunks [{bar:<30}] {self.done}/{self.total} {time.perf_counter() - self.t0:6.1f} s")
            if self.done >= self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif frac >= self.next_log or self.done >= self.total:
            log.info("chunks %d/%d done (%.0f%%)", self.done, self.total, 100 * frac)
            while self.next_log <= frac:
                self.next_log += 0.1


def _fingerprint(job: JobConfig, backend: str) -> dict:
    """The result-changing settings of a job other than file contents (which are hashed separately)."""
    models = []
    for m in job.models:
        d = to_dict(m)
        d.pop("params_file", None)
        d["scenarios"] = [{k: v for k, v in s.items() if k != "file"} for s in d["scenarios"]]
        models.append(d)
    book = to_dict(job.book)
    return {"kind": job.kind, "backend": backend, "models": models, "book": {"kind": job.book.kind, "sample": book["sample"]}}


def _model_getter(get_model):
    if get_model is not None:
        return get_model
    from ..margin import get_model as gm

    return gm


def _frame_total_im(res, label: str) -> dict:
    """{venue label: total IM USD} from a MarginResult's margin table (vectorised)."""
    df = res.tables.get("margin")
    if df is None or df.empty:
        return {}
    col = next((c for c in IM_COLUMNS if c in df.columns), None)
    if col is None:
        return {}
    vcol = next((c for c in VENUE_COLUMNS if c in df.columns), None)
    if vcol is None:
        return {"all": float(df[col].sum())}
    s = df.groupby(df[vcol].astype(str), sort=True)[col].sum()
    return {str(k): float(v) for k, v in s.items()}


def _frame_calls(res) -> dict:
    """{status: n}: the summary's ``calls`` counts, else the margin table's status column, else the calls table."""
    calls = (res.summary or {}).get("calls")
    if isinstance(calls, dict) and all(isinstance(v, (int, np.integer)) for v in calls.values()):
        return {str(k): int(v) for k, v in sorted(calls.items())}
    for name in ("margin", "calls"):
        df = res.tables.get(name)
        if df is None:
            continue
        col = next((c for c in STATUS_COLUMNS if c in df.columns), None)
        if col is not None:
            vc = df[col].astype(str).value_counts(sort=False)
            return {str(k): int(v) for k, v in sorted(vc.items())}
    return {}


def _empty_stats(n_levels: int) -> TailStats:
    z = np.zeros((0, n_levels))
    return TailStats(np.zeros(0), np.zeros(0, np.int64), z, z.copy())


def _check_plan(stored, n: int):
    """A stored chunk plan if it covers [0, n) in order, else None."""
    if not stored:
        return None
    b = [tuple(map(int, x)) for x in stored]
    ok = b[0][0] == 0 and b[-1][1] == n and all(x[1] == y[0] for x, y in zip(b, b[1:])) and all(a < c for a, c in b)
    return b if ok else None


def run_job(job: JobConfig, options: RunOptions | None = None, *, client=None, get_model=None, book_loader=None,
            on_chunk=None) -> RunReport:
    """Run ``job`` and return its report; raise ``JobError`` (one line) if it fails.

    ``client``: an existing ``distributed.Client`` to use (else one is opened per
    ``options``). ``get_model``, ``book_loader``: replacements of
    ``gpurisk.margin.get_model`` and ``gpurisk.io.load_book``. ``on_chunk(done, total)`` is called after each chunk is
    checkpointed (monitoring hooks; an exception there fails the run).
    """
    opts = options or RunOptions()
    if job.kind == "calibration":
        raise ConfigError(f"{job.path.name}: calibration jobs are not built yet; this job file is a placeholder")
    out = Path(os.path.normpath(opts.out or job.output))  # "jobs/../runs" prints and records as "runs"
    out.mkdir(parents=True, exist_ok=True)
    backend = opts.backend or job.backend
    chunk_size = opts.chunk_size or job.chunk_size
    get_model = _model_getter(get_model)
    stage = _Stages()
    t_start = time.perf_counter()
    started = manifest.utc_now()

    try:
        with stage("inputs"):
            book_path = Path(os.path.normpath(sources.book_folder(job, out)))
            files = sources.input_files(job, book_path)
            hashes, input_hash = manifest.hash_inputs(files, _fingerprint(job, backend))
        run_id, run_dir, man = _open_run(out, opts.resume, input_hash)
    except Exception as exc:  # noqa: BLE001 - no run folder yet: alert and metrics at the output level only
        report = RunReport(job=job.name, run_id="", run_dir=out, status="failed", started=started.isoformat(),
                           backend=backend, error=_one_line(exc))
        _finish(job, out, None, {}, report, stage, t_start)
        raise JobError(f"job {job.name} failed before it started: {report.error}") from exc
    report = RunReport(job=job.name, run_id=run_id, run_dir=run_dir, status="running", started=started.isoformat(),
                       backend=backend)
    man.update({
        "run_id": run_id, "job": job.name, "status": "running", "started": started.isoformat(),
        "input_hash": input_hash,
        "inputs": {role: {"path": os.path.normpath(p), "sha256": hashes[role]} for role, p in files.items()},
        "book": str(book_path), "parameters": {"job": to_dict(job), "options": to_dict(opts)},
        "code": manifest.code_version(), "resumed_from": opts.resume,
    })
    man.setdefault("chunk_plan", {})
    manifest.write_manifest(run_dir, man)
    log.info("run %s: job %s, book %s, output %s", run_id, job.name, book_path, run_dir)
    try:
        if client is not None:
            _execute(job, client, opts, backend, chunk_size, get_model, book_loader, book_path, input_hash,
                     run_dir, man, report, stage, on_chunk)
        else:
            gpu = backend in ("gpu", "auto") and not opts.scheduler and cluster.local_gpu_usable()
            with contextlib.ExitStack() as stack:
                with stage("cluster"):
                    c = stack.enter_context(cluster.open_client(opts.workers or job.workers, opts.scheduler, gpu=gpu))
                _execute(job, c, opts, backend, chunk_size, get_model, book_loader, book_path, input_hash,
                         run_dir, man, report, stage, on_chunk)
        report.status = "succeeded"
    except BaseException as exc:  # noqa: BLE001 - every failure is recorded, alerted, then re-raised in one line
        report.status = "failed"
        report.error = _one_line(exc)
        _finish(job, out, run_dir, man, report, stage, t_start)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise JobError(f"run {run_id} failed: {report.error}") from exc
    _finish(job, out, run_dir, man, report, stage, t_start)
    return report


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, GpuriskError):
        msg = str(exc)
    else:
        msg = f"{type(exc).__name__}: {exc}"
    return " ".join(msg.split())[:500]


def _open_run(out: Path, resume: str | None, input_hash: str):
    """(run_id, run_dir, manifest dict): a new run folder, or the one to resume after checking its inputs."""
    if resume:
        run_dir = out / check_name(resume, f"--resume takes a run id (a folder name in {out})")
        old = manifest.read_manifest(run_dir)
        if old is None:
            raise ConfigError(f"cannot resume run {resume}: no manifest.json in {run_dir}")
        if old.get("input_hash") != input_hash:
            raise ConfigError(
                f"cannot resume run {resume}: its inputs differ (input hash {str(old.get('input_hash'))[:12]} "
                f"recorded, {input_hash[:12]} now); start a new run without --resume"
            )
        return resume, run_dir, {"chunk_plan": old.get("chunk_plan", {}), "previous_status": old.get("status")}
    base = manifest.new_run_id(input_hash)
    run_id, k = base, 1
    while (out / run_id).exists():
        k += 1
        run_id = f"{base}-{k}"
    run_dir = out / run_id
    run_dir.mkdir(parents=True)
    return run_id, run_dir, {}


def _execute(job, client, opts, backend, chunk_size, get_model, book_loader, book_path, input_hash, run_dir, man,
             report, stage, on_chunk):
    from distributed import as_completed

    n_workers = max(1, cluster.n_workers(client))
    report.workers = n_workers
    with stage("load_book"):
        loaded = sources.load_book(book_path, book_loader)
    book = loaded.book
    rejects = getattr(loaded, "rejects", None)

    # ---- plan every model
    plans, modules = {}, {}
    for i, mj in enumerate(job.models):
        where = f"{job.path.name}: models[{i}] ({mj.label})"
        module = get_model(mj.name)
        with stage("params"):
            params = sources.model_params(module, mj, where)
        with stage("scenarios"):
            scen = sources.model_scenarios(mj, book.as_of, where)
        with stage("plan"):
            plans[mj.label] = module.plan(book, params, scen)
        modules[mj.label] = module
        man.setdefault("models", {})[mj.label] = {
            "name": mj.name,
            "params": dataclasses.asdict(params) if dataclasses.is_dataclass(params) else repr(params),
            "scenarios": {leg_name: {k: v for k, v in leg.scenarios.describe().items() if k != "metadata"}
                          for leg_name, leg in plans[mj.label].legs.items()},
        }

    # ---- chunk plan and checkpoints
    ck_dir = run_dir / "chunks"
    work = []  # (label, leg name, chunk index, start, stop)
    done: dict[tuple, TailStats] = {}
    chunk_meta: dict[tuple, dict] = {}
    for label, plan in plans.items():
        stored = man["chunk_plan"].setdefault(label, {})
        for leg_name, leg in plan.legs.items():
            n = len(leg.portfolios)
            bounds = _check_plan(stored.get(leg_name), n) or chunks.plan_chunks(
                leg.portfolios.indptr, leg.scenarios.n_scenarios, chunk_size, n_workers)
            stored[leg_name] = [list(b) for b in bounds]
            for j, (a, b) in enumerate(bounds):
                key = (label, leg_name, j)
                saved = chunks.load_chunk(chunks.checkpoint_path(ck_dir, label, leg_name, a, b))
                if saved is not None and saved[1].get("input_hash") == input_hash and len(saved[0]) == b - a:
                    done[key] = saved[0]
                    chunk_meta[key] = {**saved[1], "resumed": True}
                else:
                    work.append((label, leg_name, j, a, b))
    manifest.write_manifest(run_dir, man)
    n_total = len(work) + len(done)
    log.info("%d chunks (%d from checkpoints) on %d workers", n_total, len(done), n_workers)

    # ---- revalue each distinct P&L once (only where some chunk still needs it), scatter once
    need = {(lab, leg) for lab, leg, *_ in work}
    p_futures, spec_futures = {}, {}
    engine, fallbacks = tasks.make_engine(backend)
    for label, plan in plans.items():
        for leg_name, leg in plan.legs.items():
            if (label, leg_name) not in need:
                continue
            key = (label,) + leg.pnl_key()
            if key not in p_futures:
                with stage("revalue"):
                    P = engine.revalue(leg.pricing, leg.scenarios, leg.numeraire)
                with stage("scatter"):
                    p_futures[key] = client.scatter(P, broadcast=True, hash=False)
                del P
            with stage("scatter"):
                spec_futures[(label, leg_name)] = client.scatter(leg.spec, broadcast=True, hash=False)
    report.counts["gpu_fallbacks"] = fallbacks + engine.fallbacks

    # ---- chunked tail statistics
    resources = {"GPU": 1} if backend in ("gpu", "auto") and cluster.gpu_workers(client) > 0 else None
    progress = _Progress(n_total, opts.progress)
    if done:
        progress.step(len(done))
    attempt = uuid.uuid4().hex[:8]  # fresh task keys per attempt (a resumed run reuses its run id)
    futures = {}
    with stage("tail_stats"):
        for label, leg_name, j, a, b in work:
            leg = plans[label].legs[leg_name]
            key = (label,) + leg.pnl_key()
            fut = client.submit(
                tasks.tail_stats_chunk, leg.portfolios.slice(a, b), p_futures[key], spec_futures[(label, leg_name)],
                backend, key=f"tail_stats-{run_dir.name}-{attempt}-{label}-{leg_name}-{a}-{b}", pure=False,
                retries=job.retries, resources=resources,
            )
            futures[fut] = (label, leg_name, j, a, b)
        try:
            for fut in as_completed(list(futures)):
                label, leg_name, j, a, b = futures[fut]
                res = fut.result()
                meta = {"input_hash": input_hash, "backend": res["backend"], "fallbacks": res["fallbacks"],
                        "seconds": res["seconds"], "worker": res["worker"]}
                chunks.save_chunk(chunks.checkpoint_path(ck_dir, label, leg_name, a, b), res["stats"], meta)
                done[(label, leg_name, j)] = res["stats"]
                chunk_meta[(label, leg_name, j)] = {**meta, "resumed": False}
                progress.step()
                if on_chunk is not None:
                    on_chunk(progress.done, n_total)
        except BaseException:
            client.cancel(list(futures))
            raise
        finally:
            futures.clear()
            for f in list(p_futures.values()) + list(spec_futures.values()):
                f.release()

    # ---- finalize and write
    used = sorted({str(m.get("backend")) for m in chunk_meta.values()} | {engine.name})
    report.backend = ",".join(used) if backend == used[0] or len(used) > 1 else f"{backend}->{used[0]}"
    report.counts.update(
        chunks_total=n_total,
        chunks_resumed=sum(1 for m in chunk_meta.values() if m["resumed"]),
        chunks_computed=sum(1 for m in chunk_meta.values() if not m["resumed"]),
        gpu_fallbacks=report.counts["gpu_fallbacks"] + sum(int(m.get("fallbacks", 0)) for m in chunk_meta.values()),
        task_compute_s=sum(float(m.get("seconds", 0.0)) for m in chunk_meta.values() if not m["resumed"]),
    )
    man["chunks"] = []
    for lab, leg_name, j in sorted(chunk_meta):
        a, b = man["chunk_plan"][lab][leg_name][j]
        man["chunks"].append({"model": lab, "leg": leg_name, "index": j, "start": a, "stop": b,
                              **chunk_meta[(lab, leg_name, j)]})
    for label, plan in plans.items():
        stats = {}
        for leg_name, leg in plan.legs.items():
            n_chunks = len(man["chunk_plan"][label][leg_name])
            parts = [done[(label, leg_name, j)] for j in range(n_chunks)]
            stats[leg_name] = TailStats.concat(parts) if parts else _empty_stats(len(leg.spec.levels))
        with stage("finalize"):
            res = modules[label].finalize(plan, stats)
        report.results[label] = res
        with stage("write"):
            for tname, df in sorted(res.tables.items()):
                table = check_name(tname, f"model {label}: table name")
                rel = f"{check_name(label, 'model label')}/{table}.parquet"
                write_parquet(df, run_dir / rel)
                report.outputs[rel] = sha256_file(run_dir / rel)
            write_json(res.summary, run_dir / check_name(label, "model label") / "summary.json")
        report.total_im[label] = _frame_total_im(res, label)
        report.calls[label] = _frame_calls(res)
        with stage("coverage"):
            report.coverage[label] = model_coverage(modules[label], plan, book, res)
    with stage("write"):
        if isinstance(rejects, pd.DataFrame):
            write_parquet(rejects.reset_index(drop=True), run_dir / "rejects.parquet")
            report.outputs["rejects.parquet"] = sha256_file(run_dir / "rejects.parquet")
    report.counts.update(_row_counts(loaded, book))
    man["coverage"] = report.coverage
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


#: examples of missing keys named in the manifest and the error
COVERAGE_EXAMPLES = 5


def model_coverage(module, plan, book, res) -> dict:
    """Which key rows a model's ``margin`` table must hold, and how many it does (vectorised).

    The keys are ``module.coverage(plan)`` (a frame of key columns, e.g. account_id × venue)
    when the model defines it, else every account of the loaded book (``account_id``).
    Returns ``{key, expected, covered, missing, extra, complete, missing_examples}``;
    ``extra`` counts output keys not in the expected set (reported, not an error).
    """
    want = module.coverage(plan)
    key = list(want.columns)
    df = res.tables.get("margin")
    if df is None or any(c not in df.columns for c in key):
        return {"key": key, "expected": None, "covered": 0, "missing": None, "extra": None, "complete": False,
                "missing_examples": [], "error": f"margin table lacks the key column(s) {key}"}
    want = want.astype(str).drop_duplicates()
    got = df[key].astype(str).drop_duplicates()
    both = want.merge(got, on=key, how="outer", indicator=True)
    missing = both[both["_merge"] == "left_only"]
    examples = ["/".join(r) for r in missing[key].head(COVERAGE_EXAMPLES).itertuples(index=False, name=None)]
    return {"key": key, "expected": int(len(want)), "covered": int((both["_merge"] == "both").sum()),
            "missing": int(len(missing)), "extra": int((both["_merge"] == "right_only").sum()),
            "complete": bool(len(missing) == 0), "missing_examples": examples}


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
    summary = getattr(loaded, "summary", None) or {}
    per_table = {k: v for k, v in summary.items() if isinstance(v, dict) and "input" in v and "accepted" in v}
    if per_table:
        n_in = sum(int(v["input"]) for v in per_table.values())
        n_ok = sum(int(v["accepted"]) for v in per_table.values())
        if rejects is None:
            n_rej = sum(int(v.get("rejected", int(v["input"]) - int(v["accepted"]))) for v in per_table.values())
    else:
        n_in = int(summary.get("input_rows", n_rej))
        n_ok = n_in - n_rej
    return {"accounts": int(book.n_accounts), "positions": int(len(book.positions.quantity)),
            "input_rows": n_in, "result_rows": n_ok, "rejects": n_rej, "balanced": n_in == n_ok + n_rej}


def _finish(job, out, run_dir, man, report, stage, t_start):
    """Manifest, metrics, alerts and the last-run pointer; never raises over the run's own outcome."""
    now = manifest.utc_now()
    report.finished = now.isoformat()
    report.finished_unix = now.timestamp()
    report.duration_s = time.perf_counter() - t_start
    report.timings = dict(stage.t)
    man.update({
        "status": report.status, "finished": report.finished, "error": report.error, "timings": report.timings,
        "counts": report.counts, "total_im": report.total_im, "calls": report.calls, "coverage": report.coverage,
        "outputs": report.outputs, "workers": report.workers,
    })
    try:
        if run_dir is not None:
            manifest.write_manifest(run_dir, man)
        d = report.as_dict()
        monitoring.write_metrics(d, run_dir, out / f"gpurisk_{check_name(job.name, 'job name')}.prom")
        last = out / f"last_run-{check_name(job.name, 'job name')}.json"
        previous = None
        if last.is_file():
            import json

            try:
                previous = json.loads(last.read_text(encoding="utf-8"))
            except ValueError:
                previous = None
        alerts = monitoring.check_alerts(d, previous, job.alerts)
        report.alerts = monitoring.raise_alerts(alerts, out, job.alerts)
        if report.status == "succeeded":
            write_json({k: d[k] for k in ("job", "run_id", "finished", "total_im", "calls", "counts")}, last)
    except OSError as exc:
        log.error("could not write the run's manifest/metrics/alerts: %s", exc)


def format_summary(report: RunReport) -> str:
    """The short end-of-run table: accounts, total IM by venue, calls by status, time per stage."""
    c = report.counts
    lines = [
        f"run {report.run_id}: {report.status} in {report.duration_s:.1f} s on {report.workers} worker(s), "
        f"backend {report.backend}",
        f"  output    {report.run_dir}",
        f"  accounts  {c.get('accounts', 0):,}   input rows {c.get('input_rows', 0):,}   rejects {c.get('rejects', 0):,}"
        f"   chunks {c.get('chunks_total', 0)} ({c.get('chunks_resumed', 0)} from checkpoints)"
        f"   GPU fallbacks {c.get('gpu_fallbacks', 0)}",
    ]
    if any(report.total_im.values()):
        lines.append(f"  {'model':<12} {'venue':<12} {'total IM (USD)':>20}")
        for model, by in report.total_im.items():
            for venue, v in by.items():
                lines.append(f"  {model:<12} {venue:<12} {v:>20,.2f}")
    for model, by in report.calls.items():
        if by:
            lines.append(f"  calls {model}: " + ", ".join(f"{s} {n:,}" for s, n in by.items()))
    for model, cov in report.coverage.items():
        if cov.get("expected") is None:
            lines.append(f"  coverage {model}: {cov.get('error', 'unchecked')}")
        else:
            lines.append(f"  coverage {model}: {cov['covered']:,}/{cov['expected']:,} {'×'.join(cov['key'])}"
                         + ("" if cov["complete"] else f", {cov['missing']:,} MISSING"))
    if report.timings:
        lines.append("  stages    " + "  ".join(f"{k} {v:.2f}s" for k, v in report.timings.items()))
    if report.alerts:
        lines.append("  alerts    " + "; ".join(a["message"] for a in report.alerts))
    if report.error:
        lines.append(f"  error     {report.error}")
    return "\n".join(lines)
