"""``gpurisk run`` of a job of kind ``backtest`` or ``calibration``: the run (``gpurisk.batch.research_job``) with a
progress display, then the summary ``gpurisk backtest`` / ``gpurisk calibrate`` print."""

from __future__ import annotations


def run_research(job, opts, quiet: bool = False) -> int:
    """Run a research job (``RunOptions`` ``opts`` override the job's folder, backend, workers, scheduler)."""
    from ..batch.research_job import run_research_job
    from . import progress
    from .backtest import format_summary as backtest_summary
    from .calibrate import format_summary as calibration_summary
    from .signals import check_stop

    with progress.showing(progress.Progress.mode_for(quiet)) as show:
        rep = run_research_job(job, opts, on_block=progress.then(show, check_stop))
    summary = backtest_summary if job.kind == "backtest" else calibration_summary
    print(f"{job.kind} job {job.name}: run {rep.run_id} {rep.status} in {rep.duration_s:.1f} s")
    print(summary(rep.result, rep.run_dir))
    return 0


__all__ = ["run_research"]
