"""kill -9 while a command writes its output folder or a checkpoint: the rerun removes the dead
writer's temporary folder and ends with the output a clean run writes, byte for byte."""
from __future__ import annotations

import io
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, gts_cmd, gts_env, kill_tree, run_gts, write_corpus
from tests.integration.test_hf import make_hf_model


def _tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _kill_once_writing(args: list[str], out: Path, inside: str = "") -> None:
    """Kill -9 `gts <args>` as soon as its temporary output folder exists and holds a path matching
    the glob ``inside`` (when given): a later moment of the write."""

    def moment() -> bool:
        try:
            tmp = list(out.parent.glob(f".{out.name}.tmp-*"))
            return bool(tmp) and (not inside or any(tmp[0].glob(inside)))
        except FileNotFoundError:  # renamed into place while we looked: the moment passed
            return False

    _kill_when(args, moment, 0.0, reset=out.parent)
    assert list(out.parent.glob(f".{out.name}.tmp-*")) and not out.exists()  # debris, as a kill leaves it


@pytest.mark.parametrize("inside", ["", "**/*.bin"], ids=["as-the-folder-appears", "mid-tokenizing"])
def test_kill_9_during_data_prepare_then_rerun_leaves_no_temporary_and_equals_a_clean_run(tmp_path, inside):
    corpus = write_corpus(tmp_path / "corpus", docs_per_lang=400)
    flags = ["--vocab-size", "300", "--sample-characters", "50000"]
    run_gts("data", "prepare", "--corpus", str(corpus), "--out", str(tmp_path / "clean"), *flags)
    out = tmp_path / "killed" / "data"
    _kill_once_writing(["data", "prepare", "--corpus", str(corpus), "--out", str(out), *flags], out, inside)
    run_gts("data", "prepare", "--corpus", str(corpus), "--out", str(out), *flags)
    assert sorted(p.name for p in out.parent.iterdir()) == ["data"]
    assert _tree(out) == _tree(tmp_path / "clean")


@pytest.mark.parametrize("inside", ["", ".tmp-iter_*"], ids=["as-the-folder-appears", "mid-save"])
def test_kill_9_during_import_hf_then_rerun_leaves_no_temporary_and_equals_a_clean_run(tmp_path, inside):
    src = make_hf_model("llama", tmp_path / "hf")
    run_gts("import-hf", str(src), "--out", str(tmp_path / "clean"))
    out = tmp_path / "killed" / "imported"
    _kill_once_writing(["import-hf", str(src), "--out", str(out)], out, inside)
    run_gts("import-hf", str(src), "--out", str(out))
    assert sorted(p.name for p in out.parent.iterdir()) == ["imported"]
    clean, rerun = _tree(tmp_path / "clean"), _tree(out)
    assert sorted(clean) == sorted(rerun)
    # torch DCP's .metadata holds a random save id and the folder it was saved in, so it (and the
    # checksum meta.json records of it) differs between any two saves; every other byte is equal
    assert [name for name in clean if clean[name] != rerun[name]] == ["iter_0000000/.metadata",
                                                                      "iter_0000000/meta.json"]


def _kill_when(args: list[str], appeared, delay: float, reset: Path, env: dict | None = None,
               tries: int = 3, timeout: float = 120) -> None:
    """Start `gts <args>` and kill -9 it (and its children) ``delay`` s after ``appeared()`` holds.
    A moment can pass between two polls (a tiny save takes milliseconds): a command that finishes
    first is started again, after removing ``reset``, up to ``tries`` times."""
    for _ in range(tries):
        shutil.rmtree(reset, ignore_errors=True)
        proc = subprocess.Popen(gts_cmd(*args), env={**gts_env(), **(env or {})}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + timeout
        try:
            while not appeared() and proc.poll() is None:
                assert time.time() < deadline, "the moment to kill never came"
                time.sleep(0.01)
            if proc.poll() is None:
                time.sleep(delay)
                kill_tree(proc)
                return
        finally:
            proc.kill()
            proc.wait()
    raise AssertionError(f"the command finished before the moment to kill it, {tries} times")


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
    _kill_when([*args, str(out)], lambda: (out / ".tmp-iter_0000000").exists(), delay, reset=out)
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
    _kill_when([*args, str(run)], lambda: (ckpts / ".tmp-iter_0000004").exists(), delay, reset=run)
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
    _kill_when(args, lambda: (run / "metrics.jsonl").exists(), 0.0, reset=run, env=env)
    assert [p.name for p in scratch.glob("gts-launch-*")]  # what the kill left
    run_gts(*args, env=env)
    assert [p.name for p in scratch.iterdir() if not p.name.startswith("torchinductor")] == []
