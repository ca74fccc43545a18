"""Bad input, as a user gives it, to the real `gts` entry point (in this process, so that the
suite stays fast): a corpus, prepared data, a config, a plan, a checkpoint or a Hugging Face folder
that is wrong in one way. Every case asserts four things: exit code 2, a single `error:` line and
no traceback, the culprit named in it, and every file under the case's folder unchanged (names,
sizes and SHA-256 before and after)."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import TINY, indexed_args, run_gts, write_corpus, write_family_plan
from tests.integration.test_checkpoint_integrity import _flip_bytes_in_the_largest_shard
from tests.integration.test_hf import make_hf_model


@pytest.fixture(scope="module")
def dense(tmp_path_factory, families_data) -> Path:
    """A tiny dense checkpoint trained for 2 steps on the synthetic families."""
    run = tmp_path_factory.mktemp("bad-inputs") / "base"
    run_gts("pretrain", "--config", TINY, "--run-dir", str(run), *indexed_args(families_data), "--set", "train.steps=2")
    return run / "checkpoints" / "iter_0000002"


def disk(root: Path) -> dict:
    """Every path under ``root``: a file's size and SHA-256, a folder or link as such."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink() or not path.exists():
            out[rel] = ("link", str(path.readlink()) if path.is_symlink() else None)
        elif path.is_dir():
            out[rel] = ("dir",)
        else:
            out[rel] = (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def gts(argv: list[str]) -> tuple[int, str]:
    """`gts <argv>` in this process: its exit code and what it printed to stderr."""
    from gts_megatron.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


# -- inputs, each spoiled in one way -------------------------------------------------------------
def _corpus(t: Path, spoil: Callable[[Path], None], *extra: str) -> list[str]:
    corpus = write_corpus(t / "corpus", docs_per_lang=20)
    spoil(corpus)
    return ["data", "prepare", "--corpus", str(corpus), "--out", str(t / "data"), "--vocab-size", "300",
            "--sample-characters", "10000", *extra]


def _config(t: Path, text: str | bytes, *extra: str) -> list[str]:
    path = t / "run.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return ["config", "check", str(path), *extra]


def _data(t: Path, fixtures: dict, spoil: Callable[[Path], None], *extra: str) -> list[str]:
    data = t / "data"
    shutil.copytree(fixtures["data"], data)
    spoil(data)
    return ["pretrain", "--config", TINY, "--run-dir", str(t / "run"), *indexed_args(data), *extra]


def _plan(t: Path, fixtures: dict, spoil: Callable[[dict], str | None]) -> list[str]:
    plan = json.loads(write_family_plan(fixtures["data"], t / "plan.json").read_text())
    text = spoil(plan)
    (t / "plan.json").write_text(text if text is not None else json.dumps(plan))
    return ["expand", "--dense", str(fixtures["dense"]), "--plan", str(t / "plan.json"), "--out", str(t / "moe")]


def _checkpoint(t: Path, fixtures: dict, spoil: Callable[[Path], None]) -> list[str]:
    ckpt = t / "ckpt" / "iter_0000002"
    shutil.copytree(fixtures["dense"], ckpt)
    spoil(ckpt)
    return ["eval", "--checkpoint", str(ckpt), "--data", str(fixtures["data"]), "--out", str(t / "eval.json")]


def _flipped(t: Path, fixtures: dict, command: str) -> list[str]:
    """``command`` given a dense checkpoint with a corrupted tensor."""
    ckpt = t / "ckpt" / "iter_0000002"
    shutil.copytree(fixtures["dense"], ckpt)
    _flip_bytes_in_the_largest_shard(ckpt)
    if command == "expand":
        write_family_plan(fixtures["data"], t / "plan.json")
        return ["expand", "--dense", str(ckpt), "--plan", str(t / "plan.json"), "--out", str(t / "moe")]
    return ["export-hf", str(ckpt), "--out", str(t / "hf")]


def _meta(change: dict) -> Callable[[Path], None]:
    def spoil(ckpt: Path) -> None:
        meta = json.loads((ckpt / "meta.json").read_text())
        (ckpt / "meta.json").write_text(json.dumps({**meta, **change}))
    return spoil


def _hf(t: Path, config: str | None) -> list[str]:
    folder = t / "hf"
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(config)
    return ["import-hf", str(folder), "--out", str(t / "imported")]


def _write(name: str, content: str | bytes) -> Callable[[Path], None]:
    def spoil(root: Path) -> None:
        (root / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return spoil


def _truncate(name: str) -> Callable[[Path], None]:
    def spoil(root: Path) -> None:
        data = (root / name).read_bytes()
        (root / name).write_bytes(data[:len(data) // 2])
    return spoil


_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
          "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 256,
          "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}

CASES = {
    # corpus -> gts data prepare
    "corpus-missing": (lambda t, f: ["data", "prepare", "--corpus", str(t / "nope"), "--out", str(t / "data")],
                       ["nope", "does not exist"]),
    "corpus-empty": (lambda t, f: _corpus(t, lambda c: [p.unlink() for p in c.iterdir()]), ["no language files"]),
    "corpus-unknown-code": (lambda t, f: _corpus(t, lambda c: (c / "en.txt").rename(c / "xx1.txt")), ["xx1"]),
    "corpus-duplicate-language": (lambda t, f: _corpus(t, _write("en.jsonl", '{"text": "a"}\n')), ["two files"]),
    "corpus-empty-file": (lambda t, f: _corpus(t, _write("de.txt", "\n \n")), ["de.txt", "no documents"]),
    "corpus-not-utf8": (lambda t, f: _corpus(t, _write("en.txt", b"good line\nbad \xff line\n" * 30)),
                        ["en.txt", "UTF-8"]),
    "corpus-jsonl-field": (lambda t, f: _corpus(t, _write("ru.jsonl", '{"body": "x"}\n' * 30)), ["ru.jsonl", "text"]),
    "corpus-jsonl-syntax": (lambda t, f: _corpus(t, _write("ru.jsonl", '{"text": "x"\n' * 30)), ["ru.jsonl"]),
    "corpus-dangling-link": (lambda t, f: _corpus(t, lambda c: (c / "ru.txt").symlink_to(t / "gone.txt")),
                             ["ru.txt", "link to nothing"]),
    "corpus-directory": (lambda t, f: _corpus(t, lambda c: (c / "ru.txt").mkdir()), ["ru.txt", "directory"]),
    "corpus-sources-syntax": (lambda t, f: _corpus(t, _write("sources.json", "{")), ["sources.json", "JSON"]),
    "corpus-sources-duplicate": (lambda t, f: _corpus(t, _write("sources.json", '{"en": {}, "en": {}}')),
                                 ["sources.json", "'en' is given twice"]),
    "corpus-sources-not-utf8": (lambda t, f: _corpus(t, _write("sources.json", b'{"en": "\xff"}')),
                                ["sources.json", "UTF-8"]),
    "corpus-missing-language": (lambda t, f: _corpus(t, lambda c: None, "--languages", "en,sw"), ["sw"]),
    "corpus-vocab-size": (lambda t, f: _corpus(t, lambda c: None, "--vocab-size", "0"), ["--vocab-size"]),
    "corpus-valid-fraction": (lambda t, f: _corpus(t, lambda c: None, "--valid-fraction", "1.5"),
                              ["--valid-fraction"]),
    "corpus-bad-tokenizer": (lambda t, f: _corpus(t, lambda c: (t / "tok.model").write_bytes(b"junk"),
                                                  "--tokenizer", str(t / "tok.model")), ["SentencePiece"]),
    # config -> gts config check
    "config-missing": (lambda t, f: ["config", "check", str(t / "none.yaml")], ["none.yaml", "does not exist"]),
    "config-unknown-field": (lambda t, f: _config(t, "model:\n  hiden_size: 64\n"), ["model.hiden_size"]),
    "config-wrong-type": (lambda t, f: _config(t, "train:\n  steps: many\n"), ["train.steps"]),
    "config-duplicate-key": (lambda t, f: _config(t, "train:\n  steps: 1\n  steps: 2\n"), ["'steps' is given twice"]),
    "config-alias-bomb": (lambda t, f: _config(t, "".join(
        f"{n}: &{n} [{', '.join([f'*{p}' if p else 'x'] * 9)}]\n" for p, n in zip(["", "a", "b", "c", "d", "e"],
                                                                                 "abcdef"))),
        ["aliases", "100000"]),
    "config-not-utf8": (lambda t, f: _config(t, b"train:\n  steps: 1 # \xe9\n"), ["run.yaml", "UTF-8", "byte 20"]),
    "config-syntax": (lambda t, f: _config(t, "train: [1, 2\n"), ["run.yaml", "not valid YAML"]),
    "config-heads": (lambda t, f: _config(t, "model:\n  hidden_size: 65\n  num_attention_heads: 4\n"),
                     ["not divisible by num_attention_heads"]),
    "config-preset": (lambda t, f: _config(t, "model: giant\n"), ["giant"]),
    "config-batch-layout": (lambda t, f: _config(t, "model: tiny\ntrain:\n  global_batch_size: 6\n  micro_batch_size: 2"
                                                    "\ndata:\n  kind: synthetic\n", "--world-size", "2"),
                            ["global_batch_size 6"]),
    "config-tensor-layout": (lambda t, f: _config(t, "model: tiny\ndata:\n  kind: synthetic\n", "--world-size", "3",
                                                  "--set", "parallel.tensor=2"),
                             ["parallel.tensor(2) x parallel.pipeline(1) = 2 does not divide the world size 3"]),
    "config-set-syntax": (lambda t, f: _config(t, "model: tiny\n", "--set", "steps"), ["section.field=value"]),
    "config-set-unknown": (lambda t, f: _config(t, "model: tiny\n", "--set", "train.stepz=3"), ["train.stepz"]),
    # prepared data -> gts pretrain
    "data-no-manifest": (lambda t, f: _data(t, f, lambda d: (d / "manifest.json").unlink()), ["manifest.json"]),
    "data-manifest-syntax": (lambda t, f: _data(t, f, _write("manifest.json", "{")), ["manifest.json", "JSON"]),
    "data-manifest-duplicate": (lambda t, f: _data(t, f, lambda d: (d / "manifest.json").write_text(
        (d / "manifest.json").read_text().replace('{', '{"format": "gts-data/1", ', 1))),
        ["manifest.json", "'format' is given twice"]),
    "data-truncated-bin": (lambda t, f: _data(t, f, _truncate("syn00/train.bin")), ["syn00/train.bin", "truncated"]),
    "data-truncated-idx": (lambda t, f: _data(t, f, _truncate("syn01/valid.idx")), ["syn01/valid.idx", "truncated"]),
    "data-missing-bin": (lambda t, f: _data(t, f, lambda d: (d / "syn02" / "test.bin").unlink()),
                         ["syn02", "missing"]),
    "data-unknown-language": (lambda t, f: _data(t, f, lambda d: None, "--set", "data.languages=[syn00,zz]"), ["zz"]),
    # plan -> gts expand
    "plan-missing": (lambda t, f: ["expand", "--dense", str(f["dense"]), "--plan", str(t / "none.json"), "--out",
                                   str(t / "moe")], ["none.json", "does not exist"]),
    "plan-syntax": (lambda t, f: _plan(t, f, lambda p: "{"), ["plan.json", "JSON"]),
    "plan-duplicate-language": (lambda t, f: _plan(t, f, lambda p: json.dumps(p).replace(
        '"language_to_group": {', '"language_to_group": {"syn00": 1, ', 1)), ["'syn00' is given twice"]),
    "plan-group-range": (lambda t, f: _plan(t, f, lambda p: p["language_to_group"].update(syn00=7)),
                         ["plan.json", "outside"]),
    "plan-empty-group": (lambda t, f: _plan(t, f, lambda p: p["language_to_group"].update(
        {lang: 0 for lang in p["language_to_group"]})), ["plan.json", "at least one language"]),
    "plan-layer-outside-model": (lambda t, f: _plan(t, f, lambda p: p.update(moe_layers=[9])), ["moe_layers [9]"]),
    "plan-edited": (lambda t, f: _plan(t, f, lambda p: p.update(inputs={"routing_sha256": "0" * 64})),
                    ["were changed after `gts plan`"]),
    # checkpoint -> gts eval
    "checkpoint-missing": (lambda t, f: ["eval", "--checkpoint", str(t / "none"), "--data", str(f["data"]),
                                         "--out", str(t / "e.json")], ["none", "does not exist"]),
    "checkpoint-no-meta": (lambda t, f: _checkpoint(t, f, lambda c: (c / "meta.json").unlink()), ["meta.json"]),
    "checkpoint-meta-syntax": (lambda t, f: _checkpoint(t, f, _write("meta.json", "{")), ["meta.json", "JSON"]),
    "checkpoint-meta-version": (lambda t, f: _checkpoint(t, f, _meta({"version": 9})), ["meta.json", "version 9"]),
    "checkpoint-meta-field": (lambda t, f: _checkpoint(t, f, _meta({"stepz": 1})), ["meta.json", "stepz"]),
    "checkpoint-meta-type": (lambda t, f: _checkpoint(t, f, _meta({"step": "one"})), ["meta.json", "step"]),
    "checkpoint-flipped-tensor-eval": (lambda t, f: _checkpoint(t, f, _flip_bytes_in_the_largest_shard), [".distcp", "checksum"]),
    "checkpoint-flipped-tensor-expand": (lambda t, f: _flipped(t, f, "expand"), [".distcp", "checksum"]),
    "checkpoint-flipped-tensor-export-hf": (lambda t, f: _flipped(t, f, "export-hf"), [".distcp", "checksum"]),
    # Hugging Face folder -> gts import-hf
    "hf-missing": (lambda t, f: ["import-hf", str(t / "none"), "--out", str(t / "imported")], ["none"]),
    "hf-no-config": (lambda t, f: _hf(t, None), ["config.json"]),
    "hf-config-syntax": (lambda t, f: _hf(t, "{"), ["config.json"]),
    "hf-architecture": (lambda t, f: _hf(t, json.dumps({**_LLAMA, "architectures": ["GPT2LMHeadModel"]})),
                        ["GPT2LMHeadModel"]),
    "hf-no-weights": (lambda t, f: _hf(t, json.dumps(_LLAMA)), ["safetensors"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_names_the_culprit_and_changes_nothing(case, tmp_path, families_data, dense):
    build, fragments = CASES[case]
    argv = build(tmp_path, {"data": families_data, "dense": dense})
    before = disk(tmp_path)
    code, err = gts(argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert len(lines[0]) < 500, lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert disk(tmp_path) == before


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` made immutable (chattr +i), which binds root too, as the tests run; mode bits do not."""
    folder.mkdir()
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip(f"chattr +i is not supported on the filesystem of {folder}: no folder is read-only for root")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


OUTPUTS = {  # a command -> its arguments, writing under the read-only folder ``ro``
    "data prepare": lambda t, ro, data: ["data", "prepare", "--corpus", str(write_corpus(t / "corpus", 20)),
                                         "--out", str(ro / "data")],
    "pretrain": lambda t, ro, data: ["pretrain", "--config", TINY, "--run-dir", str(ro / "run"), *indexed_args(data)],
    "demo-corpus": lambda t, ro, data: ["data", "demo-corpus", "--out", str(ro / "corpus"), "--languages", "en,de"],
    "import-hf": lambda t, ro, data: ["import-hf", str(make_hf_model("llama", t / "hf")),
                                      "--out", str(ro / "imported")],
}


@pytest.mark.parametrize("command", sorted(OUTPUTS))
def test_an_output_folder_that_cannot_be_written_is_one_line_naming_it(command, tmp_path, families_data):
    with read_only(tmp_path / "ro") as ro:
        argv = OUTPUTS[command](tmp_path, ro, families_data)
        before = disk(tmp_path)
        code, err = gts(argv)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert str(ro) in lines[0] and "not permitted" in lines[0], lines[0]
        assert disk(tmp_path) == before
