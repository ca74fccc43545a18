"""`gts launch`: submit gts commands to Slurm (training jobs, Ray probe fleets, probe job arrays),
and show or cancel them. The gts command after ``--`` is parsed and checked here first, so a
typo or an impossible layout fails now rather than after the job has waited in the queue."""
from __future__ import annotations

import argparse
from pathlib import Path

from gts_megatron.cli.flags import field_options
from gts_megatron.cli.registry import parse
from gts_megatron.config import ProbeConfig, SlurmJobConfig, load_config
from gts_megatron.errors import GtsError
from gts_megatron.launch.slurm import STATUS_FIELDS, cancel as cancel_job, job_status, render, submit

TRAINING = ("pretrain", "train")


def _command(args: argparse.Namespace) -> tuple[list[str], argparse.Namespace]:
    """The gts command after ``--`` and its parsed arguments (the CLI's own parser reports a bad one)."""
    command = list(args.gts_command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise GtsError("no gts command to run: put it after --, e.g. gts launch slurm --nodes 2 -- train "
                       "--stage group --config run.yaml")
    if command[0] == "launch":
        raise GtsError("the command after -- is itself `gts launch`; give the command the job should run")
    return command, parse(command)


def _submit_or_print(script, dry_run: bool, what: str) -> int:
    if dry_run:
        print(script.text, end="")
        return 0
    job_id = submit(script)
    print(f"submitted {what} as job {job_id}; logs in {script.log_root}/{script.job_name}-{job_id}*  "
          f"(gts launch status {job_id})")
    return 0


def slurm(args: argparse.Namespace, job) -> int:
    """Run a gts command as a Slurm job: torchrun (or srun) on every node, requeued near the time limit."""
    command, parsed = _command(args)
    world = job.nodes * job.processes_per_node
    if parsed.command in TRAINING:
        from gts_megatron.contracts.preflight import preflight

        # a bad layout, plan, data or init checkpoint fails here, not after the queue
        preflight(load_config(parsed.config, parsed.set), world)
    elif world > 1:
        raise GtsError(f"gts {parsed.command} runs as one process; {job.nodes} node(s) x "
                       f"{job.processes_per_node} process(es) is for {' and '.join(TRAINING)} (probe fleets: "
                       f"gts launch ray or gts launch probe-array)")
    script = render("train", job, command, template=args.template)
    return _submit_or_print(script, args.dry_run, f"gts {parsed.command} ({world} process(es))")


def _probe_command(args: argparse.Namespace, launcher: str):
    command, parsed = _command(args)
    if parsed.command != "probe":
        raise GtsError(f"gts launch {launcher} runs `gts probe`, not `gts {parsed.command}`")

    return command, field_options(ProbeConfig, parsed)


def ray(args: argparse.Namespace, job) -> int:
    """Start a Ray cluster on the job's nodes (head on the first) and run `gts probe` on it."""
    command, probe = _probe_command(args, "ray")
    if probe.address:
        raise GtsError("--address: leave it out; the job starts the Ray cluster and passes its address")
    if probe.executor != "ray":
        raise GtsError(f"--executor {probe.executor}: a Ray job runs the probes on Ray (--executor ray)")
    script = render("ray", job, command, template=args.template)
    return _submit_or_print(script, args.dry_run, f"a Ray probe fleet on {job.nodes} node(s)")


def probe_array(args: argparse.Namespace, job) -> int:
    """Probe every language as one task of a Slurm job array (no Ray): `gts probe` per language."""
    from gts_megatron.data.mixture import check_data

    if job.nodes != 1:
        raise GtsError(f"--nodes {job.nodes}: each array task probes one language on one node")
    command, probe = _probe_command(args, "probe-array")
    _, languages = check_data(Path(probe.data), probe.languages, probe.seq_length)
    array = f"0-{len(languages) - 1}" + (f"%{job.array_parallel}" if job.array_parallel else "")
    script = render("probe_array", job, command, array=array, template=args.template,
                    extra={"PROBE_LANGUAGES": languages})
    return _submit_or_print(script, args.dry_run, f"{len(languages)} probes ({', '.join(languages)})")


def status(args: argparse.Namespace, _options) -> int:
    """Show a job's state (every task of an array): state, reason, run time, nodes, log."""
    rows = job_status(args.job_id)
    shown = [f for f in STATUS_FIELDS if any(row[f] not in ("", "N/A", "(null)") for row in rows)]
    widths = {f: max(len(f), *(len(row[f]) for row in rows)) for f in shown}
    print("  ".join(f.ljust(widths[f]) for f in shown).rstrip())
    for row in rows:
        print("  ".join(row[f].ljust(widths[f]) for f in shown).rstrip())
    return 0


def cancel(args: argparse.Namespace, _options) -> int:
    """Cancel a job; its training steps get TERM first and save a checkpoint."""
    cancel_job(args.job_id)
    print(f"cancelled job {args.job_id}")
    return 0


def _job_arguments(p: argparse.ArgumentParser) -> None:
    """What every submitting subcommand takes beside its job's flags (from SlurmJobConfig)."""
    p.add_argument("--env", action="append", metavar="KEY=VALUE",
                   help=SlurmJobConfig.model_fields["env"].description)
    p.add_argument("--sbatch-args", action="append", metavar="--OPTION=VALUE",
                   help=SlurmJobConfig.model_fields["sbatch_args"].description + "; write it --sbatch-args=--x=y")
    p.add_argument("--template", help="your own batch script template (with the @SBATCH@ and @SETTINGS@ markers)")
    p.add_argument("--dry-run", action="store_true", help="print the batch script instead of submitting it")
    p.add_argument("gts_command", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                   help="the gts command to run, after --")


def slurm_arguments(p: argparse.ArgumentParser) -> None:
    _job_arguments(p)
    p.add_argument("--no-requeue", dest="requeue", action="store_false", default=None,
                   help="near the time limit, checkpoint and stop instead of requeueing")


ray_arguments = probe_array_arguments = _job_arguments


def _job_id_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", help="Slurm job id (12345, or 12345_7 for one array task)")


status_arguments = cancel_arguments = _job_id_argument
