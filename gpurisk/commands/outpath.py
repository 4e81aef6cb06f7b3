"""The ``--out`` rule of the commands: the target may be created, its parent folder must exist.

A misspelt parent (``--out reslts/today``) is a one-line error rather than a new
folder tree. Used by ``generate``, ``validate``, ``pnl`` (``--out`` is a folder) and
``scenarios`` (``--out`` is a file).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import BookError, GpuriskError


def out_folder(path, error: type[GpuriskError] = BookError, flag: str = "--out") -> Path:
    """``path`` as a Path: it is a folder or does not exist yet, and its parent folder exists."""
    path = _parent_exists(Path(path), error, flag)
    if path.exists() and not path.is_dir():
        raise error(f"{flag} {path}: exists and is not a folder")
    return path


def out_file(path, error: type[GpuriskError] = BookError, flag: str = "--out") -> Path:
    """``path`` as a Path: it is not a folder, and its parent folder exists."""
    path = _parent_exists(Path(path), error, flag)
    if path.is_dir():
        raise error(f"{flag} {path}: is a folder, not a file")
    return path


def _parent_exists(path: Path, error, flag: str) -> Path:
    parent = path.parent
    if not parent.exists():
        raise error(f"{flag} {path}: parent folder {parent} does not exist (create it first)")
    if not parent.is_dir():
        raise error(f"{flag} {path}: {parent} is not a folder")
    return path
