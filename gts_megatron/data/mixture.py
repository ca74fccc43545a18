"""Language-aware sampling for training, on megatron-core's GPT and blended datasets.

Training samples come from a megatron ``BlendedDataset`` over one ``GPTDataset`` per language,
mixed with probabilities proportional to (training tokens)^alpha (alpha 0.3 as in the paper).
Megatron's blending and shuffling are deterministic in the seed, so sample ``i`` is the same on
every rank, in every parallel layout, and after a resume. Every sample carries its language id
(its index in :attr:`LanguageMixture.languages`) and, given a language -> group map, its group id.
Validation is one dataset per language (one epoch of its valid split), so loss is per language.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from gts_megatron.data.manifest import Manifest, TokenizerInfo, dataset_prefix, load_manifest, load_tokenizer
from gts_megatron.data.placement import Placement, PlacedStreams, mixture_length
from gts_megatron.data.prepare import sample_weights
from gts_megatron.errors import GtsError


class _TokenIds:
    """What megatron's GPT datasets read from a tokenizer: the special ids, and an identity for
    their index cache. Taken from the manifest, so data without a tokenizer file works too."""

    def __init__(self, info: TokenizerInfo):
        self.vocab_size, self.eod, self.pad = info.vocab_size, info.eod, info.pad
        self.special_tokens_dict = {"eod_token": self.eod, **({"pad_token": self.pad} if self.pad is not None else {})}
        self.unique_identifiers = {"class": "gts_megatron.TokenIds", **info.model_dump(mode="json")}


def check_data(data_dir: Path, languages: Optional[list[str]], seq_length: int,
               model_vocab_size: Optional[int] = None) -> tuple[Manifest, list[str]]:
    """The manifest and the chosen languages, refused (GtsError) if the data cannot feed the run:
    a tokenizer file that is not the manifest's, unknown languages, a split shorter than one
    sequence, or token ids the model cannot embed."""
    manifest = load_manifest(data_dir)
    load_tokenizer(data_dir, manifest)
    unknown = [lang for lang in languages or [] if lang not in manifest.languages]
    if unknown:
        raise GtsError(f"data.languages: {', '.join(unknown)} not in {data_dir}; it has "
                       f"{', '.join(manifest.languages)}")
    chosen = list(languages) if languages else list(manifest.languages)
    for lang in chosen:
        for split in ("train", "valid"):
            tokens = manifest.tokens(lang, split)
            if tokens < seq_length + 1:
                raise GtsError(f"language {lang}: the {split} split has {tokens} tokens, fewer than one "
                               f"sequence of train.seq_length+1 = {seq_length + 1}; lower seq_length or "
                               f"prepare the data with a larger --{split}-fraction")
    vocab = manifest.tokenizer.vocab_size
    if model_vocab_size is not None and model_vocab_size < vocab:
        raise GtsError(f"model.vocab_size {model_vocab_size} is smaller than the {vocab} token ids of "
                       f"{data_dir}; set model.vocab_size={vocab}")
    return manifest, chosen


class LanguageMixture:
    """Training and per-language validation samples from a data directory (collective to build)."""

    def __init__(self, data_dir: Path, languages: Optional[list[str]], alpha: float, seq_length: int,
                 seed: int, train_samples: int, cache_dir: Path,
                 language_to_group: Optional[dict[str, int]] = None, model_vocab_size: Optional[int] = None,
                 placement: Optional[Placement] = None):
        from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
        from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

        self.manifest, self.languages = check_data(data_dir, languages, seq_length, model_vocab_size)
        self.weights = sample_weights({lang: self.manifest.tokens(lang) for lang in self.languages}, alpha)
        needed = train_samples
        if placement is not None:  # every EP rank's stream must hold its share: a longer mixture
            owners = placement.owners(self.languages)
            train_samples = mixture_length(needed, [self.weights[lang] for lang in self.languages],
                                           owners, placement.ep_size)
        ids = _TokenIds(self.manifest.tokenizer)
        config = GPTDatasetConfig(
            random_seed=seed, sequence_length=seq_length, tokenizer=ids,
            blend_per_split=[
                ([str(dataset_prefix(data_dir, lang, "train")) for lang in self.languages],
                 [self.weights[lang] for lang in self.languages]),
                ([str(dataset_prefix(data_dir, lang, "valid")) for lang in self.languages], None),
                None],
            multiple_validation_sets=True, full_validation=True,
            reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
            create_attention_mask=False, path_to_cache=str(cache_dir), mid_level_dataset_surplus=0.005)
        cache_dir.mkdir(parents=True, exist_ok=True)
        logging.getLogger("megatron.core.datasets").setLevel(logging.WARNING)  # one line per index file
        train, valid, _ = BlendedMegatronDatasetBuilder(
            GPTDataset, [max(train_samples, 1), None, None], lambda: True, config).build()
        self.train = train
        self.valid = dict(zip(self.languages, valid if isinstance(valid, list) else [valid]))
        groups = language_to_group or {}
        missing = [lang for lang in self.languages if language_to_group is not None and lang not in groups]
        if missing:
            raise GtsError(f"the language -> group map has no group for {', '.join(missing)}")
        self._group_of = torch.tensor([groups.get(lang, -1) for lang in self.languages])
        self._with_groups = language_to_group is not None
        self.placed: Optional[PlacedStreams] = None
        if placement is not None:
            # one language: megatron hands back the GPTDataset itself, every sample is language 0
            index = train.dataset_index if hasattr(train, "dataset_index") else np.zeros(len(train), np.int64)
            self.placed = PlacedStreams(index, owners, placement.ep_size, needed)

    def eval_sets(self, max_samples: int) -> list[tuple[str, str, int]]:
        """(name, split key, samples) of each validation set: one per language."""
        return [(lang, f"valid:{lang}", min(max_samples, len(ds))) for lang, ds in self.valid.items()]

    def batch(self, indices: list[int], split: str = "train") -> dict[str, torch.Tensor]:
        """Samples ``indices`` of ``split`` ("train" or "valid:<lang>") as a batch of tensors:
        tokens, labels, loss_mask [b, s]; language_ids (and group_ids with a group map) [b]."""
        if split == "train":
            if indices and max(indices) >= len(self.train):
                raise GtsError(f"training sample {max(indices)} is past the {len(self.train)} samples the "
                               f"mixture was built for (train.steps x train.global_batch_size)")
            samples = [self.train[i] for i in indices]
            # one language: megatron returns its GPTDataset itself, without the blend's dataset_id
            language_ids = torch.tensor([int(s.get("dataset_id", 0)) for s in samples])
        else:
            lang = split.split(":", 1)[1]
            samples = [self.valid[lang][i] for i in indices]
            language_ids = torch.full((len(indices),), self.languages.index(lang))
        out = {key: torch.stack([s[key] for s in samples]) for key in ("tokens", "labels", "loss_mask")}
        out["language_ids"] = language_ids
        if self._with_groups:
            out["group_ids"] = self._group_of[language_ids]
        return out
