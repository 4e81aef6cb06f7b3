"""Jobs of kind ``backtest`` and ``calibration``: ``gpurisk.backtest`` / ``gpurisk.calibration`` on the job's Dask
cluster, into ``OUTPUT/<run_id>/``.

``run_research_job(job, options, on_block)`` resolves the market history (``--market-data`` > ``[market]
history`` > ``GPURISK_MARKET_DATA`` > shipped), opens the cluster (``--workers`` / ``--scheduler`` / the job's
``workers``), runs, and writes the run folder: a backtest's ``daily``, ``summary``, ``windows`` tables,
``summary.json`` and ``report.html``; a calibration's ``calibration.parquet``, ``summaries.parquet``,
``fits.json``, ``summary.json``, the proposed parameter file and ``report.html``; both with ``manifest.json``
(inputs with their hashes, code version, timings, status). A failure raises ``ResearchJobError`` (one line)
after recording it in the manifest.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import RESEARCH_KINDS, JobConfig, to_dict
from ..errors import ConfigError, GpuriskError
from ..fileio import sha256_file
from . import manifest

log = logging.getLogger("gpurisk.batch")


class ResearchJobError(GpuriskError):
    """A backtest or calibration job failed; the message is the one-line cause."""


@dataclass
class ResearchReport:
    """What a research job did: its folder, status, the result object and the report file."""

    job: str
    kind: str
    run_id: str
    run_dir: Path
    status: str
    duration_s: float = 0.0
    result: object = None
    report: Path | None = None
    error: str | None = None
    outputs: dict = field(default_factory=dict)


def _params(job: JobConfig):
    """The model's Params: the job's params_file, with its inline ``params`` changes applied."""
    from ..margin import get_model
    from ..margin.params import override

    bt = job.backtest if job.kind == "backtest" else job.calibration.backtest
    mod = get_model(bt.model)
    if bt.params_file is not None and not bt.params_file.is_file():
        raise ConfigError(f"{job.path.name}: {job.kind}.params_file: {bt.params_file} not found")
    p = mod.load_params(str(bt.params_file) if bt.params_file else None)
    if bt.params:
        p = override(p, dict(bt.params), f"{job.path.name}: {job.kind}.params")
    return p, bt


def _inputs(job: JobConfig, bt) -> dict[str, Path]:
    files = {"job": job.path}
    if bt.params_file is not None:
        files["params"] = bt.params_file
    if bt.portfolios != "standard":
        folder = Path(bt.portfolios)
        if not folder.is_dir():
            raise ConfigError(f"{job.path.name}: {job.kind}.portfolios: {folder} is not a book folder")
        for f in sorted(folder.iterdir()):
            if f.is_file():
                files[f"portfolios/{f.name}"] = f
    return files


def run_research_job(job: JobConfig, options=None, on_block=None) -> ResearchReport:
    """Run a job of kind ``backtest`` or ``calibration`` (module docstring); ``options`` (``RunOptions`` or None):
    ``out``, ``backend``, ``workers``, ``scheduler`` override the job's."""
    from ..market import resolve_store
    from .cluster import open_client

    if job.kind not in RESEARCH_KINDS:
        raise ConfigError(f"{job.path.name}: not a backtest or calibration job (kind {job.kind})")
    out = Path(os.path.normpath(getattr(options, "out", None) or job.output))
    backend = getattr(options, "backend", None) or job.backend
    workers = getattr(options, "workers", None) or job.workers
    scheduler = getattr(options, "scheduler", None)
    params, bt = _params(job)
    store = resolve_store(getattr(options, "market", None), job.market)
    files = _inputs(job, bt)
    hashes, input_hash = manifest.hash_inputs(files, {"kind": job.kind, "backend": backend,
                                                     "market": store.fingerprint(), "job": to_dict(job)})
    run_id, run_dir = manifest.new_run_dir(out, input_hash)
    t0 = time.perf_counter()
    man = {"run_id": run_id, "job": job.name, "kind": job.kind, "status": "running",
           "started": manifest.utc_now().isoformat(), "input_hash": input_hash, "code": manifest.code_version(),
           "inputs": {role: {"path": os.path.normpath(p), "sha256": hashes[role]} for role, p in files.items()},
           "market": store.describe(), "parameters": {"job": to_dict(job)}}
    manifest.write_manifest(run_dir, man)
    rep = ResearchReport(job=job.name, kind=job.kind, run_id=run_id, run_dir=run_dir, status="running")
    try:
        with open_client(workers=workers, scheduler=scheduler) as client:
            if job.kind == "backtest":
                from .. import backtest

                res = backtest.run(model=bt.model, params=params, portfolios=bt.portfolios, start=bt.start,
                                   end=bt.end, horizon_days=bt.horizon_days, market=store, backend=backend,
                                   client=client, block_days=bt.block_days, on_block=on_block)
                res.meta.update(job=job.name, run_id=run_id)
                res.write(run_dir)
            else:
                from .. import calibration

                cal = job.calibration
                text = bt.params_file.read_text(encoding="utf-8") if bt.params_file is not None else None
                res = calibration.run(params, grid={k2: list(v) for k2, v in cal.grid.items()},
                                      sets=[dict(s) for s in cal.sets], portfolios=bt.portfolios, start=bt.start,
                                      end=bt.end, market=store, backend=backend, client=client,
                                      block_days=bt.block_days, on_block=on_block, fits=cal.fits,
                                      fit_start=cal.fit_start, params_text=text, label=f"{job.name} run {run_id}")
                res.meta.update(job=job.name, run_id=run_id)
                res.write(run_dir, cal.proposal)
        rep.result = res
        if bt.report:
            rep.report = _report(job.kind, run_dir)
        rep.outputs = {p.name: sha256_file(p) for p in sorted(run_dir.iterdir())
                       if p.is_file() and p.name != manifest.MANIFEST}
        rep.status = "succeeded"
    except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised as one line
        rep.status = "failed"
        rep.error = " ".join(f"{type(exc).__name__}: {exc}".split()) if not isinstance(exc, GpuriskError) \
            else " ".join(str(exc).split())
    rep.duration_s = time.perf_counter() - t0
    man.update(status=rep.status, finished=manifest.utc_now().isoformat(), error=rep.error,
               timings={"total_s": round(rep.duration_s, 3)}, outputs=rep.outputs)
    try:
        manifest.write_manifest(run_dir, man)
    except OSError as exc:
        log.error("could not write the run's manifest: %s", exc)
    if rep.status != "succeeded":
        raise ResearchJobError(f"run {run_id} failed: {rep.error}")
    return rep


def _report(kind: str, run_dir: Path) -> Path | None:
    """The run's ``report.html``; None (and a warning) without the optional extra ``reports``."""
    from ..reports import ReportError, require

    try:
        require()
    except ReportError as exc:
        log.warning("report.html not written: %s", exc)
        return None
    if kind == "backtest":
        from ..reports import write_report

        return write_report(run_dir, run_dir / "report.html")
    from ..reports.calibration import write_calibration_report

    return write_calibration_report(run_dir, run_dir / "report.html")


__all__ = ["run_research_job", "ResearchReport", "ResearchJobError"]
