"""Shared helpers: run the real `gts` command in subprocesses and read what runs wrote."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from tests.local_slurm import LocalSlurm, unavailable

TINY = str(Path(__file__).resolve().parents[1] / "gts_megatron" / "configs" / "tiny.yaml")


def gts_env() -> dict:
    """Environment for child processes: one OpenMP thread each (2 cores, 2 processes)."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)  # each test's processes find their own rendezvous
    return env


def gts_cmd(*args: str) -> list[str]:
    """The argv that runs `gts <args>` with this interpreter."""
    return [sys.executable, "-m", "gts_megatron.cli", *args]


def interruptible() -> None:
    """``preexec_fn`` of a child the test will Ctrl-C. A shell without job control starts its
    background jobs with SIGINT ignored, children inherit that, and a Python started so never
    raises KeyboardInterrupt: the test would then measure how it was launched, not gts."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_gts(*args: str, timeout: float = 300, check: bool = True, env: dict | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `gts <args>` to completion (``env``: extra variables; ``cwd``: the folder it runs in); with
    ``check`` a non-zero exit fails the test."""
    proc = subprocess.run(gts_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          env={**gts_env(), **(env or {})}, cwd=cwd)
    if check and proc.returncode != 0:
        pytest.fail(f"gts {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def pytest_runtest_setup(item):
    """`gpu` tests need CUDA: skipped without it, failed under GTS_REQUIRE_GPU=1 (scripts/gpu_check.sh)."""
    if item.get_closest_marker("gpu") is None:
        return
    import torch

    if not torch.cuda.is_available():
        reason = "needs a CUDA GPU (scripts/gpu_check.sh runs the gpu tests on one)"
        if os.environ.get("GTS_REQUIRE_GPU") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def families_data(tmp_path_factory) -> Path:
    """A small synthetic data directory: 4 token languages in 2 planted families."""
    out = tmp_path_factory.mktemp("families") / "data"
    run_gts("data", "synthetic", "--out", str(out), "--languages", "4", "--families", "2",
            "--vocab-size", "256", "--documents", "40", "--document-tokens", "128")
    return out


def indexed_args(data_dir: Path) -> list[str]:
    """`--set` flags that train on an indexed data directory."""
    return ["--set", "data.kind=indexed", "--set", f"data.path={data_dir}"]


def write_family_plan(data_dir: Path, path: Path, moe_layers=(1,)) -> Path:
    """A plan.json that groups a synthetic data directory's languages by their planted family."""
    manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
    families = sorted(set(manifest["families"].values()))
    plan = {"languages": manifest["languages"],
            "language_to_group": {lang: families.index(f) for lang, f in manifest["families"].items()},
            "group_to_expert": list(range(len(families))), "num_experts": len(families),
            "moe_layers": list(moe_layers)}
    path.write_text(json.dumps(plan))
    return path


@pytest.fixture(scope="session")
def gts_setup(tmp_path_factory) -> dict:
    """Synthetic families that write separate token ranges (separable groups), a dense tiny base
    trained on them, a plan (families as groups, layer 1 MoE) and the expanded checkpoint;
    ``args`` train stage 1 from it."""
    root = tmp_path_factory.mktemp("gts")
    families_data = root / "data"
    run_gts("data", "synthetic", "--out", str(families_data), "--languages", "4", "--families", "2",
            "--vocab-size", "256", "--documents", "40", "--document-tokens", "128", "--family-scripts")
    run_gts("pretrain", "--config", TINY, "--run-dir", str(root / "base"), *indexed_args(families_data),
            "--set", "train.steps=10")
    plan = write_family_plan(families_data, root / "plan.json")
    run_gts("expand", "--dense", str(root / "base" / "checkpoints"), "--plan", str(plan), "--out", str(root / "moe"))
    args = ["--config", TINY, *indexed_args(families_data), "--set", f"moe.plan={plan}"]
    return {"root": root, "base": root / "base" / "checkpoints" / "iter_0000010", "plan": plan,
            "moe": root / "moe", "args": args, "data": families_data}


def read_metrics(run_dir: Path) -> list[dict]:
    """Every line of a run's metrics.jsonl."""
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def train_losses(run_dir: Path) -> dict[int, float]:
    """step -> training loss of a run."""
    return {m["step"]: m["loss"] for m in read_metrics(run_dir) if "loss" in m}


def valid_loss(run_dir: Path) -> float:
    """The last validation loss a run recorded."""
    return [m["valid_loss"] for m in read_metrics(run_dir) if "valid_loss" in m][-1]


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """The command failed with exit 2 and exactly one stderr line containing every fragment."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def files_under(path: Path) -> dict:
    """Every path under ``path`` with its modification time (empty when it does not exist)."""
    return {p: p.stat().st_mtime_ns for p in path.rglob("*")} if path.exists() else {}


# a small three-language corpus in three file formats (plain, blank-line separated, gzipped jsonl)
WORDS = {"en": "the cat sat on a mat and the dog ran to the park".split(),
         "de": "der Hund lief in den Park und die Katze sass auf der Matte".split(),
         "fr": "le chat est sur le tapis et le chien court au parc".split()}


def documents(lang: str, n: int, seed: int = 0) -> list[str]:
    """``n`` distinct pseudo-sentences in the words of ``lang``."""
    words = WORDS[lang]
    return [" ".join(words[(i * 7 + j * (seed + 3)) % len(words)] for j in range(5 + i % 9)) + f" {i}"
            for i in range(n)]


def write_corpus(root, docs_per_lang: int = 60):
    """en as plain lines, de as blank-line separated paragraphs, fr as gzipped jsonl; one sources.json."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "en.txt").write_text("\n".join(documents("en", docs_per_lang)) + "\n")
    (root / "de.txt").write_text("\n\n".join(d.replace(" und ", "\nund ") for d in documents("de", docs_per_lang)) + "\n")
    with gzip.open(root / "fr.jsonl.gz", "wt", encoding="utf-8") as f:
        for d in documents("fr", docs_per_lang):
            f.write(json.dumps({"text": d, "id": 1}) + "\n")
    (root / "sources.json").write_text(json.dumps({"en": {"source": "test", "licence": "CC0"}}))
    return root


def kill_tree(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    """Send ``sig`` to a process and all its descendants (launchers, workers)."""
    tree = psutil.Process(proc.pid)
    for p in [tree, *tree.children(recursive=True)]:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A single-node Slurm cluster for the session (test_launch, test_recipe); skipped (or, with
    GTS_REQUIRE_SLURM=1, failed) on machines that cannot run one."""
    reason = unavailable()
    if reason:
        if os.environ.get("GTS_REQUIRE_SLURM") == "1":
            pytest.fail(f"GTS_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    # munged wants every folder above its socket world-executable; pytest's temp folders are 0700
    base = Path(tempfile.mkdtemp(prefix="gts-slurm-", dir="/tmp"))
    cluster = LocalSlurm(base).start()
    yield cluster
    cluster.stop()
    shutil.rmtree(base, ignore_errors=True)
