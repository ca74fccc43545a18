"""Checkpoints carry a checksum per file and a versioned meta.json; a corrupt, foreign or non-finite
checkpoint is refused with one line by every command that opens it, and never trained on."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY, gts_env, run_gts
from gts_megatron.artifacts import file_sha256


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny dense run of 2 steps; tests copy it before spoiling it."""
    run = tmp_path_factory.mktemp("integrity") / "run"
    run_gts("pretrain", "--config", TINY, "--run-dir", str(run), "--set", "train.steps=2")
    return run


def _copy(trained: Path, tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    return run, run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_meta_records_the_version_and_a_checksum_of_every_file(trained):
    ckpt = trained / "checkpoints" / (trained / "checkpoints" / "latest").read_text().strip()
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["version"] == 1 and meta["step"] == 2 and meta["stage"] == "pretrain"
    files = sorted(p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file() and p.name != "meta.json")
    assert sorted(meta["files"]) == files and any(name.endswith(".distcp") for name in files)
    assert all(meta["files"][name] == file_sha256(ckpt / name) for name in files)


def _flip_bytes_in_the_largest_shard(ckpt: Path) -> str:
    shard = max(ckpt.glob("*.distcp"), key=lambda p: p.stat().st_size)
    data = bytearray(shard.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    shard.write_bytes(bytes(data))
    return shard.name


def test_flipped_bytes_are_refused_by_eval_and_by_resume_which_trains_no_further(trained, families_data, tmp_path):
    run, ckpt = _copy(trained, tmp_path)
    name = _flip_bytes_in_the_largest_shard(ckpt)
    line = _one_line_error(run_gts("eval", "--checkpoint", str(ckpt), "--data", str(families_data),
                                   "--out", str(tmp_path / "e.json"), check=False))
    assert name in line and "checksum" in line
    line = _one_line_error(run_gts("pretrain", "--config", TINY, "--run-dir", str(run), "--set", "train.steps=4",
                                   check=False))
    assert name in line
    assert (run / "checkpoints" / "latest").read_text().strip() == ckpt.name  # no step was trained on it


def test_a_missing_shard_is_named(trained, tmp_path):
    run, ckpt = _copy(trained, tmp_path)
    shard = max(ckpt.glob("*.distcp"), key=lambda p: p.stat().st_size)
    shard.unlink()
    line = _one_line_error(run_gts("pretrain", "--config", TINY, "--run-dir", str(run), "--set", "train.steps=4",
                                   check=False))
    assert shard.name in line and "missing" in line


@pytest.mark.parametrize("change, fragments", [({"version": 7}, ["version 7", "meta.json"]),
                                               ({"stepz": 3}, ["meta.json", "stepz"])])
def test_a_meta_of_an_unknown_version_or_with_an_unknown_field_is_refused(trained, families_data, tmp_path, change,
                                                                          fragments):
    _, ckpt = _copy(trained, tmp_path)
    meta = json.loads((ckpt / "meta.json").read_text())
    (ckpt / "meta.json").write_text(json.dumps({**meta, **change}))
    line = _one_line_error(run_gts("eval", "--checkpoint", str(ckpt), "--data", str(families_data),
                                   "--out", str(tmp_path / "e.json"), check=False))
    assert all(fragment in line for fragment in fragments)


_SAVE_NAN = """
import sys
from pathlib import Path
import torch
from gts_megatron.config import ParallelConfig, load_config
from gts_megatron.engine.checkpoint import Checkpointable, save_checkpoint
from gts_megatron.model.llama import build_model, transformer_config
from gts_megatron.runtime.distributed import init_runtime, shutdown_runtime

cfg = load_config(sys.argv[1], [])
init_runtime(ParallelConfig(), 1)
model = build_model(cfg.model, transformer_config(cfg.model, ParallelConfig()))
with torch.no_grad():
    next(model.parameters())[0, 0] = float("nan")
save_checkpoint(Path(sys.argv[2]), Checkpointable(model, cfg.model), {"step": 3, "consumed_samples": 0})
shutdown_runtime()
"""


def test_a_checkpoint_with_a_nan_weight_is_refused_naming_the_weight(families_data, tmp_path):
    subprocess.run([sys.executable, "-c", _SAVE_NAN, TINY, str(tmp_path / "ckpts")], check=True, env=gts_env(),
                   capture_output=True, timeout=120)
    line = _one_line_error(run_gts("eval", "--checkpoint", str(tmp_path / "ckpts"), "--data", str(families_data),
                                   "--out", str(tmp_path / "e.json"), check=False))
    assert "NaN" in line and "weight" in line
    line = _one_line_error(run_gts("pretrain", "--config", TINY, "--run-dir", str(tmp_path / "run"),
                                   "--set", f"train.init_from={tmp_path / 'ckpts'}", check=False))
    assert "NaN" in line


def _steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_a_deleted_latest_resumes_from_the_newest_checkpoint_and_keeps_every_metrics_line(trained, tmp_path):
    run, ckpt = _copy(trained, tmp_path)
    (run / "checkpoints" / "latest").unlink()
    before = _steps(run / "metrics.jsonl")
    with (run / "metrics.jsonl").open("a") as fh:  # a step logged after the checkpoint, before a crash
        fh.write(json.dumps({"step": 3, "loss": 1.0}) + "\n")
    proc = run_gts("pretrain", "--config", TINY, "--run-dir", str(run), "--set", "train.steps=4")
    assert f"recovered the newest complete checkpoint, {ckpt.name}" in proc.stderr
    assert f"resumed from {ckpt}" in proc.stderr
    steps = _steps(run / "metrics.jsonl")
    assert steps[:len(before)] == before and sorted(set(steps[len(before):])) == [3, 4]  # not restarted at 1
    assert _steps(run / "metrics.superseded.jsonl") == [3]
