"""`gts launch`: submit gts commands to Slurm (training jobs, Ray probe fleets, probe job arrays),
and show or cancel them. The gts command after ``--`` is parsed and checked here first, so a
typo or an impossible layout fails now rather than after the job has waited in the queue."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from gts_megatron.cli_flags import add_field_flags, field_options
from gts_megatron.config.launch import SlurmJobConfig
from gts_megatron.errors import GtsError

TRAINING = ("pretrain", "train")
_JOB_FLAGS = ["nodes", "gpus_per_node", "partition", "account", "qos", "time", "cpus_per_task", "mem",
              "constraint", "exclusive", "job_name", "log_dir", "python"]


def _command(args: argparse.Namespace) -> tuple[list[str], argparse.Namespace]:
    """The gts command after ``--`` and its parsed arguments (the CLI's own parser, handed to
    :func:`add_launch_parser`, reports a bad one)."""
    command = list(args.gts_command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise GtsError("no gts command to run: put it after --, e.g. gts launch slurm --nodes 2 -- train "
                       "--stage group --config run.yaml")
    if command[0] == "launch":
        raise GtsError("the command after -- is itself `gts launch`; give the command the job should run")
    return command, args.parse_gts_command(command)


def _job(args: argparse.Namespace) -> SlurmJobConfig:
    return field_options(SlurmJobConfig, args)


def _submit_or_print(script, dry_run: bool, what: str) -> int:
    from gts_megatron.launch.slurm import submit

    if dry_run:
        print(script.text, end="")
        return 0
    job_id = submit(script)
    print(f"submitted {what} as job {job_id}; logs in {script.log_root}/{script.job_name}-{job_id}*  "
          f"(gts launch status {job_id})")
    return 0


def cmd_launch_slurm(args: argparse.Namespace) -> int:
    """Run a gts command as a Slurm job: torchrun (or srun) on every node, requeued near the time limit."""
    from gts_megatron.config import load_config
    from gts_megatron.launch.slurm import render

    job = _job(args)
    command, parsed = _command(args)
    world = job.nodes * job.processes_per_node
    if parsed.command in TRAINING:
        from gts_megatron.train.preflight import preflight

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
    from gts_megatron.config import ProbeConfig

    return command, field_options(ProbeConfig, parsed)


def cmd_launch_ray(args: argparse.Namespace) -> int:
    """Start a Ray cluster on the job's nodes (head on the first) and run `gts probe` on it."""
    from gts_megatron.launch.slurm import render

    job = _job(args)
    command, probe = _probe_command(args, "ray")
    if probe.address:
        raise GtsError("--address: leave it out; the job starts the Ray cluster and passes its address")
    if probe.executor != "ray":
        raise GtsError(f"--executor {probe.executor}: a Ray job runs the probes on Ray (--executor ray)")
    script = render("ray", job, command, template=args.template)
    return _submit_or_print(script, args.dry_run, f"a Ray probe fleet on {job.nodes} node(s)")


def cmd_launch_probe_array(args: argparse.Namespace) -> int:
    """Probe every language as one task of a Slurm job array (no Ray): `gts probe` per language."""
    from gts_megatron.data.mixture import check_data
    from gts_megatron.launch.slurm import render

    job = _job(args)
    if job.nodes != 1:
        raise GtsError(f"--nodes {job.nodes}: each array task probes one language on one node")
    command, probe = _probe_command(args, "probe-array")
    _, languages = check_data(Path(probe.data), probe.languages, probe.seq_length)
    array = f"0-{len(languages) - 1}" + (f"%{job.array_parallel}" if job.array_parallel else "")
    script = render("probe_array", job, command, array=array, template=args.template,
                    extra={"PROBE_LANGUAGES": languages})
    return _submit_or_print(script, args.dry_run, f"{len(languages)} probes ({', '.join(languages)})")


def cmd_launch_status(args: argparse.Namespace) -> int:
    """Show a job's state (every task of an array): state, reason, run time, nodes, log."""
    from gts_megatron.launch.slurm import STATUS_FIELDS, job_status

    rows = job_status(args.job_id)
    shown = [f for f in STATUS_FIELDS if any(row[f] not in ("", "N/A", "(null)") for row in rows)]
    widths = {f: max(len(f), *(len(row[f]) for row in rows)) for f in shown}
    print("  ".join(f.ljust(widths[f]) for f in shown).rstrip())
    for row in rows:
        print("  ".join(row[f].ljust(widths[f]) for f in shown).rstrip())
    return 0


def cmd_launch_cancel(args: argparse.Namespace) -> int:
    """Cancel a job; its training steps get TERM first and save a checkpoint."""
    from gts_megatron.launch.slurm import cancel

    cancel(args.job_id)
    print(f"cancelled job {args.job_id}")
    return 0


def _job_parser(sub, name: str, func, extra: list[str], parse_gts_command) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=func.__doc__, description=func.__doc__)
    add_field_flags(p, SlurmJobConfig, _JOB_FLAGS + extra)
    p.add_argument("--env", action="append", metavar="KEY=VALUE",
                   help=SlurmJobConfig.model_fields["env"].description)
    p.add_argument("--sbatch-args", action="append", metavar="--OPTION=VALUE",
                   help=SlurmJobConfig.model_fields["sbatch_args"].description + "; write it --sbatch-args=--x=y")
    p.add_argument("--template", help="your own batch script template (with the @SBATCH@ and @SETTINGS@ markers)")
    p.add_argument("--dry-run", action="store_true", help="print the batch script instead of submitting it")
    p.add_argument("gts_command", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                   help="the gts command to run, after --")
    p.set_defaults(func=func, parse_gts_command=parse_gts_command)
    return p


def add_launch_parser(sub, parse_gts_command: Callable[[list[str]], argparse.Namespace]) -> None:
    """`gts launch slurm|ray|probe-array|status|cancel`. ``parse_gts_command`` parses the command
    after ``--`` as `gts` would (passed in, so that this module does not import the CLI)."""
    launch = sub.add_parser("launch", help="run gts commands as Slurm jobs").add_subparsers(
        dest="launch_command", required=True)
    _job_parser(launch, "slurm", cmd_launch_slurm,
                ["nproc_per_node", "launcher", "signal_seconds", "max_requeues", "socket_ifname"],
                parse_gts_command).add_argument(
        "--no-requeue", dest="requeue", action="store_false", default=None,
        help="near the time limit, checkpoint and stop instead of requeueing")
    _job_parser(launch, "ray", cmd_launch_ray, ["ray_port", "ray_object_store_mb"], parse_gts_command)
    _job_parser(launch, "probe-array", cmd_launch_probe_array, ["array_parallel"], parse_gts_command)
    for name, func in (("status", cmd_launch_status), ("cancel", cmd_launch_cancel)):
        p = launch.add_parser(name, help=func.__doc__)
        p.add_argument("job_id", help="Slurm job id (12345, or 12345_7 for one array task)")
        p.set_defaults(func=func)
