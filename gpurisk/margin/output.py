"""Writing a model's result: one Parquet file per table, each stating its units and provenance.

Every file carries the key-value metadata ``gpurisk`` (JSON): the model, the table, the unit of
each numeric column (``MarginResult.table_units``), the market history the model read (its summary's
``market_history``: end date, age, stale or not, folder) and the caller's provenance (run id, the book's
as-of, parameters, ...). Repeated label columns are dictionary-encoded
(categorical). ``gpurisk margin`` and ``gpurisk run`` both write through ``write_result``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..fileio import check_name, json_text, sha256_file, write_table
from .plan import MarginResult

#: label columns stored dictionary-encoded (few distinct values, many rows)
CATEGORICAL = ("venue", "model", "currency", "status", "methodology", "risk_unit", "underlying", "base_component",
               "reason", "table", "level")
METADATA_KEY = b"gpurisk"


def result_table(result: MarginResult, name: str, provenance: dict | None = None):
    """Table ``name`` of ``result`` as a ``pyarrow.Table`` with categorical labels and the ``gpurisk`` metadata."""
    import pyarrow as pa

    df = result.tables[name]
    cat = {c: df[c].astype("category") for c in CATEGORICAL
           if c in df.columns and (df[c].dtype == object or pd.api.types.is_string_dtype(df[c].dtype))}
    if cat:
        df = df.assign(**cat)
    zero = {c: df[c] + 0.0 for c in df.columns if pd.api.types.is_float_dtype(df[c].dtype)}
    if zero:  # -0.0 + 0.0 is +0.0: no "-0.000000" in what a user reads
        df = df.assign(**zero)
    table = pa.Table.from_pandas(df, preserve_index=False)
    units = {c: u for c, u in result.table_units(name).items() if c in df.columns}
    history = {"market_history": result.summary["market_history"]} if "market_history" in result.summary else {}
    meta = {"model": result.model, "table": name, "units": units, **history, **(provenance or {})}
    return table.replace_schema_metadata({**(table.schema.metadata or {}), METADATA_KEY: json_text(meta).encode()})


def write_result(result: MarginResult, folder, provenance: dict | None = None) -> dict[str, str]:
    """Write every table of ``result`` as ``folder/<table>.parquet``; {file name: sha256}."""
    folder = Path(folder)
    out = {}
    for name in sorted(result.tables):
        path = folder / f"{check_name(name, f'model {result.model}: table name')}.parquet"
        write_table(result_table(result, name, provenance), path)
        out[path.name] = sha256_file(path)
    return out


def read_metadata(path) -> dict:
    """The ``gpurisk`` metadata of a Parquet file written by ``write_result`` ({} if it has none)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(METADATA_KEY)
    return json.loads(raw) if raw else {}


__all__ = ["CATEGORICAL", "result_table", "write_result", "read_metadata"]

