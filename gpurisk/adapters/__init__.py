"""Standard structures in and out: CCXT unified structures, Deribit and OKX JSON, FIXML (safe XML).

Layer: above ``margin`` (the FIXML margin reports read a margin result), below ``batch``; nothing
below imports it. The only network code of gpurisk (``live``, through ``ccxt``) is an optional
extra (``connect``).

- ``ingest`` (``gpurisk ingest``): any source -> book tables, rejects, validation; book folders and
  snapshots written atomically.
- ``ccxt``, ``deribit``, ``okx``, ``fixml``: one structure each -> partial book tables and rejects
  (row by row: input = mapped + rejected), and (Deribit, OKX, FIXML) a book written back out.
- ``fixml_margin``: margin results -> FIXML ``MgnReqmtRpt`` and ``CollRpt``.
- ``symbols``: CCXT and venue instrument names <-> book instrument terms.
- ``live``: fetching through ccxt with credentials from the environment or an owner-only file.

See docs/interfaces.md.
"""

from .base import AdapterError

__all__ = ["AdapterError"]
