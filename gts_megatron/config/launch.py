"""Options of `gts launch`: a Slurm job's resources and how its processes start.

Every value that reaches an ``#SBATCH`` line is checked here against what Slurm accepts; values
that reach the job's shell (paths, the command, environment values) are shell-quoted by the
renderer, so nothing from a config or the command line runs as shell code.
"""
from __future__ import annotations

import re
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from gts_megatron.config.run import _Section

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_NAME_LIST = re.compile(r"[A-Za-z0-9._+-]+(,[A-Za-z0-9._+-]+)*")
_TIME = re.compile(r"(\d+-\d{1,2}(:\d{1,2}){0,2}|\d+(:\d{1,2}){0,2}|UNLIMITED|INFINITE)", re.IGNORECASE)
_MEM = re.compile(r"\d+[KMGT]?")
_CONSTRAINT = re.compile(r"[A-Za-z0-9_.&|,*()\[\]!:-]+")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SBATCH_ARG = re.compile(r"--[a-z][a-z0-9-]*(=[^\s\"'\\]+)?")
_NAMES = "Slurm names: letters, digits and . _ + -, comma-separated"
# field -> (pattern, what is valid) for the values that go into #SBATCH lines as they are
_FORMATS = {
    "partition": (_NAME_LIST, _NAMES), "account": (_NAME_LIST, _NAMES), "qos": (_NAME_LIST, _NAMES),
    "time": (_TIME, "minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS or UNLIMITED"),
    "mem": (_MEM, "a number with an optional K, M, G or T suffix, e.g. 64G"),
    "constraint": (_CONSTRAINT, "Slurm features joined by & | , (no spaces)"),
    "socket_ifname": (_NAME_LIST, "interface names such as eth0 or ib0,ib1"),
}
# sbatch runs the script itself: these belong to `gts launch`, which writes them from its own flags
_OWNED = ("--array", "--nodes", "--ntasks", "--ntasks-per-node", "--gpus-per-node", "--output", "--error",
          "--open-mode", "--requeue", "--no-requeue", "--signal", "--job-name", "--wrap")


def _check(pattern: re.Pattern, value: Optional[str], field: str, valid: str) -> Optional[str]:
    if value is not None and not pattern.fullmatch(value):
        raise ValueError(f"{field} {value!r} is not valid: expected {valid}")
    return value


class SlurmJobConfig(_Section):
    """`gts launch slurm|ray|probe-array`: the Slurm job's resources and its launcher."""

    nodes: int = Field(1, ge=1, description="nodes to allocate")
    gpus_per_node: int = Field(0, ge=0, description="GPUs per node (0: a CPU job on gloo)")
    nproc_per_node: Optional[int] = Field(
        None, ge=1, description="training processes per node; null = gpus_per_node, or 1 without GPUs")
    launcher: Literal["torchrun", "srun"] = Field(
        "torchrun", description="torchrun: srun starts one torchrun per node (c10d rendezvous on the first); "
                                "srun: srun starts every process itself (one Slurm task each)")
    job_name: str = Field("gts", description="Slurm job name (also names the log folder)")
    partition: Optional[str] = Field(None, description="Slurm partition(s), comma-separated")
    account: Optional[str] = Field(None, description="Slurm account to charge")
    qos: Optional[str] = Field(None, description="Slurm quality of service")
    time: Optional[str] = Field(None, description="time limit: minutes, HH:MM:SS or D-HH[:MM[:SS]]")
    cpus_per_task: Optional[int] = Field(
        None, ge=1, description="CPUs per Slurm task; null = Slurm's default (torchrun: one per process). "
                                "ray: every CPU Ray may use on a node")
    mem: Optional[str] = Field(None, description="memory per node, e.g. 64G")
    constraint: Optional[str] = Field(None, description="node features, Slurm's --constraint syntax")
    exclusive: bool = Field(False, description="do not share the nodes with other jobs")
    log_dir: str = Field("slurm-logs", description="where job logs go: <log-dir>/<job-name>-<job-id>/ per job")
    requeue: bool = Field(True, description="on the time-limit warning, checkpoint and requeue the job "
                                            "(the rerun resumes from the last checkpoint)")
    signal_seconds: int = Field(
        180, ge=10, description="seconds before the time limit when the job is told to checkpoint (USR1)")
    max_requeues: int = Field(5, ge=0, description="requeues before the job gives up")
    env: list[str] = Field(default_factory=list, description="KEY=VALUE exported in the job (repeatable)")
    socket_ifname: Optional[str] = Field(
        None, description="network interface for NCCL and gloo (NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME)")
    sbatch_args: list[str] = Field(
        default_factory=list, description="more sbatch options, each --option=value (repeatable)")
    python: Optional[str] = Field(None, description="python of the job; null = the one running gts launch")
    ray_port: Optional[int] = Field(None, ge=1024, le=65535,
                                    description="ray: the head's GCS port; null = 6379 + job id % 1000")
    ray_object_store_mb: Optional[int] = Field(None, ge=64, description="ray: object store per node (MB)")
    array_parallel: Optional[int] = Field(
        None, ge=1, description="probe-array: array tasks running at once; null = no limit")

    @field_validator("job_name")
    @classmethod
    def _job_name(cls, v: str) -> str:
        if len(v) > 100:
            raise ValueError(f"job_name is {len(v)} characters long; at most 100")
        return _check(_NAME, v, "job_name", "letters, digits and . _ + - (starting with a letter or digit)")

    @field_validator(*_FORMATS)
    @classmethod
    def _slurm_value(cls, v: Optional[str], info) -> Optional[str]:
        pattern, valid = _FORMATS[info.field_name]
        return _check(pattern, v, info.field_name, valid)

    @field_validator("log_dir")
    @classmethod
    def _log_dir(cls, v: str) -> str:
        # it sits in a quoted #SBATCH --output line, which sbatch (not a shell) reads
        bad = [c for c in v if c in '"\\%' or not c.isprintable()]
        if not v or bad:
            raise ValueError(f"log_dir {v!r} is not usable: it may not be empty or contain {bad or 'nothing'} "
                             f"(double quotes, backslashes, % and control characters)")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: list[str]) -> list[str]:
        for item in v:
            key, sep, _ = item.partition("=")
            if not sep or not _ENV_KEY.fullmatch(key):
                raise ValueError(f"env {item!r} is not KEY=VALUE with KEY a shell variable name")
        return v

    @field_validator("sbatch_args")
    @classmethod
    def _sbatch_args(cls, v: list[str]) -> list[str]:
        for arg in v:
            if not _SBATCH_ARG.fullmatch(arg):
                raise ValueError(f"sbatch_args {arg!r} is not --option or --option=value (no spaces or quotes)")
            if arg.partition("=")[0] in _OWNED:
                raise ValueError(f"sbatch_args {arg!r}: gts launch sets {arg.partition('=')[0]} itself "
                                 f"(use its own flag)")
        return v

    @model_validator(mode="after")
    def _processes(self) -> "SlurmJobConfig":
        if self.gpus_per_node and self.nproc_per_node and self.nproc_per_node > self.gpus_per_node:
            raise ValueError(f"nproc_per_node {self.nproc_per_node} is more than gpus_per_node "
                             f"{self.gpus_per_node}: each process needs its own GPU")
        return self

    @property
    def processes_per_node(self) -> int:
        """Training processes on each node."""
        return self.nproc_per_node or self.gpus_per_node or 1
