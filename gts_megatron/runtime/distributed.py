"""Process-group set-up: from torchrun, from Slurm, or as a single process; then megatron's
tensor, expert and data parallel groups. gloo on CPU, NCCL on GPU."""
from __future__ import annotations

import os
import random
import socket
import subprocess
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from gts_megatron.config import ParallelConfig
from gts_megatron.errors import GtsError


@dataclass(frozen=True)
class ProcessEnv:
    """Where this process sits: global rank, world size and rank on its node."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int
    source: str  # "torchrun", "slurm" or "single"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _int_env(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise GtsError(f"environment variable {name}={value!r} is not an integer") from None


def _slurm_master_addr() -> str:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        return "127.0.0.1"
    try:  # list form: the node list is data, never pasted into a shell
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, timeout=30, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        out = [nodelist.split(",")[0]]
    return out[0] if out else "127.0.0.1"


def detect_process_env() -> ProcessEnv:
    """Read rank and world size from torchrun's or Slurm's variables; else a single process."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return ProcessEnv(
            rank=_int_env("RANK"), world_size=_int_env("WORLD_SIZE"),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])),
            master_addr=os.environ.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(os.environ.get("MASTER_PORT", "29500")), source="torchrun")
    if "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        job = int(os.environ.get("SLURM_JOB_ID", "0"))
        return ProcessEnv(
            rank=_int_env("SLURM_PROCID"), world_size=_int_env("SLURM_NTASKS"),
            local_rank=int(os.environ.get("SLURM_LOCALID", "0")),
            local_world_size=int(os.environ.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0]),
            master_addr=os.environ.get("MASTER_ADDR") or _slurm_master_addr(),
            master_port=int(os.environ.get("MASTER_PORT", str(20000 + job % 20000))), source="slurm")
    return ProcessEnv(0, 1, 0, 1, "127.0.0.1", free_port(), "single")


def set_cpu_threads(local_world_size: int) -> int:
    """Share the node's cores between its processes unless OMP_NUM_THREADS says otherwise.

    Oversubscribed OpenMP pools (every process grabbing every core) make gloo runs many times
    slower, so each of n local processes gets cores // n threads.
    """
    if "OMP_NUM_THREADS" in os.environ:
        threads = max(1, int(os.environ["OMP_NUM_THREADS"]))
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // max(1, local_world_size))
    torch.set_num_threads(threads)
    return threads


@dataclass(frozen=True)
class Runtime:
    """The initialised parallel runtime: process placement, device and parallel sizes."""

    env: ProcessEnv
    device: torch.device
    tensor: int
    data: int
    expert: int
    pipeline: int = 1

    @property
    def is_main(self) -> bool:
        """True on global rank 0, the process that logs and writes run-level files."""
        return self.env.rank == 0


def seed_everything(seed: int) -> None:
    """Seed python, numpy, torch and megatron's tensor-parallel RNG tracker."""
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)
    torch.manual_seed(seed)


def init_runtime(parallel: ParallelConfig, seed: int) -> Runtime:
    """Join (or create) the process group and build megatron's parallel groups."""
    env = detect_process_env()
    dp = parallel.data_parallel_size(env.world_size)
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        set_cpu_threads(env.local_world_size)
        device = torch.device("cpu")
    if not dist.is_initialized():
        # the address goes in the init method, not os.environ, so child processes never inherit it
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo", rank=env.rank, world_size=env.world_size,
            init_method=f"tcp://{env.master_addr}:{env.master_port}",
            timeout=timedelta(minutes=int(os.environ.get("GTS_DIST_TIMEOUT_MIN", "10"))))
    if not use_cuda:
        from gts_megatron.runtime import mcore_cpu

        mcore_cpu.apply()
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor,
        pipeline_model_parallel_size=parallel.pipeline,
        expert_model_parallel_size=parallel.expert,
        expert_tensor_parallel_size=parallel.expert_tensor_size)
    seed_everything(seed)
    return Runtime(env=env, device=device, tensor=parallel.tensor, data=dp, expert=parallel.expert,
                   pipeline=parallel.pipeline)


def shutdown_runtime() -> None:
    """Tear down megatron's groups and the process group (safe to call twice)."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
