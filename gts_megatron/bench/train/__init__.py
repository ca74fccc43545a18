"""`gts bench train`: the training-throughput harness.

Every arm (dense; GtS under megatron's alltoall dispatcher, the csrc group dispatcher and
group-aware placement; the authors' Hugging Face + DeepSpeed ZeRO approach; DeepSpeed-MoE's layer)
starts from the same weights and data, at the same batch and process count, and they take turns
step by step in the same processes, so a shared machine's drift hits all of them. Reported per
arm: step time (median, quartiles), tokens/s, MFU, peak tensor memory, and the time split
between attention, dense MLP, MoE dispatch and experts; then the ratios between arms.

:mod:`.workspace` prepares the models and data, :mod:`.arms` defines the arms, :mod:`.measure`
what is measured besides step time, :mod:`.worker` runs one process, :mod:`.report` prints.
"""
from __future__ import annotations

from pathlib import Path

from gts_megatron.artifacts import atomic_write_text, scratch_directory
from gts_megatron.config.bench import BenchTrainConfig
from gts_megatron.errors import WorkersFailed
from gts_megatron.bench.train.workspace import prepare, read_result
from gts_megatron.runtime.launch import launch_local


def bench_train(opts: BenchTrainConfig, log=print) -> dict:
    """Prepare the arms' shared weights and data, measure every arm in ``opts.nproc_per_node``
    processes, and return the result (also written to ``opts.out`` when set)."""
    import json

    from gts_megatron.bench.train.worker import run_worker

    work_dir = Path(opts.work_dir) if opts.work_dir else None
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
    with scratch_directory("bench-train", work_dir) as tmp:
        ws = prepare(opts, tmp, log)
        if opts.nproc_per_node > 1:
            code = launch_local(["bench", "train", "--workspace", str(tmp)], opts.nproc_per_node)
            if code:  # the workers' errors are printed; no figures are reported
                raise WorkersFailed(code)
        else:
            run_worker(tmp)
        result = read_result(ws)
    if opts.out:
        out = Path(opts.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    return result
