"""Splitting a leg's portfolios into task-sized chunks, and chunk checkpoints.

A chunk is a contiguous range ``[start, stop)`` of a leg's CSR portfolios. The
result never depends on the chunking: each portfolio's tail statistics are
computed from its own row of P&L only, and chunks are concatenated in order.

``auto`` sizing estimates a task's work as ``S·(nnz + n·log2 S)`` (the sparse
product plus the per-portfolio selection) plus a fixed ``PASS_WORK·I·S`` for the
pass every task makes over the whole of P [I, S] (the CPU kernels' int16 screen
quantises P, the GPU uploads it). It aims at ``TARGET_WORK`` per task (~0.5 s of
reference-backend time) but at least ``1 / FIXED_SHARE`` times the fixed cost, and
gives each worker one chunk of a leg when that still leaves each more work than its
fixed cost. Large P therefore means few, large tasks.

Checkpoints are ``RUN/chunks/<model>/<leg>/<start>-<stop>.npz``, written without fsync
(a torn one is unreadable and recomputed); ``prune`` removes them after a successful run.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..backends import TailStats
from ..fileio import check_name, path_name, write_bytes

#: work units per task aimed at by ``auto`` (≈ 0.5 s of reference-backend time)
TARGET_WORK = 4.0e8
#: below this a task is dominated by Dask overhead (~ms); auto never splits finer
MIN_WORK = 2.0e7
#: a task's fixed pass over P, in work units per entry of P (measured: quantising P for the CPU screen
#: costs about as much as 35 units of the sparse product, 2-core machine, 2026-11)
PASS_WORK = 35.0
#: ``auto`` keeps the fixed pass at most this share of a task's work
FIXED_SHARE = 0.1


def chunk_work(indptr: np.ndarray, n_scenarios: int) -> np.ndarray:
    """[P] float64 estimated work per portfolio: S·(nnz_p + log2 S)."""
    nnz = np.diff(np.asarray(indptr, dtype=np.int64)).astype(np.float64)
    S = max(int(n_scenarios), 1)
    return S * (nnz + np.log2(S + 1.0))


def plan_chunks(indptr: np.ndarray, n_scenarios: int, chunk_size: int | str = "auto", workers: int = 1,
                target_work: float = TARGET_WORK, min_work: float = MIN_WORK,
                n_instruments: int = 0) -> list[tuple[int, int]]:
    """Chunk boundaries ``[(start, stop), ...]`` covering all P portfolios in order.

    ``chunk_size`` is portfolios per chunk, or ``auto`` (balanced by estimated work, see the
    module docstring; ``n_instruments`` is the row count I of the P the leg reads).
    An empty leg gives no chunks.
    """
    n = len(indptr) - 1
    if n <= 0:
        return []
    if chunk_size != "auto":
        k = int(chunk_size)
        if k < 1:
            raise ValueError(f"chunk_size must be ≥ 1 or 'auto'; got {chunk_size!r}")
        starts = np.arange(0, n, k)
        return [(int(s), int(min(s + k, n))) for s in starts]
    work = chunk_work(indptr, n_scenarios)
    total = float(work.sum())
    fixed = PASS_WORK * max(int(n_instruments), 0) * max(int(n_scenarios), 0)
    n_chunks = max(1, int(np.ceil(total / max(target_work, fixed / FIXED_SHARE))))
    balance = min(max(int(workers), 1), int(total // max(min_work, fixed, 1.0)))
    n_chunks = min(max(n_chunks, balance), n)
    if n_chunks <= 1:
        return [(0, n)]
    cum = np.cumsum(work)
    cuts = np.searchsorted(cum, total * np.arange(1, n_chunks) / n_chunks, side="left") + 1
    bounds = np.unique(np.concatenate([[0], np.clip(cuts, 1, n - 1), [n]]))
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


# --------------------------------------------------------------------------- checkpoints


def checkpoint_path(folder: Path, model: str, leg: str, start: int, stop: int) -> Path:
    """``folder/<model label>/<leg as a path name>/<start>-<stop>.npz``.

    The label is a checked name (``fileio.check_name``); a leg name is free text built from
    book data (``deribit/deribit.BTC.BTC/standard``), so it is mapped with ``fileio.path_name``:
    readable, deterministic, and two legs never share a checkpoint folder.
    """
    return Path(folder) / check_name(model, "model label") / path_name(leg) / f"{start:09d}-{stop:09d}.npz"


#: the optional TailStats arrays of an attributed chunk (``gpurisk.tail``), saved when present
ATTRIBUTION_FIELDS = ("tail_index", "tail_loss", "tail_count", "marginal")


def save_chunk(path: Path, stats: TailStats, meta: dict) -> Path:
    """Save one chunk's TailStats (and its metadata: backend, input hash) atomically."""
    import json

    buf = io.BytesIO()
    extra = {k: getattr(stats, k) for k in ATTRIBUTION_FIELDS} if stats.attributed else {}
    np.savez(
        buf,
        worst=stats.worst,
        worst_scenario=stats.worst_scenario,
        var=stats.var,
        es=stats.es,
        meta=np.array(json.dumps(meta, sort_keys=True)),
        **extra,
    )
    return write_bytes(buf.getvalue(), path, durable=False)


def load_chunk(path: Path) -> tuple[TailStats, dict] | None:
    """A saved chunk, or None when absent or unreadable (then it is recomputed)."""
    import json

    try:
        with np.load(path, allow_pickle=False) as z:
            stats = TailStats(
                worst=z["worst"], worst_scenario=z["worst_scenario"], var=z["var"], es=z["es"],
                **{k: z[k] for k in ATTRIBUTION_FIELDS if k in z.files},  # attribution, when the run had it
            )
            meta = json.loads(str(z["meta"]))
        return stats, meta
    except (OSError, ValueError, KeyError):
        return None


def prune(folder: Path) -> int:
    """Delete a run's checkpoint folder (after a successful run); returns the bytes freed."""
    import shutil

    folder = Path(folder)
    if not folder.is_dir():
        return 0
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    shutil.rmtree(folder, ignore_errors=True)
    return int(size)
