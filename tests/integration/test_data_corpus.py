"""The real demo corpus (downloaded with pip) through `gts data prepare` and into pretraining."""
import json

import numpy as np
import pytest
import sentencepiece as spm
from megatron.core.datasets.indexed_dataset import IndexedDataset

from tests.conftest import TINY, assert_one_line_error, files_under, read_metrics, run_gts

LANGUAGES = ["en", "ru", "ko"]  # three scripts; the full default set is measured by `gts bench data`


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo corpus for three languages, prepared with a 2000-piece tokenizer."""
    root = tmp_path_factory.mktemp("demo")
    env = {"GTS_CACHE_DIR": str(root / "cache")}
    corpus_out = run_gts("data", "demo-corpus", "--out", str(root / "corpus"), "--languages", ",".join(LANGUAGES),
                         env=env)
    prepare_out = run_gts("data", "prepare", "--corpus", str(root / "corpus"), "--out", str(root / "data"),
                          "--vocab-size", "2000", "--sample-characters", "2000000")
    return {"root": root, "env": env, "corpus": root / "corpus", "data": root / "data",
            "corpus_out": corpus_out.stdout, "prepare_out": prepare_out.stdout}


def chapters(path):
    return [doc for doc in path.read_text(encoding="utf-8").split("\n\n") if doc.strip()]


def test_demo_corpus_is_verse_aligned_with_licences(demo):
    for lang in LANGUAGES:
        docs = chapters(demo["corpus"] / f"{lang}.txt")
        assert len(docs) == 1189  # chapters of the Bible, in every language
        assert sum(len(d.splitlines()) for d in docs) == 31102  # verses
    sources = json.loads((demo["corpus"] / "sources.json").read_text())
    assert sorted(sources) == sorted(LANGUAGES)
    for lang in LANGUAGES:
        assert "public domain" in sources[lang]["licence"]
        assert f"{lang:4} {sources[lang]['version']}" in demo["corpus_out"]  # the licence table is printed


def test_manifest_counts_match_an_independent_recount(demo):
    manifest = json.loads((demo["data"] / "manifest.json").read_text())
    sp = spm.SentencePieceProcessor(model_file=str(demo["data"] / "tokenizer.model"))
    assert manifest["tokenizer"]["vocab_size"] == sp.get_piece_size() == 2000
    assert manifest["sources"]["ko"]["licence"] == json.loads((demo["corpus"] / "sources.json").read_text())["ko"]["licence"]
    for lang in LANGUAGES:
        docs = chapters(demo["corpus"] / f"{lang}.txt")
        expected_tokens = sum(len(ids) + 1 for ids in sp.encode(docs))  # + EOD per document
        splits = manifest["data"][lang]["splits"]
        assert sum(s["documents"] for s in splits.values()) == len(docs)
        assert sum(s["tokens"] for s in splits.values()) == expected_tokens
        assert splits["valid"]["documents"] == splits["test"]["documents"] == round(0.01 * len(docs))
        for split, stats in splits.items():
            ds = IndexedDataset(str(demo["data"] / lang / split))
            assert len(ds) == stats["documents"]
            assert int(ds.sequence_lengths.sum()) == stats["tokens"]
            assert all(ds[i][-1] == sp.eos_id() for i in range(len(ds)))
    # parallel text: every language holds out the same chapters
    held_out = {}
    for lang in LANGUAGES:
        position = {tuple(ids): i for i, ids in enumerate(sp.encode(chapters(demo["corpus"] / f"{lang}.txt")))}
        valid = IndexedDataset(str(demo["data"] / lang / "valid"))
        held_out[lang] = sorted(position[tuple(valid[i][:-1].tolist())] for i in range(len(valid)))
    assert held_out["en"] == held_out["ru"] == held_out["ko"]


def test_second_run_is_instant_and_changes_nothing(demo):
    before = files_under(demo["root"] / "corpus") | files_under(demo["data"])
    again = run_gts("data", "demo-corpus", "--out", str(demo["corpus"]), "--languages", ",".join(LANGUAGES),
                    env=demo["env"])
    assert "up to date" in again.stdout
    again = run_gts("data", "prepare", "--corpus", str(demo["corpus"]), "--out", str(demo["data"]),
                    "--vocab-size", "2000", "--sample-characters", "2000000")
    assert "up to date" in again.stdout
    assert files_under(demo["root"] / "corpus") | files_under(demo["data"]) == before


def test_pretraining_lowers_validation_loss_in_every_language(demo, tmp_path):
    common = ["--config", TINY, "--set", "model.vocab_size=2000", "--set", "data.kind=indexed",
              "--set", f"data.path={demo['data']}", "--set", "train.eval_samples=8", "--set", "train.seq_length=64"]
    run_gts("pretrain", "--run-dir", str(tmp_path), *common, "--set", "train.steps=40", "--set", "train.lr=3e-3",
            "--set", "train.eval_interval=40")  # validates before training too
    initial, final = [m for m in read_metrics(tmp_path) if "valid_loss" in m]
    assert (initial["step"], final["step"]) == (0, 40)
    for lang in LANGUAGES:
        assert final[f"valid_loss/{lang}"] < initial[f"valid_loss/{lang}"] - 0.5, (lang, initial, final)
    assert np.isclose(final["valid_loss"], np.mean([final[f"valid_loss/{lang}"] for lang in LANGUAGES]))


def test_debian_sources_add_languages_the_bible_lacks(demo, tmp_path):
    """Real Debian packages via apt-get download (the machines this runs on have Debian's apt)."""
    import shutil
    import subprocess

    policy = subprocess.run(["apt-cache", "policy", "wesnoth-1.16-data"], capture_output=True, text=True) \
        if shutil.which("apt-cache") else None
    if policy is None or "Candidate: (none)" in policy.stdout or "Candidate" not in policy.stdout:
        pytest.skip("no Debian apt package lists here (apt-get update first)")
    out = tmp_path / "corpus"
    proc = run_gts("data", "demo-corpus", "--out", str(out), "--with-debian", "--languages", "en,fi,bg",
                   env=demo["env"], timeout=600)
    sources = json.loads((out / "sources.json").read_text())
    assert sorted(sources) == ["bg", "en", "fi"] and sorted(p.name for p in out.glob("*.txt")) == ["bg.txt", "en.txt", "fi.txt"]
    assert "GPL-2.0-or-later" in sources["fi"]["licence"] and "GPL" in proc.stdout
    assert sources["en"]["licence"].startswith("public domain")  # no Wesnoth English: it is the source text
    finnish = chapters(out / "fi.txt")
    assert len(finnish) > 1000 and sum(map(len, finnish)) > 100_000
    assert not any("<" in doc or "$" in doc for doc in finnish[:500])  # markup and variables removed
    assert len(chapters(out / "en.txt")) == 1189


@pytest.mark.parametrize("languages, fragments", [
    ("en,hi", ["'hi' is only in a version marked copyrighted", "--include-restricted"]),
    ("en,fi", ["the demo corpus has no 'fi'", "--with-debian"]),
])
def test_demo_corpus_refuses_languages_it_cannot_give(tmp_path, languages, fragments):
    proc = run_gts("data", "demo-corpus", "--out", str(tmp_path / "corpus"), "--languages", languages, check=False)
    assert_one_line_error(proc, *fragments)
    assert not (tmp_path / "corpus").exists()
