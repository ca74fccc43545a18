"""Runtime: where a process sits (torchrun, Slurm, single), thread sharing, version guard, dtypes."""
import pytest

from gts_megatron.errors import GtsError
from gts_megatron.runtime import distributed, mcore_cpu
from tests.conftest import TINY, run_gts, train_losses, valid_loss

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
               "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE",
               "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_JOB_ID")


@pytest.fixture
def clean_env(monkeypatch):
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_torchrun_variables(clean_env):
    for name, value in dict(RANK="3", WORLD_SIZE="4", LOCAL_RANK="1", LOCAL_WORLD_SIZE="2",
                            MASTER_ADDR="10.0.0.1", MASTER_PORT="1234").items():
        clean_env.setenv(name, value)
    env = distributed.detect_process_env()
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (3, 4, 1, 2)
    assert (env.master_addr, env.master_port, env.source) == ("10.0.0.1", 1234, "torchrun")


def test_slurm_variables(clean_env):
    for name, value in dict(SLURM_PROCID="1", SLURM_NTASKS="2", SLURM_LOCALID="1",
                            SLURM_NTASKS_PER_NODE="2(x1)", SLURM_JOB_ID="77", MASTER_ADDR="node7").items():
        clean_env.setenv(name, value)
    env = distributed.detect_process_env()
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (1, 2, 1, 2)
    assert (env.master_addr, env.master_port, env.source) == ("node7", 20077, "slurm")


def test_single_process(clean_env):
    env = distributed.detect_process_env()
    assert (env.rank, env.world_size, env.source, env.master_addr) == (0, 1, "single", "127.0.0.1")


def test_bad_rank_variable(clean_env):
    clean_env.setenv("RANK", "zero")
    clean_env.setenv("WORLD_SIZE", "2")
    with pytest.raises(GtsError, match="RANK='zero' is not an integer"):
        distributed.detect_process_env()


def test_threads_shared_between_local_processes(clean_env):
    clean_env.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(__import__("os").sched_getaffinity(0))
    assert distributed.set_cpu_threads(cores) == 1
    assert distributed.set_cpu_threads(1) == cores
    clean_env.setenv("OMP_NUM_THREADS", "3")
    assert distributed.set_cpu_threads(2) == 3


def test_other_megatron_versions_are_refused(monkeypatch):
    from megatron.core import package_info

    monkeypatch.setattr(package_info, "__version__", "0.17.0")
    with pytest.raises(GtsError, match="megatron-core 0.17.0 is installed.*supports only 0.16.1"):
        mcore_cpu.check_mcore_version()


def test_bf16_trains(tmp_path):
    run_gts("pretrain", "--config", TINY, "--run-dir", str(tmp_path), "--set", "model.dtype=bf16",
            "--set", "train.steps=6")
    losses = train_losses(tmp_path)
    assert losses[6] < losses[1] and valid_loss(tmp_path) < 5.6


def test_a_ctrl_c_wrapped_by_torch_dcp_reaches_the_command_as_keyboard_interrupt():
    """DCP catches each rank's BaseException and raises a CheckpointException of (exception,
    traceback) pairs; Ctrl-C during a checkpoint load or save must still exit 130, not 2 or 1."""
    from torch.distributed.checkpoint.api import CheckpointException, _wrap_exception

    from gts_megatron.engine.checkpoint import _first_failure, _reraise_interrupt

    def wrapped(error: BaseException) -> CheckpointException:
        try:
            raise error
        except BaseException as exc:
            return CheckpointException("load", {0: _wrap_exception(exc)})

    with pytest.raises(KeyboardInterrupt):
        _reraise_interrupt(wrapped(KeyboardInterrupt()))
    other = wrapped(ValueError("torn shard"))
    _reraise_interrupt(other)  # any other failure is left to the caller's one-line error
    assert isinstance(_first_failure(other), ValueError) and str(_first_failure(other)) == "torn shard"
