"""Local multi-process launch through torch elastic (what torchrun runs), with the workers'
one-line errors collected and printed once instead of torchrun's failure report."""
from __future__ import annotations

import logging
import os
import sys
import uuid
from pathlib import Path

from gts_megatron.artifacts import scratch_directory

ERROR_DIR_ENV = "GTS_ERROR_DIR"


def in_launched_worker() -> bool:
    """True inside a process started by torchrun, Slurm (srun) or :func:`launch_local`."""
    return "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1


def report_worker_error(message: str) -> bool:
    """Hand a one-line error to the launching process; False when nobody collects it."""
    folder = os.environ.get(ERROR_DIR_ENV)
    if not folder:
        return False
    rank = os.environ.get("RANK", "0")
    Path(folder, f"rank{rank}.txt").write_text(message)
    return True


def launch_local(cli_args: list[str], nproc: int, module: str = "gts_megatron.cli") -> int:
    """Run ``gts <cli_args>`` (or ``python -m <module> <cli_args>``) in ``nproc`` processes on this
    machine; returns the exit code."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from gts_megatron.runtime.distributed import free_port

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    # the workers' one-line errors, and torch elastic's own log folder, which it would otherwise
    # make in the temporary directory and never remove (one per launch)
    with scratch_directory("launch") as errors:
        config = LaunchConfig(
            min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex[:8],
            rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{free_port()}", max_restarts=0,
            monitor_interval=0.2, start_method="spawn", logs_specs=DefaultLogsSpecs(log_dir=str(errors / "elastic")))
        os.environ[ERROR_DIR_ENV] = str(errors)
        try:
            elastic_launch(config, sys.executable)("-m", module, *cli_args)
            return 0
        except ChildFailedError as failure:
            messages = sorted({p.read_text().strip() for p in errors.glob("rank*.txt")})
            for message in messages:
                print(f"error: {message}", file=sys.stderr)
            codes = [f.exitcode for f in failure.failures.values()]
            if not messages:
                print(f"error: {len(codes)} worker(s) failed (exit codes {codes}); see their output above",
                      file=sys.stderr)
            return next((c for c in codes if c > 0), 1)
        finally:
            os.environ.pop(ERROR_DIR_ENV, None)
