"""Run a recipe's stages in order, each as its `gts` commands in a child process, and keep a
record per stage in <run_dir>/stages/<stage>.json: its state, the hash of its inputs, its times.

A stage whose record says done with the same inputs is skipped. An interrupted or failed stage
runs again: the resumable ones (training, probes, datasets) go on from what they left, the others
start afresh. A stage whose inputs changed, and every stage from ``--from`` on, first moves its
old output aside to ``<output>.previous``.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from gts_megatron.artifacts import atomic_write_text, read_json
from gts_megatron.errors import GtsError, Interrupted
from gts_megatron.recipe.slurm import slurm_state, submit_chain
from gts_megatron.recipe.stages import Stage

RECORDS = "stages"
_LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
                       "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def _fingerprint(path: Path) -> list:
    """What identifies an input outside the run: a file's bytes, a folder's files' sizes and times."""
    if path.is_file():
        return [path.name, hashlib.sha256(path.read_bytes()).hexdigest()]
    stats = ((p, p.stat()) for p in path.rglob("*") if p.is_file())
    return sorted([str(p.relative_to(path)), st.st_size, st.st_mtime_ns] for p, st in stats)


def stage_keys(stages: list[Stage]) -> dict[str, str]:
    """Each stage's input hash: its commands, what it reads, and the hashes of the stages before it."""
    keys: dict[str, str] = {}
    for stage in stages:
        inputs = {"commands": stage.commands, "after": [keys.get(name) for name in stage.after],
                  "reads": [[str(p), _fingerprint(p)] for p in stage.reads]}
        keys[stage.name] = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return keys


@dataclass(frozen=True)
class StageStatus:
    """Where one stage stands: done, queued (a Slurm job waits), running, interrupted, failed,
    cancelled (its job never ran: a stage before it failed), changed (inputs) or pending."""

    stage: Stage
    state: str
    seconds: Optional[float] = None
    reason: str = ""
    job: Optional[str] = None


def record_path(run_dir: Path, name: str) -> Path:
    """Where the record of stage ``name`` lives (its log beside it, ``.log``)."""
    return run_dir / RECORDS / f"{name}.json"


def _read_record(run_dir: Path, name: str) -> Optional[dict]:
    path = record_path(run_dir, name)
    return read_json(path) if path.is_file() else None


def _write_record(run_dir: Path, stage: Stage, record: dict) -> None:
    atomic_write_text(record_path(run_dir, stage.name), json.dumps(record, indent=1) + "\n")


def _upstream(run_dir: Path, stage: Stage) -> dict:
    """When each stage that ``stage`` reads last finished: a rerun of one makes this one stale."""
    return {name: (_read_record(run_dir, name) or {}).get("finished") for name in stage.after}


def _alive(record: dict) -> bool:
    if record.get("host") != socket.gethostname() or not record.get("pid"):
        return False
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stage_status(run_dir: Path, stage: Stage, key: str) -> StageStatus:
    """The state of ``stage`` from its record (a running record whose process is gone: interrupted)."""
    record = _read_record(run_dir, stage.name)
    if record is None:
        return StageStatus(stage, "pending")
    state = record["state"]
    if record.get("key") != key:
        return StageStatus(stage, "changed", reason="its inputs changed since it ran; it runs again")
    if state == "done" and record.get("upstream") != _upstream(run_dir, stage):
        return StageStatus(stage, "changed", reason="a stage it reads ran again since; it runs again")
    if state == "done" and not stage.output.exists():
        return StageStatus(stage, "changed", reason=f"its output {stage.output} is gone; it runs again")
    reason = record.get("reason", "")
    if state in ("queued", "running") and record.get("job"):
        state, reason = slurm_state(record["job"], state, record.get("array"))
    elif state == "running" and not _alive(record):
        state = "interrupted"
    began = record.get("started", record.get("submitted"))
    seconds = record.get("seconds") or (time.time() - began if state == "running" else None)
    return StageStatus(stage, state, seconds, reason, record.get("job"))


def _set_parent_death_signal() -> None:
    """preexec_fn: the stage's process dies with the runner (Linux), not on as an orphan."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _last_error(lines: list[str]) -> str:
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or [line for line in lines if line.strip()] or ["no output"])[-1].strip()[:500]


def _run_command(command: tuple[str, ...], log_file: Path) -> tuple[int, str]:
    """Run one `gts` command, its output to the terminal and the stage's log; (exit code, last error)."""
    argv = [sys.executable, "-m", "gts_megatron.cli", *command[1:]]
    # each command starts as if typed at a shell: its own processes, its own rendezvous
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARIABLES}
    tail: list[str] = []
    with open(log_file, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(command)}\n")
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                 env=env, preexec_fn=_set_parent_death_signal)
        forward = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
        try:
            while True:
                try:
                    for line in child.stdout:
                        sys.stdout.write(line)
                        sys.stdout.flush()
                        log.write(line)
                        tail = (tail + [line.rstrip("\n")])[-50:]
                    break
                except KeyboardInterrupt:  # the child got the Ctrl-C too: let it save and stop
                    continue
            return child.wait(), _last_error(tail)
        finally:
            signal.signal(signal.SIGTERM, forward)


def _move_aside(stage: Stage) -> None:
    if stage.output.exists():
        previous = stage.output.with_name(stage.output.name + ".previous")
        shutil.rmtree(previous, ignore_errors=True)
        stage.output.rename(previous)


def _stopping_signal(code: int) -> Optional[int]:
    """The signal that stopped a command (SIGINT or SIGTERM), from its exit code: 128 + signal when
    it stopped itself, -signal when the signal ended the process (seen once in CI: a Ctrl-C as the
    experiment stage started training gave exit -2, after the command had printed "interrupted");
    None for a failure."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        if code in (128 + signum, -signum):
            return int(signum)
    return None


def _run_stage(run_dir: Path, stage: Stage, key: str, extra: tuple[str, ...] = ()) -> None:
    """Run ``stage``'s commands (each with ``extra`` arguments, which are not part of its inputs:
    where its Ray cluster is) under a record that says how it went; raise if it did not finish."""
    started = time.time()
    record = {"state": "running", "key": key, "upstream": _upstream(run_dir, stage), "started": started,
              "pid": os.getpid(), "host": socket.gethostname(), "job": os.environ.get("SLURM_JOB_ID")}
    _write_record(run_dir, stage, record)
    for command in stage.commands:
        code, reason = _run_command(command + extra, run_dir / RECORDS / f"{stage.name}.log")
        if code:
            signum = _stopping_signal(code)
            _write_record(run_dir, stage, {**record, "state": "interrupted" if signum else "failed",
                                           "reason": reason, "exit_code": code, "finished": time.time()})
            if signum:
                raise Interrupted(signum, f"stage {stage.name}")
            raise GtsError(f"stage {stage.name} failed (exit {code}): {reason}; see "
                           f"{run_dir / RECORDS / (stage.name + '.log')}, then `gts run` again to resume")
    finished = time.time()
    _write_record(run_dir, stage, {**record, "state": "done", "finished": finished, "seconds": finished - started})


def prepare_stage(run_dir: Path, stage: Stage, status: StageStatus, forced: bool) -> Optional[str]:
    """Ready ``stage`` to run: None when it is done and need not run again, else how it runs
    ("" or " (resumes)"), its old output moved aside when it must start afresh."""
    if status.state == "done" and not forced:
        return None
    if status.state in ("running", "queued"):
        where = f"job {status.job}" if status.job else f"pid {_read_record(run_dir, stage.name)['pid']}"
        raise GtsError(f"stage {stage.name} is {status.state} ({where}); wait for it or stop it before running "
                       f"the recipe again")
    if forced or status.state == "changed" or (status.state != "pending" and not stage.resumable):
        _move_aside(stage)
        return ""
    return " (resumes)" if status.state != "pending" and stage.resumable else ""


def run_stages(run_dir: Path, stages: list[Stage], start_from: Optional[str] = None,
               log: Callable[[str], None] = print) -> None:
    """Run every stage not done with its current inputs (and every one from ``start_from`` on)."""
    keys = stage_keys(stages)
    (run_dir / RECORDS).mkdir(parents=True, exist_ok=True)
    forced = False
    for number, stage in enumerate(stages, 1):
        forced = forced or stage.name == start_from
        head = f"[{number}/{len(stages)}] {stage.name}: {stage.about}"
        how = prepare_stage(run_dir, stage, stage_status(run_dir, stage, keys[stage.name]), forced)
        if how is None:
            log(f"{head} - done before, skipped")
            continue
        log(head + how)
        started = time.time()
        _run_stage(run_dir, stage, keys[stage.name])
        log(f"[{number}/{len(stages)}] {stage.name} done in {time.time() - started:.0f} s -> {stage.output}")


def submit_stages(run_dir: Path, stages: list[Stage], start_from: Optional[str], recipe_ref: str, options: dict,
                  log: Callable[[str], None] = print) -> list[str]:
    """Submit every stage that `gts run` would run as a chain of Slurm jobs (see
    :mod:`.slurm`); a stage that reads a submitted one is submitted too. Returns the job ids."""
    keys = stage_keys(stages)
    (run_dir / RECORDS).mkdir(parents=True, exist_ok=True)
    forced, todo = False, []
    for number, stage in enumerate(stages, 1):
        forced = forced or stage.name == start_from
        head = f"[{number}/{len(stages)}] {stage.name}: {stage.about}"
        status = stage_status(run_dir, stage, keys[stage.name])
        # done, but it reads a stage that runs again: it must run again after it
        stale = status.state == "done" and any(name in {t[0].name for t in todo} for name in stage.after)
        how = prepare_stage(run_dir, stage, status, forced or stale)
        if how is None:
            log(f"{head} - done before, skipped")
        else:
            todo.append((stage, head + how))
    by_name = {stage.name: stage for stage in stages}

    def record(name: str, job: str, array: Optional[str] = None) -> None:
        _write_record(run_dir, by_name[name], {"state": "queued", "key": keys[name], "job": job, "array": array,
                                               "submitted": time.time()})

    options = {"log_dir": str(run_dir / "slurm-logs"), **options}
    return submit_chain(recipe_ref, todo, options, record, log)


def run_one_stage(run_dir: Path, stages: list[Stage], name: str, extra: tuple[str, ...] = ()) -> None:
    """Run the stage ``name`` alone (what each Slurm job of a recipe runs): the stages it reads must
    be done; it is skipped if it is done itself."""
    keys = stage_keys(stages)
    statuses = {s.stage.name: s for s in run_status(run_dir, stages, keys)}
    stage = statuses[name].stage
    waiting = [f"{n} ({statuses[n].state})" for n in stage.after if n in statuses and statuses[n].state != "done"]
    if waiting:
        raise GtsError(f"stage {name} reads stages that are not done: {', '.join(waiting)}")
    if statuses[name].state == "done":
        print(f"stage {name} is done with these inputs; nothing to run")
        return
    _run_stage(run_dir, stage, keys[name], extra)


def run_status(run_dir: Path, stages: list[Stage], keys: Optional[dict[str, str]] = None) -> list[StageStatus]:
    """Every stage's status (``keys``: their input hashes, when already computed); a done stage
    that reads one that is not done will run again too."""
    keys, found = keys or stage_keys(stages), {}
    for stage in stages:
        status = stage_status(run_dir, stage, keys[stage.name])
        if status.state == "done" and any(found[name].state != "done" for name in stage.after if name in found):
            status = StageStatus(stage, "changed", reason="a stage it reads runs again; then it does")
        found[stage.name] = status
    return list(found.values())


def format_status(run_dir: Path, stages: list[Stage]) -> str:
    """One line per stage: its state, time and output (or why it failed)."""
    lines = []
    for status in run_status(run_dir, stages):
        stage = status.stage
        took = f"{status.seconds:.0f} s" if status.seconds is not None else ""
        detail = {"done": str(stage.output), "failed": status.reason, "changed": status.reason,
                  "interrupted": "run `gts run` again to resume" if stage.resumable else "runs again",
                  "running": f"job {status.job}" if status.job else str(stage.output),
                  "queued": f"job {status.job}" + (f" ({status.reason})" if status.reason else ""),
                  "cancelled": status.reason}.get(status.state, "")
        lines.append(f"{stage.name:<10} {status.state:<12} {took:>7}  {detail}")
    return "\n".join(lines)
