"""`gts run RECIPE --launcher slurm`: each stage a Slurm job that runs `gts run RECIPE --stage
NAME`, rendered and submitted by `gts launch`'s machinery, chained with ``--dependency=afterok``.
With ``slurm.probe_nodes``, the probe stage's job is a Ray cluster (`gts launch ray`'s template),
which passes its address on: `gts run ... --stage probe --address HEAD`.
A failed job cancels the ones after it (``--kill-on-invalid-dep``); `gts run` again submits a
new chain from the first stage that is not done, which resumes it."""
from __future__ import annotations

from typing import Callable, Optional

from gts_megatron.config import SlurmJobConfig
from gts_megatron.errors import GtsError
from gts_megatron.launch.slurm import job_status, render, submit

# Slurm's job states, as a stage's state
_WAITING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "RESIZING"}
_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}


def slurm_state(job: str, recorded: str) -> tuple[str, str]:
    """(state, reason) of a stage whose record says ``recorded`` (queued or running) in job ``job``."""
    try:
        row = job_status(job)[0]
    except GtsError:
        return ("interrupted" if recorded == "running" else "cancelled"), f"job {job} is no longer known to Slurm"
    state, why = row["JobState"], row["Reason"]
    if state in _WAITING:
        return "queued", why if why not in ("None", "") else ""
    if state in _RUNNING:
        return "running", ""
    if recorded == "queued":  # it ended before the stage inside it began
        if why == "DependencyNeverSatisfied" or state == "CANCELLED":
            return "cancelled", "a stage before it did not finish" if why == "DependencyNeverSatisfied" else state
        return "failed", f"job {job} ended {state} before the stage started ({row['StdOut']})"
    return "interrupted", f"job {job} ended {state}"


def stage_job(name: str, options: dict, after: Optional[str], nodes: int = 1) -> SlurmJobConfig:
    """The job of one stage: one task (the stage's command starts its own processes), or, for the
    probe stage on ``nodes`` > 1, a Ray cluster."""
    extra = ["--kill-on-invalid-dep=yes"] + ([f"--dependency=afterok:{after}"] if after else [])
    return SlurmJobConfig.model_validate({**options, "nodes": nodes, "launcher": "srun", "nproc_per_node": 1,
                                          "job_name": f"gts-{name}",
                                          "sbatch_args": [*options.get("sbatch_args", []), *extra]})


def submit_chain(recipe_ref: str, todo: list[tuple[str, str]], options: dict,
                 record: Callable[[str, str], None], log: Callable[[str], None]) -> list[str]:
    """Submit a job per (stage, heading) in ``todo``, each after the one before; ``record(stage,
    job)`` notes each. Returns the job ids."""
    jobs: list[str] = []
    options = dict(options)
    probe_nodes = options.pop("probe_nodes", None)
    for name, head in todo:
        on_ray = name == "probe" and probe_nodes is not None
        job = stage_job(name, options, jobs[-1] if jobs else None, probe_nodes if on_ray else 1)
        # the Ray template starts the cluster and adds --address to the command it runs on the head
        script = render("ray" if on_ray else "train", job, ["run", recipe_ref, "--stage", name])
        jobs.append(submit(script))
        record(name, jobs[-1])
        log(f"{head} -> job {jobs[-1]}" + (f" (after {jobs[-2]})" if len(jobs) > 1 else ""))
    return jobs
