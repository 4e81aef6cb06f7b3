"""API keys: where they come from, and the one check every route but the health checks goes through.

Keys are ``name:key`` entries, optionally ``name:key:admin`` (an admin key may also reload the
session): comma-separated in ``GPURISK_API_KEYS``, or one per line in a keys file that only its
owner may read or write (``#`` starts a comment). A key is at least ``MIN_KEY_CHARS`` characters.
A request sends ``Authorization: Bearer KEY``; it is compared with every configured key in
constant time (SHA-256 digests through ``hmac.compare_digest``, no early exit). Keys are never
logged, echoed or stored anywhere else: requests are known by the key's *name*.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

ENV = "GPURISK_API_KEYS"
MIN_KEY_CHARS = 16
ROLES = ("read", "admin")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: the key's name and role (``read`` or ``admin``)."""

    name: str
    role: str

    @property
    def admin(self) -> bool:
        return self.role == "admin"


class KeyRing:
    """The configured keys (as digests) and the constant-time check."""

    def __init__(self, entries: list[tuple[str, str, str]]):
        if not entries:
            raise ConfigError(f"no API keys: set {ENV}=name:key[,name:key...] or pass --api-keys-file")
        seen = set()
        self._keys = []
        for name, key, role in entries:
            if name in seen:
                raise ConfigError(f"API key name {name!r} appears twice")
            seen.add(name)
            self._keys.append((hashlib.sha256(key.encode()).digest(), Caller(name, role)))

    def __len__(self) -> int:
        return len(self._keys)

    def names(self) -> list[str]:
        return [c.name for _, c in self._keys]

    def check(self, authorization: str | None) -> Caller | None:
        """The caller of an ``Authorization`` header value, or None (missing, malformed or unknown key)."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        digest = hashlib.sha256(token.strip().encode()).digest()
        found = None
        for d, caller in self._keys:  # every key is compared: the time does not depend on which one matches
            if hmac.compare_digest(d, digest):
                found = caller
        return found


def parse_entries(text: str, where: str, sep: str) -> list[tuple[str, str, str]]:
    """[(name, key, role)] from ``name:key[:role]`` entries separated by ``sep``; ConfigError names the entry
    by its position and name only (never the key)."""
    out = []
    for i, raw in enumerate(text.split(sep)):
        line = raw.split("#", 1)[0].strip() if sep == "\n" else raw.strip()
        if not line:
            continue
        parts = line.split(":")
        label = f"{where} entry {i + 1}"
        if len(parts) not in (2, 3):
            raise ConfigError(f"{label}: expected name:key or name:key:admin")
        name, key = parts[0].strip(), parts[1].strip()
        role = parts[2].strip() if len(parts) == 3 else "read"
        if not _NAME.match(name):
            raise ConfigError(f"{label}: the key name must be 1-64 letters, digits, '_', '.' or '-'")
        if len(key) < MIN_KEY_CHARS:
            raise ConfigError(f"{label} ({name}): the key must be at least {MIN_KEY_CHARS} characters")
        if role not in ROLES:
            raise ConfigError(f"{label} ({name}): role must be one of {', '.join(ROLES)}")
        out.append((name, key, role))
    return out


def read_keys_file(path) -> list[tuple[str, str, str]]:
    """Entries of a keys file; ConfigError unless it is a regular file of this user that no one else may read."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise ConfigError(f"--api-keys-file {p}: cannot read it ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"--api-keys-file {p}: not a regular file")
    if st.st_mode & 0o077:
        raise ConfigError(f"--api-keys-file {p}: group or others may access it (mode {stat.S_IMODE(st.st_mode):04o}); "
                          f"chmod 600 {p}")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise ConfigError(f"--api-keys-file {p}: owned by another user")
    return parse_entries(p.read_text(encoding="utf-8"), str(p), "\n")


def load_keys(keys_file=None, environ=None) -> KeyRing:
    """The keys of ``keys_file`` (if given) and of ``GPURISK_API_KEYS``; ConfigError if there are none."""
    env = os.environ if environ is None else environ
    entries = []
    if keys_file:
        entries += read_keys_file(keys_file)
    if env.get(ENV):
        entries += parse_entries(env[ENV], ENV, ",")
    return KeyRing(entries)


__all__ = ["ENV", "MIN_KEY_CHARS", "Caller", "KeyRing", "load_keys", "read_keys_file", "parse_entries"]
