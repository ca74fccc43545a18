"""`gts run RECIPE --launcher slurm`: each stage a Slurm job that runs `gts run RECIPE --stage
NAME`, rendered and submitted by `gts launch`'s machinery, chained with ``--dependency=afterok``.
With ``slurm.probe_nodes``, the probe stage's job is a Ray cluster (`gts launch ray`'s template),
which passes its address on: `gts run ... --stage probe --address HEAD`; with ``slurm.probe_array``
a job array probes one language per task (`gts launch probe-array`'s template), and a one-task job
after it runs the stage, which then finds every language probed and records it done.
A failed job cancels the ones after it (``--kill-on-invalid-dep``); `gts run` again submits a
new chain from the first stage that is not done, which resumes it."""
from __future__ import annotations

from typing import Callable, Optional

from gts_megatron.config import SlurmJobConfig
from gts_megatron.errors import GtsError
from gts_megatron.launch.slurm import job_status, render, submit
from gts_megatron.recipe.stages import Stage

# Slurm's job states, as a stage's state
_WAITING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "RESIZING"}
_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}


def slurm_state(job: str, recorded: str, array: Optional[str] = None) -> tuple[str, str]:
    """(state, reason) of a stage whose record says ``recorded`` (queued or running) in job ``job``
    (after the probe array ``array``, if any)."""
    try:
        row = job_status(job)[0]
    except GtsError:
        return ("interrupted" if recorded == "running" else "cancelled"), f"job {job} is no longer known to Slurm"
    state, why = row["JobState"], row["Reason"]
    if state in _WAITING:
        if array and why == "Dependency":
            return "queued", f"its languages probe in array job {array}"
        return "queued", why if why not in ("None", "") else ""
    if state in _RUNNING:
        return "running", ""
    if recorded == "queued":  # it ended before the stage inside it began
        if why == "DependencyNeverSatisfied" and array:
            return "failed", f"a task of its probe array job {array} failed (gts launch status {array})"
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


def _probe_array(stage: Stage, options: dict, languages: list[str], parallel: Optional[int],
                 after: Optional[str]) -> str:
    """Submit the probe stage's command as a job array, one task per language, at most
    ``parallel`` at once; returns its id."""
    job = stage_job("probe-array", options, after)
    job = job.model_copy(update={"array_parallel": parallel})
    array = f"0-{len(languages) - 1}" + (f"%{parallel}" if parallel else "")
    # the template adds --languages <its one> --executor process to the stage's own command
    return submit(render("probe_array", job, list(stage.commands[0][1:]), array=array,
                         extra={"PROBE_LANGUAGES": languages}))


def submit_chain(recipe_ref: str, todo: list[tuple[Stage, str]], options: dict,
                 record: Callable[..., None], log: Callable[[str], None]) -> list[str]:
    """Submit a job per (stage, heading) in ``todo``, each after the one before; ``record(stage,
    job, array=None)`` notes each. With ``probe_array`` the probe stage is two jobs: the array of
    its languages, then one that checks them all and records the stage. Returns the job ids."""
    jobs: list[str] = []
    options = dict(options)
    probe_nodes = options.pop("probe_nodes", None)
    probe_array, languages = options.pop("probe_array", False), options.pop("probe_languages", None)
    parallel = options.pop("array_parallel", None)
    for stage, head in todo:
        name, array = stage.name, None
        if name == "probe" and probe_array:
            array = _probe_array(stage, options, languages, parallel, jobs[-1] if jobs else None)
            jobs.append(array)
        on_ray = name == "probe" and probe_nodes is not None
        job = stage_job(name, options, jobs[-1] if jobs else None, probe_nodes if on_ray else 1)
        # the Ray template starts the cluster and adds --address to the command it runs on the head
        script = render("ray" if on_ray else "train", job, ["run", recipe_ref, "--stage", name])
        jobs.append(submit(script))
        record(name, jobs[-1], array)
        log(f"{head} -> job {jobs[-1]}" + (f" (after {jobs[-2]})" if len(jobs) > 1 else "")
            + (f"; its {len(languages)} languages probe as array job {array}" if array else ""))
    return jobs
