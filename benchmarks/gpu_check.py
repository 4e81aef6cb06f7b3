"""The first check to run on a machine with an NVIDIA GPU (H100 / H200), as one command, within 8 minutes.

    python benchmarks/gpu_check.py [--out DIR] [--dry] [--no-install] [--budget SECONDS]
    bash benchmarks/gpu_check.sh [--out DIR]                     # the same, from the repository root

Steps (each in its own process, each timed and recorded; a failed step fails the check, the
rest still run while the time budget lasts):

1. install   ``pip install -e '.[gpu,test,gpu-check]'``: CuPy with its CUDA toolkit (NVRTC), the test
             tools and compute-sanitizer (``cuda-toolkit[sanitizer]``); skipped with --no-install (a
             machine that already has them, or none to fetch from: the checkout runs as it is);
2. device    what CuPy sees, and ``gpu.available()`` (which compiles both kernel modules);
3. tests     ``pytest -m gpu`` on the test files that hold GPU-marked tests: parity with the reference
             on a device;
4. parity    100,000 and 1,000,000 accounts × 10 positions × 10,000 scenarios: the GPU's results
             for sampled portfolios against the reference backend (rtol 1e-9, worst scenario exact);
   speed     ``tail_stats`` on those books: ES99 + worst, 5 levels, and EWMA-weighted (λ = 0.97),
             best of three after a warm-up, with position-scenarios per second;
5. sanitize  the kernels on small inputs (every path: shared and global rows, the spill launch,
             weighted growth, ties, NaN) under ``compute-sanitizer`` memcheck, racecheck and synccheck,
             with CuPy's memory pool off so that each array is its own allocation; the step before it
             leaves it ``SANITIZE_RESERVE_S`` seconds.

It writes ``DIR/gpu_check.json`` (everything) and ``DIR/gpu_check.md`` (a table) and exits non-zero
if any step failed. ``--dry`` runs the same steps with no device: no install, the emulated-kernel
tests instead of ``-m gpu``, the kernels under the CPU emulator (``backends.cuda_emu``, several
thread orders) instead of compute-sanitizer, and parity and speed on a small book through the
emulator; its timings mean nothing, its purpose is to prove the script before a GPU runs it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (HERE, ROOT):  # the benchmarks' helpers, and this checkout (installed or not)
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

#: the whole check must fit in this many seconds on an H100 / H200
BUDGET_S = 480
#: books of the parity and speed steps: (accounts, positions per account, scenarios, instruments)
FULL_BOOKS = ((100_000, 10, 10_000, 3_000), (1_000_000, 10, 10_000, 3_000))
DRY_BOOKS = ((300, 10, 500, 60),)
#: portfolios sampled from each book for the reference comparison
SAMPLE = 2_000
SPEEDS = {
    "es99": dict(levels=(0.99,)),
    "5 levels": dict(levels=(0.9, 0.95, 0.975, 0.99, 0.999)),
    "ewma": dict(levels=(0.99,), ewma=0.97),
}
#: the goal of the issue: 1 M × 10 × 10,000 ES99 + worst in this many seconds on one H200
GOAL_1M_ES99_S = 0.5
#: seconds of the budget the parity and speed step leaves to the sanitizer step after it
SANITIZE_RESERVE_S = 150


# ---------------------------------------------------------------- helpers


def _spec(name: str, n_s: int):
    from gpurisk.backends import MeasureSpec

    kw = dict(SPEEDS[name])
    lam = kw.pop("ewma", None)
    if lam is not None:
        kw["weight"] = lam ** np.arange(n_s)[::-1]
    return MeasureSpec(**kw)


def _device(dry: bool, build_dir: Path, seed: int = 0):
    """The GPU backend's device: the CuPy one, or the CPU emulator with --dry."""
    if not dry:
        return None
    from gpurisk.backends import cuda_emu

    return cuda_emu.device(build_dir, seed=seed, sm_count=2)


def _sync(dev):
    if dev is None:
        import cupy

        cupy.cuda.Device().synchronize()


def _close(got, want) -> list[str]:
    bad = []
    for name in ("worst", "var", "es"):
        g, w = np.asarray(getattr(got, name)), np.asarray(getattr(want, name))
        scale = float(np.abs(w).max(initial=0.0))
        if not np.allclose(g, w, rtol=1e-9, atol=1e-12 * scale):
            bad.append(f"{name}: max |diff| {float(np.abs(g - w).max()):.3g}")
    if not np.array_equal(np.asarray(got.worst_scenario), np.asarray(want.worst_scenario)):
        n_bad = int((np.asarray(got.worst_scenario) != np.asarray(want.worst_scenario)).sum())
        bad.append(f"worst_scenario: {n_bad} differ")
    return bad


# ---------------------------------------------------------------- workers (run in child processes)


def worker_small(dry: bool, build_dir: Path) -> dict:
    """Every kernel path on small inputs (run under compute-sanitizer, or the emulator with several seeds)."""
    from gpurisk.backends import NonFinitePnL, gpu
    from gpurisk.backends import reference as ref
    from gpurisk.backends import MeasureSpec
    from gpurisk.book import Portfolios

    import synthetic

    if not dry:  # under compute-sanitizer: every array its own cudaMalloc, so memcheck sees each bound
        import cupy

        cupy.cuda.set_allocator(None)
    pi, sc, pf = synthetic.problem(60, 357, 6, 40, seed=1)
    cases = []
    for seed in (1, 2, 3) if dry else (0,):
        dev = _device(dry, build_dir, seed)
        P = gpu.revalue(pi, sc, "usd", device=dev)
        P_ref = ref.revalue(pi, sc, "usd")
        if not np.allclose(P, P_ref, rtol=1e-9, atol=1e-12 * np.abs(P_ref).max()):
            raise AssertionError("revalue differs from the reference")
        S = sc.n_scenarios
        ties = np.round(P_ref * 0.0 + np.random.default_rng(2).integers(-2, 3, P_ref.shape))
        specs = [MeasureSpec((0.99,)), MeasureSpec((0.9, 0.95, 0.975, 0.99, 0.999)),
                 MeasureSpec((0.99, 0.975), weight=0.97 ** np.arange(S)[::-1], pnl_factor=np.linspace(0.5, 1.0, S),
                             profit_factor=0.5)]
        for P_in, label in ((P, "book"), (ties, "ties")):
            for spec in specs:
                got = gpu.tail_stats(pf, P_in, spec, device=dev)
                bad = _close(got, ref.tail_stats(pf, P_in, spec))
                if bad:
                    raise AssertionError(f"{label}: {bad}")
                cases.append(label)
        # the global-row and spill paths: a budget of 8 KiB of shared memory per block, a flat row
        small = copy.copy(dev if dev is not None else gpu._device())
        small.smem_budget = 8 * 1024
        flat = np.vstack([ties, np.zeros((1, S))])
        pf_flat = Portfolios(np.array([0, 1, 3], np.int64), np.array([len(flat) - 1, 0, 1], np.int32),
                             np.array([1.0, 2.0, -1.0]), np.arange(2, dtype=np.int32))
        spec = MeasureSpec((0.99, 0.5))
        got = gpu.tail_stats(pf_flat, flat, spec, device=small)
        bad = _close(got, ref.tail_stats(pf_flat, flat, spec))
        if bad:
            raise AssertionError(f"flat: {bad}")
        nan = np.array(P_ref)
        nan[3, 5] = np.nan
        try:
            gpu.tail_stats(pf, nan, specs[0], device=dev)
            raise AssertionError("a NaN loss did not raise")
        except NonFinitePnL:
            pass
        _sync(dev)
    return {"cases": len(cases) + 2, "seeds": 3 if dry else 1}


def worker_books(dry: bool, build_dir: Path) -> dict:
    """Parity on sampled portfolios and tail_stats speed for each spec and book, ES99 first (the goal's
    figure), each measurement's line on stderr as it ends (so a step that runs out of time still shows
    how far it got)."""
    from gpurisk.backends import gpu
    from gpurisk.backends import reference as ref
    from gpurisk.margin.replica import take_rows

    import synthetic

    rng = np.random.default_rng(0)
    dev = _device(dry, build_dir)
    books = []
    for n_acc, k, n_s, n_ins in DRY_BOOKS if dry else FULL_BOOKS:
        t = time.perf_counter()
        pi, sc, pf = synthetic.problem(n_acc, n_s, k, n_ins, seed=0)
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        P = gpu.revalue(pi, sc, "usd", device=dev)  # read-only host copy; the device copy stays cached
        _sync(dev)
        revalue_s = time.perf_counter() - t
        rows = np.sort(rng.choice(n_acc, size=min(SAMPLE, n_acc), replace=False))
        books.append({"accounts": n_acc, "positions_per_account": k, "scenarios": n_s, "instruments": n_ins,
                      "build_s": build_s, "revalue_s": revalue_s, "specs": {},
                      "_data": (pf, P, rows, take_rows(pf, rows))})
        _progress(f"{n_acc:,} accounts: built in {build_s:.1f} s, revalued in {revalue_s:.3f} s")
    for name in SPEEDS:
        for book in books:
            pf, P, rows, sample = book["_data"]
            n_acc, k, n_s = book["accounts"], book["positions_per_account"], book["scenarios"]
            try:  # one measurement's failure is recorded, and the others still run
                res = _measure(gpu, ref, dev, pf, P, sample, rows, _spec(name, n_s), dry, n_acc * k * n_s)
            except Exception as exc:  # noqa: BLE001
                res = {"sampled": len(rows), "mismatches": [f"{type(exc).__name__}: {exc}"[:500]]}
            book["specs"][name] = res
            _progress(f"{n_acc:,} accounts, {name}: " + json.dumps(res, default=str))
            _write(build_dir / PARTIAL_BOOKS, json.dumps({"books": _public(books)}, default=str))
    return {"books": _public(books)}


#: the books worker's results so far, rewritten after each measurement (read when the worker runs out of time)
PARTIAL_BOOKS = "books.partial.json"


def _public(books: list[dict]) -> list[dict]:
    return [{k: v for k, v in b.items() if not k.startswith("_")} for b in books]


def _progress(line: str) -> None:
    print(f"# {time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)


#: a measurement repeats its timed call (up to three times) only while its calls so far took less than this
REPEAT_WITHIN_S = 10.0


def _measure(gpu, ref, dev, pf, P, sample, rows, spec, dry: bool, work: int) -> dict:
    """Best ``tail_stats`` seconds of up to three calls after a warm-up, the first launch's shape and spill
    count, and the sampled portfolios against the reference."""
    t = time.perf_counter()
    gpu.tail_stats(pf.slice(0, min(len(pf), 1000)), P, spec, device=dev)  # warm-up: compile, upload, pools
    _sync(dev)
    warm_s = time.perf_counter() - t
    times = []
    while len(times) < (1 if dry else 3) and sum(times) < REPEAT_WITHIN_S:
        _sync(dev)
        t = time.perf_counter()
        got = gpu.tail_stats(pf, P, spec, device=dev)
        _sync(dev)
        times.append(time.perf_counter() - t)
    launch = dict(gpu.last_tail_launch)
    t = time.perf_counter()
    want = ref.tail_stats(sample, P, spec)
    ref_s = time.perf_counter() - t
    sub = type(got)(got.worst[rows], got.worst_scenario[rows], got.var[rows], got.es[rows])
    best = min(times)
    return {"tail_stats_s": best, "all_s": times, "warmup_s": warm_s, "reference_s": ref_s, "launch": launch,
            "sampled": len(rows), "mismatches": _close(sub, want), "position_scenarios_per_s": work / best}


WORKERS = {"small": worker_small, "books": worker_books}


# ---------------------------------------------------------------- steps (run by the orchestrator)


def _env(extra=None) -> dict:
    """The environment of a step: this checkout first on the import path (it need not be installed)."""
    path = os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH", "")) if x)
    return {**os.environ, "PYTHONPATH": path, **(extra or {})}


def _run(cmd, timeout, env=None) -> tuple[int, str, float]:
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(1, timeout),
                              env=_env(env))
        # stderr first: a worker's JSON result is the last line of its stdout
        return proc.returncode, (proc.stderr + proc.stdout)[-20000:], time.perf_counter() - t
    except subprocess.TimeoutExpired as exc:
        out = ((exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or ""))
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return 124, (err + out)[-20000:] + f"\n(timed out after {timeout:.0f} s)", time.perf_counter() - t


def _worker_cmd(name: str, a) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--build-dir", str(a.build_dir)]
    return cmd + (["--dry"] if a.dry else [])


def _last_json(text: str):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def step_install(a, left):
    if a.dry or a.no_install:
        return {"ok": True, "skipped": "--dry" if a.dry else "--no-install"}
    rc, out, s = _run([sys.executable, "-m", "pip", "install", "-q", "-e", ".[gpu,test,gpu-check]"], left)
    return {"ok": rc == 0, "seconds": s, "output": out[-2000:]}


def step_device(a, left):
    code = ("import json; from gpurisk.backends import gpu, cuda_emu; ok, why = gpu.available(); "
            "e = cuda_emu.available(); print(json.dumps({'gpu': [ok, why], 'emulator': list(e)}))")
    rc, out, s = _run([sys.executable, "-c", code], left)
    info = _last_json(out) or {}
    smi = shutil.which("nvidia-smi")
    if smi:
        query = "--query-gpu=name,driver_version,memory.total,clocks.max.sm"
        rc2, out2, _ = _run([smi, query, "--format=csv,noheader"], 30)
        info["nvidia_smi"] = out2.strip() if rc2 == 0 else None
    ok = rc == 0 and bool(info.get("emulator", [False])[0] if a.dry else info.get("gpu", [False])[0])
    return {"ok": ok, "seconds": s, **info, **({} if ok else {"output": out[-2000:]})}


def gpu_test_files() -> list[str]:
    """The test files that hold GPU-marked tests: the others' extras (Dask, the service, ...) need not be
    installed on the GPU machine for ``pytest -m gpu`` to collect."""
    import re

    mark = re.compile(r"^\s*@pytest\.mark\.gpu\b|^pytestmark\s*=.*pytest\.mark\.gpu\b|marks=pytest\.mark\.gpu\)",
                      re.MULTILINE)
    return sorted(f"tests/{f.name}" for f in (ROOT / "tests").glob("test_*.py") if mark.search(f.read_text()))


def step_tests(a, left):
    if a.dry:
        cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/test_gpu.py",
               "-k", "emulat"]
    else:
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", *gpu_test_files()]
    rc, out, s = _run(cmd, left)
    summary = next((ln for ln in reversed(out.splitlines()) if " passed" in ln or " failed" in ln or "error" in ln), "")
    return {"ok": rc == 0, "seconds": s, "command": " ".join(cmd[1:]), "summary": summary.strip(),
            **({} if rc == 0 else {"output": out[-3000:]})}


def _sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    cands = [Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "compute-sanitizer"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        cands.append(Path(nvcc).resolve().parent / "compute-sanitizer")
    cands += sorted(Path("/usr/local").glob("cuda*/bin/compute-sanitizer"))
    cands += sorted(Path("/usr/local").glob("cuda*/compute-sanitizer/compute-sanitizer"))
    import site

    for sp in site.getsitepackages() + [site.getusersitepackages()]:
        cands += list(Path(sp).glob("nvidia/**/compute-sanitizer"))
    for c in cands:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    return None


def step_sanitize(a, left):
    if a.dry:  # no device: the same small cases under the emulator, with three thread orders
        rc, out, s = _run(_worker_cmd("small", a), left)
        return {"ok": rc == 0, "seconds": s, "tool": "cuda_emu (3 seeds)", "result": _last_json(out),
                **({} if rc == 0 else {"output": out[-3000:]})}
    san = _sanitizer()
    if san is None:
        return {"ok": False, "error": "compute-sanitizer not found (install the gpu-check extra or a CUDA toolkit)"}
    from concurrent.futures import ThreadPoolExecutor

    def one(tool):  # the three tools run side by side: their cost is mostly host-side instrumentation
        rc, out, s = _run([san, "--tool", tool, "--error-exitcode", "99", *_worker_cmd("small", a)], left)
        return {"ok": rc == 0, "seconds": s, "tail": out[-1500:]}

    t = time.perf_counter()
    names = ("memcheck", "racecheck", "synccheck")
    with ThreadPoolExecutor(len(names)) as pool:
        tools = dict(zip(names, pool.map(one, names)))
    return {"ok": all(t["ok"] for t in tools.values()), "seconds": time.perf_counter() - t, "tools": tools,
            "sanitizer": san}


def step_books(a, left):
    partial = a.build_dir / PARTIAL_BOOKS
    partial.unlink(missing_ok=True)
    rc, out, s = _run(_worker_cmd("books", a), left if a.dry else max(60, left - SANITIZE_RESERVE_S))
    res = _last_json(out)
    if res is None and partial.is_file():  # out of time or crashed: the measurements it finished still count
        res = {**json.loads(partial.read_text()), "partial": True}
    ok = rc == 0 and res is not None and all(not sp["mismatches"] for b in res["books"] for sp in b["specs"].values())
    return {"ok": ok, "seconds": s, **(res or {}), **({} if ok else {"output": out[-3000:]})}


STEPS = (("install", step_install), ("device", step_device), ("tests", step_tests), ("parity and speed", step_books),
         ("sanitize", step_sanitize))


# ---------------------------------------------------------------- report


def markdown(doc: dict) -> str:
    lines = [f"# GPU check — {doc['date_utc']}", "",
             f"`{doc['command']}` on {doc['machine']['host']} ({doc['machine'].get('gpu') or 'no GPU: --dry'}); "
             f"{'**passed**' if doc['ok'] else '**FAILED**'} in {doc['seconds']:.0f} s.", "",
             "| step | result | seconds | detail |", "|---|---|---:|---|"]
    for name, r in doc["steps"].items():
        res = "skipped" if r.get("skipped") else ("ok" if r["ok"] else "FAILED")
        detail = r.get("skipped") or r.get("summary") or r.get("error") or r.get("tool") or ""
        if r.get("partial"):
            detail = "partial: the worker stopped before its last measurement (the rows below are those it finished)"
        if "tools" in r:
            detail = ", ".join(f"{k} {'ok' if v['ok'] else 'FAILED'}" for k, v in r["tools"].items())
        lines.append(f"| {name} | {res} | {r.get('seconds', 0.0):.1f} | {detail} |")
    books = doc["steps"].get("parity and speed", {}).get("books", [])
    if books:
        lines += ["", "| accounts × positions × scenarios | measure | tail_stats s (best of runs) | position-scenarios/s | "
                      "portfolios spilled to global buffers | sampled portfolios equal to the reference |",
                  "|---|---|---:|---:|---:|---|"]
        for b in books:
            for name, sp in b["specs"].items():
                eq = "all" if not sp["mismatches"] else "; ".join(sp["mismatches"])
                secs = f"{sp['tail_stats_s']:.3f}" if "tail_stats_s" in sp else "—"
                rate = f"{sp['position_scenarios_per_s']:.3g}" if "tail_stats_s" in sp else "—"
                spilled = sp.get("launch", {}).get("spilled")
                lines.append(f"| {b['accounts']:,} × {b['positions_per_account']} × {b['scenarios']:,} | {name} | "
                             f"{secs} | {rate} | {'—' if spilled is None else f'{spilled:,}'} | {eq} ({sp['sampled']}) |")
    if doc.get("dry"):
        lines += ["", "Dry run: no device was used; the kernels ran under the CPU emulator and the timings mean nothing."]
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    from gpurisk.fileio import write_text  # the project's atomic writer (standard library only)

    write_text(text, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("out/gpu-check"), help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--dry", action="store_true", help="no device: the emulator, a small book, no install")
    p.add_argument("--no-install", action="store_true", help="do not pip-install the extras")
    p.add_argument("--budget", type=float, default=BUDGET_S, help=f"seconds for the whole check (default {BUDGET_S})")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--build-dir", type=Path, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(WORKERS[a.worker](a.dry, a.build_dir)))
        return 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        a.build_dir = Path(tmp)
        steps = {}
        for name, fn in STEPS:
            left = a.budget - (time.perf_counter() - t0)
            if left < 10:
                steps[name] = {"ok": False, "skipped": f"out of time ({a.budget:.0f} s budget)"}
                continue
            print(f"# {name} ...", flush=True)
            try:
                steps[name] = fn(a, left)
            except Exception as exc:  # noqa: BLE001 - a step's own failure is reported, not raised
                steps[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            print(f"#   {'ok' if steps[name]['ok'] else 'FAILED'}", flush=True)
            if name == "install" and not steps[name]["ok"]:
                break
    gpu_name = (steps.get("device", {}).get("nvidia_smi") or "").split(",")[0] or None
    doc = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python", "benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
        "dry": bool(a.dry),
        "machine": {"host": platform.node(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "gpu": gpu_name},
        "budget_s": a.budget,
        "seconds": time.perf_counter() - t0,
        "goal": f"1,000,000 x 10 x 10,000 ES99 + worst in <= {GOAL_1M_ES99_S} s on one H200",
        "steps": steps,
        "ok": all(s["ok"] or s.get("skipped") in ("--dry", "--no-install") for s in steps.values())
        and len(steps) == len(STEPS),
    }
    _write(a.out / "gpu_check.json", json.dumps(doc, indent=2, default=str))
    md = markdown(doc)
    _write(a.out / "gpu_check.md", md)
    print(md)
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
