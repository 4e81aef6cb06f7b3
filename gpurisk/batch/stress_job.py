"""Jobs of kind ``stress``: the book of a job file through ``gpurisk.stress``, into ``OUTPUT/<run_id>/``.

``run_stress_job(job, options)`` resolves the book like every job (``sources.book_folder``: a path, the latest
snapshot or the cached sample), runs the families and scenario files of the job's ``[stress]`` table
in-process (the loss blocks are small: one block of accounts × the scenarios of a family at a time), and
writes the tables, ``summary.json``, ``rejects.parquet``, ``manifest.json`` (inputs with their hashes, code
version, timings) and, unless ``report = false``, ``report.html``. A failure raises ``StressJobError`` (one
line) after recording it in the manifest. ``format_stress_summary`` is what ``gpurisk run`` prints.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import JobConfig, to_dict
from ..errors import ConfigError, GpuriskError
from ..fileio import sha256_file, write_parquet
from . import manifest, sources

log = logging.getLogger("gpurisk.batch")


class StressJobError(GpuriskError):
    """A stress job failed; the message is the one-line cause."""


@dataclass
class StressReport:
    """What a stress job did: its folder, status, summary and report file."""

    job: str
    run_id: str
    run_dir: Path
    status: str
    duration_s: float = 0.0
    summary: dict = field(default_factory=dict)
    report: Path | None = None
    error: str | None = None


def _input_files(job: JobConfig, book_path: Path) -> dict[str, Path]:
    files = {"job": job.path, **sources.book_files(book_path)}
    st = job.stress
    if st.house_params_file is not None:
        if not st.house_params_file.is_file():
            raise ConfigError(f"{job.path.name}: stress.house_params_file: {st.house_params_file} not found")
        files["stress/house_params"] = st.house_params_file
    for i, f in enumerate(st.scenario_files):
        if not f.is_file():
            raise ConfigError(f"{job.path.name}: stress.scenario_files[{i}]: {f} not found")
        files[f"stress/scenarios[{i}]"] = f
    return files


def run_stress_job(job: JobConfig, options=None) -> StressReport:
    """Run a job of kind ``stress``; ``options`` (``RunOptions`` or None): ``out`` and ``backend`` override the job's."""
    from ..margin import get_model
    from ..stress import build_sets, run_stress, write_stress

    if job.kind != "stress" or job.stress is None:
        raise ConfigError(f"{job.path.name}: not a stress job (kind {job.kind})")
    out = Path(os.path.normpath(getattr(options, "out", None) or job.output))
    backend = getattr(options, "backend", None) or job.backend
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    from ..market import resolve_store

    market = resolve_store(getattr(options, "market", None), job.market)
    book_path = Path(os.path.normpath(sources.book_folder(job, out, market)))
    files = _input_files(job, book_path)
    hashes, input_hash = manifest.hash_inputs(files, {"kind": job.kind, "backend": backend,
                                                     "stress": to_dict(job.stress),
                                                     "market": market.fingerprint()})
    run_id, run_dir = manifest.new_run_dir(out, input_hash)
    started = manifest.utc_now()
    man = {"run_id": run_id, "job": job.name, "kind": "stress", "status": "running", "started": started.isoformat(),
           "input_hash": input_hash, "book": str(book_path), "code": manifest.code_version(),
           "inputs": {role: {"path": os.path.normpath(p), "sha256": hashes[role]} for role, p in files.items()},
           "parameters": {"job": to_dict(job)}, "market": {**market.describe(), "fingerprint": market.fingerprint()}}
    manifest.write_manifest(run_dir, man)
    report = StressReport(job=job.name, run_id=run_id, run_dir=run_dir, status="running")
    try:
        loaded = sources.load_book(book_path)
        st = job.stress
        hp = get_model("house").load_params(str(st.house_params_file) if st.house_params_file else None)
        sets = build_sets(loaded.book, st.params, st.scenario_files, market)
        result = run_stress(loaded.book, sets, st.params, hp, backend=backend, market=market)
        result.summary.update({"job": job.name, "run_id": run_id, "book": loaded.summary.get("book", {}),
                               "rejects": int(len(loaded.rejects))})
        if len(loaded.rejects):
            write_parquet(loaded.rejects, run_dir / "rejects.parquet")
        outputs = write_stress(result, run_dir, {"job": job.name, "run_id": run_id,
                                                 "as_of": result.summary["as_of"]})
        if st.report:
            from ..reports import write_report

            report.report = write_report(run_dir, run_dir / "report.html", anonymise=st.anonymise)
            outputs["report.html"] = sha256_file(report.report)
        report.summary = result.summary
        report.status = "succeeded"
        man.update(outputs=outputs, timings=result.summary.get("timings", {}),
                   counts={"accounts": result.summary["accounts"], "groups": result.summary["groups"],
                           "scenarios": result.summary["scenarios"], "rejects": result.summary["rejects"]})
    except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised as one line
        report.status = "failed"
        report.error = " ".join((str(exc) if isinstance(exc, GpuriskError) else f"{type(exc).__name__}: {exc}")
                                .split())[:500]
        man.update(status="failed", error=report.error, finished=manifest.utc_now().isoformat())
        manifest.write_manifest(run_dir, man)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise StressJobError(f"stress run {run_id} failed: {report.error}") from exc
    report.duration_s = time.perf_counter() - t0
    man.update(status="succeeded", finished=manifest.utc_now().isoformat(), duration_s=report.duration_s)
    manifest.write_manifest(run_dir, man)
    return report


def format_stress_summary(report: StressReport) -> str:
    """The end-of-run text of a stress job: loss per scenario family, Cover-1/Cover-2, alerts, the report file."""
    from ..stress import format_summary

    head = f"stress run {report.run_id}: {report.status} in {report.duration_s:.1f} s"
    lines = [head, format_summary(report.summary, report.run_dir)]
    if report.report is not None:
        lines.append(f"  report    {report.report}")
    if report.error:
        lines.append(f"  error     {report.error}")
    return "\n".join(lines)


__all__ = ["StressJobError", "StressReport", "run_stress_job", "format_stress_summary"]
