"""`gts data prepare`: a corpus directory -> tokenizer -> per-language token datasets + manifest.

Three passes over the text, so that bad input is refused before the slow work starts:
1. read every file (UTF-8 and JSON checked, documents and characters counted);
2. draw the tokenizer's training sample, languages weighted by characters^alpha (unless a
   tokenizer is given);
3. tokenize every document into megatron-core indexed datasets, one per language and split.
Everything is built in a temporary directory that replaces ``<out>`` only when complete. A rerun
with the same inputs (files, sizes, times, options) is skipped.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from gts_megatron.artifacts import staged_directory
from gts_megatron.config import PrepareConfig
from gts_megatron.data.corpus import Corpus, LanguageFile, ReadStats, iter_documents, scan_corpus
from gts_megatron.data.manifest import (MANIFEST_FILE, SPLITS, LanguageData, Manifest, SplitStats, TokenizerInfo,
                                        dataset_prefix, load_manifest, write_manifest)
from gts_megatron.data.tokenizer import Tokenizer, install_tokenizer, train_sentencepiece
from gts_megatron.errors import GtsError

_ENCODE_BATCH = 256  # documents per tokenizer call: large enough to keep the threads busy
_SAMPLE_LINE_CHARS = 4000  # SentencePiece drops sentences longer than its limit; cut them first


def available_cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class SplitPlan:
    """Which documents of a language go to valid and test (the rest train)."""

    valid: int
    test: int

    def assign(self, documents: int, seed: int) -> np.ndarray:
        """Split index (0 train, 1 valid, 2 test) of each document. It depends only on the seed
        and the document count, so parallel corpora hold out the same documents in every language."""
        order = np.random.default_rng(seed).permutation(documents)
        splits = np.zeros(documents, dtype=np.int8)
        splits[order[: self.valid]] = 1
        splits[order[self.valid: self.valid + self.test]] = 2
        return splits


def plan_splits(cfg: PrepareConfig, lang_file: LanguageFile, documents: int) -> SplitPlan:
    """Held-out document counts for ``documents`` documents, or a GtsError if there are too few."""
    def held_out(fraction: float) -> int:
        return max(1, round(documents * fraction)) if fraction > 0 else 0

    plan = SplitPlan(held_out(cfg.valid_fraction), held_out(cfg.test_fraction))
    if documents - plan.valid - plan.test < 1:
        raise GtsError(f"{lang_file.path}: {documents} document(s) is too little text for a train split "
                       f"plus {plan.valid} valid and {plan.test} test document(s); add text or lower "
                       f"--valid-fraction/--test-fraction")
    return plan


def _documents(cfg: PrepareConfig, lang_file: LanguageFile, stats: Optional[ReadStats] = None):
    return iter_documents(lang_file, stats or ReadStats(), cfg.separator, cfg.text_field, cfg.skip_bad_lines)


def count_documents(cfg: PrepareConfig, corpus: Corpus) -> dict[str, ReadStats]:
    """Pass 1: read every file in full, so bad bytes or empty files are found before any work."""
    counts = {}
    for lang, lang_file in corpus.files.items():
        stats = ReadStats()
        for _ in _documents(cfg, lang_file, stats):
            pass
        if stats.documents == 0:
            raise GtsError(f"{lang_file.path}: no documents (the file is empty or has only blank lines)")
        counts[lang] = stats
    return counts


def sample_weights(sizes: dict[str, int], alpha: float) -> dict[str, float]:
    """Temperature sampling: probability of each language proportional to size^alpha."""
    scaled = {lang: float(size) ** alpha for lang, size in sizes.items()}
    total = sum(scaled.values())
    return {lang: value / total for lang, value in scaled.items()}


def write_tokenizer_sample(cfg: PrepareConfig, corpus: Corpus, counts: dict[str, ReadStats], path: Path) -> dict:
    """Pass 2: a language-balanced text sample for tokenizer training; returns characters per language."""
    weights = sample_weights({lang: s.characters for lang, s in counts.items()}, cfg.sample_alpha)
    taken = {}
    with open(path, "w", encoding="utf-8") as out:
        for index, (lang, lang_file) in enumerate(corpus.files.items()):
            keep = min(1.0, cfg.sample_characters * weights[lang] / counts[lang].characters)
            rng = np.random.default_rng([cfg.seed, index])
            taken[lang] = 0
            for doc in _documents(cfg, lang_file):
                if rng.random() >= keep:
                    continue
                for line in doc.split("\n"):
                    for start in range(0, len(line), _SAMPLE_LINE_CHARS):
                        out.write(line[start: start + _SAMPLE_LINE_CHARS] + "\n")
                taken[lang] += len(doc)
    return taken


class SplitWriter:
    """Appends one language's documents to its train/valid/test megatron-core indexed datasets."""

    def __init__(self, out_dir: Path, language: str, assignment: np.ndarray, vocab_size: int):
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

        self.out_dir, self.language, self.assignment = out_dir, language, assignment
        self.dtype = np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
        (out_dir / language).mkdir()
        self.builders = [IndexedDatasetBuilder(f"{dataset_prefix(out_dir, language, n)}.bin", dtype=self.dtype)
                         for n in SPLITS]
        self.documents, self.tokens = [0, 0, 0], [0, 0, 0]

    @property
    def added(self) -> int:
        return sum(self.documents)

    def add(self, ids) -> None:
        """Append the next document (its token ids, EOD included)."""
        split = int(self.assignment[self.added])
        self.builders[split].add_document(np.asarray(ids, dtype=self.dtype), [len(ids)])
        self.documents[split] += 1
        self.tokens[split] += len(ids)

    def finish(self, source_file: Optional[str] = None, skipped_lines: int = 0) -> LanguageData:
        """Write the index files; returns the language's manifest entry."""
        for builder, name in zip(self.builders, SPLITS):
            builder.finalize(f"{dataset_prefix(self.out_dir, self.language, name)}.idx")
        return LanguageData(splits={n: SplitStats(documents=d, tokens=t)
                                    for n, d, t in zip(SPLITS, self.documents, self.tokens)},
                            source_file=source_file, skipped_lines=skipped_lines)


def tokenize_language(cfg: PrepareConfig, lang_file: LanguageFile, documents: int, tokenizer: Tokenizer,
                      out_dir: Path, threads: int, progress) -> LanguageData:
    """Pass 3: one language's documents -> train/valid/test indexed datasets."""
    writer = SplitWriter(out_dir, lang_file.language,
                         plan_splits(cfg, lang_file, documents).assign(documents, cfg.seed), tokenizer.vocab_size)
    stats, batch = ReadStats(), []

    def flush():
        for ids in tokenizer.encode(batch, threads):
            writer.add(ids + [tokenizer.eod])
        progress.update(len(batch))
        batch.clear()

    for doc in _documents(cfg, lang_file, stats):
        batch.append(doc)
        if len(batch) == _ENCODE_BATCH:
            flush()
    flush()
    if writer.added != documents:  # the file changed between the passes
        raise GtsError(f"{lang_file.path}: changed while being read ({documents} then {writer.added} documents)")
    return writer.finish(lang_file.path.name, stats.skipped_lines)


def _fingerprint(cfg: PrepareConfig, corpus: Corpus) -> dict:
    files = {lang: {"file": f.path.name, "bytes": f.path.stat().st_size, "mtime_ns": f.path.stat().st_mtime_ns}
             for lang, f in corpus.files.items()}
    tokenizer = None
    if cfg.tokenizer:
        stat = Path(cfg.tokenizer).stat()
        tokenizer = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    options = cfg.model_dump(mode="json", exclude={"corpus"})
    return {"corpus": str(corpus.root.resolve()), "files": files, "tokenizer_file": tokenizer, "options": options}


def _up_to_date(out: Path, inputs: dict, force: bool) -> Optional[Manifest]:
    if not (out / MANIFEST_FILE).exists():
        if out.exists() and any(out.iterdir()):
            if not force:
                raise GtsError(f"{out} exists and is not a data directory; pass --force to replace it")
        return None
    manifest = load_manifest(out)
    if manifest.inputs == inputs:
        return manifest
    if not force:
        raise GtsError(f"{out} holds data prepared from other inputs or options; pass --force to "
                       f"replace it, or choose another --out")
    return None


def prepare(cfg: PrepareConfig, out: Path, force: bool = False, log=print) -> Manifest:
    """Build (or find up to date) the data directory ``out`` from ``cfg.corpus``."""
    from tqdm import tqdm

    corpus = scan_corpus(Path(cfg.corpus), cfg.languages)
    if cfg.tokenizer and not Path(cfg.tokenizer).is_file():
        raise GtsError(f"--tokenizer {cfg.tokenizer} does not exist")
    inputs = _fingerprint(cfg, corpus)
    existing = _up_to_date(out, inputs, force)
    if existing is not None:
        log(f"{out} is up to date ({len(existing.languages)} languages); nothing to do")
        return existing
    threads = available_cores()
    log(f"reading {len(corpus.files)} language files from {corpus.root}")
    counts = count_documents(cfg, corpus)
    for lang, lang_file in corpus.files.items():
        plan_splits(cfg, lang_file, counts[lang].documents)  # too little text: refuse before any work
    with staged_directory(out) as tmp:
        if cfg.tokenizer:
            tokenizer = install_tokenizer(Path(cfg.tokenizer), tmp, cfg.eod_token)
            trained = None
        else:
            sample = tmp / "tokenizer_sample.txt"
            taken = write_tokenizer_sample(cfg, corpus, counts, sample)
            log(f"training a {cfg.vocab_size}-piece SentencePiece {cfg.model_type} tokenizer on "
                f"{sum(taken.values()) / 1e6:.1f}M characters (alpha {cfg.sample_alpha})")
            tokenizer = train_sentencepiece(sample, tmp, cfg.vocab_size, cfg.model_type,
                                            cfg.character_coverage, threads, cfg.seed)
            sample.unlink()
            trained = taken
        total = sum(s.documents for s in counts.values())
        data = {}
        with tqdm(total=total, unit="doc", desc="tokenizing", disable=None, mininterval=1.0) as bar:
            for lang, lang_file in corpus.files.items():
                data[lang] = tokenize_language(cfg, lang_file, counts[lang].documents, tokenizer, tmp, threads, bar)
        manifest = Manifest(languages=list(corpus.files), tokenizer=TokenizerInfo(**tokenizer.describe()),
                            data=data, sources={k: v for k, v in corpus.sources.items() if k in corpus.files},
                            inputs=inputs, tokenizer_sample=trained)
        write_manifest(tmp, manifest)
    manifest = load_manifest(out)
    log(summary(manifest))
    return manifest


def summary(manifest: Manifest) -> str:
    """A table of languages, documents and tokens per split, and licences."""
    lines = [f"{'lang':8} {'docs':>8} {'train tok':>11} {'valid tok':>10} {'test tok':>10} {'skipped':>7}  licence"]
    for lang in manifest.languages:
        d = manifest.data[lang]
        docs = sum(s.documents for s in d.splits.values())
        licence = manifest.sources.get(lang, {}).get("licence", "")
        lines.append(f"{lang:8} {docs:8d} {d.splits['train'].tokens:11d} {d.splits['valid'].tokens:10d} "
                     f"{d.splits['test'].tokens:10d} {d.skipped_lines:7d}  {licence}")
    t = manifest.tokenizer
    lines.append(f"tokenizer: {t.kind} {t.file or ''} vocab {t.vocab_size} eod {t.eod}")
    return "\n".join(lines)


def manifest_json(manifest: Manifest) -> str:
    """The manifest as pretty JSON (for `--json` output)."""
    return json.dumps(manifest.model_dump(mode="json"), indent=1, ensure_ascii=False)
