"""Slurm batch scripts from the templates in launchers/slurm/, and sbatch/squeue/scancel calls.

A template is a bash script with two markers: ``@SBATCH@`` becomes the ``#SBATCH`` lines (values
checked by :class:`SlurmJobConfig`), ``@SETTINGS@`` becomes bash assignments whose every value is
``shlex.quote``-d, the gts command included as an array of words. The template's own code reads
only those variables, so a path, name or config value can never run as shell code.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from gts_megatron.artifacts import atomic_write_text
from gts_megatron.config.launch import SlurmJobConfig
from gts_megatron.errors import GtsError

TEMPLATES = ("train", "ray", "probe_array")
MARKERS = ("@SBATCH@", "@SETTINGS@")
_JOB_ID = re.compile(r"\d+(_\d+|_\[[0-9,%-]+\])?")


def template_dir() -> Path:
    """launchers/slurm/ of a source checkout, else the copy setup.py installs under share/."""
    for folder in (Path(__file__).resolve().parents[2] / "launchers" / "slurm",
                   Path(sys.prefix) / "share" / "gts_megatron" / "launchers" / "slurm"):
        if (folder / "train.sbatch").is_file():
            return folder
    raise GtsError("the sbatch templates (launchers/slurm/*.sbatch) are not installed; reinstall gts_megatron "
                   "or give --template")


def read_template(kind: str, path: Optional[str] = None) -> str:
    """The template text of ``kind`` (train, ray, probe_array), or the user's file ``path``."""
    file = Path(path) if path else template_dir() / f"{kind}.sbatch"
    try:
        text = file.read_text()
    except OSError as exc:
        raise GtsError(f"--template {file}: cannot read it ({exc.strerror or exc})") from None
    missing = [m for m in MARKERS if m not in text]
    if missing:
        raise GtsError(f"--template {file}: has no {' or '.join(missing)} marker (see launchers/slurm/README.md)")
    return text


def _sbatch_lines(cfg: SlurmJobConfig, log_root: Path, kind: str, array: Optional[str]) -> list[str]:
    tasks_per_node = cfg.processes_per_node if kind == "train" and cfg.launcher == "srun" else 1
    out_name = "%x-%A_%a.out" if array else "%x-%j.out"
    options = [f"--job-name={cfg.job_name}", f"--nodes={cfg.nodes}", f"--ntasks-per-node={tasks_per_node}",
               f'--output="{log_root / out_name}"', "--open-mode=append"]
    if cfg.gpus_per_node:
        options.append(f"--gpus-per-node={cfg.gpus_per_node}")
    if kind == "train" and cfg.launcher == "torchrun" and cfg.cpus_per_task is None:
        # the one task per node runs every process of the node: at least a core each
        options.append(f"--cpus-per-task={cfg.processes_per_node}")
    for flag in ("partition", "account", "qos", "time", "cpus_per_task", "mem", "constraint"):
        value = getattr(cfg, flag)
        if value is not None:
            options.append(f"--{flag.replace('_', '-')}={value}")
    if cfg.exclusive:
        options.append("--exclusive")
    if array:
        options.append(f"--array={array}")
    if kind == "train":
        # the batch shell alone gets USR1 ahead of the time limit: it asks the step to checkpoint
        options += ["--requeue" if cfg.requeue else "--no-requeue", f"--signal=B:USR1@{cfg.signal_seconds}"]
    options += cfg.sbatch_args
    return [f"#SBATCH {option}" for option in options]


def _assign(name: str, value) -> str:
    if isinstance(value, (list, tuple)):
        return f"{name}=({' '.join(shlex.quote(str(v)) for v in value)})"
    return f"{name}={shlex.quote(str(value))}"


@dataclass(frozen=True)
class Script:
    """A rendered batch script and where its logs go."""

    text: str
    log_root: Path
    job_name: str


def render(kind: str, cfg: SlurmJobConfig, command: list[str], *, array: Optional[str] = None,
           extra: Optional[dict] = None, template: Optional[str] = None) -> Script:
    """The batch script that runs ``gts <command>`` as ``kind`` (train, ray or probe_array)."""
    if kind not in TEMPLATES:
        raise ValueError(f"unknown template kind {kind!r}")
    log_root = Path(os.path.abspath(cfg.log_dir))
    settings = {
        "GTS_CMD": command, "PYTHON": cfg.python or sys.executable, "LOG_ROOT": log_root,
        "LAUNCHER": cfg.launcher, "NPROC_PER_NODE": cfg.processes_per_node, "GPUS_PER_NODE": cfg.gpus_per_node,
        "REQUEUE": int(cfg.requeue), "MAX_REQUEUES": cfg.max_requeues, "GTS_ENV": cfg.env,
        "SOCKET_IFNAME": cfg.socket_ifname or "", "RAY_PORT": cfg.ray_port or "",
        "RAY_OBJECT_STORE_BYTES": (cfg.ray_object_store_mb or 0) * 2**20 or "",
        # the job starts where gts launch ran, so relative paths in the command mean the same
        "SUBMIT_DIR": Path.cwd(),
        **(extra or {}),
    }
    text = read_template(kind, template)
    text = text.replace("@SBATCH@", "\n".join(_sbatch_lines(cfg, log_root, kind, array)))
    text = text.replace("@SETTINGS@", "\n".join(_assign(k, v) for k, v in settings.items()))
    return Script(text=text, log_root=log_root, job_name=cfg.job_name)


def _slurm_command(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise GtsError(f"{name} is not on PATH: run this on a Slurm login node (or install slurm-client)")
    return path


def submit(script: Script) -> str:
    """Write the script under ``<log_root>/scripts/`` and submit it; returns the job id."""
    sbatch = _slurm_command("sbatch")
    script.log_root.mkdir(parents=True, exist_ok=True)  # Slurm opens the output file before the script runs
    path = script.log_root / "scripts" / f"{script.job_name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.sbatch"
    path.parent.mkdir(exist_ok=True)
    atomic_write_text(path, script.text)
    result = subprocess.run([sbatch, "--parsable", str(path)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        reason = " ".join(result.stderr.split()) or f"exit code {result.returncode}"
        raise GtsError(f"sbatch refused {path}: {reason}")
    return result.stdout.strip().split(";")[0]


def check_job_id(job_id: str) -> str:
    """A Slurm job id (12345, or 12345_7 for one array task), or a one-line error."""
    if not _JOB_ID.fullmatch(job_id):
        raise GtsError(f"job id {job_id!r} is not a Slurm job id (e.g. 12345, or 12345_7 for an array task)")
    return job_id


STATUS_FIELDS = ("JobId", "ArrayJobId", "ArrayTaskId", "JobName", "JobState", "Reason", "RunTime", "TimeLimit", "NodeList",
                 "Restarts", "ExitCode", "StdOut")


def job_status(job_id: str) -> list[dict[str, str]]:
    """``scontrol show job`` of a job (one dict per array task) with the fields in STATUS_FIELDS."""
    job_id = check_job_id(job_id)  # a bad id is the user's error, whether or not Slurm is installed
    result = subprocess.run([_slurm_command("scontrol"), "-o", "show", "job", job_id],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        reason = " ".join(result.stderr.split())
        raise GtsError(f"job {job_id}: {reason or 'unknown to Slurm'} (finished jobs are forgotten after "
                       f"the cluster's MinJobAge)")
    rows = []
    for line in result.stdout.splitlines():
        # StdOut may hold spaces: split on the known "Key=" boundaries, not on whitespace
        pairs = dict(re.findall(r"(?:^|\s)([A-Za-z:/]+)=(.*?)(?=\s[A-Za-z:/]+=|$)", line))
        rows.append({k: pairs.get(k, "") for k in STATUS_FIELDS})
    return sorted(rows, key=lambda row: int(row["ArrayTaskId"]) if row["ArrayTaskId"].isdigit() else -1)


def cancel(job_id: str) -> None:
    """scancel a job (every array task, unless the id names one)."""
    job_id = check_job_id(job_id)
    result = subprocess.run([_slurm_command("scancel"), job_id], capture_output=True, text=True,
                            timeout=60)
    if result.returncode != 0:
        raise GtsError(f"scancel {job_id}: {' '.join(result.stderr.split()) or 'failed'}")
