"""A real single-node Slurm cluster for the launcher tests: munged, slurmctld and slurmd run as
plain daemons under one folder, talk over loopback on free ports, and are stopped by pid.

Needs root and the Debian packages slurmctld, slurmd, slurm-client and munge (installed with
apt-get when missing). :func:`unavailable` says why a machine cannot run it.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
DAEMONS = ["munged", "slurmctld", "slurmd", "sinfo", "sbatch"]


def unavailable() -> str | None:
    """Why this machine cannot start a local Slurm cluster, or None when it can."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return "local Slurm needs Linux"
    if all(shutil.which(d) for d in DAEMONS):
        return None if os.geteuid() == 0 else "local Slurm needs root (slurmd runs jobs as any user)"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return f"Slurm is not installed and this machine cannot install it (needs root and apt-get: {PACKAGES})"
    return None


def _install() -> None:
    if all(shutil.which(d) for d in DAEMONS):
        return
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(apt, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
        subprocess.run(apt, env=env, capture_output=True, check=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


class LocalSlurm:
    """One node (this machine, as 127.0.0.1) in partition ``debug`` (default) and ``urgent``,
    whose jobs preempt (requeue) ``debug`` jobs; ``env`` holds SLURM_CONF."""

    def __init__(self, base: Path):
        self.base = base.resolve()  # daemons chdir("/"): every path they get must be absolute
        if any(c.isspace() for c in str(self.base)):
            raise ValueError(f"{self.base}: slurm.conf cannot hold paths with spaces")
        self.conf = self.base / "etc" / "slurm.conf"
        self.munge_socket = self.base / "munge" / "munge.socket"
        self.node = socket.gethostname().split(".")[0]
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def _pidfile(self, daemon: str) -> Path:
        return self.base / ("munge" if daemon == "munged" else "run") / f"{daemon}.pid"

    def start(self, timeout: float = 60) -> "LocalSlurm":
        """Install if needed, write the config, start the daemons and wait until the node is idle."""
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()  # nothing half-started stays behind
            raise

    def _start(self, timeout: float) -> "LocalSlurm":
        _install()
        for sub in ("etc", "run", "log", "state/ctld", "state/d", "munge"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        os.chmod(self.base / "munge", 0o755)  # munged refuses a group/other-writable socket folder
        key = self.base / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        munge = self.base / "munge"
        subprocess.run(["munged", f"--key-file={key}", f"--socket={self.munge_socket}",
                        f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
                        f"--seed-file={munge / 'munged.seed'}", "--num-threads=4"], check=True)
        self._write_conf()
        subprocess.run(["slurmctld", "-f", str(self.conf), "-i"], check=True, env=self.env)
        subprocess.run(["slurmd", "-f", str(self.conf)], check=True, env=self.env)
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, env=self.env)
            state = (out.stdout.split() or [""])[0]  # one line per partition the node is in
            if state in ("idle", "mixed", "allocated"):
                return self
            if state.startswith(("down", "drain")):
                subprocess.run(["scontrol", "update", f"NodeName={self.node}", "State=RESUME"],
                               capture_output=True, env=self.env)
            time.sleep(0.2)
        raise RuntimeError(f"local Slurm node not idle after {timeout:.0f} s (state {state!r}); logs in "
                           f"{self.base / 'log'}")

    def _write_conf(self) -> None:
        topology = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
        hardware = [w for w in topology.splitlines()[0].split()
                    if not w.startswith(("NodeName=", "Boards=", "UpTime="))]
        b = self.base
        lines = [
            "ClusterName=gtstest", "SlurmctldHost=localhost", "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={self.munge_socket},cred_expire=10",
            f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
            f"StateSaveLocation={b}/state/ctld", f"SlurmdSpoolDir={b}/state/d",
            f"SlurmctldPidFile={b}/run/slurmctld.pid", f"SlurmdPidFile={b}/run/slurmd.pid",
            f"SlurmctldLogFile={b}/log/slurmctld.log", f"SlurmdLogFile={b}/log/slurmd.log",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core", "SchedulerType=sched/backfill", "SchedulerParameters=sched_interval=2,bf_interval=1", "MpiDefault=none",
            "SwitchType=switch/none", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none", "MailProg=/bin/true",
            "ReturnToService=2", "SlurmctldTimeout=30", "SlurmdTimeout=30", "InactiveLimit=0", "KillWait=5",
            "MinJobAge=300",
            f"NodeName={self.node} NodeAddr=127.0.0.1 {' '.join(hardware)} State=UNKNOWN",
            # a job in "urgent" preempts one in "debug", which is then requeued after GraceTime
            "PreemptType=preempt/partition_prio", "PreemptMode=REQUEUE",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO PriorityTier=1 "
            "GraceTime=30",
            "PartitionName=urgent Nodes=ALL MaxTime=INFINITE State=UP OverSubscribe=NO PriorityTier=2",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster."""
        return subprocess.run(list(argv), capture_output=True, text=True, env=self.env, timeout=timeout)

    def wait_done(self, job_id: str, timeout: float) -> str:
        """Wait until the job (all its array tasks) leaves the queue; returns its last state."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.run("squeue", "-h", "-j", job_id).stdout.strip():
                break
            time.sleep(0.5)
        else:
            raise TimeoutError(f"job {job_id} still queued or running after {timeout:.0f} s")
        shown = self.run("scontrol", "-o", "show", "job", job_id).stdout
        states = {w.split("=", 1)[1] for w in shown.split() if w.startswith("JobState=")}
        return ",".join(sorted(states))

    def stop(self) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged (TERM, then KILL)."""
        if _alive_pidfile(self._pidfile("slurmctld")):
            jobs = self.run("squeue", "-h", "-o", "%A").stdout.split()
            if jobs:
                self.run("scancel", *jobs)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline and self.run("squeue", "-h").stdout.strip():
                    time.sleep(0.2)
        for daemon in ("slurmd", "slurmctld", "munged"):
            pid = _alive_pidfile(self._pidfile(daemon))
            if not pid:
                continue
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive_pidfile(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None
