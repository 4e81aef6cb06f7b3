"""Building the service's session from a finished run or from a job file.

``--run RUN_DIR``: a run folder (``manifest.json`` with status ``succeeded``), or an output folder
holding run folders, of which the last succeeded one by name (run ids sort by start time) is used
— re-resolved at every reload, so a reload picks up a new run. The run's job file, book and
parameter files are read again and must still hash as the manifest recorded them (the session
then reproduces the run); account look-ups answer from the run's own ``<label>/margin.parquet``.

``--job JOB``: the job's book (its path, the latest snapshot — re-resolved at every reload — or
its sample book), models, parameters and scenarios, as ``gpurisk run`` resolves them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..batch import manifest as _manifest
from ..batch import sources
from ..config import load_job
from ..errors import ConfigError
from ..fileio import sha256_file
from ..margin import get_model
from ..whatif import ModelConfig, Session

log = logging.getLogger("gpurisk.service")


def _models(job, as_of) -> dict[str, ModelConfig]:
    out = {}
    for i, mj in enumerate(job.models):
        where = f"{job.path.name}: models[{i}] ({mj.label})"
        mod = get_model(mj.name)
        out[mj.label] = ModelConfig(mj.name, sources.model_params(mod, mj, where),
                                    sources.model_scenarios(mj, as_of, where))
    return out


def session_from_job(job_path, backend: str | None = None, out=None) -> Session:
    """A session of the job's book and models (``backend``: overrides the job's)."""
    job = load_job(job_path)
    if job.kind != "margin":
        raise ConfigError(f"{job.path.name}: gpurisk serve needs a margin job, not a {job.kind} job")
    out_dir = Path(out or job.output)
    book_path = sources.book_folder(job, out_dir)
    loaded = sources.load_book(book_path)
    book = loaded.book
    models = _models(job, book.as_of)
    src = {"kind": "job", "job": str(job.path), "book": str(book_path), "rejects": int(len(loaded.rejects))}
    return Session(book, models, backend=backend or job.backend, source=src)


def find_run(path) -> Path:
    """The run folder ``path`` names: itself (it holds manifest.json), or its last succeeded run folder."""
    p = Path(path)
    if (p / _manifest.MANIFEST).is_file():
        return p
    if not p.is_dir():
        raise ConfigError(f"--run {p}: not a run folder nor an output folder of runs")
    runs = sorted(q for q in p.iterdir() if q.is_dir() and not q.name.startswith(".") and
                  (_manifest.read_manifest(q) or {}).get("status") == "succeeded")
    if not runs:
        raise ConfigError(f"--run {p}: no succeeded run folder (with manifest.json) in it")
    return runs[-1]


def session_from_run(path, backend: str | None = None) -> Session:
    """A session reproducing a succeeded run: its job, book and parameters, checked against the manifest's hashes."""
    import pandas as pd

    run_dir = find_run(path)
    man = _manifest.read_manifest(run_dir)
    if man is None:
        raise ConfigError(f"{run_dir}: manifest.json is missing or unreadable")
    if man.get("status") != "succeeded":
        raise ConfigError(f"{run_dir}: run status is {man.get('status')!r}; serve a succeeded run")
    inputs = man.get("inputs") or {}
    if "job" not in inputs:
        raise ConfigError(f"{run_dir}: the manifest names no job file")
    for role, info in sorted(inputs.items()):
        p = Path(info.get("path", ""))
        if not p.is_file():
            raise ConfigError(f"{run_dir}: input {role} ({p}) is not there any more; serve the job with --job instead")
        if sha256_file(p) != info.get("sha256"):
            raise ConfigError(f"{run_dir}: input {role} ({p}) changed since the run; the session would not be "
                              "the run's (serve the job with --job for a fresh session)")
    job = load_job(inputs["job"]["path"])
    book_path = Path(man.get("book", ""))
    if not book_path.exists():
        raise ConfigError(f"{run_dir}: the run's book {book_path} is not there any more")
    loaded = sources.load_book(book_path)
    models = _models(job, loaded.book.as_of)
    margins = {}
    for label in models:
        f = run_dir / label / "margin.parquet"
        if f.is_file():
            margins[label] = pd.read_parquet(f)
    opts = ((man.get("parameters") or {}).get("options") or {})
    src = {"kind": "run", "run_id": man.get("run_id", run_dir.name), "run_dir": str(run_dir), "job": str(job.path),
           "book": str(book_path)}
    return Session(loaded.book, models, backend=backend or opts.get("backend") or job.backend, margins=margins,
                   source=src)


def builder(run=None, job=None, backend: str | None = None):
    """A function that builds a fresh session from ``run`` or ``job`` (what a reload calls)."""
    if (run is None) == (job is None):
        raise ConfigError("give exactly one of --run RUN_DIR and --job JOB")
    if run is not None:
        return lambda: session_from_run(run, backend)
    return lambda: session_from_job(job, backend)


__all__ = ["session_from_job", "session_from_run", "find_run", "builder"]
