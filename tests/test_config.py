"""Job files: typed parsing, key-path errors, relative paths, the shipped jobs and CLI errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpurisk.cli import main
from gpurisk.config import JobConfig, load_job, to_dict
from gpurisk.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

GOOD = """
[job]
name = "intraday"
backend = "cpu"
chunk_size = 250
output = "out"
workers = 3

[book]
snapshots = "snaps"

[[models]]
name = "house"
params_file = "params/house.toml"
params = {mc_scenarios = 500}
scenarios = [{generator = "montecarlo", n_scenarios = 500, seed = 3}, {file = "scen/stress.parquet"}]

[[models]]
name = "venue"

[alerts]
im_jump_pct = 10
max_calls = 5
webhook_url = "http://127.0.0.1:9/hook"

[schedule]
times = ["16:00", "08:00"]
"""


def _write(tmp_path, text, name="job.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_good_job_parses_with_types_and_relative_paths(tmp_path):
    job = load_job(_write(tmp_path, GOOD))
    assert isinstance(job, JobConfig)
    assert job.name == "intraday" and job.backend == "cpu" and job.chunk_size == 250 and job.workers == 3
    # relative paths resolve against the job file's folder, not the cwd
    assert job.output == tmp_path.resolve() / "out"
    assert job.book.snapshots == tmp_path.resolve() / "snaps" and job.book.kind == "snapshots"
    house, venue = job.models
    assert house.label == "house" and house.params_file == tmp_path.resolve() / "params/house.toml"
    assert dict(house.params) == {"mc_scenarios": 500}
    assert house.scenarios[0].generator == "montecarlo" and dict(house.scenarios[0].options) == {"n_scenarios": 500, "seed": 3}
    assert house.scenarios[1].file == tmp_path.resolve() / "scen/stress.parquet"
    assert venue.scenarios == () and venue.params_file is None
    assert job.alerts.im_jump_pct == 10.0 and job.alerts.max_calls == 5 and job.alerts.max_rejects_ratio == 0.01
    assert job.schedule.times == ("08:00", "16:00") and job.schedule.interval_minutes is None
    with pytest.raises(AttributeError):
        job.name = "x"  # frozen
    assert to_dict(job)["models"][0]["scenarios"][0]["options"] == {"n_scenarios": 500, "seed": 3}


@pytest.mark.parametrize(
    "edit, message",
    [
        (("chunk_size = 250", "chunk_size = 2.5"), "job.chunk_size: expected an integer, got float 2.5"),
        (("chunk_size = 250", 'chunk_size = "big"'), 'job.chunk_size: expected a positive integer or "auto"'),
        (("workers = 3", "workers = true"), "job.workers: expected an integer, got boolean True"),
        (("workers = 3", "wrokers = 3"), "job.wrokers: unknown key"),
        (('backend = "cpu"', 'backend = "tpu"'), "job.backend: must be one of auto, reference, cpu, gpu"),
        (('name = "venue"', 'name = "venu"'), "models[1].name: must be one of"),
        (("params = {mc_scenarios = 500}", "params = 5"), "models[0].params: expected a table, got integer 5"),
        (('{file = "scen/stress.parquet"}', '{file = "s.parquet", seed = 1}'), "models[0].scenarios[1].seed: unknown key"),
        (('{file = "scen/stress.parquet"}', "{seed = 1}"), "models[0].scenarios[1]: give exactly one of file or generator"),
        (('{generator = "montecarlo",', '{generator = "magic",'), "models[0].scenarios[0].generator: must be one of"),
        (("im_jump_pct = 10", 'im_jump_pct = "10%"'), "alerts.im_jump_pct: expected a number"),
        (('webhook_url = "http://127.0.0.1:9/hook"', 'webhook_url = "ftp://x"'), "alerts.webhook_url: must be an http"),
        (('times = ["16:00", "08:00"]', 'times = ["25:00"]'), 'schedule.times[0]: expected a UTC time of day "HH:MM"'),
        (('times = ["16:00", "08:00"]', "times = [\"08:00\"]\ninterval_minutes = 5"), "schedule: give times or interval_minutes"),
        (('snapshots = "snaps"', 'snapshots = "snaps"\npath = "b"'), "book: give exactly one of path, snapshots or sample (got path, snapshots)"),
        (('snapshots = "snaps"', "sample = {accounts = 0}"), "book.sample.accounts: must be at least 1"),
        (('snapshots = "snaps"', "sample = {accounts = 5, seeds = 1}"), "book.sample.seeds: unknown key"),
        (("[schedule]", "[shedule]"), "shedule: unknown key"),
        # generator options are the registry's (the CLI flags' names), checked when the file is read
        (("n_scenarios = 500, seed = 3", "n = 500, seed = 3"), "models[0].scenarios[0]: n: not an option of the montecarlo"),
        (("n_scenarios = 500, seed = 3", 'n_scenarios = "many"'), "models[0].scenarios[0]: n_scenarios: expected an integer"),
        (('{generator = "montecarlo",', '{generator = "span16",'), "models[0].scenarios[0].generator: must be one of grid, span,"),
        (('name = "venue"', 'name = "venue"\nscenarios = {generator = "grid"}'),
         "models[1].scenarios: model 'venue' uses its venue's own scenario grid and takes no scenario sets"),
        (('{file = "scen/stress.parquet"}', '{file = "s.parquet", component = "tail"}'),
         "models[0].scenarios[1].component: must be one of historical, montecarlo, user, stress"),
    ],
)
def test_bad_job_names_file_and_key_path(tmp_path, edit, message):
    old, new = edit
    assert old in GOOD
    p = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        load_job(p)
    text = str(err.value)
    assert text.startswith(f"{p}: ") and message in text and "\n" not in text


def test_scenario_components(tmp_path):
    job = load_job(_write(tmp_path, GOOD.replace('{file = "scen/stress.parquet"}',
                                                 '{file = "scen/stress.parquet", component = "stress"}')))
    assert [s.component for s in job.models[0].scenarios] == ["user", "stress"]
    bad = GOOD.replace('name = "venue"', 'name = "measures"\nscenarios = {generator = "stress", component = "stress"}')
    with pytest.raises(ConfigError, match="models\\[1\\].scenarios.component: scenario components apply to the house"):
        load_job(_write(tmp_path, bad))


def test_missing_sections_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="missing required table \\[job\\]"):
        load_job(_write(tmp_path, "[book]\npath='x'\n"))
    with pytest.raises(ConfigError, match="missing required table \\[book\\]"):
        load_job(_write(tmp_path, "[job]\nname='x'\n[[models]]\nname='house'\n"))
    with pytest.raises(ConfigError, match="at least one \\[\\[models\\]\\]"):
        load_job(_write(tmp_path, "[job]\nname='x'\n[book]\npath='b'\n"))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_job(_write(tmp_path, "[job\n"))
    with pytest.raises(ConfigError, match="job file not found"):
        load_job(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="labels must be unique"):
        load_job(_write(tmp_path, "[job]\n[book]\npath='b'\n[[models]]\nname='house'\n[[models]]\nname='house'\n"))


@pytest.mark.parametrize("name", ["intraday_margin", "eod_stress", "calibration"])
def test_shipped_jobs_parse(name):
    job = load_job(REPO / "jobs" / f"{name}.toml")
    assert job.name == name
    if name == "calibration":
        assert job.kind == "calibration"
    elif name == "eod_stress":  # a stress job: its [stress] table, no [[models]]
        assert job.kind == "stress" and job.book is not None and job.stress.report
    else:
        assert job.book is not None and job.models
    if name == "intraday_margin":
        assert job.book.sample is not None and job.schedule.configured
        assert {m.name for m in job.models} >= {"house", "venue"}


def test_cli_bad_job_is_one_line_and_non_zero(tmp_path, capsys):
    p = _write(tmp_path, GOOD.replace("workers = 3", "workers = 'three'"))
    assert main(["run", str(p)]) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "job.workers: expected an integer" in err and "Traceback" not in err


def test_cli_bad_calibration_grid_is_a_clear_error(tmp_path, capsys):
    # the calibration job is built (gpurisk.calibration): a grid naming no house parameter fails before any work
    p = tmp_path / "cal.toml"
    p.write_text('[job]\nname = "cal"\nkind = "calibration"\n[calibration.grid]\nno_such_knob = [1, 2]\n')
    assert main(["run", str(p)]) != 0
    err = capsys.readouterr().err.strip()
    assert "no_such_knob" in err and err.count("\n") == 0 and "Traceback" not in err


# --------------------------------------------------------------------------- names that become paths

BAD_NAMES = ["../../../x", "/abs", "a\nb", "..", ".hidden", "a/b", "", "a\\b", "x y", "a..b", "x" * 101]


@pytest.mark.parametrize("label", BAD_NAMES)
def test_bad_model_label_is_a_one_line_error_naming_the_key(tmp_path, label):
    import json

    p = _write(tmp_path, GOOD.replace('name = "venue"', f'name = "venue"\nlabel = {json.dumps(label)}', 1))
    with pytest.raises(ConfigError) as err:
        load_job(p)
    text = str(err.value)
    assert text.startswith(f"{p}: models[1].label: bad name ") and "\n" not in text
    assert repr(label) in text or len(label) > 60  # long names are shown shortened


@pytest.mark.parametrize("name", ["../x", "/etc/cron.d/x", "a\nb", ".x"])
def test_bad_job_name_is_a_one_line_error(tmp_path, name):
    import json

    p = _write(tmp_path, GOOD.replace('name = "intraday"', f"name = {json.dumps(name)}", 1))
    with pytest.raises(ConfigError) as err:
        load_job(p)
    text = str(err.value)
    assert text.startswith(f"{p}: job.name: ") and "\n" not in text


def test_job_name_defaults_to_the_file_name_and_is_checked_too(tmp_path):
    text = GOOD.replace('name = "intraday"\n', "", 1)
    assert load_job(_write(tmp_path, text, "intraday-2.toml")).name == "intraday-2"
    p = _write(tmp_path, text, "intraday margin.toml")
    with pytest.raises(ConfigError, match=r"job\.name: .*'intraday margin'.*set \[job\] name"):
        load_job(p)


def test_good_labels_are_kept_as_written(tmp_path):
    for label in ("venue-2", "house_v1.2", "A9"):
        p = _write(tmp_path, GOOD.replace('name = "venue"', f'name = "venue"\nlabel = "{label}"', 1))
        assert load_job(p).models[1].label == label


@pytest.mark.parametrize("label", ["../../../x", "/abs"])
def test_run_with_a_bad_label_writes_nothing_outside_output(tmp_path, label):
    """``gpurisk run`` (a real process) refuses the job before writing anything anywhere."""
    import json
    import subprocess
    import sys

    from test_batch_fixtures import write_book_folder

    if label.startswith("/"):
        label = str(tmp_path / "abs" / "x")  # an absolute path inside tmp_path, so the test can look for it
    root = tmp_path / "a" / "b" / "c"
    write_book_folder(root / "book", 20)
    job = _write(root, f'[job]\nname = "evil"\nbackend = "reference"\noutput = "out"\n[book]\npath = "book"\n'
                       f'[[models]]\nname = "measures"\nlabel = {json.dumps(label)}\n'
                       f'scenarios = {{generator = "stress", horizon_days = 2.0}}\n')
    before = {p for p in tmp_path.rglob("*")}
    proc = subprocess.run([sys.executable, "-c", "import sys; from gpurisk.cli import main; sys.exit(main(sys.argv[1:]))",
                           "run", str(job), "--workers", "1", "--quiet"], capture_output=True, text=True, timeout=300)
    created = {p for p in tmp_path.rglob("*")} - before
    assert [p for p in created if not p.is_relative_to(root / "out")] == []
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert err.count("\n") == 0 and "models[0].label" in err and "Traceback" not in err
