"""The training process: ``accelerate launch ... -m vlmrl_pipeline.training_process --job <job.json>``.

The ``lora_adapter`` asset launches it through Dagster Pipes (``PipesSubprocessClient``), once per materialization,
on one process (CPU, or one GPU) or one process per GPU. Rank 0 opens the Pipes connection: its log lines and the
final materialization metadata stream back into the Dagster run. The other ranks log to stderr, which the launching
step forwards to its own. Every rank that fails writes ``errors/rank-<N>.json`` beside the job file, so the asset
can say which process failed and why even when that was not rank 0.

Launched by hand (no Dagster), it trains the same way and logs to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import traceback
from pathlib import Path

from vlmrl_pipeline.core.training.job import TrainingJob, process_rank, run_training_job

ERRORS_DIR = "errors"


def error_dir(job_file: str | Path) -> Path:
    return Path(job_file).parent / ERRORS_DIR


def _exit_with_launcher() -> None:
    """Linux: die with the launcher. A cancelled Dagster step sends SIGINT to ``accelerate launch`` only; without
    this its single training child would keep the GPU busy after the launcher is gone."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except OSError:  # pragma: no cover - no glibc
        pass


def _stderr_logger(rank: int):
    def log(message: str) -> None:
        print(f"[training rank {rank}] {message}", file=sys.stderr, flush=True)

    return log


def _record_error(job_file: str | Path, rank: int, exc: BaseException) -> None:
    folder = error_dir(job_file)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank-{rank}.json").write_text(json.dumps({
        "rank": rank, "type": type(exc).__name__, "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc))[-4000:],
    }, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", required=True, help="the TrainingJob JSON the lora_adapter asset wrote")
    args = parser.parse_args(argv)
    job = TrainingJob.read(args.job)
    rank, _, _ = process_rank()
    _exit_with_launcher()
    hold = contextlib.nullcontext()
    if rank == 0 and job.training_lock:
        from vlmrl_pipeline.core.atomic import exclusive

        hold = exclusive(job.training_lock)  # released by the kernel if this process dies
    try:
        with hold:
            _train(job, rank)
    except BaseException as exc:
        _record_error(args.job, rank, exc)
        raise
    return 0


def _train(job: TrainingJob, rank: int) -> None:
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    if rank == 0 and PipesEnvVarParamsLoader().is_dagster_pipes_process():
        with open_dagster_pipes() as pipes:
            summary = run_training_job(job, log=pipes.log.info, warn=pipes.log.warning)
            pipes.report_asset_materialization(metadata=summary)
    else:
        run_training_job(job, log=_stderr_logger(rank))


if __name__ == "__main__":
    sys.exit(main())
