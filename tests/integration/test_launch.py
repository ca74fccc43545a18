"""`gts launch`: rendered batch scripts keep every value as data, bad options are refused in one
line, and jobs run on a REAL single-node Slurm cluster (munged, slurmctld, slurmd on loopback):
a 2-task TP=2 training job, a time-limit requeue that resumes, cancel, a probe job array and a
Ray cluster on Slurm running a probe fleet."""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import TINY, assert_one_line_error, gts_cmd, gts_env, indexed_args, read_metrics, run_gts
from tests.local_slurm import LocalSlurm

def _probe_results(store: Path) -> dict[str, list[float]]:
    return {p.stem: json.loads(p.read_text())["delta_norm_ffn"] for p in sorted(store.glob("*.json"))}


PROBE_ARGS = ["--steps", "2", "--seq-length", "32", "--sketch-size", "64", "--tokens-per-step", "256"]


NASTY = "it's a \"run\" $(touch PWNED) `touch PWNED`; x & y"


def _settings(script: str) -> str:
    """The settings block of a rendered script (bash assignments written by gts launch)."""
    lines = script.split("# ---- settings written by gts launch: every value is shell-quoted\n", 1)[1]
    return lines.split("\n\n", 1)[0]


def test_rendered_settings_keep_every_word_of_the_command_as_data(tmp_path):
    command = ["pretrain", "--config", TINY, "--run-dir", str(tmp_path / NASTY), "--set", "train.steps=3",
               "--set", "parallel.tensor=2"]
    script = run_gts("launch", "slurm", "--nproc-per-node", "2", "--log-dir", str(tmp_path / "logs dir;$(x)"),
                     "--env", f"GTS_NOTE={NASTY}", "--partition", "gpu,debug", "--time", "1-02:00",
                     "--sbatch-args=--mail-type=END", "--dry-run", "--", *command).stdout
    assert "#SBATCH --partition=gpu,debug" in script and "#SBATCH --time=1-02:00" in script
    assert "#SBATCH --mail-type=END" in script and "#SBATCH --signal=B:USR1@180" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    probe = _settings(script) + '\nprintf "%s\\0" "${GTS_CMD[@]}"; printf "%s\\0" "$LOG_ROOT" "${GTS_ENV[@]}"'
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    words = out.split("\0")[:-1]
    assert words == [*command, str(tmp_path / "logs dir;$(x)"), f"GTS_NOTE={NASTY}"]
    assert not list(tmp_path.rglob("PWNED"))


def test_ray_and_probe_array_scripts_are_valid_bash(tmp_path, probe_setup):
    probe = ["probe", "--base", str(probe_setup["base"]), "--data", str(probe_setup["data"])]
    for kind in ("ray", "probe-array"):
        script = run_gts("launch", kind, "--dry-run", "--", *probe).stdout
        assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0, kind
    array = run_gts("launch", "probe-array", "--array-parallel", "2", "--dry-run", "--", *probe).stdout
    assert "#SBATCH --array=0-3%2" in array
    assert "PROBE_LANGUAGES=(syn00 syn01 syn02 syn03)" in array


@pytest.mark.parametrize("args, message", [
    (["slurm", "--job-name", "my job", "--", "pretrain"], "job_name 'my job' is not valid"),
    (["slurm", "--time", "soon", "--", "pretrain"], "--time: time 'soon' is not valid"),
    (["slurm", "--mem", "64 GB", "--", "pretrain"], "--mem: mem '64 GB' is not valid"),
    (["slurm", "--sbatch-args=--output=x", "--", "pretrain"], "gts launch sets --output itself"),
    (["slurm", "--sbatch-args=--comment=a b", "--", "pretrain"], "is not --option or --option=value"),
    (["slurm", "--env", "1X=2", "--", "pretrain"], "env '1X=2' is not KEY=VALUE"),
    (["slurm", "--log-dir", 'a"b', "--", "pretrain"], "log_dir 'a\"b' is not usable"),
    (["slurm", "--gpus-per-node", "2", "--nproc-per-node", "4", "--", "pretrain"], "each process needs its own GPU"),
    (["slurm", "--"], "no gts command to run"),
    (["slurm", "--nproc-per-node", "3", "--", "train", "--stage", "group", "--set", "parallel.pipeline=2"],
     "parallel.tensor(1) x parallel.pipeline(2) = 2 does not divide the world size 3"),
    (["slurm", "--", "pretrain", "--set", "data.kind=indexed", "--set", "data.path=no-such-data"],
     "no-such-data has no manifest.json"),
    (["slurm", "--nodes", "2", "--", "eval", "--checkpoint", "x", "--data", "y"], "gts eval runs as one process"),
    (["ray", "--", "pretrain"], "gts launch ray runs `gts probe`"),
    (["probe-array", "--nodes", "2", "--", "probe", "--base", "b", "--data", "d"], "each array task probes one"),
    (["status", "12;rm -rf /"], "is not a Slurm job id"),
])
def test_bad_launch_options_are_one_line_errors(tmp_path, args, message):
    proc = run_gts("launch", *args, check=False)
    assert_one_line_error(proc, message)


def test_without_slurm_commands_the_error_says_what_is_missing(tmp_path):
    env = {**gts_env(), "PATH": str(Path(gts_cmd()[0]).parent)}  # python's folder only: no sbatch
    proc = subprocess.run(gts_cmd("launch", "slurm", "--log-dir", str(tmp_path / "logs"), "--", "pretrain"),
                          capture_output=True, text=True, env=env, timeout=120)
    assert_one_line_error(proc, "sbatch is not on PATH")
    assert not (tmp_path / "logs" / "scripts").exists() or not list((tmp_path / "logs" / "scripts").iterdir())


# ---------------------------------------------------------------- a real Slurm cluster

@pytest.fixture(scope="module")
def probe_setup(tmp_path_factory) -> dict:
    """4 synthetic languages and a dense tiny base trained on them for 2 steps."""
    root = tmp_path_factory.mktemp("probe-setup")
    run_gts("data", "synthetic", "--out", str(root / "data"), "--languages", "4", "--families", "2",
            "--vocab-size", "256", "--documents", "40", "--document-tokens", "128")
    run_gts("pretrain", "--config", TINY, "--run-dir", str(root / "base"), *indexed_args(root / "data"),
            "--set", "train.steps=2")
    base = root / "base" / "checkpoints"
    # the reference results: the same probes one after another in this process, without Ray
    run_gts("probe", "--base", str(base), "--data", str(root / "data"), *PROBE_ARGS, "--executor", "process",
            "--out", str(root / "local"))
    return {"data": root / "data", "base": base, "results": _probe_results(root / "local")}


def _launch(slurm: LocalSlurm, cwd: Path, *args: str) -> str:
    """`gts launch ...` against the test cluster from ``cwd``; returns the job id."""
    proc = subprocess.run(gts_cmd("launch", *args), capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={**gts_env(), "SLURM_CONF": str(slurm.conf)})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split(" as job ")[1].split(";")[0]


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def _losses(run_dir: Path) -> list[float]:
    return [m["loss"] for m in read_metrics(run_dir) if "loss" in m]


@pytest.mark.slurm
def test_two_task_tp2_training_job(slurm, tmp_path):
    """srun starts 2 tasks (TP=2 on gloo); run dir and env values full of shell metacharacters."""
    run_dir = tmp_path / NASTY
    job = _launch(slurm, tmp_path, "slurm", "--launcher", "srun", "--nproc-per-node", "2", "--job-name", "tp2",
                  "--log-dir", "logs here", "--env", f"GTS_NOTE={NASTY}", "--",
                  "pretrain", "--config", TINY, "--run-dir", NASTY, "--set", "train.steps=3",
                  "--set", "parallel.tensor=2")
    assert slurm.wait_done(job, 240) == "COMPLETED", (tmp_path / "logs here" / f"tp2-{job}.out").read_text()
    assert not list(tmp_path.rglob("PWNED"))
    assert (run_dir / "checkpoints" / "iter_0000003").is_dir()
    assert len(_losses(run_dir)) == 3
    job_logs = tmp_path / "logs here" / f"tp2-{job}"
    assert sorted(p.name for p in job_logs.iterdir()) == ["job.sbatch", "rank-0.log", "rank-1.log"]
    assert "world 2 = TP 2 x DP 1" in (job_logs / "rank-0.log").read_text()
    out = (tmp_path / "logs here" / f"tp2-{job}.out").read_text()
    assert "2 process(es) per node, launcher srun" in out and "[gts] done: exit code 0" in out
    # the same run on the local launcher gives the same losses
    run_gts("pretrain", "--config", TINY, "--run-dir", str(tmp_path / "local"), "--nproc-per-node", "2",
            "--set", "train.steps=3", "--set", "parallel.tensor=2")
    assert _losses(run_dir) == pytest.approx(_losses(tmp_path / "local"), rel=1e-6)


@pytest.mark.slurm
@pytest.mark.slow
def test_time_limit_and_preemption_checkpoint_requeue_and_resume(slurm, tmp_path):
    """USR1 (what --signal sends before the time limit): torchrun's workers checkpoint and the job
    requeues itself; then a job in the higher-priority partition preempts it: the workers
    checkpoint again and it is requeued again. Each rerun resumes from the checkpoint just saved."""
    job = _launch(slurm, tmp_path, "slurm", "--nproc-per-node", "2", "--job-name", "rq", "--",
                  "pretrain", "--config", TINY, "--run-dir", "run", "--set", "train.steps=200",
                  "--set", "parallel.tensor=2", "--set", "train.save_interval=1000")
    metrics, node_log = tmp_path / "run" / "metrics.jsonl", tmp_path / "slurm-logs" / f"rq-{job}" / "node-0.log"
    _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 5, 120, "training steps")
    assert slurm.run("scancel", "--batch", "--signal=USR1", job).returncode == 0
    _wait_for(lambda: "resumed from" in node_log.read_text(), 120, "the first requeue")
    _wait_for(lambda: len(metrics.read_text().splitlines()) >= 15, 120, "steps after the first requeue")
    urgent = slurm.run("sbatch", "--parsable", "-p", "urgent", "-n1", "-o", "/dev/null", "--wrap", "sleep 1")
    assert urgent.returncode == 0, urgent.stderr
    assert slurm.wait_done(job, 300) == "COMPLETED"
    out = (tmp_path / "slurm-logs" / f"rq-{job}.out").read_text()
    # torchrun exits 1 when it stops its workers on a signal; the workers themselves exit 143
    assert re.search(r"time limit: step exited with \d+; requeueing \(restart 1 of at most 5\)", out), out
    assert re.search(r"preempted: step exited with \d+; requeueing \(restart 2 of at most 5\)", out), out
    assert f"job {job} (restart 2)" in out and "[gts] done: exit code 0" in out
    log = node_log.read_text()
    stops = [int(part.split(";")[0]) for part in log.split("stopped by signal 15 at step ")[1:]]
    assert len(stops) == 2 and 0 < stops[0] < stops[1] < 200, stops
    for stop in stops:
        assert f"resumed from run/checkpoints/iter_{stop:07d} at step {stop}" in log
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "iter_0000200"


@pytest.mark.slurm
def test_status_and_cancel(slurm, tmp_path):
    job = _launch(slurm, tmp_path, "slurm", "--job-name", "long", "--", "pretrain", "--config", TINY,
                  "--run-dir", "run", "--set", "train.steps=100000", "--set", "train.save_interval=100000")
    metrics = tmp_path / "run" / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, 120, "training steps")
    env = {"SLURM_CONF": str(slurm.conf)}
    status = run_gts("launch", "status", job, env=env).stdout
    assert "JobState" in status and "RUNNING" in status and f"long-{job}.out" in status
    assert run_gts("launch", "cancel", job, env=env).stdout.strip() == f"cancelled job {job}"
    assert slurm.wait_done(job, 120) == "CANCELLED"
    # the step got TERM and saved a checkpoint before Slurm's KillWait ran out
    assert list((tmp_path / "run" / "checkpoints").glob("iter_*"))


@pytest.mark.slurm
def test_probe_job_array_probes_every_language(slurm, tmp_path, probe_setup):
    job = _launch(slurm, tmp_path, "probe-array", "--job-name", "pa", "--array-parallel", "2", "--",
                  "probe", "--base", str(probe_setup["base"]), "--data", str(probe_setup["data"]), *PROBE_ARGS,
                  "--out", "probes dir")
    assert slurm.wait_done(job, 300) == "COMPLETED"
    results = _probe_results(tmp_path / "probes dir")
    assert sorted(results) == ["syn00", "syn01", "syn02", "syn03"]
    for task, lang in enumerate(sorted(results)):
        log = (tmp_path / "slurm-logs" / f"pa-{job}_{task}.out").read_text()
        assert f"probing {lang}" in log and f"[gts] {lang}: exit code 0" in log
    for lang, norms in results.items():  # the same as one local process probing them in turn
        assert norms == pytest.approx(probe_setup["results"][lang], rel=1e-6)


@pytest.mark.slurm
def test_ray_cluster_on_slurm_runs_the_probe_fleet(slurm, tmp_path, probe_setup):
    job = _launch(slurm, tmp_path, "ray", "--job-name", "rayf", "--cpus-per-task", "2",
                  "--ray-object-store-mb", "200", "--", "probe", "--base", str(probe_setup["base"]),
                  "--data", str(probe_setup["data"]), *PROBE_ARGS, "--out", "probes")
    assert slurm.wait_done(job, 300) == "COMPLETED", (tmp_path / "slurm-logs" / f"rayf-{job}.out").read_text()
    out = (tmp_path / "slurm-logs" / f"rayf-{job}.out").read_text()
    assert "Ray cluster at 127.0.0.1:" in out and "probing 4 languages on Ray" in out
    assert "[gts] done: exit code 0" in out
    results = _probe_results(tmp_path / "probes")
    assert sorted(results) == ["syn00", "syn01", "syn02", "syn03"]
    for lang, norms in results.items():
        assert norms == pytest.approx(probe_setup["results"][lang], rel=1e-6)
    port = out.split("Ray cluster at 127.0.0.1:")[1].split(":")[0]
    assert subprocess.run(["pgrep", "-f", f"port={port}"]).returncode == 1, "a Ray process outlived the job"
