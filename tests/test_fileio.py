"""The one atomic writer (umask, atomicity, determinism), hashes, the strict TOML reader and name checks."""

from __future__ import annotations

import ast
import contextlib
import datetime as dt
import hashlib
import json
import os
import stat
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from gpurisk import fileio
from gpurisk.errors import BookError, ConfigError, ScenarioError

PACKAGE = Path(fileio.__file__).resolve().parent


@contextlib.contextmanager
def umask(mask: int):
    """Run the block under process umask ``mask``; the old umask is restored afterwards."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _frame() -> pd.DataFrame:
    return pd.DataFrame({"a": [1, 2, 3], "b": [0.5, np.nan, -1.25], "s": ["x", None, "z"]})


def _book_tables():
    from test_batch_fixtures import book_tables

    return book_tables(5)


# every file writer of the package, as (name, callable(path) -> files written)
def _w_scenarios(path, suffix):
    from gpurisk.scenarios.io import sidecar_path, write_scenarios
    from gpurisk.scenarios.scenario_set import make_scenario_set

    p = path.with_suffix(suffix)
    write_scenarios(make_scenario_set(["BTC"], [[0.1], [-0.1]]), p)
    return [p, sidecar_path(p)] if suffix == ".csv" else [p]


def _w_chunk(path):
    from gpurisk.backends import TailStats
    from gpurisk.batch import chunks

    p = chunks.checkpoint_path(path.parent, "house", "account/fhs", 0, 2)
    chunks.save_chunk(p, TailStats(np.zeros(2), np.zeros(2, np.int64), np.zeros((2, 1)), np.zeros((2, 1))), {})
    return [p]


def _w_book(path):
    from gpurisk.io import TABLES, write_book

    folder = write_book(path.parent / "book", _book_tables(), {"as_of": "2026-03-02T08:00:00Z"})
    return [folder / f"{t}.parquet" for t in TABLES] + [folder / "book.toml"]


def _w_manifest(path):
    from gpurisk.batch import manifest

    return [manifest.write_manifest(path.parent, {"run_id": "r"})]


def _w_metrics(path):
    from gpurisk.batch import monitoring

    report = {"job": "j", "status": "succeeded"}
    monitoring.write_metrics(report, path.parent / "run", path.parent / "gpurisk_j.prom")
    return [path.parent / "run" / "metrics.prom", path.parent / "gpurisk_j.prom"]


WRITERS = {
    "write_bytes": lambda p: [fileio.write_bytes(b"abc", p)],
    "write_text": lambda p: [fileio.write_text("héllo\n", p)],
    "write_json": lambda p: [fileio.write_json({"a": 1}, p)],
    "write_parquet": lambda p: [fileio.write_parquet(_frame(), p)],
    "write_table": lambda p: [fileio.write_table(pa.table({"x": [1, 2]}), p)],
    "write_csv": lambda p: [fileio.write_csv(_frame(), p)],
    "atomic_write": lambda p: [fileio.atomic_write(p, lambda fh: fh.write(b"x"))],
    "append_line": lambda p: [fileio.append_line('{"a": 1}', p)],
    "io.write_book": _w_book,
    "scenarios.parquet": lambda p: _w_scenarios(p, ".parquet"),
    "scenarios.csv": lambda p: _w_scenarios(p, ".csv"),
    "chunks.save_chunk": _w_chunk,
    "manifest.write_manifest": _w_manifest,
    "monitoring.write_metrics": _w_metrics,
}


# ----------------------------------------------------------------------------- modes


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_every_writer_honours_the_umask(tmp_path, writer, mask, mode):
    with umask(mask):
        files = WRITERS[writer](tmp_path / "out" / "f.bin")
    assert files
    for f in files:
        assert _mode(Path(f)) == mode, f
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_a_rewrite_sets_the_mode_afresh(tmp_path):
    p = tmp_path / "metrics.prom"
    with umask(0o077):
        fileio.write_text("a\n", p)
    assert _mode(p) == 0o600
    with umask(0o022):
        fileio.write_text("b\n", p)
    assert _mode(p) == 0o644 and p.read_text() == "b\n"


def test_temp_dir_honours_the_umask_and_sits_next_to_its_target(tmp_path):
    with umask(0o022):
        d = fileio.make_temp_dir(tmp_path / "cache" / "sample")
    assert d.is_dir() and d.parent == tmp_path / "cache" and d.name.startswith(".sample.") and d.name.endswith(".tmp")
    assert _mode(d) == 0o755 and not list(d.iterdir())
    assert fileio.make_temp_dir(tmp_path / "cache" / "sample") != d  # fresh each time


# ----------------------------------------------------------------------------- atomicity


def test_readers_see_the_old_file_until_the_new_one_is_complete(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"old")

    def write(fh):
        fh.write(b"new")
        fh.flush()
        assert p.read_bytes() == b"old"  # the new bytes are elsewhere until os.replace

    fileio.atomic_write(p, write)
    assert p.read_bytes() == b"new" and os.listdir(tmp_path) == ["x.bin"]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_a_failing_write_leaves_the_old_file_and_no_temp_file(tmp_path, exc):
    p = tmp_path / "x.bin"
    p.write_bytes(b"old")

    def write(fh):
        fh.write(b"half of the new")
        raise exc

    with pytest.raises(type(exc)):
        fileio.atomic_write(p, write)
    assert p.read_bytes() == b"old" and os.listdir(tmp_path) == ["x.bin"]


def test_unencodable_data_writes_nothing(tmp_path):
    p = tmp_path / "x.json"
    fileio.write_json({"a": 1}, p)
    before = p.read_bytes()
    with pytest.raises(TypeError, match="object"):
        fileio.write_json({"a": object()}, p)
    with pytest.raises(Exception):
        fileio.write_parquet(pd.DataFrame({"o": [object(), object()]}), tmp_path / "x.json")
    assert p.read_bytes() == before and os.listdir(tmp_path) == ["x.json"]


def test_os_failures_are_one_line_write_errors_naming_the_path(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    for path in (blocker / "sub" / "x.json", blocker / "x.json"):
        with pytest.raises(fileio.WriteError) as e:
            fileio.write_json({"a": 1}, path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)
        assert isinstance(e.value, BookError) and isinstance(e.value, OSError)
    (tmp_path / "dir.bin").mkdir()
    with pytest.raises(fileio.WriteError, match=r"dir\.bin: cannot write \("):
        fileio.write_bytes(b"x", tmp_path / "dir.bin")  # os.replace onto a folder
    with pytest.raises(fileio.WriteError, match="No space left"):
        fileio.atomic_write(tmp_path / "full.bin", lambda fh: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(fileio.WriteError, match="cannot append"):
        fileio.append_line("x", tmp_path / "dir.bin")
    assert sorted(os.listdir(tmp_path)) == ["blocker", "dir.bin"]


def test_parents_are_made_unless_the_caller_says_not_to(tmp_path):
    assert fileio.write_text("x", tmp_path / "a" / "b" / "t.txt").read_text() == "x"
    for write in (lambda p: fileio.write_text("x", p, parents=False), lambda p: fileio.append_line("x", p, parents=False)):
        with pytest.raises(fileio.WriteError, match="does not exist"):
            write(tmp_path / "typo" / "t.txt")
    assert not (tmp_path / "typo").exists()
    assert fileio.write_text("y", tmp_path / "a" / "t.txt", parents=False).read_text() == "y"


def test_the_old_batch_writer_module_is_gone():
    with pytest.raises(ImportError):
        __import__("gpurisk.batch.atomic")


# ----------------------------------------------------------------------------- content


def test_json_is_sorted_indented_and_deterministic(tmp_path):
    a = {"b": 1, "a": [1, 2], "c": {"z": 1, "y": 2}}
    b = {"c": {"y": 2, "z": 1}, "a": [1, 2], "b": 1}
    fileio.write_json(a, tmp_path / "a.json")
    fileio.write_json(b, tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert (tmp_path / "a.json").read_text() == json.dumps(a, indent=2, sort_keys=True) + "\n"


def test_json_default_converts_what_the_package_writes_and_nothing_else():
    obj = {
        "i": np.int64(3), "f": np.float32(0.5), "t": np.bool_(True), "arr": np.arange(3),
        "d64": np.datetime64("2026-03-02T08:00:00"), "p": Path("a") / "b",
        "ts": pd.Timestamp("2026-03-02T08:00:00Z"), "date": dt.date(2026, 3, 2), "set": {"b", "a"},
        "map": MappingProxyType({"k": 1}),
    }
    got = json.loads(fileio.json_text(obj))
    assert got == {"i": 3, "f": 0.5, "t": True, "arr": [0, 1, 2], "d64": "2026-03-02T08:00:00", "p": "a/b",
                   "ts": "2026-03-02T08:00:00+00:00", "date": "2026-03-02", "set": ["a", "b"], "map": {"k": 1}}
    with pytest.raises(TypeError, match="complex"):
        fileio.json_text({"x": 1j})


def test_parquet_is_byte_identical_for_equal_frames_and_round_trips(tmp_path):
    fileio.write_parquet(_frame(), tmp_path / "1.parquet")
    fileio.write_parquet(_frame().copy(), tmp_path / "2.parquet")
    assert (tmp_path / "1.parquet").read_bytes() == (tmp_path / "2.parquet").read_bytes()
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "1.parquet"), _frame())
    meta = pa.table({"x": [1]}).replace_schema_metadata({b"k": b"v"})
    fileio.write_table(meta, tmp_path / "m.parquet")
    import pyarrow.parquet as pq

    assert pq.read_schema(tmp_path / "m.parquet").metadata[b"k"] == b"v"


def test_csv_text_and_tz_columns(tmp_path):
    df = _frame().assign(t=pd.to_datetime(["2025-01-03T08:00:00Z"] * 3))
    fileio.write_csv(df, tmp_path / "f.csv")
    assert (tmp_path / "f.csv").read_bytes().decode("utf-8").splitlines() == [
        "a,b,s,t", "1,0.5,x,2025-01-03T08:00:00Z", "2,,,2025-01-03T08:00:00Z", "3,-1.25,z,2025-01-03T08:00:00Z"]
    fileio.write_text("é\n", tmp_path / "t.txt")
    assert (tmp_path / "t.txt").read_bytes() == "é\n".encode("utf-8")


def test_append_line_appends_whole_lines_only(tmp_path):
    p = tmp_path / "alerts.jsonl"
    fileio.append_line('{"a": 1}', p)
    fileio.append_line('{"a": 2}\n', p)
    assert p.read_text() == '{"a": 1}\n{"a": 2}\n'
    with pytest.raises(ValueError, match="one line"):
        fileio.append_line('{"a": 3}\n{"a": 4}', p)
    assert p.read_text() == '{"a": 1}\n{"a": 2}\n'


def test_sha256_against_the_published_vector_and_hashlib(tmp_path):
    # FIPS 180-2, appendix B.1: SHA-256("abc")
    assert fileio.sha256_bytes(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    data = np.random.default_rng(0).bytes(10_000)
    (tmp_path / "d").write_bytes(data)
    assert fileio.sha256_file(tmp_path / "d", bufsize=333) == hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- TOML


def test_read_toml_reads_tables(tmp_path):
    p = tmp_path / "a.toml"
    p.write_bytes(b'\xef\xbb\xbfx = 1\n[t]\ny = "z"\n')  # a UTF-8 byte-order mark is accepted
    assert fileio.read_toml(p, "job file") == {"x": 1, "t": {"y": "z"}}


@pytest.mark.parametrize(
    "content, fragment",
    [
        (None, "job file not found"),
        ("folder", "job file is a folder, not a file"),
        (b"x = 1\ny = \xff\n", "job file is not UTF-8 text (byte 10"),
        (b"[job\nname = 1\n", "not valid TOML: "),
        (b"x = 1\nx = 2\n", "not valid TOML: "),
    ],
)
def test_read_toml_faults_are_one_line_naming_the_file(tmp_path, content, fragment):
    p = tmp_path / "job.toml"
    if content == "folder":
        p.mkdir()
    elif content is not None:
        p.write_bytes(content)
    for error in (ConfigError, ScenarioError):
        with pytest.raises(error) as e:
            fileio.read_toml(p, "job file", error)
        msg = str(e.value)
        assert msg.startswith(f"{p}: ") and fragment in msg and "\n" not in msg
    if content == b"[job\nname = 1\n":
        assert "line 1" in msg


def test_every_toml_read_goes_through_read_toml():
    """One strict reader: no other module of the package parses TOML or makes temp files its own way."""
    offenders = []
    for f in sorted(PACKAGE.rglob("*.py")):
        if f.name == "fileio.py":
            continue
        text = f.read_text(encoding="utf-8")
        for needle in ("tomllib", "tomli", "mkstemp", "mkdtemp", "NamedTemporaryFile"):
            if needle in text:
                offenders.append(f"{f.relative_to(PACKAGE)}: {needle}")
    assert offenders == []


def test_fileio_imports_nothing_of_the_package_but_errors():
    tree = ast.parse(Path(fileio.__file__).read_text(encoding="utf-8"))
    relative = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > 0]
    absolute = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    absolute += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0]
    assert relative == ["errors"] and not [m for m in absolute if m and m.startswith("gpurisk")]


# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["house", "venue-2", "house_v1.2", "A9", "20260302T080000Z-1a2b3c4d-2", "-x",
                                  "x" * fileio.NAME_MAX])
def test_good_names_pass_unchanged(name):
    assert fileio.check_name(name, "label") == name


@pytest.mark.parametrize(
    "name, why",
    [
        ("../../../x", "starts with '.'"), ("/abs", "contains '/'"), ("a\nb", "contains '\\n'"), ("a\n", "contains '\\n'"),
        ("..", "starts with '.'"), (".hidden", "starts with '.'"), ("a/b", "contains '/'"), ("a\\b", "contains '\\\\'"),
        ("", "is empty"), ("a..b", "contains '..'"), ("x\x00y", "contains '\\x00'"), ("a b", "contains ' '"),
        ("café", "contains 'é'"), ("C:x", "contains ':'"), ("x" * (fileio.NAME_MAX + 1), "is longer than"),
    ],
)
def test_bad_names_are_one_line_config_errors(name, why):
    with pytest.raises(ConfigError) as e:
        fileio.check_name(name, "jobs/a.toml: models[1].label")
    msg = str(e.value)
    assert msg.startswith("jobs/a.toml: models[1].label: bad name ") and why in msg and "\n" not in msg


def test_non_string_names_are_refused():
    with pytest.raises(ConfigError, match="must be a string"):
        fileio.check_name(None, "--resume")


def test_path_name_is_readable_deterministic_and_collision_free():
    texts = ["account/fhs", "account_fhs", "account fhs", "account.fhs", "../x", "/abs", "a\nb", "", "." * 80,
             "deribit/deribit.BTC.BTC/standard", "x" * 200, "x" * 201]
    names = [fileio.path_name(t) for t in texts]
    assert len(set(names)) == len(texts)
    assert names == [fileio.path_name(t) for t in texts]
    assert all(fileio.check_name(n, "t") == n for n in names)
    assert names[0] == "account_fhs-" + hashlib.sha256(b"account/fhs").hexdigest()[:12]


# ----------------------------------------------------------------------------- names at their call sites


@pytest.mark.parametrize("run_id", ["../x", "/abs", "a/b", ".", "..", "a\nb"])
def test_resume_takes_only_a_run_id(tmp_path, run_id):
    from gpurisk.batch.runner import _open_run

    with pytest.raises(ConfigError, match="--resume takes a run id") as e:
        _open_run(tmp_path / "out", run_id, "0" * 64)
    assert "\n" not in str(e.value) and list(tmp_path.iterdir()) == []


def test_checkpoints_refuse_a_bad_label_and_map_leg_names(tmp_path):
    from gpurisk.batch import chunks

    with pytest.raises(ConfigError, match="model label: bad name"):
        chunks.checkpoint_path(tmp_path, "../x", "account", 0, 1)
    p = chunks.checkpoint_path(tmp_path, "venue", "../../okx/a b", 0, 1)
    assert p.parent.parent == tmp_path / "venue" and p.parent.name.startswith("______okx_a_b-")


def test_sample_cache_folders_stay_in_the_cache_and_never_collide(tmp_path):
    from gpurisk.batch import sources
    from gpurisk.config import BookSource, SampleBook

    def folder(as_of):
        return sources.sample_dir(tmp_path, BookSource(sample=SampleBook(accounts=5, seed=1, as_of=as_of)))

    got = [folder(a) for a in ("2024-12-31T08:00:00Z", "2024-12-31T08_00_00Z", "../../x", "/etc", None)]
    assert len(set(got)) == len(got) and all(p.parent == tmp_path / ".cache" for p in got)
    assert got[0] == folder("2024-12-31T08:00:00Z") and got[0].name.startswith("sample-a5-s1-2024-12-31T08_00_00Z-")


# ----------------------------------------------------------------------------- TOML values


@pytest.mark.parametrize("value", [True, False, 0, -7, 2**40, 0.99, 1e-300, float("inf"), float("-inf"), "own",
                                   'a "quoted" \\ word', [1, 2.5, "x"], []])
def test_toml_value_reads_back_as_the_same_value(value):
    assert fileio.toml_scalar(fileio.toml_value(value)) == value


def test_toml_value_of_numpy_scalars_and_nan():
    import math

    import numpy as np

    assert fileio.toml_value(np.int16(3)) == "3" and fileio.toml_value(np.bool_(True)) == "true"
    assert fileio.toml_scalar(fileio.toml_value(np.float32(0.5))) == 0.5
    assert math.isnan(fileio.toml_scalar(fileio.toml_value(float("nan"))))


def test_toml_scalar_reads_a_bare_word_as_itself():
    assert fileio.toml_scalar("coin") == "coin" and fileio.toml_scalar("0.975") == 0.975
    assert fileio.toml_scalar('"3"') == "3" and fileio.toml_scalar("[1, 2]") == [1, 2]


# ----------------------------------------------------------------------------- reading input files


def test_read_text_accepts_a_byte_order_mark_and_a_file_at_the_limit(tmp_path):
    p = tmp_path / "a.json"
    p.write_bytes(b'\xef\xbb\xbf{"x": 1}')
    assert fileio.read_text(p, "JSON file", limit=p.stat().st_size) == '{"x": 1}'


@pytest.mark.parametrize("case, fragment", [
    ("missing", "JSON file not found"),
    ("folder", "JSON file is a folder, not a file"),
    ("large", "JSON file of 11 bytes is larger than the limit of 10 bytes"),
    ("latin1", "JSON file is not UTF-8 text (byte 7: b'\\xe9')"),
])
def test_read_text_faults_are_one_line_naming_the_file(tmp_path, case, fragment):
    p = tmp_path / "a.json"
    if case == "folder":
        p.mkdir()
    elif case == "large":
        p.write_bytes(b"x" * 11)
    elif case == "latin1":
        p.write_bytes(b'{"x": "\xe9"}')
    with pytest.raises(ConfigError) as e:
        fileio.read_text(p, "JSON file", limit=10 if case == "large" else None)
    msg = str(e.value)
    assert msg.startswith(f"{p}: ") and fragment in msg and "\n" not in msg
