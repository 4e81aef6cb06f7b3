"""The cost of Euler attribution in the tail pass: ``tail_stats`` with and without ``attribution=True``.

    python benchmarks/attribution.py [--accounts 20000] [--scenarios 5000] [--positions-per-account 10]
                                     [--instruments 2000] [--backends cpu gpu] [--repeat 3] [--json FILE]

The synthetic problem of ``benchmarks/run.py`` (``synthetic.problem``), ES99 + worst. After a warm-up of both
paths (JIT compile or kernel load), the two calls alternate ``--repeat`` times and the fastest of each is
reported, so a busy spell of a shared machine slows both alike. Attribution adds (a) writing each
portfolio's k tail scenarios at the read-off and (b) the marginal kernel, a gather of P at the k tail
scenarios per position (nnz·k loads); the default path only tests a flag. The results are checked: the
ES of both calls agree and the contributions sum to the ES.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accounts", type=int, default=20_000)
    ap.add_argument("--scenarios", type=int, default=5_000)
    ap.add_argument("--positions-per-account", type=int, default=10)
    ap.add_argument("--instruments", type=int, default=2_000)
    ap.add_argument("--backends", nargs="+", default=["cpu"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    import synthetic

    from gpurisk.backends import BackendUnavailable, get, reference
    from gpurisk.tail import MeasureSpec

    pi, sc, ports = synthetic.problem(a.accounts, a.scenarios, a.positions_per_account, a.instruments)
    P = reference.revalue(pi, sc, "usd")
    spec = MeasureSpec((0.99,))
    nnz = len(ports.quantity)
    out = {"accounts": a.accounts, "scenarios": a.scenarios, "positions": nnz, "instruments": a.instruments,
           "cpus": os.cpu_count(), "backends": {}}
    for name in a.backends:
        try:
            be = get(name)
        except BackendUnavailable as exc:
            out["backends"][name] = {"skipped": str(exc)}
            continue
        small = ports.slice(0, min(64, len(ports)))
        be.tail_stats(small, P, spec)
        be.tail_stats(small, P, spec, attribution=True)
        off, on = [], []
        for _ in range(a.repeat):
            t = time.perf_counter()
            s0 = be.tail_stats(ports, P, spec)
            off.append(time.perf_counter() - t)
            t = time.perf_counter()
            s1 = be.tail_stats(ports, P, spec, attribution=True)
            on.append(time.perf_counter() - t)
        np.testing.assert_allclose(s1.es, s0.es, rtol=1e-12, atol=1e-9)
        port = np.repeat(np.arange(len(ports)), np.diff(ports.indptr))
        sums = np.bincount(port, weights=s1.marginal[:, 0] * ports.quantity, minlength=len(ports))
        gap = float(np.max(np.abs(sums - s1.es[:, 0]) / np.maximum(np.abs(s1.es[:, 0]), 1.0)))
        out["backends"][name] = {"off_s": min(off), "on_s": min(on), "overhead": min(on) / min(off) - 1.0,
                                 "off_all_s": off, "on_all_s": on, "max_rel_sum_gap": gap,
                                 "position_scenarios_per_s_off": nnz * a.scenarios / min(off)}
    print(json.dumps(out, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
