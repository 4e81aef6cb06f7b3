"""Book folder reading (every structural fault), atomic writers and the validate CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import TINY_AS_OF, tiny_tables

from gpurisk.cli import main
from gpurisk.errors import BookError, ValidationError
from gpurisk.io import (
    TABLES,
    find_table,
    load_book,
    read_book_toml,
    read_table,
    write_book,
    write_csv,
    write_json,
    write_parquet,
    write_text,
)


def _tiny_dir(tmp_path: Path, fmt: str = "csv") -> Path:
    book = tmp_path / "book"
    write_book(book, tiny_tables(), {"as_of": TINY_AS_OF}, fmt=fmt)
    return book


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_tiny_book_loads_from_either_format(tmp_path, fmt):
    lb = load_book(_tiny_dir(tmp_path, fmt))
    assert lb.rejects.empty
    assert lb.summary["positions"] == {"input": 6, "accepted": 6, "rejected": 0, "merged": 0, "net_positions": 6}
    assert list(lb.book.accounts) == ["A1", "A2", "A3"]
    assert lb.book.as_of == np.datetime64("2024-12-31T08:00:00")
    exp = lb.book.instruments.expiry
    assert exp[1] == np.datetime64("2025-06-27T08:00:00") and np.isnat(exp[0])


def test_csv_and_parquet_give_the_same_book(sample_book_dir, tmp_path):
    a = load_book(sample_book_dir).book
    tables = {n: read_table(find_table(sample_book_dir, n), n) for n in TABLES}
    write_book(tmp_path / "csv", tables, read_book_toml(sample_book_dir) | {"as_of": "2024-12-31T08:00:00Z"}, "csv")
    b = load_book(tmp_path / "csv").book
    np.testing.assert_array_equal(a.accounts, b.accounts)
    for f in ("instrument_id", "kind", "settlement", "contract_size", "expiry", "strike", "option_type"):
        np.testing.assert_array_equal(getattr(a.instruments, f), getattr(b.instruments, f))
    np.testing.assert_array_equal(a.market.underlying_price, b.market.underlying_price)
    np.testing.assert_array_equal(a.market.implied_vol, b.market.implied_vol)
    np.testing.assert_array_equal(a.positions.quantity, b.positions.quantity)
    np.testing.assert_array_equal(a.balances.amount, b.balances.amount)


def test_extra_columns_are_allowed(tmp_path):
    book = _tiny_dir(tmp_path)
    df = pd.read_csv(book / "positions.csv", dtype=str)
    df["strategy"] = "x"
    df.to_csv(book / "positions.csv", index=False)
    assert load_book(book).rejects.empty


def _fault(book: Path, kind: str) -> str:
    """Apply one structural fault to a CSV book; return a fragment the error must contain."""
    if kind == "missing_folder":
        return "book folder not found"
    if kind == "not_a_folder":
        (book.parent / "file").write_text("x")
        return "not a folder"
    if kind == "missing_table":
        (book / "balances.csv").unlink()
        return "missing table 'balances'"
    if kind == "both_formats":
        write_parquet(pd.read_csv(book / "index.csv"), book / "index.parquet")
        return "ambiguous"
    if kind == "missing_column":
        df = pd.read_csv(book / "market.csv").drop(columns="underlying_price")
        df.to_csv(book / "market.csv", index=False)
        return "missing column(s) underlying_price"
    if kind == "empty_table":
        (book / "positions.csv").write_text("account_id,instrument_id,quantity\n")
        return "is empty"
    if kind == "zero_byte_file":
        (book / "positions.csv").write_bytes(b"")
        return "positions.csv"
    if kind == "truncated_csv":
        text = (book / "positions.csv").read_text()
        (book / "positions.csv").write_text(text[: text.rindex(",")])  # last row loses its last field
        return "truncated CSV: CSV parse error: line 7: Expected 3 columns, got 2"
    if kind == "truncated_parquet":
        write_parquet(pd.read_csv(book / "balances.csv"), book / "balances.parquet")
        (book / "balances.csv").unlink()
        data = (book / "balances.parquet").read_bytes()
        (book / "balances.parquet").write_bytes(data[: len(data) // 2])
        return "balances.parquet"
    if kind == "csv_named_parquet":
        (book / "index.csv").rename(book / "index.parquet")
        return "not a Parquet file"
    if kind == "parquet_named_csv":
        df = pd.read_csv(book / "index.csv")
        (book / "index.csv").unlink()
        write_parquet(df, book / "tmp.parquet")
        (book / "tmp.parquet").rename(book / "index.csv")
        return "is a Parquet file"
    if kind == "not_utf8":
        (book / "index.csv").write_bytes("underlying,price\n\xff\xfeBTC,1\n".encode("latin-1"))
        return "index.csv"
    if kind == "duplicate_column":
        (book / "index.csv").write_text("underlying,price,price\nBTC,1,2\n")
        return "duplicate column(s) price"
    if kind == "missing_toml":
        (book / "book.toml").unlink()
        return "book.toml"
    if kind == "bad_toml":
        (book / "book.toml").write_text("as_of = [unclosed\n")
        return "not valid TOML"
    if kind == "missing_as_of":
        (book / "book.toml").write_text('seed = 1\n')
        return "missing key as_of"
    if kind == "bad_as_of":
        (book / "book.toml").write_text('as_of = "yesterday-ish"\n')
        return "not an ISO-8601"
    if kind == "as_of_not_a_time":
        (book / "book.toml").write_text("as_of = 17\n")
        return "must be a UTC date-time"
    raise AssertionError(kind)


FAULTS = ["missing_folder", "not_a_folder", "missing_table", "both_formats", "missing_column", "empty_table",
          "zero_byte_file", "truncated_csv", "truncated_parquet", "csv_named_parquet", "parquet_named_csv",
          "not_utf8", "duplicate_column", "missing_toml", "bad_toml", "missing_as_of", "bad_as_of", "as_of_not_a_time"]


def _target(tmp_path, book, kind):
    if kind == "missing_folder":
        return tmp_path / "nowhere"
    if kind == "not_a_folder":
        return book.parent / "file"
    return book


@pytest.mark.parametrize("kind", FAULTS)
def test_structural_fault_raises_one_line_book_error(tmp_path, kind):
    book = _tiny_dir(tmp_path)
    fragment = _fault(book, kind)
    with pytest.raises(BookError) as exc:
        load_book(_target(tmp_path, book, kind))
    msg = str(exc.value)
    assert "\n" not in msg and fragment in msg


@pytest.mark.parametrize("kind", ["missing_table", "truncated_csv", "bad_as_of", "parquet_named_csv"])
def test_cli_structural_fault_exits_nonzero_with_one_line(tmp_path, capsys, kind):
    book = _tiny_dir(tmp_path)
    fragment = _fault(book, kind)
    rc = main(["validate", str(book)])
    err = capsys.readouterr().err
    assert rc != 0
    assert err.count("\n") == 1 and err.startswith("gpurisk validate: error: ") and fragment in err
    assert "Traceback" not in err


def test_bom_and_crlf_csv_reads(tmp_path):
    p = tmp_path / "index.csv"
    p.write_bytes(b"\xef\xbb\xbfunderlying,price\r\nBTC,93000\r\nUSDT,1\r\n")
    df = read_table(p)
    assert df.columns.tolist() == ["underlying", "price"] and df["price"].tolist() == ["93000", "1"]


def test_as_of_as_toml_datetime(tmp_path):
    book = _tiny_dir(tmp_path)
    (book / "book.toml").write_text("as_of = 2024-12-31T09:00:00+01:00\n")
    assert read_book_toml(book)["as_of"] == np.datetime64("2024-12-31T08:00:00")


# ----------------------------------------------------------------------------- writers


def _frame():
    return pd.DataFrame({
        "a": np.arange(5, dtype=np.int64),
        "b": np.linspace(0, 1, 5),
        "s": pd.array(["x", None, "z", "w", "v"], dtype="str"),
        "t": pd.to_datetime(["2025-01-03T08:00:00Z"] * 4 + [None], utc=True),
    })


def test_write_parquet_is_deterministic_and_round_trips(tmp_path):
    p1, p2 = tmp_path / "one.parquet", tmp_path / "sub" / "two.parquet"
    write_parquet(_frame(), p1)
    write_parquet(_frame(), p2)
    assert p1.read_bytes() == p2.read_bytes()
    back = pd.read_parquet(p1)
    pd.testing.assert_frame_equal(back, _frame(), check_dtype=False)
    assert sorted(os.listdir(tmp_path)) == ["one.parquet", "sub"]  # no temp file left behind
    assert pq.ParquetFile(p1).metadata.num_rows == 5


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    p = tmp_path / "x.parquet"
    write_parquet(_frame(), p)
    before = p.read_bytes()
    bad = pd.DataFrame({"o": [object(), object()]})
    with pytest.raises(Exception):
        write_parquet(bad, p)
    with pytest.raises(TypeError):
        write_json({"x": object()}, tmp_path / "x.json")
    assert p.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["x.parquet"]


def test_write_json_text_csv(tmp_path):
    obj = {"n": np.int64(3), "x": np.float64(0.5), "arr": np.arange(3), "ok": np.bool_(True)}
    write_json(obj, tmp_path / "o.json")
    assert json.loads((tmp_path / "o.json").read_text()) == {"n": 3, "x": 0.5, "arr": [0, 1, 2], "ok": True}
    write_text("héllo\n", tmp_path / "t.txt")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    write_csv(_frame(), tmp_path / "f.csv")
    lines = (tmp_path / "f.csv").read_text().splitlines()
    assert lines[0] == "a,b,s,t" and lines[1].endswith(",x,2025-01-03T08:00:00Z") and lines[2].split(",")[2] == ""
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "f.csv").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_write_into_a_file_or_onto_a_folder_is_a_book_error(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    for writer, arg in ((write_parquet, _frame()), (write_csv, _frame()), (write_text, "x"), (write_json, {"a": 1})):
        with pytest.raises(BookError, match="blocker") as e:
            writer(arg, blocker / "sub" / "out.bin")  # the folder to create is a file
        assert len(str(e.value).splitlines()) == 1
    (tmp_path / "dir.parquet").mkdir()
    with pytest.raises(BookError, match=r"dir\.parquet"):
        write_parquet(_frame(), tmp_path / "dir.parquet")  # os.replace onto a folder
    assert sorted(os.listdir(tmp_path)) == ["blocker", "dir.parquet"]  # no temp file left behind
    assert os.listdir(tmp_path / "dir.parquet") == []


# ----------------------------------------------------------------------------- validate CLI


def test_cli_validate_with_rejects_exits_zero_and_writes(tmp_path, capsys):
    book = _tiny_dir(tmp_path)
    df = pd.read_csv(book / "positions.csv", dtype=str)
    df.loc[2, "quantity"] = "0"
    df.loc[3, "instrument_id"] = "NOPE"
    df.to_csv(book / "positions.csv", index=False)
    out = tmp_path / "out"
    rc = main(["validate", str(book), "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "positions" in text and "zero_quantity 1" in text
    rej = pd.read_parquet(out / "rejects.parquet")
    assert rej[["table", "row", "reason"]].values.tolist() == [["positions", 3, "zero_quantity"],
                                                                ["positions", 4, "unknown_instrument"]]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["positions"] == {"input": 6, "accepted": 4, "rejected": 2, "merged": 0, "net_positions": 4}


def test_cli_strict_fails_on_bad_row(tmp_path, capsys):
    book = _tiny_dir(tmp_path)
    df = pd.read_csv(book / "balances.csv", dtype=str)
    df.loc[1, "asset"] = "EUR"
    df.to_csv(book / "balances.csv", index=False)
    rc = main(["validate", str(book), "--strict"])
    err = capsys.readouterr().err
    assert rc == ValidationError.exit_code != 0
    assert err.count("\n") == 1 and "balances row 2, column asset" in err and "Traceback" not in err
    assert main(["validate", str(_tiny_dir(tmp_path / "clean")), "--strict"]) == 0


def test_cli_entry_point_subprocess(tmp_path):
    """The real ``gpurisk`` process: non-zero exit and one stderr line, no traceback."""
    book = _tiny_dir(tmp_path)
    (book / "market.csv").unlink()
    proc = subprocess.run([sys.executable, "-m", "gpurisk.cli", "validate", str(book)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "missing table 'market'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_documented_example_book_loads(tmp_path):
    """The tiny example in docs/data-format.md is a complete, clean book (and is the fixture's book)."""
    import re

    doc = (Path(__file__).resolve().parents[1] / "docs" / "data-format.md").read_text(encoding="utf-8")
    doc = doc.split("## Scenario sets", 1)[0]  # the book part
    blocks = dict(re.findall(r"`(\w+)\.csv`:\n\n```csv\n(.*?)```", doc, flags=re.S))
    assert sorted(blocks) == sorted(TABLES)
    book = tmp_path / "doc_book"
    book.mkdir()
    for name, text in blocks.items():
        (book / f"{name}.csv").write_text(text)
    toml = re.search(r"`book.toml`:\n\n```toml\n(.*?)```", doc, flags=re.S).group(1)
    (book / "book.toml").write_text(toml)
    lb = load_book(book, strict=True)
    assert lb.summary["total_rejected"] == 0
    ref = load_book(_tiny_dir(tmp_path)).book
    np.testing.assert_array_equal(lb.book.positions.quantity, ref.positions.quantity)
    np.testing.assert_array_equal(lb.book.instruments.instrument_id, ref.instruments.instrument_id)


# ----------------------------------------------------------------------------- plausibility settings and --out


def test_load_book_takes_the_plausibility_settings(tmp_path):
    book = _tiny_dir(tmp_path)
    df = pd.read_csv(book / "positions.csv", dtype=str)
    df.loc[0, "quantity"] = "1e300"
    df.to_csv(book / "positions.csv", index=False)
    lb = load_book(book)
    assert lb.rejects[["table", "row", "reason"]].values.tolist() == [["positions", 1, "implausible_notional"]]
    assert np.isfinite(lb.book.positions.quantity).all() and np.abs(lb.book.positions.quantity).max() < 1e300
    assert lb.summary["limits"] == {"max_notional_usd": 1e12, "mark_band": 3.0}
    assert load_book(book, max_notional_usd=None).rejects.empty
    # the BTC call's forward 97000 is 1.043 x its index 93000
    tight = load_book(book, max_notional_usd=float("inf"), mark_band=1.01)
    assert set(tight.rejects.loc[tight.rejects["table"] == "market", "reason"]) == {"mark_off_index"}


def test_cli_validate_plausibility_flags(tmp_path, capsys):
    book = _tiny_dir(tmp_path)
    df = pd.read_csv(book / "market.csv", dtype=str)
    df.loc[0, "underlying_price"] = "1e-300"  # the perpetual marked far from its 93,000 index
    df.to_csv(book / "market.csv", index=False)
    out = tmp_path / "out"
    assert main(["validate", str(book), "--out", str(out)]) == 0
    rej = pd.read_parquet(out / "rejects.parquet")
    assert rej[["table", "row", "reason"]].values.tolist() == [
        ["instruments", 1, "missing_market_row"], ["market", 1, "mark_off_index"],
        ["positions", 1, "rejected_instrument"]]
    assert "mark_off_index 1" in capsys.readouterr().out
    assert main(["validate", str(book), "--mark-band", "inf", "--max-notional-usd", "1e4", "--out", str(out)]) == 0
    rej = pd.read_parquet(out / "rejects.parquet")
    # notionals above 1e4 USD: the BTC call 242,500, the spot 46,500, the future 46,500, the swap 27,903; BTC 74,400
    assert rej[["table", "row", "reason"]].values.tolist() == [
        ["positions", 2, "implausible_notional"], ["positions", 3, "implausible_notional"],
        ["positions", 4, "implausible_notional"], ["positions", 5, "implausible_notional"],
        ["balances", 1, "implausible_notional"]]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["limits"] == {"max_notional_usd": 1e4, "mark_band": None}


@pytest.mark.parametrize("argv,fragment", [
    (["--max-notional-usd", "0"], "max_notional_usd must be a number > 0"),
    (["--mark-band", "0.5"], "mark_band must be a number >= 1"),
    (["--mark-band", "nan"], "mark_band must be"),
])
def test_cli_validate_bad_setting_is_one_line(tmp_path, capsys, argv, fragment):
    rc = main(["validate", str(_tiny_dir(tmp_path))] + argv)
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and fragment in err and "Traceback" not in err


def test_cli_validate_out_needs_an_existing_parent(tmp_path, capsys):
    book = _tiny_dir(tmp_path)
    out = tmp_path / "missing" / "checks"
    rc = main(["validate", str(book), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and "parent folder" in err and "does not exist" in err
    assert not (tmp_path / "missing").exists()
    (tmp_path / "afile").write_text("x")
    assert main(["validate", str(book), "--out", str(tmp_path / "afile")]) != 0
    assert "not a folder" in capsys.readouterr().err
    # the folder itself may be created
    assert main(["validate", str(book), "--out", str(tmp_path / "checks")]) == 0
    assert (tmp_path / "checks" / "summary.json").is_file()


def test_cli_validate_reports_merged_balances(tmp_path, capsys):
    book = _tiny_dir(tmp_path)
    df = pd.read_csv(book / "balances.csv", dtype=str)
    pd.concat([df, df.iloc[[1, 1]]], ignore_index=True).to_csv(book / "balances.csv", index=False)
    assert main(["validate", str(book)]) == 0
    assert "balances netted: 2 row(s) merged into 3 net balance(s)" in capsys.readouterr().out
    lb = load_book(book)
    assert lb.summary["balances"]["merged"] == 2
    usdt = lb.book.balances.amount[lb.book.balances.asset == "USDT"]
    assert usdt.tolist() == [15000.0]


def test_io_and_validate_do_not_import_each_other_back():
    """The table schema lives in gpurisk.schema: validate never imports io (not even inside a function)."""
    import ast

    pkg = Path(__file__).resolve().parents[1] / "gpurisk"

    def imported(mod: str) -> set[str]:
        tree = ast.parse((pkg / f"{mod}.py").read_text(encoding="utf-8"))
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names.add(node.module or "")
                if node.module is None:
                    names.update(a.name for a in node.names)
            elif isinstance(node, ast.Import):
                names.update(a.name.removeprefix("gpurisk.") for a in node.names if a.name.startswith("gpurisk."))
        return names

    assert "io" not in imported("validate") and "schema" in imported("validate")
    assert "schema" in imported("io")
    for low in ("schema", "book"):
        assert not {"io", "validate"} & imported(low), low
