"""Batch orchestration on Dask: job runs in chunks, checkpoints, manifests, schedule, monitoring.

``run_job(job, RunOptions(...)) -> RunReport`` runs one job file (``gpurisk.config.load_job``)
on an embedded ``LocalCluster`` or a running scheduler; ``Scheduler`` repeats it intraday.
"""

from .runner import JobError, RunOptions, RunReport, format_summary, run_job

__all__ = ["run_job", "RunOptions", "RunReport", "JobError", "format_summary"]
