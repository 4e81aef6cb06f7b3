"""Resolving a job's inputs: the book folder (fixed, latest snapshot or sample), model
parameters and scenario sets.

Snapshots: ``[book] snapshots = DIR`` uses the last sub-folder of DIR in name order
(name snapshots by UTC time, e.g. ``2026-11-21T1000Z``); hidden folders and
folders whose name ends in ``.tmp`` are ignored (a snapshot being written).

Sample books are generated once per (accounts, seed, as_of) into
``OUTPUT/.cache/sample-a<N>-s<S>[-<as_of as fileio.path_name>]-g<generator digest>/`` with
``gpurisk generate`` and reused. The as-of text is mapped, not checked: ``path_name`` keeps it
readable and never lets two different as-of strings share a folder.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path

from ..config import BookSource, JobConfig, ModelJob, ScenarioSpec
from ..errors import BookError, ConfigError
from ..fileio import check_name, make_temp_dir, path_name, write_text

log = logging.getLogger("gpurisk.batch")


def latest_snapshot(folder: Path) -> Path:
    """The last snapshot sub-folder of ``folder`` in name order; BookError if none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BookError(f"{folder}: snapshot folder not found")
    subs = sorted(
        p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and not p.name.endswith(".tmp")
    )
    if not subs:
        raise BookError(f"{folder}: no snapshot sub-folders")
    return subs[-1]


def sample_dir(out: Path, source: BookSource, market=None) -> Path:
    """Cache folder of a sample book, keyed by size, seed, as-of, the generator's code (a changed
    generator never reuses a book an older one wrote) and, for a history folder other than the shipped
    one, that history's fingerprint (the sample's prices come from it)."""
    s = source.sample
    hist = "" if market is None or market.shipped else f"-h{market.fingerprint()[:10]}"
    tag = (f"sample-a{s.accounts}-s{s.seed}" + (f"-{path_name(s.as_of)}" if s.as_of else "")
           + f"-g{_generator_digest()}{hist}")
    return Path(out) / ".cache" / check_name(tag, "sample book cache folder")


def _generator_digest() -> str:
    import hashlib

    from .. import generate

    return hashlib.sha256(Path(generate.__file__).read_bytes()).hexdigest()[:10]


def ensure_sample(out: Path, source: BookSource, market=None) -> Path:
    """Generate the sample book into the cache (once; atomically by folder rename) and return its folder.

    ``market``: the run's history store (the sample's prices and vols come from it; None: the default store)."""
    from ..generate import generate_book
    from ..io import TABLES, parse_as_of, write_book

    target = sample_dir(out, source, market)
    if (target / ".complete").is_file():
        return target
    s = source.sample
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(target)  # mode 0o777 less the umask, like the folder it becomes
    try:
        as_of = parse_as_of(s.as_of, where="[book] sample.as_of") if s.as_of else None
        g = generate_book(s.accounts, s.seed, as_of, market=market)
        write_book(tmp, {k: g[k] for k in TABLES}, g["meta"])
        log.info("sample book: %s accounts, %s positions, as_of %s -> %s", f"{s.accounts:,}",
                 f"{len(g['positions']):,}", g["meta"]["as_of"], target)
        write_text("ok\n", tmp / ".complete")
        if target.exists() and not (target / ".complete").is_file():  # an incomplete earlier attempt
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / ".complete").is_file():  # not a concurrent run that finished first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def book_folder(job: JobConfig, out: Path, market=None) -> Path:
    """The book folder (or file) this run reads (a sample book is generated from ``market``'s history)."""
    src = job.book
    if src.path is not None:
        if not src.path.exists():
            raise BookError(f"{src.path}: book not found (job {job.path.name}, book.path)")
        return src.path
    if src.snapshots is not None:
        return latest_snapshot(src.snapshots)
    return ensure_sample(out, src, market)


def book_files(path: Path) -> dict[str, Path]:
    """{role: file} of every regular, non-hidden file of the book (recursively), for hashing."""
    path = Path(path)
    if path.is_file():
        return {f"book/{path.name}": path}
    files = {}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            files[f"book/{rel.as_posix()}"] = p
    return files


def load_book(path: Path, loader=None):
    """``gpurisk.io.load_book(path)`` -> LoadedBook(book, rejects, summary)."""
    if loader is None:
        from ..io import load_book as loader
    return loader(str(path))


# --------------------------------------------------------------------------- models


def model_params(module, mj: ModelJob, where: str):
    """The model's Params: from ``params_file`` (or defaults), then the inline ``params`` overrides,
    each checked against its declared type like a parameter file's value."""
    params = module.load_params(str(mj.params_file) if mj.params_file else None)
    if not mj.params:
        return params
    if not dataclasses.is_dataclass(params):
        raise ConfigError(f"{where}.params: model {mj.name!r} does not take inline parameters")
    from ..margin.params import override

    return override(params, dict(mj.params), f"{where}.params (model {mj.name!r})")


def scenario_set(spec: ScenarioSpec, as_of, where: str, market=None):
    """One ScenarioSet from a file or a registered generator (``as_of`` defaults to the book's; history from
    ``market``, the run's store)."""
    if spec.file is not None:
        if not spec.file.is_file():
            raise ConfigError(f"{where}.file: scenario file {spec.file} not found")
        from ..scenarios.io import read_scenarios

        return read_scenarios(str(spec.file))
    from ..scenarios import registry

    opts = {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.options.items()}
    if registry.get(spec.generator).option("as_of") is not None:
        opts.setdefault("as_of", str(as_of))
    return registry.generate(spec.generator, opts, where=f"{where}.", market=market)


def model_scenarios(mj: ModelJob, as_of, where: str, market=None):
    """The model's scenarios: None (the model's own), one ScenarioSet (the ``user`` component), or
    ``{component: ScenarioSet}`` when a set names another component; sets of one component are concatenated."""
    if not mj.scenarios:
        return None
    from ..scenarios import ScenarioSet

    by: dict[str, list] = {}
    for i, s in enumerate(mj.scenarios):
        by.setdefault(s.component, []).append(scenario_set(s, as_of, f"{where}.scenarios[{i}]", market))
    sets = {c: v[0] if len(v) == 1 else ScenarioSet.concat(v) for c, v in by.items()}
    return sets["user"] if list(sets) == ["user"] else sets


def input_files(job: JobConfig, book_path: Path) -> dict[str, Path]:
    """Every input file whose bytes can change the results, by role."""
    files = {"job": job.path, **book_files(book_path)}
    for m in job.models:
        if m.params_file is not None:
            if not m.params_file.is_file():
                raise ConfigError(f"{job.path.name}: models ({m.label}).params_file: {m.params_file} not found")
            files[f"{m.label}/params"] = m.params_file
        for i, s in enumerate(m.scenarios):
            if s.file is not None and s.file.is_file():
                files[f"{m.label}/scenarios[{i}]"] = s.file
    return files
