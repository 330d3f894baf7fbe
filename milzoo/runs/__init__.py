"""Runs: a recipe into a run directory (``run``), resumed, folds in worker processes, and summaries.

Modules: ``runner`` (``run``, step by step), ``rundir`` (the run directory: checks, preparation, ``run.json``,
``metrics.jsonl``, ``log.txt``), ``_fold`` (training one fold into its folder), ``jobs`` (folds in worker
processes), ``summary`` (``summary.json``) and ``environment`` (what a run records about its machine).
"""

from milzoo._lazy import attach

_EXPORTS = {
    # runner
    "run": "runner",
    # rundir
    "RESUME_FREE_KEYS": "rundir", "holds_results": "rundir", "remove_orphaned_temp_files": "rundir",
    "check_run_dir": "rundir", "prepare_run_dir": "rundir", "MetricsWriter": "rundir", "RunRecord": "rundir",
    "fold_dir": "rundir", "fold_is_complete": "rundir", "trim_metrics": "rundir", "log_to_file": "rundir",
    "RunLock": "rundir", "Terminated": "rundir", "default_run_dir": "rundir", "folder_name": "rundir",
    "printable": "rundir",
    # _fold
    "train_fold": "_fold",
    # summary
    "summarize": "summary", "read_fold_result": "summary",
    # jobs
    "job_threads": "jobs", "check_jobs": "jobs", "train_folds_parallel": "jobs",
    # environment
    "environment": "environment", "git_sha": "environment",
}

__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
del attach
