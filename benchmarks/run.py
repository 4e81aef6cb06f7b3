"""Throughput of the backends on a synthetic book, with a naive NumPy/SciPy baseline measured in the same run.

    python benchmarks/run.py [--accounts N] [--scenarios S] [--positions-per-account K]
                             [--instruments I] [--backends baseline cpu gpu] [--json FILE] [--quick]
                             [--float32] [--repeat N]

Measure: ES99 + worst per account (MeasureSpec((0.99,))). Each backend runs in its
own child process, so its peak resident memory (``ru_maxrss``: the problem, P and
the backend's scratch) is measured alone. Inside a child: small warm-up calls
(JIT compile or kernel load of every kernel the timed call may use, reported as
``warmup_s``), then ``revalue`` and
``tail_stats`` timed separately; ``total_s`` is their sum.

The baseline is what a researcher would write: the reference ``revalue`` (vectorised
NumPy pricing) and, chunk by chunk, ``scipy.sparse`` ``csr @ P`` followed by
``np.partition`` for the k-th largest loss and the mean of the top k.

CPU seconds (``process_time``, all threads) are reported next to wall seconds: on
a shared machine they show how much of the cores the run actually got.

Figures: position-scenario evaluations per second = nnz·S / tail_stats seconds;
speed-up over the baseline; effective GFLOP/s of the aggregation (2·nnz·S flops)
as a fraction of this machine's DGEMM and SGEMM rates measured now with NumPy matmul.
Every child also returns checksums of its results; they must agree with the
baseline's to 1e-9 or the run fails.

``--repeat N`` runs N rounds over the backends (baseline, cpu, …, baseline, cpu, …) and
reports each backend's fastest ``tail_stats`` (all times are in ``tail_stats_all_s``): on a
shared machine a busy spell then slows both sides of the ratio alike.

``--float32`` runs the CPU backend in its opt-in float32 storage mode (``revalue``
stores P as float32, ``tail_stats`` reads it; all arithmetic stays float64). The
baseline stays float64; the CPU checksums must then agree with it within the summed
per-portfolio ``float32_error_bound`` instead of 1e-9, and the worst-scenario
indices are not compared (a rounding may swap two nearly equal scenarios).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

LEVEL = 0.99
DEFAULT_BACKENDS = ("baseline", "cpu", "gpu")


# ---------------------------------------------------------------- baseline


def naive_tail_stats(portfolios, P: np.ndarray, level: float = LEVEL, chunk_elements: int = 8_000_000):
    """(worst [P], worst_scenario [P], var [P], es [P]): csr @ P per chunk, then np.partition."""
    import scipy.sparse as sp

    n, S = len(portfolios), P.shape[1]
    A = sp.csr_matrix((portfolios.quantity, portfolios.instrument_idx, portfolios.indptr), shape=(n, P.shape[0]))
    k = int(min(S, max(1, math.ceil(round((1.0 - level) * S, 9)))))
    worst, worst_s, var, es = (np.empty(n), np.empty(n, np.int64), np.empty(n), np.empty(n))
    step = max(1, chunk_elements // S)
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        x = -np.asarray(A[lo:hi] @ P)
        worst_s[lo:hi] = x.argmax(axis=1)
        worst[lo:hi] = x.max(axis=1)
        top = np.partition(x, S - k, axis=1)[:, S - k :]
        var[lo:hi] = top.min(axis=1)
        es[lo:hi] = top.sum(axis=1) / k
    return worst, worst_s, var, es


# ---------------------------------------------------------------- one backend, in a child process


def _sync(backend: str):
    if backend == "gpu":
        import cupy

        cupy.cuda.Device().synchronize()


def run_child(backend: str, a) -> dict:
    import synthetic

    from gpurisk.backends import MeasureSpec, get
    from gpurisk.backends import reference as ref
    from gpurisk.book import Portfolios

    t = time.perf_counter()
    pi, sc, pf = synthetic.problem(a.accounts, a.scenarios, a.positions_per_account, a.instruments, a.seed)
    build_s = time.perf_counter() - t
    spec = MeasureSpec((LEVEL,))
    if backend == "baseline":
        revalue = ref.revalue

        def tail(p, P):
            return naive_tail_stats(p, P)
    else:
        be = get(backend)
        f32 = {"float32": True} if (a.float32 and backend == "cpu") else {}

        def revalue(pi_, sc_, num):
            return be.revalue(pi_, sc_, num, **f32)

        def tail(p, P):
            r = be.tail_stats(p, P, spec, **f32)
            return r.worst, r.worst_scenario, r.var[:, 0], r.es[:, 0]

    t = time.perf_counter()  # warm-up: JIT compilation / kernel load on a small slice
    n_w = min(len(pi), 64)
    P_w = revalue(pi.take(np.arange(n_w)), sc.subset(np.arange(min(sc.n_scenarios, 64))), "usd")
    for n_port, n_ins in ((8, 16), (1, n_w)):  # a dense book (the CPU's screened kernel), a sparse one (its direct one)
        few = pf.slice(0, min(len(pf), n_port))
        tail(Portfolios(few.indptr, few.instrument_idx % n_ins, few.quantity, few.account_idx), P_w)
    _sync(backend)
    warmup_s = time.perf_counter() - t

    t, c = time.perf_counter(), time.process_time()
    P = revalue(pi, sc, "usd")
    _sync(backend)
    revalue_s, revalue_cpu_s = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    worst, worst_s, var, es = tail(pf, P)
    _sync(backend)
    tail_s, tail_cpu_s = time.perf_counter() - t, time.process_time() - c
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    bound = None
    if backend == "cpu" and a.float32:
        bound = float(be.float32_error_bound(pf, P, spec).sum())
    return {
        "backend": backend,
        "float32": bound is not None,
        "float32_bound_sum": bound,  # Σ over portfolios of the per-portfolio error bound
        "build_s": build_s,
        "warmup_s": warmup_s,
        "revalue_s": revalue_s,
        "tail_stats_s": tail_s,
        "total_s": revalue_s + tail_s,
        "revalue_cpu_s": revalue_cpu_s,  # CPU seconds of all the process's threads
        "tail_stats_cpu_s": tail_cpu_s,
        "peak_rss_bytes": int(rss),
        "p_bytes": int(P.nbytes),
        "checksum": {"P": float(np.abs(P).sum(dtype=np.float64)), "worst": float(np.abs(worst).sum()), "var": float(np.abs(var).sum()),
                     "es": float(np.abs(es).sum())},
        "worst_scenario_sum": int(np.sum(worst_s)),
    }


# ---------------------------------------------------------------- the machine


def gemm_gflops(dtype, n: int, reps: int = 3) -> float:
    """Best-of-reps NumPy matmul rate in GFLOP/s (2·n³ flops)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    a @ b
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best / 1e9


def machine() -> dict:
    info = {"python": platform.python_version(), "numpy": np.__version__, "cpus": os.cpu_count(),
            "platform": platform.platform()}
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        info["cpu"] = names[0] if names else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    try:
        import numba

        info["numba"] = numba.__version__
        info["numba_threads"] = numba.config.NUMBA_NUM_THREADS
    except ImportError:
        pass
    return info


# ---------------------------------------------------------------- driver


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--accounts", type=int, default=None, help="portfolios (default 100000; 20000 with --quick)")
    p.add_argument("--scenarios", type=int, default=None, help="scenarios S (default 10000; 2000 with --quick)")
    p.add_argument("--positions-per-account", type=int, default=10, help="positions K per account (default 10)")
    p.add_argument("--instruments", type=int, default=None, help="instruments I (default 3000; 1000 with --quick)")
    p.add_argument("--backends", nargs="+", default=list(DEFAULT_BACKENDS), help="baseline, reference-free names")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the results here (atomically)")
    p.add_argument("--quick", action="store_true", help="a small configuration that runs in well under 2 minutes")
    p.add_argument("--repeat", type=int, default=1,
                   help="rounds over the backends; each backend's fastest tail_stats is reported (default 1)")
    p.add_argument("--float32", action="store_true",
                   help="CPU backend in its opt-in float32 storage mode (P in float32, float64 arithmetic)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    quick = {"accounts": 20_000, "scenarios": 2_000, "instruments": 1_000}
    full = {"accounts": 100_000, "scenarios": 10_000, "instruments": 3_000}
    for key, val in (quick if a.quick else full).items():
        if getattr(a, key) is None:
            setattr(a, key, val)
    for key in ("accounts", "scenarios", "positions_per_account", "instruments", "repeat"):
        if getattr(a, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1")
    return a


def _child_argv(a, backend: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", backend, "--accounts", str(a.accounts),
            "--scenarios", str(a.scenarios), "--positions-per-account", str(a.positions_per_account),
            "--instruments", str(a.instruments), "--seed", str(a.seed)] + (["--float32"] if a.float32 else [])


def _available(backend: str) -> tuple[bool, str]:
    if backend == "baseline":
        return True, "NumPy/SciPy"
    from gpurisk.backends import BackendUnavailable, get

    try:
        get(backend)
        return True, ""
    except (BackendUnavailable, ValueError) as exc:
        return False, str(exc)


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1e-300)


def main(argv=None) -> int:
    a = parse(argv)
    if a.child:
        print(json.dumps(run_child(a.child, a)))
        return 0
    nnz = a.accounts * a.positions_per_account
    work = nnz * a.scenarios
    print(f"# gpurisk benchmark: {a.accounts} accounts x {a.positions_per_account} positions x {a.scenarios} "
          f"scenarios, {a.instruments} instruments; measure ES{LEVEL * 100:g} + worst", flush=True)
    n_gemm = 1024 if a.quick else 2048
    peaks = {"dgemm_gflops": gemm_gflops(np.float64, n_gemm), "sgemm_gflops": gemm_gflops(np.float32, n_gemm)}
    print(f"# NumPy matmul n={n_gemm}: DGEMM {peaks['dgemm_gflops']:.1f} GFLOP/s, "
          f"SGEMM {peaks['sgemm_gflops']:.1f} GFLOP/s", flush=True)
    results, skipped = [], {}
    best: dict = {}
    for rep in range(a.repeat):  # rounds alternate the backends, so a noisy spell hits them alike
        for backend in a.backends:
            if backend in skipped:
                continue
            ok, why = _available(backend)
            if not ok:
                skipped[backend] = why
                print(f"# skipped {backend}: {why}", flush=True)
                continue
            proc = subprocess.run(_child_argv(a, backend), capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"benchmark child for {backend!r} failed:\n{proc.stderr.strip()}", file=sys.stderr)
                return 1
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["round"] = rep + 1
            print(f"# {backend} (round {rep + 1}): revalue {r['revalue_s']:.3f} s ({r['revalue_cpu_s']:.2f} CPU-s), "
                  f"tail_stats {r['tail_stats_s']:.3f} s ({r['tail_stats_cpu_s']:.2f} CPU-s)", flush=True)
            prev = best.get(backend)
            runs = (prev["tail_stats_all_s"] if prev else []) + [r["tail_stats_s"]]
            if prev is None or r["tail_stats_s"] < prev["tail_stats_s"]:
                best[backend] = r
            best[backend]["tail_stats_all_s"] = runs
    results = [best[b] for b in a.backends if b in best]
    base = next((r for r in results if r["backend"] == "baseline"), None)
    for r in results:
        r["position_scenarios_per_s"] = work / r["tail_stats_s"]
        r["instrument_scenarios_per_s"] = a.instruments * a.scenarios / r["revalue_s"]
        r["gflops"] = 2.0 * work / r["tail_stats_s"] / 1e9
        r["fraction_of_dgemm"] = r["gflops"] / peaks["dgemm_gflops"]
        r["fraction_of_sgemm"] = r["gflops"] / peaks["sgemm_gflops"]
        if base is not None:
            r["speedup_tail_stats"] = base["tail_stats_s"] / r["tail_stats_s"]
            r["speedup_revalue"] = base["revalue_s"] / r["revalue_s"]
            r["speedup_total"] = base["total_s"] / r["total_s"]
            if r.get("float32"):
                # |Σ_p |r32_p| − Σ_p |r64_p|| ≤ Σ_p |r32_p − r64_p| ≤ Σ_p bound_p;
                # P itself is rounded once: ≤ 2⁻²⁴·Σ|P|
                tol = {"P": 2.0**-24 * base["checksum"]["P"] * (1 + 1e-9), "worst": r["float32_bound_sum"],
                       "var": r["float32_bound_sum"], "es": r["float32_bound_sum"]}
                bad = [k for k in tol
                       if abs(r["checksum"][k] - base["checksum"][k]) > tol[k] + 1e-9 * abs(base["checksum"][k])]
                same_idx = True
            else:
                bad = [k for k in ("P", "worst", "var", "es") if not _close(r["checksum"][k], base["checksum"][k])]
                same_idx = r["worst_scenario_sum"] == base["worst_scenario_sum"]
            if bad or not same_idx:
                print(f"{r['backend']} disagrees with the baseline on {bad or ['worst_scenario']}", file=sys.stderr)
                return 1
    print()
    print("| backend | revalue s | tail_stats s | total s | position-scen/s | speed-up tail / total | "
          "GFLOP/s | % DGEMM | % SGEMM | peak RSS MiB | warm-up s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        if r.get("float32"):
            r["backend"] = r["backend"] + " (float32 P)"
        sp = (f"{r['speedup_tail_stats']:.1f}x / {r['speedup_total']:.1f}x" if "speedup_total" in r
              else "no baseline run")
        print(f"| {r['backend']} | {r['revalue_s']:.3f} | {r['tail_stats_s']:.3f} | {r['total_s']:.3f} | "
              f"{r['position_scenarios_per_s']:.3g} | {sp} | {r['gflops']:.2f} | {100 * r['fraction_of_dgemm']:.1f} | "
              f"{100 * r['fraction_of_sgemm']:.1f} | {r['peak_rss_bytes'] / 2**20:.0f} | {r['warmup_s']:.2f} |")
    doc = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python", "benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "config": {"accounts": a.accounts, "scenarios": a.scenarios, "positions_per_account": a.positions_per_account,
                   "instruments": a.instruments, "nnz": nnz, "level": LEVEL, "seed": a.seed,
                   "float32": bool(a.float32), "repeat": a.repeat},
        "machine": {**machine(), **peaks},
        "results": results,
        "skipped": skipped,
    }
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=a.json.parent, prefix=f".{a.json.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(doc, fh, indent=2)
            os.replace(tmp, a.json)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
