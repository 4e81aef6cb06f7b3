"""The console script's exit (``gpurisk.cli.entry``): no interpreter teardown once the work is done, but the
``atexit`` handlers run, every line printed arrives, the exit code is main's, and work still running in a
non-daemon thread is waited for."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from gpurisk.cli import main


def _entry(tmp_path, argv: list[str], before: str = "") -> subprocess.CompletedProcess:
    """Run ``gpurisk.cli.entry()`` with ``argv`` in a new interpreter, after the Python code ``before``."""
    code = textwrap.dedent(before) + textwrap.dedent(f"""
        import sys
        sys.argv = ["gpurisk"] + {argv!r}
        from gpurisk.cli import entry
        entry()
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)


def test_entry_runs_the_exit_handlers_and_keeps_main_s_exit_code(tmp_path):
    missing = str(tmp_path / "no-such-book")
    expected = main(["validate", missing])
    assert expected != 0
    p = _entry(tmp_path, ["validate", missing], before="""
        import atexit
        atexit.register(lambda: print("exit handler ran", flush=True))
    """)
    assert p.returncode == expected, p.stderr
    assert "exit handler ran" in p.stdout
    assert "gpurisk validate: error:" in p.stderr and "book folder not found" in p.stderr


def test_entry_delivers_all_output_through_a_pipe(tmp_path):
    """A successful command's output is buffered when stdout is a pipe: it is flushed before the process ends."""
    p = _entry(tmp_path, ["generate", "--accounts", "30", "--seed", "3", "--out", str(tmp_path / "book")],
               before="import atexit\natexit.register(lambda: print('LAST LINE'))\n")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "book" / "book.toml").is_file()
    lines = p.stdout.strip().splitlines()
    assert lines[-1] == "LAST LINE" and len(lines) > 1


def test_entry_waits_for_a_non_daemon_thread_still_working(tmp_path):
    done = tmp_path / "written-by-the-thread"
    p = _entry(tmp_path, ["validate", str(tmp_path / "missing")], before=f"""
        import threading, time, pathlib
        def work():
            time.sleep(1.0)
            pathlib.Path({str(done)!r}).write_text("done")
        threading.Thread(target=work, daemon=False).start()
    """)
    assert p.returncode != 0
    assert done.read_text() == "done"


def test_entry_skips_the_teardown_of_objects_alive_at_exit(tmp_path):
    """What the fast exit saves: objects still alive are not finalised (a normal exit would call __del__).
    Nothing in the project may depend on a finaliser at exit: outputs are written and closed before."""
    p = _entry(tmp_path, ["validate", str(tmp_path / "missing")], before="""
        class Noisy:
            def __del__(self):
                print("finalised at teardown", flush=True)
        KEEP = Noisy()
    """)
    assert p.returncode != 0
    assert "finalised at teardown" not in p.stdout
