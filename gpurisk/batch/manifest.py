"""The run manifest: what went in (with hashes), what code ran, what came out.

``DIR/<run_id>/manifest.json`` is written when a run starts (status ``running``)
and rewritten atomically when it ends (``succeeded`` or ``failed``). Its
``input_hash`` covers every input that can change a number: the book files, the
job file, parameter and scenario files, and the backend. ``--resume`` checks it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import subprocess
from pathlib import Path

from .. import __version__
from ..fileio import check_name, sha256_file, write_json

MANIFEST = "manifest.json"


def utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def new_run_id(input_hash: str, now: _dt.datetime | None = None) -> str:
    """``YYYYmmddTHHMMSS.fffZ-<first 8 hex of the input hash>``: sortable by start time to the millisecond
    (to the second alone, two runs of one second sorted by their hashes, and "the latest run" was a guess)."""
    now = now or utc_now()
    return f"{now.strftime('%Y%m%dT%H%M%S')}.{now.microsecond // 1000:03d}Z-{input_hash[:8]}"


def new_run_dir(out: Path, input_hash: str) -> tuple[str, Path]:
    """(run id, its new folder in ``out``): ``new_run_id``, with ``-2``, ``-3``, ... when a run of the same
    second and inputs already has that folder. The folder is created here (never reused: two runs starting
    together get two folders)."""
    base = new_run_id(input_hash)
    run_id, k = base, 1
    while True:
        run_dir = Path(out) / check_name(run_id, "run id")
        try:
            run_dir.mkdir(parents=True)
            return run_id, run_dir
        except FileExistsError:
            k += 1
            run_id = f"{base}-{k}"


def code_version() -> dict:
    """The package version and, when the package sits in a git checkout, its commit and dirty flag."""
    out = {"package": "gpurisk", "version": __version__, "git_commit": None, "git_dirty": None}
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
            cwd=here.parent, capture_output=True, text=True, timeout=5, check=True,
        ).stdout
        out["git_commit"] = commit or None
        out["git_dirty"] = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def hash_inputs(files: dict[str, Path], extra: dict) -> tuple[dict[str, str], str]:
    """({role: sha256} for each input file, combined input hash over files and ``extra``).

    ``files`` maps a role (``book/positions.parquet``, ``job``, ``house/params``) to a path;
    ``extra`` is JSON-able data that also changes results (backend, inline params).
    """
    hashes = {role: sha256_file(p) for role, p in sorted(files.items())}
    blob = json.dumps({"files": hashes, "extra": extra}, sort_keys=True, default=str).encode()
    return hashes, hashlib.sha256(blob).hexdigest()


def read_manifest(run_dir: Path) -> dict | None:
    p = Path(run_dir) / MANIFEST
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_manifest(run_dir: Path, manifest: dict) -> Path:
    return write_json(manifest, Path(run_dir) / MANIFEST)
