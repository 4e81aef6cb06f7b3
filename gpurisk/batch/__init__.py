"""Batch orchestration on Dask: job runs in chunks, checkpoints, manifests, schedule, monitoring.

``run_job(job, RunOptions(...)) -> RunReport`` runs one job file (``gpurisk.config.load_job``)
on an embedded cluster or a running scheduler; ``format_summary(report)`` is its end-of-run text;
``Scheduler`` repeats it intraday.

The names are imported lazily: a Dask worker unpickling ``gpurisk.batch.tasks`` imports the
task functions and the backends only, not the runner and the models.
"""

_RUNNER = ("run_job", "RunOptions", "RunReport", "JobError", "ResumeError")


def __getattr__(name):
    if name in _RUNNER:
        from . import runner

        return getattr(runner, name)
    if name == "format_summary":
        from .present import format_summary

        return format_summary
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["run_job", "RunOptions", "RunReport", "JobError", "ResumeError", "format_summary"]
