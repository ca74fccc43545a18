"""`gts data synthetic`: token-level languages with a planted family structure.

Each family has a parent generator, a random Markov chain over the vocabulary (every token has a
few possible successors with Zipf-like probabilities). Each language copies its family's chain
and redraws the successors of a fraction ``mutation`` of the tokens, so languages of one family
share most of their grammar and languages of different families share almost none. The true
families are recorded in the manifest, so tests can check that probing and grouping recover
them. The output is an ordinary data directory (``kind: none`` tokenizer, EOD = token 0).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gts_megatron.artifacts import staged_directory
from gts_megatron.config import SyntheticDataConfig
from gts_megatron.data.manifest import Manifest, TokenizerInfo, load_manifest, write_manifest
from gts_megatron.data.prepare import SplitPlan, SplitWriter
from gts_megatron.errors import GtsError

EOD = 0


def token_ranges(spec: SyntheticDataConfig) -> list[tuple[int, int]]:
    """[low, high) token ids each family writes: all ids but EOD, or a band each (family_scripts)."""
    if not spec.family_scripts:
        return [(1, spec.vocab_size)] * spec.families
    band = (spec.vocab_size - 1) // spec.families
    return [(1 + f * band, 1 + (f + 1) * band) for f in range(spec.families)]


def language_chains(spec: SyntheticDataConfig) -> tuple[list[str], dict[str, str], np.ndarray]:
    """Language names, their families, and each language's successor table [L, V, successors]."""
    rng = np.random.default_rng([spec.seed, 1])
    ranges = token_ranges(spec)
    parents = np.stack([rng.integers(low, high, size=(spec.vocab_size, spec.successors)) for low, high in ranges])
    # families are dealt round-robin, then the languages shuffled, so names carry no family
    family_of = rng.permutation(np.arange(spec.languages) % spec.families)
    names = [f"syn{i:02d}" for i in range(spec.languages)]
    chains = parents[family_of].copy()
    for lang in range(spec.languages):
        mutated = rng.random(spec.vocab_size) < spec.mutation
        low, high = ranges[family_of[lang]]
        chains[lang, mutated] = rng.integers(low, high, size=(int(mutated.sum()), spec.successors))
    return names, {n: f"family{int(f)}" for n, f in zip(names, family_of)}, chains


def sample_documents(chain: np.ndarray, spec: SyntheticDataConfig, rng: np.random.Generator,
                     token_range: tuple[int, int]) -> np.ndarray:
    """``spec.documents`` walks on ``chain``, each ending with EOD: [documents, document_tokens]."""
    weights = 1.0 / np.arange(1, spec.successors + 1)
    length = spec.document_tokens - 1
    docs = np.empty((spec.documents, spec.document_tokens), dtype=np.int64)
    docs[:, 0] = rng.integers(*token_range, size=spec.documents)
    choices = rng.choice(spec.successors, size=(spec.documents, length), p=weights / weights.sum())
    for t in range(1, length):  # vectorised over documents, sequential over time
        docs[:, t] = chain[docs[:, t - 1], choices[:, t - 1]]
    docs[:, -1] = EOD
    return docs


def write_synthetic(spec: SyntheticDataConfig, out: Path, log=print) -> Manifest:
    """Write the synthetic data directory ``out`` (skipped when it exists with the same spec)."""
    inputs = {"synthetic": spec.model_dump(mode="json")}
    if (out / "manifest.json").is_file():
        existing = load_manifest(out)
        if existing.inputs == inputs:
            log(f"{out} is up to date ({len(existing.languages)} synthetic languages); nothing to do")
            return existing
        raise GtsError(f"{out} holds other data; choose another --out or remove it")
    names, families, chains = language_chains(spec)
    ranges = token_ranges(spec)
    assignment = SplitPlan(spec.valid_documents, spec.test_documents).assign(spec.documents, spec.seed)
    with staged_directory(out) as tmp:
        data = {}
        for index, name in enumerate(names):
            writer = SplitWriter(tmp, name, assignment, spec.vocab_size)
            family = int(families[name].removeprefix("family"))
            rng = np.random.default_rng([spec.seed, 2, index])
            for doc in sample_documents(chains[index], spec, rng, ranges[family]):
                writer.add(doc)
            data[name] = writer.finish()
        manifest = Manifest(languages=names, data=data, families=families, inputs=inputs,
                            tokenizer=TokenizerInfo(kind="none", vocab_size=spec.vocab_size, eod=EOD))
        write_manifest(tmp, manifest)
    groups: dict[str, list[str]] = {}
    for name, family in families.items():
        groups.setdefault(family, []).append(name)
    log(f"{out}: {spec.languages} synthetic languages in {spec.families} families, "
        f"{spec.documents} documents of {spec.document_tokens} tokens each")
    for family, members in sorted(groups.items()):
        log(f"  {family}: {' '.join(members)}")
    return load_manifest(out)
