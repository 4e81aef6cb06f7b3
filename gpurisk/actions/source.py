"""Reading what a plan starts from: a finished ``gpurisk run`` folder or a ``gpurisk margin --model venue`` folder.

``read_source(folder)`` finds the venue model's ``margin`` table (the replicas' predicted requirement per
account × venue), the venues' status bands (its summary's ``venue_bands``), the house model's margin
table when the run has one, the run id and as-of, and the book the run read (its folder, re-read and
validated as the run did). A folder that is neither is a one-line ``ConfigError`` naming what is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import ConfigError
from ..fileio import check_name, sha256_file


@dataclass
class RunSource:
    """run_id (the run's, or ``margin-<sha256 of margin.parquet>``), as_of (ISO), book_path, venue_margin
    (the venue model's margin table), bands ({venue: {call_mm_ratio, reduce_only_mm_ratio,
    liquidation_mm_ratio}}), venue_params (the venue model's parameter dict, or None), house_margin (or None),
    house_params (dict, or None)."""

    folder: Path
    run_id: str
    as_of: str
    book_path: Path
    venue_margin: pd.DataFrame
    bands: dict
    venue_params: dict | None = None
    house_margin: pd.DataFrame | None = None
    house_params: dict | None = None


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path.parent}: no {path.name}; {what}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})") from None


def _table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ConfigError(f"{path}: missing; the folder must hold the venue model's margin.parquet")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the caller's input error
        raise ConfigError(f"{path}: not a readable Parquet file ({type(exc).__name__})") from None


def read_source(folder) -> RunSource:
    """The venue (and house) results of a run folder (``manifest.json``) or a margin folder (``summary.json``
    of ``gpurisk margin --model venue``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder (give a gpurisk run folder or a gpurisk margin --model venue "
                          "output folder)")
    man_path = folder / "manifest.json"
    if man_path.is_file():
        man = _read_json(man_path, "not a run folder")
        if man.get("status") != "succeeded":
            raise ConfigError(f"{folder}: run {man.get('run_id')} did not succeed (status {man.get('status')!r})")
        models = man.get("models") or {}
        venue = [k for k, v in models.items() if v.get("name") == "venue"]
        if not venue:
            raise ConfigError(f"{folder}: run {man.get('run_id')} has no venue model (add a model with "
                              "name = \"venue\" to the job: the plan needs the venues' predicted requirement)")
        vl = check_name(venue[0], "model label")
        vsum = _read_json(folder / vl / "summary.json", "the venue model's summary is missing")
        house = [k for k, v in models.items() if v.get("name") == "house"]
        hm = _table(folder / check_name(house[0], "model label") / "margin.parquet") if house else None
        return RunSource(folder, str(man.get("run_id")), str(man.get("as_of", "")), Path(man["book"]),
                         _table(folder / vl / "margin.parquet"), vsum.get("venue_bands") or {},
                         (models[venue[0]].get("params") if isinstance(models[venue[0]].get("params"), dict)
                          else None), hm,
                         (models[house[0]].get("params") if house and isinstance(models[house[0]].get("params"), dict)
                          else None))
    summ = _read_json(folder / "summary.json", "give a gpurisk run folder or a gpurisk margin --model venue folder")
    if summ.get("model") != "venue":
        raise ConfigError(f"{folder}: a {summ.get('model')!r} margin folder; the plan needs the venue model's "
                          "(gpurisk margin BOOK --model venue --out DIR)")
    book = (summ.get("book") or {}).get("path")
    if not book:
        raise ConfigError(f"{folder}/summary.json names no book folder")
    margin = folder / "margin.parquet"
    return RunSource(folder, "margin-" + sha256_file(margin)[:16] if margin.is_file() else "margin", str(
        summ.get("as_of", "")), Path(book), _table(margin), summ.get("venue_bands") or {}, None, None, None)


def book_tables(book_path) -> tuple[dict, object, dict]:
    """(clean tables, as_of, meta) of a book folder, validated as ``io.load_book`` does (rejected rows dropped)."""
    from ..io import read_tables
    from ..validate import validate

    tables, meta = read_tables(book_path)
    clean, _rejects, _summary = validate(tables, meta["as_of"])
    return clean, meta["as_of"], meta


def make_book(clean: dict, as_of, accounts=None, positions=None, balances=None):
    """A ``Book`` from clean tables, with ``positions`` / ``balances`` replaced and the rows restricted to
    ``accounts`` when given (a sub-book: the plan recomputes only the accounts it touches)."""
    from ..book import Book

    t = dict(clean)
    if positions is not None:
        t["positions"] = positions
    if balances is not None:
        t["balances"] = balances
    if accounts is not None:
        keep = set(map(str, accounts))
        for name in ("positions", "balances"):
            t[name] = t[name][t[name]["account_id"].astype(str).isin(keep)].reset_index(drop=True)
        if t.get("accounts") is not None:
            t["accounts"] = t["accounts"][t["accounts"]["account_id"].astype(str).isin(keep)].reset_index(drop=True)
    t = {k: v for k, v in t.items() if k in ("instruments", "market", "index", "positions", "balances", "accounts")}
    return Book.from_frames(as_of, **t)


__all__ = ["RunSource", "read_source", "book_tables", "make_book"]
