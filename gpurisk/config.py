"""Typed job files: one TOML file describes a whole batch run.

``load_job(path) -> JobConfig`` reads the file with ``gpurisk.fileio.read_toml`` into
frozen dataclasses. Unknown keys and wrong types raise ``ConfigError`` naming the file
and the key path (``jobs/x.toml: models[1].scenarios.seed: expected an integer``).

The job name and the model labels become file and folder names (``OUTPUT/<run_id>/<label>/``,
``OUTPUT/gpurisk_<job>.prom``), so they are checked here with ``gpurisk.fileio.check_name``:
a label such as ``../x``, ``/abs`` or one holding a newline is a ConfigError naming its key
path (``models[1].label``), before anything is written. Nothing is renamed silently.

Relative paths inside a job file resolve against the folder that holds the job
file, so a job runs the same from any working directory.

Sections (see ``jobs/*.toml`` for commented examples)::

    [job]        name, kind (margin | stress | backtest | calibration), description, backend,
                 chunk_size (portfolios per task, or "auto"), output, workers, retries,
                 keep_checkpoints (keep RUN/chunks/ after a successful run; default false),
                 lost_workers_timeout_s (fail the run when no worker is left for this long;
                 default 120; 0 waits forever),
                 memory_budget_mb (largest P&L matrix revalued in one piece; default: a share
                 of the host's memory, see gpurisk.batch.pnl)
    [book]       exactly one of: path (a book folder), snapshots (a folder of
                 snapshot folders; the last by name is used),
                 sample = {accounts = N, seed = S, as_of = "..."} (generated into
                 OUTPUT/.cache/)
    [[models]]   name (house | deribit | okx | venue | measures), label,
                 params_file, params (inline overrides of the model's Params),
                 scenarios (house and measures only; the venue replicas use their
                 venues' grids): a table or an array of tables, each either
                 {file = "..."} or {generator = "montecarlo", ...options}, the options
                 named as the ``gpurisk scenarios`` flags (``gpurisk.scenarios.registry``),
                 and optionally component = "historical" | "montecarlo" | "user" |
                 "stress" (house; default "user", measured by ES); sets of one
                 component are concatenated
    [stress]     (kind stress) house_params_file, scenario_files, report, anonymise, and every
                 field of ``gpurisk.stress.StressParams`` (families, horizon_days,
                 default_fund_usd, thresholds, reverse stress and sensitivity settings)
    [backtest]   (kind backtest; no [book] or [[models]]) model, params_file, params (inline
                 changes), portfolios ("standard" or a book folder held constant), start, end,
                 horizon_days, block_days, report (``gpurisk.backtest``)
    [calibration] (kind calibration) the [backtest] keys (house only), [calibration.grid]
                 field = [values] (every combination), sets = [{field = value}, ...], fits,
                 fit_start, proposal (``gpurisk.calibration``)
    [alerts]     im_jump_pct, max_calls, max_rejects_ratio, on_failure,
                 webhook_url, webhook_timeout_s
    [schedule]   times = ["HH:MM", ...] (UTC) or interval_minutes
    [market]     history (a market history folder; below --market-data, above
                 GPURISK_MARKET_DATA), max_history_age_days, allow_stale_history
                 (``gpurisk.market.MarketSettings``; None = not set in the job)
    [reconcile]  reconcile the book before the margin batch (``gpurisk.reconcile.pre_run_check``):
                 external (source files or folders), format, venue, account, mapping, market,
                 on_break ("stop" | "alert"), max_breaks, compare_prices,
                 [reconcile.tolerances] COLUMN = {abs, rel}, [reconcile.venues.V] COLUMN = {abs, rel}
    [outputs]    fixml (write fixml/<account>.xml: MgnReqmtRpt + CollRpt per margin row), report
                 (write report.html of a succeeded margin run: gpurisk.reports)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from .errors import ConfigError
from .margin import MODELS
from .margin.components import COMPONENTS, USER
from .market import MarketSettings
from .scenarios.registry import GENERATORS
from .fileio import check_name, read_toml
from .redact import redact, redact_url

JOB_KINDS = ("margin", "stress", "backtest", "calibration")
#: job kinds that margin no book of their own: they backtest portfolios over a date range (``gpurisk.backtest``)
RESEARCH_KINDS = ("backtest", "calibration")
BACKENDS = ("auto", "reference", "cpu", "gpu")
_TIME_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_REQUIRED = object()


@dataclass(frozen=True)
class SampleBook:
    """A deterministic sample book of ``accounts`` accounts from ``seed``."""

    accounts: int
    seed: int = 0
    as_of: str | None = None


@dataclass(frozen=True)
class BookSource:
    """Where the book comes from: exactly one of ``path``, ``snapshots``, ``sample``."""

    path: Path | None = None
    snapshots: Path | None = None
    sample: SampleBook | None = None

    @property
    def kind(self) -> str:
        return "path" if self.path else "snapshots" if self.snapshots else "sample"


@dataclass(frozen=True)
class ScenarioSpec:
    """One scenario set: a file, or a generator (``gpurisk.scenarios.registry``) with its options.

    component: which of the house model's scenario components the set is (``historical``,
    ``montecarlo``, ``user`` or ``stress``; default ``user``, measured by ES). Sets of one
    component are concatenated.
    """

    file: Path | None = None
    generator: str | None = None
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    component: str = "user"


@dataclass(frozen=True)
class ModelJob:
    """One margin model to run on the book."""

    name: str
    label: str
    params_file: Path | None = None
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    scenarios: tuple[ScenarioSpec, ...] = ()


@dataclass(frozen=True)
class AlertConfig:
    """Alert thresholds; ``None`` switches a check off.

    im_jump_pct: |total IM / previous run's − 1| in percent, per model.
    max_calls: number of margin calls (any status but ``ok``) above which to alert.
    max_rejects_ratio: rejected input rows / input rows.
    """

    im_jump_pct: float | None = 25.0
    max_calls: int | None = None
    max_rejects_ratio: float | None = 0.01
    on_failure: bool = True
    webhook_url: str | None = None
    webhook_timeout_s: float = 5.0


@dataclass(frozen=True)
class ScheduleConfig:
    """Intraday schedule: UTC times of day ``HH:MM``, or an interval in minutes."""

    times: tuple[str, ...] = ()
    interval_minutes: float | None = None

    @property
    def configured(self) -> bool:
        return bool(self.times) or self.interval_minutes is not None


@dataclass(frozen=True)
class StressJob:
    """The ``[stress]`` table of a stress job.

    params: ``gpurisk.stress.StressParams``; house_params_file: the house model's parameters (IM, haircuts);
    scenario_files: scenario files run after the families; report: write ``report.html``; anonymise: groups
    shown as ``group #rank`` in the report.
    """

    params: Any
    house_params_file: Path | None = None
    scenario_files: tuple[Path, ...] = ()
    report: bool = True
    anonymise: bool = False


@dataclass(frozen=True)
class BacktestJob:
    """The ``[backtest]`` table of a backtest job (and the common part of ``[calibration]``).

    model: a margin model; params_file: its parameter file (None: the code defaults); params: inline changes of
    its Params; portfolios: ``standard`` or a book folder held constant; start, end: ISO dates; horizon_days:
    the P&L horizon (None: the model's MPOR); block_days: days per Dask task; report: write ``report.html``.
    """

    model: str = "house"
    params_file: Path | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    portfolios: str = "standard"
    start: str = "2020-01-01"
    end: str = "2024-12-31"
    horizon_days: int | None = None
    block_days: int = 30
    report: bool = True


@dataclass(frozen=True)
class CalibrationJob:
    """The ``[calibration]`` table: the backtest settings (``BacktestJob``, house only), ``grid`` {field: values}
    (every combination), ``sets`` (explicit changes), ``fits`` (the JAX fits: Monte Carlo Student-t, GARCH-t, the
    adaptive filter's out-of-sample comparison) over ``fit_start``..end, and ``proposal`` (the proposed
    parameter file's name in the run folder)."""

    backtest: BacktestJob
    grid: Mapping[str, tuple] = field(default_factory=dict)
    sets: tuple = ()
    fits: bool = True
    fit_start: str = "2021-01-01"
    proposal: str = "house.proposed.toml"


@dataclass(frozen=True)
class ReconcileJob:
    """The ``[reconcile]`` table: the external side (sources read as by ``gpurisk ingest``), what to do on
    breaks above ``settings.max_breaks`` (``stop`` the run, or only ``alert``) and the tolerances."""

    external: tuple[Path, ...]
    settings: Any
    format: str | None = None
    venue: str | None = None
    account: str | None = None
    mapping: str | None = None
    market: tuple[Path, ...] = ()
    on_break: str = "stop"


@dataclass(frozen=True)
class OutputsConfig:
    """The ``[outputs]`` table: extra outputs of a margin run (``fixml``: FIXML reports per account in
    ``<label>/fixml/``; ``report``: ``report.html`` of the run, written when it succeeded; needs the ``reports`` extra)."""

    fixml: bool = False
    report: bool = False


@dataclass(frozen=True)
class JobConfig:
    """A parsed job file."""

    path: Path  # the job file
    name: str
    kind: str
    description: str
    book: BookSource | None
    models: tuple[ModelJob, ...]
    backend: str = "auto"
    chunk_size: int | str = "auto"
    output: Path = Path("runs")
    workers: int | None = None
    retries: int = 2
    keep_checkpoints: bool = False
    memory_budget_mb: float | None = None
    lost_workers_timeout_s: float = 120.0
    alerts: AlertConfig = field(default_factory=AlertConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    stress: StressJob | None = None
    backtest: BacktestJob | None = None
    calibration: CalibrationJob | None = None
    market: MarketSettings = field(default_factory=MarketSettings)
    reconcile: ReconcileJob | None = None
    outputs: OutputsConfig = field(default_factory=OutputsConfig)

    @property
    def folder(self) -> Path:
        return self.path.parent


# --------------------------------------------------------------------------- parsing


class _Table:
    """A TOML table being consumed; remembers its key path for error messages."""

    def __init__(self, file: str, where: str, data: Any):
        self.file, self.where = file, where
        if not isinstance(data, dict):
            self.fail(f"expected a table, got {_tname(data)}")
        self.data = data
        self.used: set[str] = set()

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, msg: str, key: str | None = None):
        where = self.path(key) if key is not None else (self.where or "top level")
        raise ConfigError(f"{self.file}: {where}: {msg}")

    def get(self, key: str, kind: str, default=_REQUIRED):
        """The value of ``key`` checked against ``kind`` (str, int, float, bool, table, list)."""
        self.used.add(key)
        if key not in self.data:
            if default is _REQUIRED:
                self.fail("missing required key", key)
            return default
        v = self.data[key]
        ok = {
            "str": isinstance(v, str),
            "int": isinstance(v, int) and not isinstance(v, bool),
            "float": isinstance(v, (int, float)) and not isinstance(v, bool),
            "bool": isinstance(v, bool),
            "table": isinstance(v, dict),
            "list": isinstance(v, list),
        }[kind]
        if not ok:
            self.fail(f"expected {_KIND_WORDS[kind]}, got {_tname(v)} {v!r}", key)
        return float(v) if kind == "float" else v

    def sub(self, key: str) -> "_Table | None":
        v = self.get(key, "table", None)
        return None if v is None else _Table(self.file, self.path(key), v)

    def done(self):
        extra = sorted(set(self.data) - self.used)
        if extra:
            self.fail(f"unknown key (allowed: {', '.join(sorted(self.used))})", extra[0])


_KIND_WORDS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "table": "a table",
    "list": "an array",
}


def _tname(v) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", dict: "table", list: "array"}.get(
        type(v), type(v).__name__
    )


def _choice(t: _Table, key: str, choices, default=_REQUIRED):
    v = t.get(key, "str", default)
    if v is not None and v not in choices:
        t.fail(f"must be one of {', '.join(choices)}; got {v!r}", key)
    return v


def _path(t: _Table, key: str, base: Path, default=None) -> Path | None:
    v = t.get(key, "str", default)
    if v is None:
        return None
    if not v.strip():
        t.fail("must not be empty", key)
    p = Path(v).expanduser()
    return p if p.is_absolute() else (base / p)


def _plain(v: Any, t: _Table, key: str):
    """A TOML value as an immutable, JSON-able value (tables become read-only mappings)."""
    if isinstance(v, dict):
        return MappingProxyType({k: _plain(x, t, f"{key}.{k}") for k, x in v.items()})
    if isinstance(v, list):
        return tuple(_plain(x, t, key) for x in v)
    if hasattr(v, "isoformat"):  # TOML dates and times
        return v.isoformat()
    return v


# --------------------------------------------------------------------------- sections


def _book(t: _Table, base: Path) -> BookSource:
    path = _path(t, "path", base)
    snaps = _path(t, "snapshots", base)
    s = t.sub("sample")
    sample = None
    if s is not None:
        n = s.get("accounts", "int")
        if n < 1:
            s.fail(f"must be at least 1; got {n}", "accounts")
        seed = s.get("seed", "int", 0)
        as_of = s.get("as_of", "str", None)
        s.done()
        sample = SampleBook(accounts=n, seed=seed, as_of=as_of)
    t.done()
    given = [k for k, v in (("path", path), ("snapshots", snaps), ("sample", sample)) if v is not None]
    if len(given) != 1:
        t.fail("give exactly one of path, snapshots or sample" + (f" (got {', '.join(given)})" if given else ""))
    return BookSource(path=path, snapshots=snaps, sample=sample)


def _scenario(t: _Table, base: Path, model: str) -> ScenarioSpec:
    file = _path(t, "file", base)
    gen = _choice(t, "generator", tuple(GENERATORS), None)
    comp = t.get("component", "str", USER)
    if comp not in COMPONENTS:
        t.fail(f"must be one of {', '.join(COMPONENTS)}; got {comp!r}", "component")
    if comp != USER and model != "house":
        t.fail(f"scenario components apply to the house model only (model {model!r} takes one set)", "component")
    opts = {k: _plain(v, t, k) for k, v in t.data.items() if k not in ("file", "generator", "component")}
    t.used.update(opts)
    if (file is None) == (gen is None):
        t.fail("give exactly one of file or generator")
    if file is not None and opts:
        t.fail("unknown key for a scenario file (only 'file' and 'component' are allowed)", sorted(opts)[0])
    if gen is not None:
        from .errors import ScenarioError
        from .scenarios.registry import REQUIRED, resolve

        check = dict(opts)
        for o in GENERATORS[gen].options:  # a required option the run can fill (as_of: the book's) may be absent
            if o.default is REQUIRED and o.name not in check:
                check[o.name] = "2000-01-01T00:00:00Z" if o.type == "time" else None
        try:
            resolve(gen, {k: (list(v) if isinstance(v, tuple) else v) for k, v in check.items()}, "")
        except ScenarioError as exc:
            t.fail(str(exc))
    return ScenarioSpec(file=file, generator=gen, options=MappingProxyType(opts), component=comp)


def _model(t: _Table, base: Path) -> ModelJob:
    name = _choice(t, "name", tuple(MODELS))
    label = check_name(t.get("label", "str", name), f"{t.file}: {t.path('label')}")
    params_file = _path(t, "params_file", base)
    params = t.get("params", "table", {})
    raw = t.data.get("scenarios")
    t.used.add("scenarios")
    specs: list[ScenarioSpec] = []
    if raw is not None and not MODELS[name].takes_scenarios:
        takes = ", ".join(k for k, v in MODELS.items() if v.takes_scenarios)
        t.fail(f"model {name!r} uses its venue's own scenario grid and takes no scenario sets "
               f"(scenario sets apply to: {takes})", "scenarios")
    if raw is None:
        pass
    elif isinstance(raw, dict):
        specs.append(_scenario(_Table(t.file, t.path("scenarios"), raw), base, name))
    elif isinstance(raw, list):
        for i, item in enumerate(raw):
            specs.append(_scenario(_Table(t.file, f"{t.path('scenarios')}[{i}]", item), base, name))
    else:
        t.fail(f"expected a table or an array of tables, got {_tname(raw)}", "scenarios")
    t.done()
    return ModelJob(
        name=name,
        label=label,
        params_file=params_file,
        params=_plain(params, t, "params"),
        scenarios=tuple(specs),
    )


def _alerts(t: _Table | None) -> AlertConfig:
    if t is None:
        return AlertConfig()
    d = AlertConfig()
    out = AlertConfig(
        im_jump_pct=t.get("im_jump_pct", "float", d.im_jump_pct),
        max_calls=t.get("max_calls", "int", d.max_calls),
        max_rejects_ratio=t.get("max_rejects_ratio", "float", d.max_rejects_ratio),
        on_failure=t.get("on_failure", "bool", d.on_failure),
        webhook_url=t.get("webhook_url", "str", d.webhook_url) or None,
        webhook_timeout_s=t.get("webhook_timeout_s", "float", d.webhook_timeout_s),
    )
    for key in ("im_jump_pct", "max_rejects_ratio", "webhook_timeout_s"):
        v = getattr(out, key)
        if v is not None and v < 0:
            t.fail(f"must be ≥ 0; got {v}", key)
    if out.webhook_url and not out.webhook_url.startswith(("http://", "https://")):
        t.fail(f"must be an http:// or https:// URL; got {redact_url(out.webhook_url)!r}", "webhook_url")
    t.done()
    return out


def _schedule(t: _Table | None) -> ScheduleConfig:
    if t is None:
        return ScheduleConfig()
    times = t.get("times", "list", [])
    for i, x in enumerate(times):
        if not isinstance(x, str) or not _TIME_RE.match(x):
            t.fail(f"expected a UTC time of day \"HH:MM\", got {x!r}", f"times[{i}]")
    interval = t.get("interval_minutes", "float", None)
    if interval is not None and interval <= 0:
        t.fail(f"must be > 0; got {interval}", "interval_minutes")
    if times and interval is not None:
        t.fail("give times or interval_minutes, not both")
    t.done()
    return ScheduleConfig(times=tuple(sorted(set(times))), interval_minutes=interval)


def _stress(t: _Table, base: Path) -> StressJob:
    from .margin.params import override
    from .stress import StressParams

    house = _path(t, "house_params_file", base)
    files = t.get("scenario_files", "list", [])
    paths = []
    for i, f in enumerate(files):
        if not isinstance(f, str) or not f.strip():
            t.fail(f"expected a file name, got {f!r}", f"scenario_files[{i}]")
        p = Path(f).expanduser()
        paths.append(p if p.is_absolute() else base / p)
    report = t.get("report", "bool", True)
    anonymise = t.get("anonymise", "bool", False)
    rest = {k: _plain(v, t, k) for k, v in t.data.items() if k not in t.used}
    t.used.update(rest)
    try:
        params = override(StressParams(), {k: list(v) if isinstance(v, tuple) else v for k, v in rest.items()},
                          f"{t.file}: stress")
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("unknown parameter", "unknown key")) from None
    t.done()
    return StressJob(params=params, house_params_file=house, scenario_files=tuple(paths), report=report,
                     anonymise=anonymise)


def _iso_date(t: _Table, key: str, default: str) -> str:
    import datetime as _dt

    v = t.get(key, "str", None) if not hasattr(t.data.get(key), "isoformat") else t.data.get(key)
    t.used.add(key)
    if v is None:
        return default
    text = v.isoformat() if hasattr(v, "isoformat") else str(v)
    try:
        return _dt.date.fromisoformat(text[:10]).isoformat()
    except ValueError:
        t.fail(f"expected a date YYYY-MM-DD, got {text!r}", key)


def _backtest_settings(t: _Table, base: Path, model_default: str = "house") -> BacktestJob:
    """The keys a backtest and a calibration share (``BacktestJob``); leaves the table open for the caller."""
    model = _choice(t, "model", tuple(MODELS), model_default)
    params_file = _path(t, "params_file", base)
    params = t.get("params", "table", {})
    portfolios = t.get("portfolios", "str", "standard")
    if portfolios != "standard":
        portfolios = str(_path(t, "portfolios", base))
    start = _iso_date(t, "start", "2020-01-01")
    end = _iso_date(t, "end", "2024-12-31")
    if end < start:
        t.fail(f"the end ({end}) is before the start ({start})", "end")
    horizon = t.get("horizon_days", "int", None)
    if horizon is not None and horizon < 1:
        t.fail(f"must be a whole number of days ≥ 1; got {horizon}", "horizon_days")
    block = t.get("block_days", "int", 30)
    if block < 1:
        t.fail(f"must be ≥ 1; got {block}", "block_days")
    report = t.get("report", "bool", True)
    return BacktestJob(model=model, params_file=params_file, params=MappingProxyType(dict(params)),
                       portfolios=portfolios, start=start, end=end, horizon_days=horizon, block_days=block,
                       report=report)


def _backtest(t: _Table, base: Path) -> BacktestJob:
    out = _backtest_settings(t, base)
    t.done()
    return out


def _check_sets(t: _Table, changes: list, key: str) -> None:
    """Every change must be a house parameter with a value of its type (ConfigError naming the file and key)."""
    from .margin.house import Params
    from .margin.params import override

    for ch in changes:
        try:
            override(Params(), {k: list(v) if isinstance(v, tuple) else v for k, v in ch.items()},
                     f"{t.file}: {t.path(key)}")
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("unknown parameter", "unknown house parameter")) from None


def _calibration(t: _Table, base: Path) -> CalibrationJob:
    bt = _backtest_settings(t, base)
    if bt.model != "house":
        t.fail("calibration sweeps the house model's parameters", "model")
    grid_t = t.sub("grid")
    grid = {}
    if grid_t is not None:
        for k in list(grid_t.data):
            v = grid_t.get(k, "list")
            if not v:
                grid_t.fail("must list at least one value", k)
            grid[k] = tuple(_plain(x, grid_t, k) for x in v)
        grid_t.done()
    _check_sets(t, [{k: x} for k, v in grid.items() for x in v], "grid")
    sets = t.get("sets", "list", [])
    for i, st in enumerate(sets):
        if not isinstance(st, dict):
            t.fail(f"expected a table of parameter changes, got {st!r}", f"sets[{i}]")
    _check_sets(t, sets, "sets")
    fits = t.get("fits", "bool", True)
    fit_start = _iso_date(t, "fit_start", "2021-01-01")
    proposal = check_name(t.get("proposal", "str", "house.proposed.toml"), f"{t.file}: {t.path('proposal')}")
    t.done()
    return CalibrationJob(backtest=bt, grid=MappingProxyType(grid), sets=tuple(MappingProxyType(dict(x)) for x in sets),
                          fits=fits, fit_start=fit_start, proposal=proposal)


def _market(t: _Table | None, base: Path) -> MarketSettings:
    """The ``[market]`` table: the history folder (relative to the job file) and the staleness policy."""
    if t is None:
        return MarketSettings()
    history = _path(t, "history", base)
    age = t.get("max_history_age_days", "int", None)
    if age is not None and age < 0:
        t.fail(f"must be ≥ 0; got {age}", "max_history_age_days")
    allow = t.get("allow_stale_history", "bool", None)
    t.done()
    return MarketSettings(history=history, max_history_age_days=age, allow_stale_history=allow)


def _paths(t: _Table, key: str, base: Path) -> tuple[Path, ...]:
    """A list of file names (relative to the job file) as paths."""
    out = []
    for i, f in enumerate(t.get(key, "list", [])):
        if not isinstance(f, str) or not f.strip():
            t.fail(f"expected a file or folder name, got {f!r}", f"{key}[{i}]")
        p = Path(f).expanduser()
        out.append(p if p.is_absolute() else base / p)
    return tuple(out)


def _tolerances(t: _Table | None) -> dict:
    """``{column: Tolerance}`` of a table of ``column = {abs = A, rel = R}``."""
    from .reconcile import COLUMNS, Tolerance

    out = {}
    if t is None:
        return out
    for col in list(t.data):
        if col not in COLUMNS:
            t.fail(f"unknown column (allowed: {', '.join(COLUMNS)})", col)
        sub = t.sub(col)
        try:
            out[col] = Tolerance(abs=sub.get("abs", "float", 0.0), rel=sub.get("rel", "float", 0.0))
        except ConfigError as exc:
            sub.fail(str(exc))
        sub.done()
    t.done()
    return out


def _reconcile(t: _Table | None, base: Path) -> ReconcileJob | None:
    """The ``[reconcile]`` table (None when absent)."""
    if t is None:
        return None
    from .adapters.ingest import FORMATS
    from .reconcile import DEFAULT_TOLERANCES, Settings

    external = _paths(t, "external", base)
    if not external:
        t.fail("give the external side's sources (external = [\"...\"])", "external")
    fmt = _choice(t, "format", FORMATS, None)
    venue = t.get("venue", "str", None)
    account = t.get("account", "str", None)
    mapping = t.get("mapping", "str", None)
    if mapping is not None and (mapping.endswith(".toml") or "/" in mapping):
        mapping = str(_path(t, "mapping", base))
    market = _paths(t, "market", base)
    on_break = _choice(t, "on_break", ("stop", "alert"), "stop")
    max_breaks = t.get("max_breaks", "int", 0)
    if max_breaks < 0:
        t.fail(f"must be ≥ 0; got {max_breaks}", "max_breaks")
    compare = t.get("compare_prices", "bool", True)
    tol = {**DEFAULT_TOLERANCES, **_tolerances(t.sub("tolerances"))}
    venues_t = t.sub("venues")
    venues = {}
    if venues_t is not None:
        for v in list(venues_t.data):
            venues[v] = _tolerances(venues_t.sub(v))
        venues_t.done()
    t.done()
    return ReconcileJob(external=external, settings=Settings(tolerances=tol, venues=venues, max_breaks=max_breaks,
                                                             compare_prices=compare),
                        format=fmt, venue=venue, account=account, mapping=mapping, market=market, on_break=on_break)


def _outputs(t: _Table | None) -> OutputsConfig:
    if t is None:
        return OutputsConfig()
    out = OutputsConfig(fixml=t.get("fixml", "bool", False), report=t.get("report", "bool", False))
    t.done()
    return out


def parse_job(data: dict, path: Path, file_label: str | None = None) -> JobConfig:
    """Build a ``JobConfig`` from parsed TOML ``data`` read from ``path``."""
    file = file_label or str(path)
    base = path.parent
    top = _Table(file, "", data)
    job = top.sub("job")
    if job is None:
        top.fail("missing required table [job]")
    name = job.get("name", "str", None)
    if name is None:  # the job file's name, which must then be a good name too
        try:
            name = check_name(path.stem, f"{file}: {job.path('name')}")
        except ConfigError as exc:
            raise ConfigError(f"{exc} (the name defaults to the job file's; set [job] name)") from None
    name = check_name(name, f"{file}: {job.path('name')}")
    kind = _choice(job, "kind", JOB_KINDS, "margin")
    description = job.get("description", "str", "")
    backend = _choice(job, "backend", BACKENDS, "auto")
    chunk = job.get("chunk_size", "str", "auto") if isinstance(job.data.get("chunk_size"), str) else job.get(
        "chunk_size", "int", "auto"
    )
    if isinstance(chunk, str) and chunk != "auto":
        job.fail(f"expected a positive integer or \"auto\", got {chunk!r}", "chunk_size")
    if isinstance(chunk, int) and chunk < 1:
        job.fail(f"expected a positive integer or \"auto\", got {chunk}", "chunk_size")
    output = _path(job, "output", base, "runs")
    workers = job.get("workers", "int", None)
    if workers is not None and workers < 1:
        job.fail(f"must be at least 1; got {workers}", "workers")
    retries = job.get("retries", "int", 2)
    if retries < 0:
        job.fail(f"must be ≥ 0; got {retries}", "retries")
    keep_checkpoints = job.get("keep_checkpoints", "bool", False)
    lost_workers_timeout_s = job.get("lost_workers_timeout_s", "float", 120.0)
    if not lost_workers_timeout_s >= 0:
        job.fail(f"must be ≥ 0 seconds (0: wait forever); got {lost_workers_timeout_s}", "lost_workers_timeout_s")
    memory_budget_mb = job.get("memory_budget_mb", "float", None)
    if memory_budget_mb is not None and not memory_budget_mb > 0:
        job.fail(f"must be a positive number of MiB; got {memory_budget_mb}", "memory_budget_mb")
    job.done()

    book_t = top.sub("book")
    book = _book(book_t, base) if book_t is not None else None
    raw_models = top.get("models", "list", [])
    models = tuple(_model(_Table(file, f"models[{i}]", m), base) for i, m in enumerate(raw_models))
    labels = [m.label for m in models]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        top.fail(f"model labels must be unique; {dup[0]!r} is used twice (set label = ...)", "models")
    alerts = _alerts(top.sub("alerts"))
    schedule = _schedule(top.sub("schedule"))
    market = _market(top.sub("market"), base)
    reconcile = _reconcile(top.sub("reconcile"), base)
    outputs = _outputs(top.sub("outputs"))
    stress_t = top.sub("stress")
    if stress_t is not None and kind != "stress":
        top.fail(f"[stress] applies to jobs of kind stress (this job is {kind})", "stress")
    stress = (_stress(stress_t, base) if stress_t is not None else _stress(_Table(file, "stress", {}), base)) \
        if kind == "stress" else None
    research = {}
    for k, parse in (("backtest", _backtest), ("calibration", _calibration)):
        sub = top.sub(k)
        if sub is not None and kind != k:
            top.fail(f"[{k}] applies to jobs of kind {k} (this job is {kind})", k)
        if kind == k:
            research[k] = parse(sub if sub is not None else _Table(file, k, {}), base)
    top.done()
    if kind not in RESEARCH_KINDS:
        if book is None:
            top.fail("missing required table [book]")
        if not models and kind != "stress":
            top.fail("at least one [[models]] entry is required")
    return JobConfig(
        path=path,
        name=name,
        kind=kind,
        description=description,
        book=book,
        models=models,
        backend=backend,
        chunk_size=chunk,
        output=output,
        workers=workers,
        retries=retries,
        keep_checkpoints=keep_checkpoints,
        memory_budget_mb=memory_budget_mb,
        lost_workers_timeout_s=lost_workers_timeout_s,
        alerts=alerts,
        schedule=schedule,
        stress=stress,
        backtest=research.get("backtest"),
        calibration=research.get("calibration"),
        market=market,
        reconcile=reconcile,
        outputs=outputs,
    )


def load_job(path) -> JobConfig:
    """Read and check the job file at ``path``; ConfigError (file, key path) on any fault."""
    p = Path(path)
    data = read_toml(path, "job file")
    return parse_job(data, p.resolve(), file_label=str(path))


def to_dict(obj) -> Any:
    """A config object as plain JSON-able data (paths as strings), as it may be stored or shown:
    every URL in a string is redacted (``gpurisk.redact``; a webhook URL carries its token)."""
    from dataclasses import fields, is_dataclass

    if is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, str) and "://" in obj:
        return redact(obj)
    return obj
