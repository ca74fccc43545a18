"""kill -9 while a command writes its output folder or a checkpoint: the rerun removes the dead
writer's temporary folder and ends with the output a clean run writes, byte for byte."""
from __future__ import annotations

import io
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, gts_cmd, gts_env, kill_tree, run_gts, write_corpus
from tests.integration.test_hf import make_hf_model


def _tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _kill_once_writing(args: list[str], out: Path, timeout: float = 120) -> None:
    """Start `gts <args>`, kill -9 it as soon as its temporary output folder exists."""
    proc = subprocess.Popen(gts_cmd(*args), env=gts_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while not list(out.parent.glob(f".{out.name}.tmp-*")):
            assert proc.poll() is None, "the command finished before it could be killed"
            assert time.time() < deadline, "no temporary folder appeared"
            time.sleep(0.05)
    finally:
        kill_tree(proc)
        proc.wait()
    assert list(out.parent.glob(f".{out.name}.tmp-*")) and not out.exists()  # debris, as a kill leaves it


def test_kill_9_during_data_prepare_then_rerun_leaves_no_temporary_and_equals_a_clean_run(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", docs_per_lang=400)
    flags = ["--vocab-size", "300", "--sample-characters", "50000"]
    run_gts("data", "prepare", "--corpus", str(corpus), "--out", str(tmp_path / "clean"), *flags)
    out = tmp_path / "killed" / "data"
    _kill_once_writing(["data", "prepare", "--corpus", str(corpus), "--out", str(out), *flags], out)
    run_gts("data", "prepare", "--corpus", str(corpus), "--out", str(out), *flags)
    assert sorted(p.name for p in out.parent.iterdir()) == ["data"]
    assert _tree(out) == _tree(tmp_path / "clean")


def test_kill_9_during_import_hf_then_rerun_leaves_no_temporary_and_equals_a_clean_run(tmp_path):
    src = make_hf_model("llama", tmp_path / "hf")
    run_gts("import-hf", str(src), "--out", str(tmp_path / "clean"))
    out = tmp_path / "killed" / "imported"
    _kill_once_writing(["import-hf", str(src), "--out", str(out)], out)
    run_gts("import-hf", str(src), "--out", str(out))
    assert sorted(p.name for p in out.parent.iterdir()) == ["imported"]
    clean, rerun = _tree(tmp_path / "clean"), _tree(out)
    assert sorted(clean) == sorted(rerun)
    # torch DCP's .metadata holds a random save id and the folder it was saved in, so it (and the
    # checksum meta.json records of it) differs between any two saves; every other byte is equal
    assert [name for name in clean if clean[name] != rerun[name]] == ["iter_0000000/.metadata",
                                                                      "iter_0000000/meta.json"]


def _kill_when(args: list[str], appeared, delay: float, timeout: float = 120, env: dict | None = None) -> None:
    """Start `gts <args>` and kill -9 it (and its children) ``delay`` s after ``appeared()`` holds."""
    proc = subprocess.Popen(gts_cmd(*args), env={**gts_env(), **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while not appeared():
            assert proc.poll() is None, "the command finished before it could be killed"
            assert time.time() < deadline, "the moment to kill never came"
            time.sleep(0.02)
        time.sleep(delay)
    finally:
        kill_tree(proc)
        proc.wait()


def _equal(x, y) -> bool:
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_equal(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return type(x) is type(y) and len(x) == len(y) and all(_equal(u, v) for u, v in zip(x, y))
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
    return x == y


def _same_checkpoint(a: Path, b: Path) -> None:
    """The same tensors bit for bit: every shard byte for byte, common.pt (a pickle, whose bytes
    depend on how its objects were built) equal once loaded. DCP's .metadata holds a random save
    id, and meta.json its checksum."""
    clean, rerun = _tree(a), _tree(b)
    assert sorted(clean) == sorted(rerun)
    differ = {name for name in clean if clean[name] != rerun[name]}
    for name in [n for n in differ if n.endswith("common.pt")]:
        loaded = [torch.load(io.BytesIO(tree[name]), weights_only=True) for tree in (clean, rerun)]
        assert _equal(*loaded), name
    assert {name.rpartition("/")[2] for name in differ} <= {".metadata", "meta.json", "common.pt"}


def _expand_args(gts_setup) -> list[str]:
    return ["expand", "--dense", str(gts_setup["root"] / "base" / "checkpoints"), "--plan", str(gts_setup["plan"]),
            "--out"]


PRETRAIN = ["pretrain", "--config", TINY, "--set", "train.steps=6", "--set", "train.save_interval=2",
            "--set", "train.keep_checkpoints=1", "--run-dir"]


@pytest.fixture(scope="module")
def clean(tmp_path_factory, gts_setup) -> Path:
    """What an expand and a pretraining never interrupted write: clean/moe and clean/pretrain."""
    root = tmp_path_factory.mktemp("clean")
    run_gts(*_expand_args(gts_setup), str(root / "moe"))
    run_gts(*PRETRAIN, str(root / "pretrain"))
    return root


@pytest.mark.parametrize("delay", [0.0, 0.4], ids=["as-the-save-starts", "mid-save"])
def test_kill_9_during_expand_then_rerun_leaves_no_temporary_and_equals_a_clean_run(tmp_path, gts_setup, clean,
                                                                                    delay):
    args = _expand_args(gts_setup)
    out = tmp_path / "killed"
    _kill_when([*args, str(out)], lambda: (out / ".tmp-iter_0000000").exists(), delay)
    run_gts(*args, str(out))
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    _same_checkpoint(clean / "moe", out)


@pytest.mark.parametrize("delay", [0.0, 0.3], ids=["as-a-save-starts", "mid-save"])
def test_kill_9_during_a_checkpoint_save_then_resume_leaves_no_temporary_and_equals_a_clean_run(tmp_path, clean,
                                                                                               delay):
    args = PRETRAIN
    run = tmp_path / "killed"
    ckpts = run / "checkpoints"
    # the kill lands in the save of step 4: one complete checkpoint (step 2) to resume from
    _kill_when([*args, str(run)], lambda: (ckpts / ".tmp-iter_0000004").exists(), delay)
    run_gts(*args, str(run))
    assert not [p.name for p in ckpts.iterdir() if p.name.startswith(".")]
    _same_checkpoint(clean / "pretrain" / "checkpoints", ckpts)


def test_kill_9_of_a_two_process_run_then_rerun_leaves_nothing_in_the_temporary_directory(tmp_path):
    """The launcher's scratch folder (the workers' errors, torch elastic's logs) outlives a kill -9;
    the next launch on the machine removes it, and a launch that ends leaves nothing."""
    scratch, run = tmp_path / "tmp", tmp_path / "run"
    scratch.mkdir()
    env = {"TMPDIR": str(scratch)}
    args = ["pretrain", "--config", TINY, "--nproc-per-node", "2", "--set", "train.steps=4", "--run-dir", str(run)]
    _kill_when(args, lambda: (run / "metrics.jsonl").exists(), 0.0, env=env)
    assert [p.name for p in scratch.glob("gts-launch-*")]  # what the kill left
    run_gts(*args, env=env)
    assert [p.name for p in scratch.iterdir() if not p.name.startswith("torchinductor")] == []
