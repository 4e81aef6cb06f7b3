"""``gpurisk scenarios KIND [options] --out FILE``: generate a scenario set and write it.

KIND and its options come from the one generator registry (``gpurisk.scenarios.registry``), so the
flags here are the keys a job file uses (``--lookback-days`` is ``lookback_days``). FILE ends in
``.parquet`` or ``.csv`` (docs/data-format.md, "Scenario sets"). Prints one JSON line that
describes the set.
"""

from __future__ import annotations

import argparse
import json

from ..errors import ScenarioError


def _arg_type(opt):
    return {"float": float, "int": int}.get(opt.type, str)


def add_parser(subparsers):
    from ..scenarios.registry import GENERATORS, REQUIRED

    p = subparsers.add_parser(
        "scenarios", help="generate a scenario set (" + ", ".join(GENERATORS) + ")",
        description="Generate a scenario set and write it to FILE (.parquet, or .csv with FILE.meta.json). "
                    "The options of each kind are the keys a job file's {generator = KIND, ...} table takes.")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    for g in GENERATORS.values():
        k = kinds.add_parser(g.name, help=g.summary, description=g.summary)
        k.add_argument("--out", required=True, help="output file, .parquet or .csv (CSV gets FILE.meta.json)")
        if g.reads_history:
            from .market import add_market_options

            add_market_options(k, policy=False)
        for o in g.options:
            if o.type == "bool":
                k.add_argument(o.flag, dest=o.name, action=argparse.BooleanOptionalAction, default=None,
                               help=f"{o.help} (default {'yes' if o.default else 'no'})")
                continue
            default = "required" if o.default is REQUIRED else (
                ",".join(o.default) if isinstance(o.default, tuple) else (o.default if o.default != "" else "none"))
            k.add_argument(o.flag, dest=o.name, type=_arg_type(o), default=None,
                           choices=list(o.choices) or None, metavar=None if o.choices else o.name.upper(),
                           help=f"{o.help} (default {default})")
        k.set_defaults(func=run)
    return p


def build(args):
    """The ScenarioSet the arguments ask for (through the registry, which checks every option)."""
    from ..scenarios import registry

    gen = registry.get(args.kind)
    opts = {o.name: getattr(args, o.name) for o in gen.options if getattr(args, o.name, None) is not None}
    market = None
    if gen.reads_history:
        from .market import store_from_args

        market = store_from_args(args)
    return registry.generate(args.kind, opts, market=market)


def run(args) -> int:
    from ..scenarios.io import write_scenarios
    from .outpath import out_file

    out_file(args.out, ScenarioError)  # the file may be created; its parent folder must exist
    sset = build(args)
    path = write_scenarios(sset, args.out)
    d = sset.describe()
    d.pop("metadata", None)
    d["out"] = str(path)
    print(json.dumps(d, default=str))
    return 0
