"""The proposed parameter file of a calibration: the base file with each changed value replaced, and a comment
beside it naming the backtest that supports it (the set, its coverage, cost and procyclicality, the old value)."""

from __future__ import annotations

import dataclasses
import re

from ..fileio import toml_value


def evidence(row, base_row, label: str) -> str:
    """One comment line: the backtest figures of the proposed set beside the base set's."""
    return (f"{label} set {int(row['set'])}: {int(row['n_exceptions'])} exceptions in {int(row['n_obs']):,} "
            f"(Kupiec one-sided p {row['kupiec_p_one_sided']:.3f}), green windows >= {row['min_green_share']:.0%}, "
            f"IM/ES {row['im_over_es_mean']:.2f} mean {row['im_over_es_max']:.2f} max "
            f"(base {base_row['im_over_es_mean']:.2f}/{base_row['im_over_es_max']:.2f}), "
            f"5-day IM increase {row['increase_5d']:.2f} (base {base_row['increase_5d']:.2f})")


def changes(base, new) -> dict:
    """{field: (old, new)} of the top-level scalar and array fields that differ."""
    out = {}
    for f in dataclasses.fields(base):
        a, b = getattr(base, f.name), getattr(new, f.name)
        if a != b and not dataclasses.is_dataclass(a):
            out[f.name] = (a, b)
    return out


def proposed_toml(base, new, row, base_row, text: str | None = None, label: str = "calibration") -> str:
    """The proposed parameter file: ``text`` (the base file) with each changed top-level key's value replaced and
    commented; a key the file does not set is added above its first table. Without ``text``: the changed keys
    only (the rest keep the code defaults)."""
    ch = changes(base, new)
    note = evidence(row, base_row, label)
    head = [f"# Proposed by gpurisk calibrate ({label}): every changed value is marked \"calibrated\" and names",
            "# the backtest behind it (docs/backtesting.md, \"Calibration\")."]
    if text is None:
        lines = head + [""] + [f"{k} = {toml_value(b)}  # calibrated, was {toml_value(a)}: {note}"
                               for k, (a, b) in ch.items()]
        return "\n".join(lines) + "\n"
    lines = text.splitlines()
    first_table = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("[")), len(lines))
    done = set()
    for i in range(first_table):
        m = re.match(r"^(\s*)([A-Za-z_][A-Za-z0-9_]*)(\s*=\s*)", lines[i])
        if m and m.group(2) in ch:
            k = m.group(2)
            a, b = ch[k]
            lines[i] = f"{m.group(1)}{k}{m.group(3)}{toml_value(b)}  # calibrated, was {toml_value(a)}: {note}"
            done.add(k)
    add = [f"{k} = {toml_value(b)}  # calibrated, was {toml_value(a)}: {note}" for k, (a, b) in ch.items()
           if k not in done]
    lines = head + lines[:first_table] + add + ([""] if add else []) + lines[first_table:]
    return "\n".join(lines).rstrip("\n") + "\n"


__all__ = ["proposed_toml", "toml_value", "changes", "evidence"]
