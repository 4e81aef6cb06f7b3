"""Where a run's P&L matrices live (``gpurisk.batch.pnl``): placement, blocked revaluation, maps.

Independent source: P revalued in one call by the same engine (blocked revaluation must give the
same bits), and sizes computed here from the shapes.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from gpurisk.backends import Engine
from gpurisk.batch import pnl

from test_batch_fixtures import load_book, toy_plan, write_book_folder


@pytest.fixture(scope="module")
def leg(tmp_path_factory):
    folder = write_book_folder(tmp_path_factory.mktemp("book") / "b", 20)
    plan = toy_plan(load_book(folder).book)
    return plan.legs["account"]


def test_place_puts_p_in_memory_backed_files_then_on_disk_in_blocks(tmp_path):
    shm, scratch = tmp_path / "shm", tmp_path / "scratch"
    shm.mkdir()
    sizes = {"small": (10, 100), "large": (10, 10_000)}  # 8,000 and 800,000 bytes
    got = pnl.place(sizes, shared=True, budget=100_000, scratch=scratch, shm=shm)
    assert got["small"].kind == "file" and got["small"].where == "shm" and got["small"].block == 100
    assert got["small"].path.startswith(str(shm))
    big = got["large"]
    assert big.where == "disk" and big.path.startswith(str(scratch))
    assert big.block == 100_000 // (pnl.REVALUE_PEAK * 10 * 8)  # each block's peak within the budget
    # no memory-backed folder: everything goes to the scratch folder
    assert {t.where for t in pnl.place(sizes, shared=True, budget=10**9, scratch=scratch, shm=None).values()} == {"disk"}


def test_place_refuses_what_fits_nowhere_naming_the_size(tmp_path, monkeypatch):
    sizes = {"house/account/montecarlo": (3_782, 200_000)}
    want = 3_782 * 200_000 * 8
    with pytest.raises(pnl.PnLSizeError, match=f"needs {want:,} bytes .* above the memory budget .* several hosts"):
        pnl.place(sizes, shared=False, budget=1 << 30, scratch=tmp_path, shm=None)
    monkeypatch.setattr(pnl, "free_bytes", lambda folder: 5_000)
    with pytest.raises(pnl.PnLSizeError) as err:
        pnl.place(sizes, shared=True, budget=1 << 30, scratch=tmp_path / "s", shm=None)
    msg = str(err.value)
    assert f"needs {want:,} bytes" in msg and "5,000 bytes" in msg and "--out" in msg and "\n" not in msg
    assert pnl.place({"x": (2, 3)}, shared=False, budget=48, scratch=tmp_path, shm=None)["x"].kind == "memory"


def test_blocked_revaluation_gives_the_same_bits(leg, tmp_path):
    eng = Engine("reference")
    whole = eng.revalue(leg.pricing, leg.scenarios, leg.numeraire)
    target = pnl.Target("file", str(tmp_path / "p.npy"), 37, "disk")
    handle, blocks = pnl.revalue_to(eng, leg.pricing, leg.scenarios, leg.numeraire, target)
    assert blocks == int(np.ceil(leg.scenarios.n_scenarios / 37)) and handle.shape == whole.shape
    got = pnl.open_pnl(handle)
    assert np.array_equal(got, whole) and got.flags.writeable and got.dtype == np.float64
    assert not pnl.open_pnl(handle, read_only=True).flags.writeable
    # a complete file (a lost worker's result) is reused, not recomputed
    assert pnl.revalue_to(eng, leg.pricing, leg.scenarios, leg.numeraire, target) == (handle, 0)
    assert not list(tmp_path.glob(".*.tmp"))
    mem, n = pnl.revalue_to(eng, leg.pricing, leg.scenarios, leg.numeraire, pnl.Target("memory"))
    assert n == 1 and np.array_equal(mem, whole)


def test_open_maps_follow_the_file_not_the_path(tmp_path):
    path = tmp_path / "p.npy"
    np.save(path, np.ones((2, 3)))
    h = pnl.PnLFile(str(path), (2, 3))
    assert pnl.open_pnl(h).sum() == 6.0
    os.unlink(path)
    np.save(path, np.full((2, 3), 2.0))  # another run's P at the same path
    assert pnl.open_pnl(h).sum() == 12.0
    assert pnl.forget(str(tmp_path)) >= 1
    with pytest.raises(pnl.PnLSizeError, match="expected"):
        pnl.open_pnl(pnl.PnLFile(str(path), (3, 2)))


def test_out_of_memory_is_one_line_naming_the_size(leg):
    class Starved:
        def revalue(self, *a):
            raise MemoryError()

    n_ins, n_s = len(leg.pricing), leg.scenarios.n_scenarios
    with pytest.raises(pnl.PnLSizeError, match=f"out of memory revaluing .* \\({n_ins * n_s * 8:,} bytes"):
        pnl.revalue_to(Starved(), leg.pricing, leg.scenarios, "usd", pnl.Target("memory"))


def test_sweep_removes_only_the_folders_of_dead_clients(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    mine = tmp_path / f"{pnl.SHM_PREFIX}{os.getpid()}-run1"
    gone = tmp_path / f"{pnl.SHM_PREFIX}{dead}-run2"
    other = tmp_path / "something-else"
    for p in (mine, gone, other):
        p.mkdir()
        (p / "p000.npy").write_bytes(b"x")
    assert pnl.sweep(tmp_path) == 1
    assert mine.exists() and other.exists() and not gone.exists()


def test_default_budget_shares_the_memory():
    assert abs(pnl.default_budget(1) - 2 * pnl.default_budget(3)) <= 2
    assert 0 < pnl.default_budget(2) < pnl.total_memory()


def test_job_memory_budget_and_checkpoint_keys(tmp_path):
    from gpurisk.config import load_job
    from gpurisk.errors import ConfigError

    from test_batch_fixtures import write_job

    p = write_job(tmp_path)
    p.write_text(p.read_text().replace('output = "runs"', 'output = "runs"\nkeep_checkpoints = true\nmemory_budget_mb = 64'))
    job = load_job(p)
    assert job.keep_checkpoints is True and job.memory_budget_mb == 64.0
    p.write_text(p.read_text().replace("memory_budget_mb = 64", "memory_budget_mb = 0"))
    with pytest.raises(ConfigError, match=r"memory_budget_mb: must be a positive number of MiB; got 0") as err:
        load_job(p)
    assert "\n" not in str(err.value)
