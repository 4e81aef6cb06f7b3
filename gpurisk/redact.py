"""What may be shown of a URL: the one redaction helper for logs, messages and stored files.

A webhook or service URL often carries its secret: in the user-info (``https://user:token@host``),
in the path (``/services/T0/B0/<token>``) or in the query (``?token=...``). Everything that shows
or stores a URL (log lines, error messages, ``manifest.json``, alert records, metrics) goes
through ``redact_url`` or ``redact``, which keep the scheme, host and port only::

    https://user:tok@hooks.example.com:8443/services/T0/XYZ?key=abc#f
    -> https://***@hooks.example.com:8443/***?***#***

Imports nothing of gpurisk, so every layer may use it.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

#: what replaces each secret part
MASK = "***"
#: a URL inside free text: scheme://, then everything up to white space or a quote
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")
#: secret parts shorter than this are not searched for in free text (they would match ordinary words)
_MIN_SECRET = 4


def redact_url(url: str) -> str:
    """``url`` with its user-info, path, query and fragment replaced by ``***`` (scheme, host, port kept).

    A string that does not parse as ``scheme://host...`` is returned as ``***`` whole: nothing
    of it can be told safe.
    """
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or ""
        port = parts.port  # ValueError for a port that is not a number
    except ValueError:
        return MASK
    if not parts.scheme or not parts.netloc:
        return MASK
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    out = f"{parts.scheme}://"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        out += f"{MASK}@"
    out += host + (f":{port}" if port is not None else "")
    if parts.path not in ("", "/"):
        out += f"/{MASK}"
    elif parts.path == "/":
        out += "/"
    if parts.query or str(url).rstrip("#").endswith("?"):
        out += f"?{MASK}"
    if parts.fragment:
        out += f"#{MASK}"
    return out


def _secret_parts(url: str) -> list[str]:
    """The parts of ``url`` that ``redact_url`` hides (user, password, path, query, fragment), longest first.

    Nothing for an address without ``scheme://`` (``host:8786``): it has no secret part.
    """
    if "://" not in str(url):
        return []
    try:
        p = urlsplit(str(url))
        user, password = p.username, p.password
    except ValueError:
        return [str(url)]
    found = [str(url), p.netloc.rpartition("@")[0] if "@" in p.netloc else "", user or "", password or "",
             p.path if p.path not in ("", "/") else "", p.query, p.fragment]
    return sorted({s for s in found if len(s) >= _MIN_SECRET}, key=len, reverse=True)


def redact(text: str, *urls: str | None) -> str:
    """``text`` with every URL in it redacted, and every secret part of ``urls`` masked wherever it appears.

    ``urls``: the URLs the text may quote in pieces (an exception message can name a password or a
    path without the rest of the URL, e.g. ``nonnumeric port: 'tok@host'``).
    """
    out = str(text)
    for url in urls:
        if not url:
            continue
        safe = redact_url(url)
        for secret in _secret_parts(url):
            out = out.replace(secret, safe if secret == str(url) else MASK)
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), out)


__all__ = ["MASK", "redact", "redact_url"]
