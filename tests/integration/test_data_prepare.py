"""`gts data prepare` on small real corpora: formats, tokenizers, and every kind of bad input."""
import gzip
import json

import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from tests.conftest import TINY, WORDS, assert_one_line_error, documents, files_under, run_gts, write_corpus

SMALL = ["--vocab-size", "300", "--sample-characters", "10000"]


def prepare(corpus, out, *extra, check=True):
    return run_gts("data", "prepare", "--corpus", str(corpus), "--out", str(out), *SMALL, *extra, check=check)


def test_formats_plain_blank_separated_and_gzipped_jsonl(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    prepare(corpus, tmp_path / "data")
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["languages"] == ["de", "en", "fr"]
    for lang in manifest["languages"]:
        splits = manifest["data"][lang]["splits"]
        assert sum(s["documents"] for s in splits.values()) == 60  # blank-line separated de too
        assert splits["valid"]["documents"] == splits["test"]["documents"] == 1
    assert manifest["sources"] == {"en": {"source": "test", "licence": "CC0"}}
    assert manifest["tokenizer"]["kind"] == "sentencepiece" and len(manifest["tokenizer"]["sha256"]) == 64
    assert not (tmp_path / "data" / "tokenizer_sample.txt").exists()


def test_existing_huggingface_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    corpus = write_corpus(tmp_path / "corpus")
    hf = Tokenizer(models.WordLevel(unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.train_from_iterator([d for lang in WORDS for d in documents(lang, 60)],
                           trainers.WordLevelTrainer(special_tokens=["<unk>", "</s>", "<pad>"]))
    hf.save(str(tmp_path / "tokenizer.json"))
    prepare(corpus, tmp_path / "data", "--tokenizer", str(tmp_path / "tokenizer.json"))
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["tokenizer"]["kind"] == "huggingface"
    assert manifest["tokenizer"]["eod"] == hf.token_to_id("</s>") and manifest["tokenizer"]["pad"] == 2
    en = documents("en", 60)
    expected = sum(len(hf.encode(d).ids) + 1 for d in en)
    assert sum(s["tokens"] for s in manifest["data"]["en"]["splits"].values()) == expected
    train = IndexedDataset(str(tmp_path / "data" / "en" / "train"))
    assert hf.decode(train[0][:-1].tolist()) in en


def test_invalid_utf8_reports_file_and_offset_or_is_skipped_and_counted(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    good = (corpus / "en.txt").read_bytes()
    bad_at = good.index(b"\n", 100) + 1  # the start of a line
    (corpus / "en.txt").write_bytes(good[:bad_at] + b"caf\xe9 au lait\n" + good[bad_at:])
    proc = prepare(corpus, tmp_path / "data", check=False)
    assert_one_line_error(proc, "en.txt", f"invalid UTF-8 at byte offset {bad_at + 3}", "--skip-bad-lines")
    assert not (tmp_path / "data").exists() and not list(tmp_path.glob(".data*"))
    prepare(corpus, tmp_path / "data", "--skip-bad-lines")
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["data"]["en"]["skipped_lines"] == 1
    assert sum(s["documents"] for s in manifest["data"]["en"]["splits"].values()) == 60


@pytest.mark.parametrize("case, fragments", [
    ("empty", ["de.txt: no documents"]),
    ("unknown_code", ["english.txt", "'english' is not a known language code"]),
    ("duplicate", ["language 'en' has two files", "en.jsonl", "en.txt"]),
    ("too_little", ["en.txt: 2 document(s) is too little text", "--valid-fraction"]),
    ("bad_jsonl", ["fr.jsonl.gz: line 3: missing field 'text'", "--text-field"]),
    ("bad_tokenizer", ["not a SentencePiece model"]),
    ("missing_language", ["no file for language(s) sw", "the corpus has de, en, fr"]),
    ("dangling_link", ["ru.txt: named like a language file but is a link to nothing"]),
    ("directory", ["es.txt: named like a language file but is a directory"]),
    ("file_in_the_way", ["/data: File exists"]),
])
def test_bad_corpus_is_refused_with_nothing_written(tmp_path, case, fragments):
    corpus = write_corpus(tmp_path / "corpus")
    extra = []
    if case == "empty":
        (corpus / "de.txt").write_text("\n\n  \n")
    elif case == "unknown_code":
        (corpus / "en.txt").rename(corpus / "english.txt")
    elif case == "duplicate":
        (corpus / "en.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
    elif case == "too_little":
        (corpus / "en.txt").write_text("one document\nanother one\n")
    elif case == "bad_jsonl":
        with gzip.open(corpus / "fr.jsonl.gz", "wt") as f:
            f.write("\n".join(json.dumps({"text": d} if i != 2 else {"body": d})
                              for i, d in enumerate(documents("fr", 10))) + "\n")
    elif case == "bad_tokenizer":
        (tmp_path / "tok.model").write_bytes(b"not a model")
        extra = ["--tokenizer", str(tmp_path / "tok.model")]
    elif case == "missing_language":
        extra = ["--languages", "en,sw"]
    elif case == "dangling_link":
        (corpus / "ru.txt").symlink_to(tmp_path / "nowhere.txt")
    elif case == "directory":
        (corpus / "es.txt").mkdir()
    out = tmp_path / "data"
    if case == "file_in_the_way":
        out.write_text("a file where the output's parent folder should be")
        out = out / "sub"
    assert_one_line_error(prepare(corpus, out, *extra, check=False), *fragments)
    assert (tmp_path / "data").is_file() if case == "file_in_the_way" else not (tmp_path / "data").exists()
    assert not list(tmp_path.glob(".data*"))


def test_existing_output_from_other_inputs_needs_force(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    prepare(corpus, tmp_path / "data")
    before = files_under(tmp_path / "data")
    assert_one_line_error(prepare(corpus, tmp_path / "data", "--seed", "7", check=False),
                          "prepared from other inputs or options", "--force")
    assert files_under(tmp_path / "data") == before
    prepare(corpus, tmp_path / "data", "--seed", "7", "--force")
    assert json.loads((tmp_path / "data" / "manifest.json").read_text())["inputs"]["options"]["seed"] == 7


def test_tokenizer_not_matching_the_manifest_is_refused(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    prepare(corpus, tmp_path / "data")
    prepare(corpus, tmp_path / "other", "--vocab-size", "320")
    (tmp_path / "data" / "tokenizer.model").write_bytes((tmp_path / "other" / "tokenizer.model").read_bytes())
    proc = run_gts("pretrain", "--config", TINY, "--run-dir", str(tmp_path / "run"), "--set", "data.kind=indexed",
                   "--set", f"data.path={tmp_path / 'data'}", "--set", "model.vocab_size=320",
                   "--set", "train.seq_length=8", check=False)
    assert_one_line_error(proc, "tokenizer.model does not match the manifest")
    assert not (tmp_path / "run").exists()


def test_the_same_corpus_prepared_twice_gives_byte_identical_data(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    prepare(corpus, tmp_path / "one")
    prepare(corpus, tmp_path / "two")
    one = {p.relative_to(tmp_path / "one"): p.read_bytes() for p in (tmp_path / "one").rglob("*") if p.is_file()}
    two = {p.relative_to(tmp_path / "two"): p.read_bytes() for p in (tmp_path / "two").rglob("*") if p.is_file()}
    assert sorted(one) == sorted(two) and any(p.name == "tokenizer.model" for p in one)
    assert [p for p in one if one[p] != two[p]] == []
    assert str(tmp_path).encode() not in one[next(p for p in one if p.name == "tokenizer.model")]
